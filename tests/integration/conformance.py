"""The push and content-management workflows of the OCI distribution-spec conformance suite,
as a list of named checks that run against any registry URL (a registry, or the proxy in front
of one).

The Go suite (github.com/opencontainers/distribution-spec/conformance) cannot run on this
machine, so this is our own re-implementation of its checks, written from its source at v1.1.1
(02_push_test.go, 04_management_test.go, setup.go) and from spec.md: same requests, same order,
same expectations, and each check sees the state the earlier ones left, as in the suite (the
suite's "last response" and "previous response" are `Workflow.last` and `Workflow.prev`).
A few checks the v1.1.1 suite does not make are marked "extra" in their title: the Location
and Docker-Content-Digest checks the redesigned suite (main) makes, an upload cancelled with
DELETE, HEAD answers, a manifest with `subject` (its `OCI-Subject` answer), a deleted tag's 404,
a missing blob's DELETE, and `Expect: 100-continue` on a PATCH, a PUT and a refused PATCH.
Options left at the suite's defaults: OCI_DELETE_MANIFEST_BEFORE_BLOBS=true, and
OCI_AUTOMATIC_CROSSMOUNT=false (distribution 2.8 mounts only with `from`).

    run = conformance.run(base_url, ("user", "password"))
    run.results  # [Result(id, title, status "pass"|"fail"|"skip", reason, answers)], CHECKS order
"""
import base64
import json
import random
import socket
import uuid
from dataclasses import dataclass, field
from urllib.parse import quote, urljoin, urlsplit

import requests

import images
import registry_auth

TIMEOUT = 30          # seconds, any one request
CONTINUE_WAIT = 5.0   # seconds a client waits for `100 Continue` (curl waits 1)

OCTET = "application/octet-stream"
# The digest the suite uses for a blob that exists nowhere.
DUMMY_DIGEST = images.sha256_digest(b"hello world")
NONEXISTENT_MANIFEST = ".INVALID_MANIFEST_NAME"
EMPTY_LAYER_TAG = "emptylayer"
CM_TAG = "tagtest0"

# Checks the upstream must pass directly, so that "the proxy passes all the upstream passes"
# can never hold vacuously.
CORE_PUSH = ("push-streamed-patch", "push-streamed-put", "push-post-session", "push-put-monolithic",
             "push-get-blob", "chunked-first-chunk", "chunked-second-chunk", "chunked-close-put",
             "manifest-put-tags", "manifest-get-by-digest")


class Fail(Exception):
    pass


class Skip(Exception):
    pass


def expect(condition, reason):
    if not condition:
        raise Fail(reason)


def _said(resp):
    """The start of a response body, for a failure's reason (only then: decoding a large
    body's text is slow)."""
    return resp.content[:200].decode("utf-8", "replace")


def status_in(resp, *statuses):
    if resp.status_code not in statuses:
        raise Fail(f"{resp.request.method} {urlsplit(resp.url).path}: status {resp.status_code}, "
                   f"expected {' or '.join(map(str, statuses))}: {_said(resp)!r}")


def status_2xx(resp):
    if not 200 <= resp.status_code < 300:
        raise Fail(f"{resp.request.method} {urlsplit(resp.url).path}: status {resp.status_code}, "
                   f"expected 2xx: {_said(resp)!r}")


@dataclass
class Result:
    id: str
    title: str
    status: str      # pass, fail, skip
    reason: str = ""
    # "METHOD status" of each request the check made, in order ("PATCH 100 202": the server
    # said 100 Continue first).
    answers: list = field(default_factory=list)


@dataclass
class Run:
    base_url: str
    repo: str
    results: list
    # Locations (resolved) whose scheme/host/port differ from base_url: a client following them
    # leaves the server it was talking to.
    foreign_locations: list = field(default_factory=list)
    # What the manifest PUT with a `subject` was answered in OCI-Subject (None: no such header).
    oci_subject: object = None
    subject_digest: str = ""

    def by_id(self):
        return {r.id: r for r in self.results}

    def passed(self):
        return [r.id for r in self.results if r.status == "pass"]


# ---- the client ------------------------------------------------------------------------------

