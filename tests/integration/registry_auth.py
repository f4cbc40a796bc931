"""Client side of registry auth: parse challenges, and answer them like a docker client.

RegistryAuth is a requests auth handler: on a 401 it reads WWW-Authenticate and retries once,
with Basic credentials or with a Bearer token fetched from the challenge's realm.
"""
import re

import requests

_PARAM = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str):
    """'Bearer realm="x",service="y"' -> ("bearer", {"realm": "x", "service": "y"})."""
    if not header:
        return None, {}
    scheme, _, rest = header.strip().partition(" ")
    params = {}
    for m in _PARAM.finditer(rest):
        value = m.group(2) if m.group(2) is not None else m.group(3)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
    return scheme.lower(), params


def fetch_token(realm, service=None, scope=None, credentials=None, method="GET", timeout=10):
    """Get a token the way a client does: GET with optional Basic, or OAuth2 password POST."""
    if method == "GET":
        params = {}
        if service:
            params["service"] = service
        if scope:
            params["scope"] = scope
        resp = requests.get(realm, params=params, auth=credentials, timeout=timeout)
    else:
        form = {"grant_type": "password", "service": service or "", "scope": scope or "",
                "client_id": "integration-tests"}
        if credentials:
            form["username"], form["password"] = credentials
        resp = requests.post(realm, data=form, timeout=timeout)
    return resp


class RegistryAuth(requests.auth.AuthBase):
    def __init__(self, username=None, password=None):
        self.credentials = (username, password) if username is not None else None
        self.tokens = {}

    def __call__(self, req):
        req.register_hook("response", self._on_response)
        return req

    def _on_response(self, resp, **kwargs):
        if resp.status_code != 401 or getattr(resp.request, "_auth_retried", False):
            return resp
        scheme, params = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
        if scheme == "basic" and self.credentials:
            header = requests.auth._basic_auth_str(*self.credentials)
        elif scheme == "bearer":
            key = (params.get("realm"), params.get("service"), params.get("scope"))
            if key not in self.tokens:
                tok = fetch_token(params["realm"], params.get("service"), params.get("scope"),
                                  self.credentials)
                if tok.status_code != 200:
                    return resp
                body = tok.json()
                self.tokens[key] = body.get("token") or body.get("access_token")
            header = "Bearer " + self.tokens[key]
        else:
            return resp
        # Replay the request once with the credentials; the body must be replayable bytes.
        resp.content
        resp.close()
        retry = resp.request.copy()
        retry.headers["Authorization"] = header
        retry._auth_retried = True
        new = resp.connection.send(retry, **kwargs)
        new.history.append(resp)
        new.request = retry
        return new


def session(username=None, password=None) -> requests.Session:
    s = requests.Session()
    s.auth = RegistryAuth(username, password)
    return s
