"""A small registry token service, shaped like Harbor's.

  GET  <path>?service=S&scope=repository:NAME:pull,push   (Basic credentials optional)
  POST <path>  form grant_type=password&username=&password=&service=&scope=  (containerd, OAuth2)

It issues RS256 JWTs whose header `kid` is the libtrust key id of the signing key: that is
how distribution 2.8 finds the key among the certificates in its `rootcertbundle`.

Run: python3 token_server.py --port P --key KEY.pem --issuer ISS --service SVC [--log FILE]
"""
import argparse
import base64
import datetime
import hashlib
import json
import sys
import time
import uuid
from fnmatch import fnmatchcase
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

ANONYMOUS = "<anonymous>"

USERS = {"alice": "wonderland", "bob": "builder"}

# Who may do what: one row per grant. Actions requested but not granted are dropped from the
# token (as Harbor does); the registry then answers 401/403 for them.
#   user        resource type   name pattern   actions
POLICY = [
    ("alice",     "repository",   "*",           {"pull", "push", "delete"}),
    ("alice",     "registry",     "catalog",     {"*"}),
    ("bob",       "repository",   "public/*",    {"pull"}),
    (ANONYMOUS,   "repository",   "public/*",    {"pull"}),
]

TOKEN_TTL = 300


def allowed_actions(user, rtype, name):
    granted = set()
    for who, policy_type, pattern, actions in POLICY:
        if who == user and policy_type == rtype and fnmatchcase(name, pattern):
            granted |= actions
    return granted


def parse_scope(scope):
    """'repository:a/b:pull,push' -> ('repository', 'a/b', ['pull', 'push'])."""
    rtype, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    rtype = rtype.split("(")[0]  # 'repository(plugin)' is a class qualifier
    return rtype, name, [a for a in actions.split(",") if a]


def access_for(user, scopes):
    access = []
    for scope in scopes:
        if not scope:
            continue
        rtype, name, actions = parse_scope(scope)
        granted = allowed_actions(user, rtype, name)
        ok = [a for a in actions if a in granted or "*" in granted]
        access.append({"type": rtype, "name": name, "actions": ok})
    return access


# ---- keys ----------------------------------------------------------------------------------

def libtrust_key_id(public_key) -> str:
    """libtrust's key id: SHA-256 of the DER public key, 240 bits, base32, in 4-char groups."""
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i:i + 4] for i in range(0, len(b32), 4))


def make_signing_material(directory, common_name="integration-token-issuer"):
    """Write key.pem and a self-signed cert.pem (the registry's rootcertbundle) to directory."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .sign(key, hashes.SHA256()))
    key_path = f"{directory}/key.pem"
    cert_path = f"{directory}/cert.pem"
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def load_key(path):
    with open(path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def issue_token(key, issuer, service, subject, access):
    now = int(time.time())
    claims = {"iss": issuer, "sub": subject, "aud": service, "iat": now, "nbf": now - 30,
              "exp": now + TOKEN_TTL, "jti": uuid.uuid4().hex, "access": access}
    headers = {"kid": libtrust_key_id(key.public_key())}
    return jwt.encode(claims, key, algorithm="RS256", headers=headers)


# ---- HTTP ----------------------------------------------------------------------------------

class TokenHandler(BaseHTTPRequestHandler):
    server_version = "integration-token-server"
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        query = parse_qs(urlsplit(self.path).query)
        user = self._basic_user()
        if user is None:
            return self._reply(401, {"errors": [{"code": "UNAUTHORIZED",
                                                 "message": "invalid credentials"}]})
        scopes = [s for v in query.get("scope", []) for s in v.split(" ")]
        token = self._token(user, query.get("service", [""])[0], scopes)
        self._reply(200, {"token": token, "access_token": token, "expires_in": TOKEN_TTL,
                          "issued_at": _now_iso()})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode(), keep_blank_values=True)
        field = lambda k: form.get(k, [""])[0]
        if field("grant_type") != "password":
            return self._reply(400, {"error": "unsupported_grant_type"})
        user = field("username")
        if USERS.get(user) != field("password") or not user:
            return self._reply(401, {"error": "invalid_grant"})
        scopes = [s for s in field("scope").split(" ") if s]
        token = self._token(user, field("service"), scopes)
        self._reply(200, {"access_token": token, "token_type": "Bearer",
                          "expires_in": TOKEN_TTL, "issued_at": _now_iso(),
                          "scope": field("scope")})

    def _basic_user(self):
        """The user named by Basic credentials, ANONYMOUS without them, None if wrong."""
        header = self.headers.get("Authorization", "")
        if not header:
            return ANONYMOUS
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return user if USERS.get(user) == password else None

    def _token(self, user, service, scopes):
        access = access_for(user, scopes)
        self.log_message("token for %s service=%s access=%s", user, service, json.dumps(access))
        return issue_token(self.server.key, self.server.issuer, service or self.server.service,
                           user if user != ANONYMOUS else "", access)

    def _reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        sys.stdout.write("%s %s\n" % (self.address_string(), fmt % args))
        sys.stdout.flush()


def _now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class TokenServer:
    """Runs this file as a separate process for a test; owns its key and certificate."""

    ISSUER = "integration-token-issuer"
    SERVICE = "integration-registry"

    def __init__(self, workdir):
        from pathlib import Path
        from ports import free_port
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.realm = self.url + "/service/token"
        self.key_path, self.cert_path = make_signing_material(self.workdir)
        self.service = None

    def start(self):
        from process import Service
        self.service = Service("token-server", [
            sys.executable, __file__, "--port", self.port, "--key", self.key_path,
            "--issuer", self.ISSUER, "--service", self.SERVICE], self.workdir / "token.log")
        self.service.start()
        try:
            self.service.wait_http(self.realm, ready=lambda r: r.status_code == 200)
        except Exception:
            self.service.stop()
            raise
        return self

    def stop(self):
        return self.service.stop() if self.service else None

    def public_key(self):
        return load_key(self.key_path).public_key()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--issuer", required=True)
    ap.add_argument("--service", required=True)
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), TokenHandler)
    server.key = load_key(args.key)
    server.issuer = args.issuer
    server.service = args.service
    server.daemon_threads = True
    print(f"token server on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