class Client:
    """requests with the registry's auth answered up front, as a docker client does: GET /v2/
    once; a Bearer challenge gets one token for every repository the workflow touches (pull,
    push, delete), a Basic one the credentials; 200 needs nothing."""

    def __init__(self, base_url, credentials, repositories):
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.authorization = None
        self.answers = []  # see Result.answers; the run takes them after each check
        ping = self.session.get(self.base_url + "/v2/", timeout=TIMEOUT)
        if ping.status_code == 401:
            scheme, params = registry_auth.parse_challenge(ping.headers.get("WWW-Authenticate", ""))
            if scheme == "basic":
                self.authorization = requests.auth._basic_auth_str(*credentials)
            elif scheme == "bearer":
                scope = " ".join(f"repository:{r}:pull,push,delete" for r in repositories)
                tok = registry_auth.fetch_token(params["realm"], params.get("service"), scope,
                                                credentials)
                if tok.status_code != 200:
                    raise RuntimeError(f"token request failed: {tok.status_code} {tok.text[:200]}")
                body = tok.json()
                self.authorization = "Bearer " + (body.get("token") or body.get("access_token"))
            else:
                raise RuntimeError(f"unknown challenge {ping.headers.get('WWW-Authenticate')!r}")
        elif ping.status_code != 200:
            raise RuntimeError(f"GET /v2/ answered {ping.status_code}")

    def url(self, path_or_url):
        return path_or_url if "://" in path_or_url else self.base_url + path_or_url

    def headers(self, extra=None):
        h = {"Authorization": self.authorization} if self.authorization else {}
        h.update(extra or {})
        return h

    def request(self, method, path_or_url, headers=None, data=None):
        # requests sends Content-Length: 0 for a PUT/PATCH/POST without data, as the suite does.
        resp = self.session.request(method, self.url(path_or_url), headers=self.headers(headers),
                                    data=data, timeout=TIMEOUT, allow_redirects=False)
        self.answers.append(f"{method} {resp.status_code}")
        return resp

    def expect_continue(self, method, url, headers, body):
        """expect_continue(), its answer noted."""
        got_continue, status, fields, data = expect_continue(method, url, headers, body)
        self.answers.append(f"{method} {'100 ' if got_continue else ''}{status}")
        return got_continue, status, fields, data


def expect_continue(method, url, headers, body):
    """A request with `Expect: 100-continue`, sent as curl sends a large upload: the header,
    then the body only once the server said `100 Continue` (a final answer first is returned as
    it is, the body unsent). Returns (got 100, status, headers dict lowercased, body)."""
    parts = urlsplit(url)
    target = parts.path + ("?" + parts.query if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", "Expect: 100-continue",
             f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sock = socket.create_connection((parts.hostname, parts.port), timeout=CONTINUE_WAIT)
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        try:
            first = _read_head(sock)
        except socket.timeout:
            raise Fail(f"{method}: no 100 Continue and no answer within {CONTINUE_WAIT}s")
        status, fields = _parse_head(first)
        got_continue = status == 100
        if got_continue:
            sock.settimeout(TIMEOUT)
            sock.sendall(body)
            status, fields = _parse_head(_read_head(sock))
        length = int(fields.get("content-length", "0"))
        data = b""
        while len(data) < length:
            piece = sock.recv(length - len(data))
            if not piece:
                break
            data += piece
        return got_continue, status, fields, data
    finally:
        sock.close()


def _read_head(sock):
    """Bytes up to the blank line ending one response head, read one at a time so that nothing
    after it (the body, or a final answer after `100 Continue`) is taken."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            raise Fail(f"connection closed after {head[:200]!r}")
        head += byte
        if len(head) > 65536:
            raise Fail("response head too large")
    return head


def _parse_head(head):
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    fields = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            fields[k.strip().lower()] = v.strip()
    return status, fields


# ---- test data (as setup.go makes it: unique config blobs and manifests per workflow) ------------

@dataclass
class Blob:
    data: bytes

    @property
    def digest(self):
        return images.sha256_digest(self.data)

    @property
    def length(self):
        return str(len(self.data))


def _marshal(obj):
    return json.dumps(obj, indent="\t").encode()


class TestData:
    def __init__(self, rng):
        # One config per workflow (pull, push, discovery, management), each with its own random
        # author so its digest is new on every run.
        self.configs = [Blob(_marshal({
            "architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
            "author": "".join(rng.choice("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-")
                              for _ in range(16))})) for _ in range(4)]
        gz, _ = images.make_layer({"test.txt": b"you found the conformance layer\n"})
        self.layer = Blob(gz)
        layers = [{"mediaType": images.OCI_LAYER_GZIP, "size": len(gz), "digest": self.layer.digest}]
        self.manifests = [Blob(_marshal({
            "schemaVersion": 2, "mediaType": images.OCI_MANIFEST,
            # `data` and an unknown field, as the suite sends: the manifest is stored byte for byte.
            "config": self._config_descriptor(c), "layers": layers})) for c in self.configs]
        self.empty_layer_manifest = Blob(_marshal({
            "schemaVersion": 2, "config": self._config_descriptor(self.configs[1]), "layers": []}))
        self.blob_a = Blob(rng.randbytes(42))
        self.setup_chunked_blob(rng, 42)
        self.rng = rng
        # Sent with `Expect: 100-continue` (extra): above the 1 MiB from which curl sends that.
        self.continue_blob = Blob(rng.randbytes(1024 * 1024 + 7))
        # For the manifest with `subject` (extra): the empty config and one small artifact blob.
        self.empty_json = Blob(b"{}")
        self.artifact_blob = Blob(b"conformance artifact " + rng.randbytes(8).hex().encode())

    @staticmethod
    def _config_descriptor(config):
        return {"mediaType": images.OCI_CONFIG, "digest": config.digest, "size": len(config.data),
                "data": base64.b64encode(config.data).decode(),
                "newUnspecifiedField": base64.b64encode(b"hello world").decode()}

    def setup_chunked_blob(self, rng, size):
        self.blob_b = Blob(rng.randbytes(size))
        cut = size // 2 + 1
        self.chunk1 = self.blob_b.data[:cut]
        self.chunk2 = self.blob_b.data[cut:]
        self.chunk1_range = f"0-{cut - 1}"
        self.chunk2_range = f"{cut}-{size - 1}"

    def subject_artifact(self, subject: Blob):
        return Blob(_marshal({
            "schemaVersion": 2, "mediaType": images.OCI_MANIFEST,
            "artifactType": "application/vnd.accel-proxy.conformance.note",
            "config": {"mediaType": images.OCI_EMPTY, "digest": self.empty_json.digest, "size": 2},
            "layers": [{"mediaType": "application/vnd.accel-proxy.conformance.note",
                        "digest": self.artifact_blob.digest, "size": len(self.artifact_blob.data)}],
            "subject": {"mediaType": images.OCI_MANIFEST, "digest": subject.digest,
                        "size": len(subject.data)}}))


# ---- the workflow ---------------------------------------------------------------------------

CHECKS = []  # (id, title, function), in the order they run


def check(check_id, title):
    def register(fn):
        CHECKS.append((check_id, title, fn))
        return fn
    return register


class Workflow:
    def __init__(self, client, repo, crossmount):
        self.c = client
        self.repo = repo
        self.crossmount = crossmount
        self.d = TestData(random.Random(uuid.uuid4().int))
        self.last = None            # the suite's lastResponse
        self.prev = None            # the suite's prevResponse
        self.empty_layer_ref = ""   # Location of the manifest without layers, if accepted
        self.num_tags = 0
        self.blob_delete_allowed = True
        self.tag_deleted = False
        self.foreign_locations = []
        self.oci_subject = None
        self.subject_digest = ""

    def path(self, rest, repo=None):
        return f"/v2/{repo or self.repo}/{rest}"

    def location(self, resp):
        """The response's Location resolved against its request URL (a relative one stays on the
        server asked); a missing one fails the check."""
        loc = resp.headers.get("Location", "")
        expect(loc, f"{resp.request.method} {urlsplit(resp.url).path}: no Location header "
                    f"(status {resp.status_code})")
        resolved = urljoin(resp.url, loc)
        if _origin(resolved) != _origin(self.c.base_url):
            self.foreign_locations.append(resolved)
        return resolved

    @staticmethod
    def with_digest(url, digest):
        return url + ("&" if "?" in url else "?") + "digest=" + quote(digest, safe=":")

    def upload(self, blob):
        """POST, then PUT with the blob (the suite's setup steps)."""
        start = self.c.request("POST", self.path("blobs/uploads/"))
        status_in(start, 202)
        return self.c.request("PUT", self.with_digest(self.location(start), blob.digest),
                              headers={"Content-Type": OCTET, "Content-Length": blob.length},
                              data=blob.data)

    def get_blob(self, digest, repo=None):
        return self.c.request("GET", self.path(f"blobs/{digest}", repo))

    def put_manifest(self, reference, blob, media_type=images.OCI_MANIFEST):
        return self.c.request("PUT", self.path(f"manifests/{reference}"),
                              headers={"Content-Type": media_type}, data=blob.data)

    def pullable(self, url, data, what):
        """The redesigned suite's location check: the Location answers 200 with the bytes."""
        got = self.c.request("GET", url, headers={"Accept": f"{images.OCI_MANIFEST}, {images.OCI_INDEX}"})
        expect(got.status_code == 200 and got.content == data,
               f"{what} Location {url}: status {got.status_code}, {len(got.content)} bytes "
               f"(expected 200 with the {len(data)} bytes pushed)")

    def digest_header(self, resp, digest):
        got = resp.headers.get("Docker-Content-Digest")
        expect(got in (None, digest), f"Docker-Content-Digest {got!r}, expected {digest}")

    # -- Push: blob upload streamed --

    @check("push-streamed-patch", "Blob Upload Streamed: PATCH request with blob in body should yield 202 response")
    def _streamed_patch(self):
        start = self.c.request("POST", self.path("blobs/uploads/"))
        loc = self.location(start)
        resp = self.c.request("PATCH", loc, headers={"Content-Type": OCTET}, data=self.d.blob_a.data)
        status_in(resp, 202)
        self.last = resp

    @check("push-streamed-put", "Blob Upload Streamed: PUT request to session URL with digest should yield 201 response")
    def _streamed_put(self):
        expect(self.last is not None, "no response from the previous check")
        resp = self.c.request("PUT", self.with_digest(self.location(self.last), self.d.blob_a.digest),
                              headers={"Content-Type": OCTET, "Content-Length": "0"})
        status_in(resp, 201)
        self.location(resp)

    # -- Push: blob upload monolithic --

    @check("push-get-missing-blob", "Blob Upload Monolithic: GET nonexistent blob should result in 404 response")
    def _get_missing_blob(self):
        status_in(self.get_blob(DUMMY_DIGEST), 404)

    @check("push-post-with-digest", "Blob Upload Monolithic: POST request with digest and blob should yield a 201 or 202")
    def _post_with_digest(self):
        cfg = self.d.configs[1]
        resp = self.c.request("POST", self.with_digest(self.path("blobs/uploads/"), cfg.digest),
                              headers={"Content-Type": OCTET, "Content-Length": cfg.length},
                              data=cfg.data)
        self.location(resp)
        status_in(resp, 201, 202)
        self.last = resp

    @check("push-get-after-post", "Blob Upload Monolithic: GET request to blob URL from prior request should yield 200 or 404 based on response code")
    def _get_after_post(self):
        expect(self.last is not None, "no response from the previous check")
        resp = self.get_blob(self.d.configs[1].digest)
        status_in(resp, 404 if self.last.status_code == 202 else 200)

    @check("push-post-session", "Blob Upload Monolithic: POST request should yield a session ID")
    def _post_session(self):
        resp = self.c.request("POST", self.path("blobs/uploads/"))
        status_in(resp, 202)
        self.last = resp

    @check("push-put-monolithic", "Blob Upload Monolithic: PUT upload of a blob should yield a 201 Response")
    def _put_monolithic(self):
        cfg = self.d.configs[1]
        resp = self.c.request("PUT", self.with_digest(self.location(self.last), cfg.digest),
                              headers={"Content-Type": OCTET, "Content-Length": cfg.length}, data=cfg.data)
        self.location(resp)
        status_in(resp, 201)
        self.last = resp

    @check("push-put-location", "Blob Upload Monolithic (extra): the PUT's Docker-Content-Digest is the blob's and its Location serves it")
    def _put_location(self):
        cfg = self.d.configs[1]
        expect(self.last is not None and self.last.status_code == 201, "no 201 from the previous check")
        self.digest_header(self.last, cfg.digest)
        self.pullable(self.location(self.last), cfg.data, "blob")

    @check("push-get-blob", "Blob Upload Monolithic: GET request to existing blob should yield 200 response")
    def _get_blob(self):
        status_in(self.get_blob(self.d.configs[1].digest), 200)

    @check("push-put-layer", "Blob Upload Monolithic: PUT upload of a layer blob should yield a 201 Response")
    def _put_layer(self):
        resp = self.upload(self.d.layer)
        self.location(resp)
        status_in(resp, 201)

    @check("push-get-layer", "Blob Upload Monolithic: GET request to existing layer should yield 200 response")
    def _get_layer(self):
        status_in(self.get_blob(self.d.layer.digest), 200)

    @check("push-head-layer", "Blob Upload Monolithic (extra): HEAD of the layer gives its length and digest, no body")
    def _head_layer(self):
        resp = self.c.request("HEAD", self.path(f"blobs/{self.d.layer.digest}"))
        status_in(resp, 200)
        expect(resp.headers.get("Content-Length") == self.d.layer.length,
               f"Content-Length {resp.headers.get('Content-Length')!r}, expected {self.d.layer.length}")
        self.digest_header(resp, self.d.layer.digest)
        expect(resp.content == b"", "HEAD answered with a body")

    # -- Push: blob upload chunked --

    @check("chunked-out-of-order", "Blob Upload Chunked: Out-of-order blob upload should return 416")
    def _out_of_order(self):
        start = self.c.request("POST", self.path("blobs/uploads/"), headers={"Content-Length": "0"})
        loc = self.location(start)
        min_size = start.headers.get("OCI-Chunk-Min-Length")
        if min_size:
            expect(min_size.isdigit(), f"OCI-Chunk-Min-Length {min_size!r} is not a number")
            if int(min_size) > len(self.d.chunk1):
                self.d.setup_chunked_blob(self.d.rng, int(min_size) * 2 - 2)
        resp = self.c.request("PATCH", loc, data=self.d.chunk2, headers={
            "Content-Type": OCTET, "Content-Length": str(len(self.d.chunk2)),
            "Content-Range": self.d.chunk2_range})
        status_in(resp, 416)

    @check("chunked-first-chunk", "Blob Upload Chunked: PATCH request with first chunk should return 202")
    def _first_chunk(self):
        start = self.c.request("POST", self.path("blobs/uploads/"), headers={"Content-Length": "0"})
        loc = self.location(start)
        self.prev = start
        resp = self.c.request("PATCH", loc, data=self.d.chunk1, headers={
            "Content-Type": OCTET, "Content-Length": str(len(self.d.chunk1)),
            "Content-Range": self.d.chunk1_range})
        status_in(resp, 202)
        expect(resp.headers.get("Range") == self.d.chunk1_range,
               f"Range {resp.headers.get('Range')!r}, expected {self.d.chunk1_range!r}")
        self.last = resp

    @check("chunked-retry-chunk", "Blob Upload Chunked: Retry previous blob chunk should return 416")
    def _retry_chunk(self):
        expect(self.prev is not None, "no upload session from the previous check")
        resp = self.c.request("PATCH", self.location(self.prev), data=self.d.chunk1, headers={
            "Content-Type": OCTET, "Content-Length": str(len(self.d.chunk1)),
            "Content-Range": self.d.chunk1_range})
        status_in(resp, 416)

    @check("chunked-status", "Blob Upload Chunked: Get on stale blob upload should return 204 with a range and location")
    def _status(self):
        expect(self.prev is not None, "no upload session from the previous check")
        resp = self.c.request("GET", self.location(self.prev))
        status_in(resp, 204)
        self.location(resp)
        expect(resp.headers.get("Range") == self.d.chunk1_range,
               f"Range {resp.headers.get('Range')!r}, expected {self.d.chunk1_range!r}")
        self.last = resp

    @check("chunked-second-chunk", "Blob Upload Chunked: PATCH request with second chunk should return 202")
    def _second_chunk(self):
        expect(self.last is not None, "no response from the previous check")
        resp = self.c.request("PATCH", self.location(self.last), data=self.d.chunk2, headers={
            "Content-Type": OCTET, "Content-Length": str(len(self.d.chunk2)),
            "Content-Range": self.d.chunk2_range})
        status_in(resp, 202)
        self.location(resp)
        self.last = resp

    @check("chunked-close-put", "Blob Upload Chunked: PUT request with digest should return 201")
    def _close_put(self):
        expect(self.last is not None, "no response from the previous check")
        resp = self.c.request("PUT", self.with_digest(self.location(self.last), self.d.blob_b.digest),
                              headers={"Content-Type": OCTET, "Content-Length": "0"})
        status_in(resp, 201)
        self.digest_header(resp, self.d.blob_b.digest)
        self.pullable(self.location(resp), self.d.blob_b.data, "chunked blob")

    @check("upload-cancel", "Blob Upload (extra, redesigned suite's blob-post-cancel): DELETE of an upload session should return 204; the session is then unknown (404)")
    def _cancel(self):
        start = self.c.request("POST", self.path("blobs/uploads/"))
        status_in(start, 202)
        loc = self.location(start)
        status_in(self.c.request("DELETE", loc), 204)
        status_in(self.c.request("GET", loc), 404)

    # -- Expect: 100-continue (extra: what curl sends with a large body) --

    @check("expect-continue-patch", "Expect: 100-continue (extra): a PATCH is told 100 Continue, then answered 202 with its Range")
    def _continue_patch(self):
        start = self.c.request("POST", self.path("blobs/uploads/"))
        status_in(start, 202)
        blob = self.d.continue_blob
        half = len(blob.data) // 2
        session = self.location(start)
        got_continue, status, fields, body = self.c.expect_continue(
            "PATCH", session, self.c.headers({"Content-Type": OCTET, "Content-Range": f"0-{half - 1}"}),
            blob.data[:half])
        expect(got_continue, f"no 100 Continue: answered {status} before the body: {body[:200]!r}")
        expect(status == 202, f"PATCH after 100 Continue: status {status}: {body[:200]!r}")
        expect(fields.get("range") == f"0-{half - 1}", f"Range {fields.get('range')!r}")
        expect(fields.get("location"), "no Location")
        self.continue_location = urljoin(session, fields["location"])
        if _origin(self.continue_location) != _origin(self.c.base_url):
            self.foreign_locations.append(self.continue_location)

    @check("expect-continue-put", "Expect: 100-continue (extra): the closing PUT with the last chunk is told 100 Continue, then answered 201")
    def _continue_put(self):
        expect(getattr(self, "continue_location", None), "no upload session from the previous check")
        blob = self.d.continue_blob
        half = len(blob.data) // 2
        got_continue, status, fields, body = self.c.expect_continue(
            "PUT", self.with_digest(self.continue_location, blob.digest),
            self.c.headers({"Content-Type": OCTET, "Content-Range": f"{half}-{len(blob.data) - 1}"}),
            blob.data[half:])
        expect(got_continue, f"no 100 Continue: answered {status} before the body: {body[:200]!r}")
        expect(status == 201, f"PUT after 100 Continue: status {status}: {body[:200]!r}")
        expect(fields.get("docker-content-digest") in (None, blob.digest),
               f"Docker-Content-Digest {fields.get('docker-content-digest')!r}")
        status_in(self.get_blob(blob.digest), 200)
        expect(self.get_blob(blob.digest).content == blob.data, "the blob read back differs")

    @check("expect-continue-refused", "Expect: 100-continue (extra): a PATCH without credentials is refused (401) before its body is sent")
    def _continue_refused(self):
        if not self.c.authorization:
            raise Skip("the registry asks for no credentials")
        start = self.c.request("POST", self.path("blobs/uploads/"))
        status_in(start, 202)
        got_continue, status, _, body = self.c.expect_continue(
            "PATCH", self.location(start), {"Content-Type": OCTET}, self.d.continue_blob.data)
        expect(not got_continue and status == 401,
               f"{'100 Continue, then ' if got_continue else ''}{status} (expected 401 before the body): {body[:200]!r}")

    # -- Push: cross-repository blob mount --

    @check("mount-without-from-missing", "Cross-Repository Blob Mount: Cross-mounting of a blob without the from argument should yield session id")
    def _mount_no_from_missing(self):
        resp = self.c.request("POST", self.path(f"blobs/uploads/?mount={DUMMY_DIGEST}", self.crossmount))
        status_in(resp, 202)
        self.location(resp)

    @check("mount-from", "Cross-Repository Blob Mount: POST request to mount another repository's blob should return 201 or 202")
    def _mount_from(self):
        resp = self.c.request("POST", self.path(
            f"blobs/uploads/?mount={self.d.blob_a.digest}&from={self.repo}", self.crossmount))
        status_in(resp, 201, 202)
        self.last = resp

    @check("mount-get-mounted", "Cross-Repository Blob Mount: GET request to test digest within cross-mount namespace should return 200")
    def _mount_get(self):
        if self.last is None or self.last.status_code != 201:
            raise Skip("the mount was not answered 201")
        loc = self.location(self.last)
        want = f"/v2/{self.crossmount}/blobs/{self.d.blob_a.digest}"
        expect(urlsplit(loc).path == want, f"Location path {urlsplit(loc).path!r}, expected {want!r}")
        status_in(self.c.request("GET", loc), 200)

    @check("mount-session-location", "Cross-Repository Blob Mount: Cross-mounting of nonexistent blob should yield session id")
    def _mount_session(self):
        if self.last is None or self.last.status_code != 202:
            raise Skip("the mount was not answered 202")
        prefix = f"/v2/{self.crossmount}/blobs/uploads/"
        path = urlsplit(self.location(self.last)).path
        expect(path.startswith(prefix), f"Location path {path!r}, expected under {prefix!r}")

    @check("mount-without-from-existing", "Cross-Repository Blob Mount: Cross-mounting without from, and automatic content discovery disabled should return a 202")
    def _mount_no_from_existing(self):
        if self.last is None or self.last.status_code != 201:
            raise Skip("the mount with from was not answered 201")
        resp = self.c.request("POST", self.path(f"blobs/uploads/?mount={self.d.blob_a.digest}", self.crossmount))
        status_in(resp, 202)

    # -- Push: manifest upload --

    @check("manifest-get-missing", "Manifest Upload: GET nonexistent manifest should return 404")
    def _manifest_missing(self):
        status_in(self.c.request("GET", self.path(f"manifests/{NONEXISTENT_MANIFEST}")), 404)

    @check("manifest-put-tags", "Manifest Upload: PUT should accept a manifest upload")
    def _manifest_put(self):
        for i in range(4):
            resp = self.put_manifest(f"test{i}", self.d.manifests[1])
            self.location(resp)
            status_in(resp, 201)
            self.last = resp

    @check("manifest-put-location", "Manifest Upload (extra): the PUT's Docker-Content-Digest is the manifest's and its Location serves the bytes")
    def _manifest_put_location(self):
        m = self.d.manifests[1]
        expect(self.last is not None and self.last.status_code == 201, "no 201 from the previous check")
        self.digest_header(self.last, m.digest)
        self.pullable(self.location(self.last), m.data, "manifest")

    @check("manifest-put-no-layers", "Manifest Upload: Registry should accept a manifest upload with no layers")
    def _manifest_no_layers(self):
        resp = self.put_manifest(EMPTY_LAYER_TAG, self.d.empty_layer_manifest)
        if resp.status_code == 201:
            self.empty_layer_ref = self.location(resp)
        # Otherwise the suite only warns: an image manifest with no layers may be unsupported.

    @check("manifest-get-by-digest", "Manifest Upload: GET request to manifest URL (digest) should yield 200 response")
    def _manifest_get(self):
        resp = self.c.request("GET", self.path(f"manifests/{self.d.manifests[1].digest}"),
                              headers={"Accept": images.OCI_MANIFEST})
        status_in(resp, 200)

    @check("manifest-head-by-tag", "Manifest Upload (extra): HEAD by tag gives the manifest's digest and length, no body")
    def _manifest_head(self):
        m = self.d.manifests[1]
        resp = self.c.request("HEAD", self.path("manifests/test1"), headers={"Accept": images.OCI_MANIFEST})
        status_in(resp, 200)
        expect(resp.headers.get("Docker-Content-Digest") == m.digest,
               f"Docker-Content-Digest {resp.headers.get('Docker-Content-Digest')!r}, expected {m.digest}")
        expect(resp.headers.get("Content-Length") == m.length,
               f"Content-Length {resp.headers.get('Content-Length')!r}, expected {m.length}")
        expect(resp.content == b"", "HEAD answered with a body")

    @check("manifest-put-subject", "Manifest Upload (extra, spec 'Pushing Manifests with Subject'): a manifest with subject is accepted, OCI-Subject if sent names the subject")
    def _manifest_subject(self):
        for blob in (self.d.empty_json, self.d.artifact_blob):
            status_in(self.upload(blob), 201)
        subject = self.d.manifests[1]
        artifact = self.d.subject_artifact(subject)
        resp = self.put_manifest(artifact.digest, artifact)
        status_in(resp, 201)
        self.location(resp)
        self.oci_subject = resp.headers.get("OCI-Subject")
        self.subject_digest = subject.digest
        expect(self.oci_subject in (None, subject.digest),
               f"OCI-Subject {self.oci_subject!r}, expected {subject.digest} or none")

    # -- Push: teardown (OCI_DELETE_MANIFEST_BEFORE_BLOBS=true) --

    @check("teardown-delete-manifest", "Push Teardown: Delete manifest created in tests")
    def _teardown_manifest(self):
        resp = self.c.request("DELETE", self.path(f"manifests/{self.d.manifests[1].digest}"))
        expect(200 <= resp.status_code < 300 or resp.status_code == 405,
               f"DELETE manifest: status {resp.status_code}: {_said(resp)!r}")
        if self.empty_layer_ref:
            resp = self.c.request("DELETE", self.path(f"manifests/{self.d.empty_layer_manifest.digest}"))
            expect(200 <= resp.status_code < 300 or resp.status_code == 405,
                   f"DELETE manifest without layers: status {resp.status_code}: {_said(resp)!r}")

    @check("teardown-delete-config", "Push Teardown: Delete config blob created in tests")
    def _teardown_config(self):
        resp = self.c.request("DELETE", self.path(f"blobs/{self.d.configs[1].digest}"))
        expect(200 <= resp.status_code < 300 or resp.status_code in (404, 405),
               f"DELETE config blob: status {resp.status_code}: {_said(resp)!r}")

    @check("teardown-delete-layer", "Push Teardown: Delete layer blob created in setup")
    def _teardown_layer(self):
        resp = self.c.request("DELETE", self.path(f"blobs/{self.d.layer.digest}"))
        expect(200 <= resp.status_code < 300 or resp.status_code in (404, 405),
               f"DELETE layer blob: status {resp.status_code}: {_said(resp)!r}")

    # -- Content management: setup --

    @check("cm-setup-config", "Content Management Setup: Populate registry with test config blob")
    def _cm_config(self):
        status_2xx(self.upload(self.d.configs[3]))

    @check("cm-setup-layer", "Content Management Setup: Populate registry with test layer")
    def _cm_layer(self):
        status_2xx(self.upload(self.d.layer))

    @check("cm-setup-tag", "Content Management Setup: Populate registry with test tag")
    def _cm_tag(self):
        status_2xx(self.put_manifest(CM_TAG, self.d.manifests[3]))

    @check("cm-count-tags", "Content Management Setup: Check how many tags there are before anything gets deleted")
    def _cm_count(self):
        resp = self.c.request("GET", self.path("tags/list"))
        status_in(resp, 200)
        try:
            self.num_tags = len(resp.json()["tags"] or [])
        except (ValueError, KeyError, TypeError) as exc:
            raise Fail(f"tags list is not {{name, tags}} JSON: {exc}: {_said(resp)!r}")

    # -- Content management: manifest delete --

    @check("cm-delete-tag", "Manifest delete: DELETE request to manifest tag should return 202, unless tag deletion is disallowed (400/405)")
    def _cm_delete_tag(self):
        resp = self.c.request("DELETE", self.path(f"manifests/{CM_TAG}"))
        status_in(resp, 400, 202, 405)
        if resp.status_code == 400:
            try:
                codes = [e["code"] for e in resp.json()["errors"]]
            except (ValueError, KeyError, TypeError):
                raise Fail(f"400 without an OCI error body: {_said(resp)!r}")
            expect(codes and codes[0] == "UNSUPPORTED", f"400 with errors {codes}, expected UNSUPPORTED")
        self.tag_deleted = resp.status_code == 202

    @check("cm-get-deleted-tag", "Manifest delete (extra, spec 'Deleting tags'): GET of a deleted tag should return 404")
    def _cm_get_deleted_tag(self):
        if not self.tag_deleted:
            raise Skip("the tag was not deleted")
        status_in(self.c.request("GET", self.path(f"manifests/{CM_TAG}"),
                                 headers={"Accept": images.OCI_MANIFEST}), 404)

    @check("cm-delete-manifest", "Manifest delete: DELETE request to manifest (digest) should yield 202 response unless already deleted")
    def _cm_delete_manifest(self):
        status_in(self.c.request("DELETE", self.path(f"manifests/{self.d.manifests[3].digest}")), 202, 404)

    @check("cm-get-deleted-manifest", "Manifest delete: GET request to deleted manifest URL should yield 404 response, unless delete is disallowed")
    def _cm_get_deleted(self):
        status_in(self.c.request("GET", self.path(f"manifests/{self.d.manifests[3].digest}"),
                                 headers={"Accept": images.OCI_MANIFEST}), 404, 200)

    @check("cm-tags-reflect-deletion", "Manifest delete: GET request to tags list should reflect manifest deletion")
    def _cm_tags_after(self):
        resp = self.c.request("GET", self.path("tags/list"))
        status_in(resp, 404, 200)
        want = self.num_tags - 1
        if resp.status_code == 200:
            try:
                got = len(resp.json()["tags"] or [])
            except (ValueError, KeyError, TypeError) as exc:
                raise Fail(f"tags list is not {{name, tags}} JSON: {exc}: {_said(resp)!r}")
            expect(got == want, f"{got} tags after the deletion, expected {want}")
        else:
            expect(want == 0, f"tags list 404 while {want} tags should remain")

    # -- Content management: blob delete --

    @check("cm-delete-blobs", "Blob delete: DELETE request to blob URL should yield 202 response")
    def _cm_delete_blobs(self):
        status_in(self.c.request("DELETE", self.path(f"blobs/{self.d.configs[3].digest}")), 202, 404, 405)
        resp = self.c.request("DELETE", self.path(f"blobs/{self.d.layer.digest}"))
        status_in(resp, 202, 404, 405)
        self.blob_delete_allowed = resp.status_code != 405

    @check("cm-get-deleted-blob", "Blob delete: GET request to deleted blob URL should yield 404 response")
    def _cm_get_deleted_blob(self):
        if not self.blob_delete_allowed:
            raise Skip("blob deletion is not allowed")
        status_in(self.get_blob(self.d.configs[3].digest), 404)

    @check("cm-delete-missing-blob", "Blob delete (extra, spec 'Deleting Blobs'): DELETE of a blob that is not there should return 404")
    def _cm_delete_missing(self):
        if not self.blob_delete_allowed:
            raise Skip("blob deletion is not allowed")
        status_in(self.c.request("DELETE", self.path(f"blobs/{self.d.configs[3].digest}")), 404)


CHECK_IDS = [check_id for check_id, _, _ in CHECKS]


def _origin(url):
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def run(base_url, credentials, repo=None, crossmount=None) -> Run:
    """Every check in order against base_url, with fresh repository names unless given."""
    tag = uuid.uuid4().hex[:12]
    repo = repo or f"conformance/{tag}"
    crossmount = crossmount or f"conformance-mount/{tag}"
    workflow = Workflow(Client(base_url, credentials, [repo, crossmount]), repo, crossmount)
    results = []
    for check_id, title, fn in CHECKS:
        workflow.c.answers = []
        try:
            fn(workflow)
            result = Result(check_id, title, "pass")
        except Skip as exc:
            result = Result(check_id, title, "skip", str(exc))
        except Fail as exc:
            result = Result(check_id, title, "fail", str(exc))
        except (requests.RequestException, OSError) as exc:
            result = Result(check_id, title, "fail", f"{type(exc).__name__}: {exc}")
        result.answers = workflow.c.answers
        results.append(result)
    return Run(base_url, repo, results, workflow.foreign_locations, workflow.oci_subject,
               workflow.subject_digest)
