"""Hostile or broken input: the proxy stays up, and each gets an OCI error answer of its own
(what is unsafe to forward) or the upstream's answer (bad names, tags and digests)."""
import http.client
import json
import socket
import time

import pytest
import requests

import images
import prom
import rawhttp
from checks import assert_healthy, assert_oci_error, error_codes
from dying_upstream import DyingUpstream, SMALL_DIGEST
from proxy import running_proxy, upstream

NAME_ERRORS = {"NAME_INVALID", "NAME_UNKNOWN"}


def send(proxy, method, path, **kwargs):
    return rawhttp.request(proxy.port, method, path, **kwargs)


@pytest.mark.parametrize("path", [
    "/v2/../../etc/passwd/manifests/x",
    "/v2/a/%2e%2e/b/manifests/x",
    "/v2/a/../../b/manifests/x",
    "/v2/lib/oci-app/../../../etc/passwd/blobs/sha256:" + "0" * 64,
])
def test_path_traversal(proxy, path):
    resp = send(proxy, "GET", path)
    assert_oci_error(resp.status, resp.body, {400, 404}, NAME_ERRORS)
    assert_healthy(proxy)


def test_empty_segment_is_refused(proxy):
    """`a//b` is not forwarded: the upstream's router would clean it to (and redirect to) `a/b`."""
    resp = send(proxy, "GET", "/v2/a//b/manifests/v1")
    assert_oci_error(resp.status, resp.body, {400}, {"NAME_INVALID"})
    assert_healthy(proxy)


def assert_upstreams_answer(proxy, open_registry, path):
    """The client gets the registry's own answer, byte for byte, and the proxy stays up."""
    resp = send(proxy, "GET", path)
    direct = rawhttp.request(open_registry.port, "GET", path)
    assert (resp.status, resp.headers.get("Content-Type")) == \
        (direct.status, direct.headers.get("Content-Type"))
    if direct.headers.get("Content-Type", "").startswith("application/json"):
        assert error_codes(resp.body) == error_codes(direct.body)
    else:
        assert resp.body == direct.body
    assert_healthy(proxy)
    return resp


# Bad names, tags and digests are the upstream's to answer (docs/DECISIONS.md, "Transparent
# answers"); the statuses below are distribution 2.8's, which test_transparent.py compares widely.
@pytest.mark.parametrize("path", [
    "/v2/Lib/App/manifests/v1",
    "/v2/a/b-/manifests/v1",
    "/v2/-a/manifests/v1",
])
def test_invalid_repository_name(proxy, open_registry, path):
    resp = assert_upstreams_answer(proxy, open_registry, path)
    assert resp.status == 404 and resp.body == b"404 page not found\n"  # its router: no route


@pytest.mark.parametrize("kind,status,code", [("manifests", 500, "UNKNOWN"), ("blobs", 400, "DIGEST_INVALID")])
@pytest.mark.parametrize("digest", ["sha256:xyz", "sha256:" + "a" * 63, "sha256:" + "A" * 64],
                         ids=["xyz", "63-hex", "upper-hex"])
def test_invalid_digest(proxy, open_registry, pushed_images, kind, status, code, digest):
    resp = assert_upstreams_answer(proxy, open_registry, f"/v2/{pushed_images.oci.repo}/{kind}/{digest}")
    assert_oci_error(resp.status, resp.body, {status}, {code})


@pytest.mark.parametrize("tag", ["a" * 129, "-bad", ".bad", ".INVALID_MANIFEST_NAME"],
                         ids=["129-chars", "-bad", ".bad", "conformance"])
def test_invalid_tag(proxy, open_registry, pushed_images, tag):
    resp = assert_upstreams_answer(proxy, open_registry, f"/v2/{pushed_images.oci.repo}/manifests/{tag}")
    assert resp.status == 404


def test_longest_valid_tag_is_not_refused(proxy, pushed_images):
    """Guard for the test above: 128 characters is still a valid tag (unknown here: 404)."""
    resp = send(proxy, "GET", f"/v2/{pushed_images.oci.repo}/manifests/{'a' * 128}",
                headers={"Accept": images.OCI_MANIFEST})
    assert_oci_error(resp.status, resp.body, {404}, {"MANIFEST_UNKNOWN"})


@pytest.fixture
def scratch_image(open_registry):
    """An image in a repository of its own, so a write that leaks through harms no other test."""
    body, blobs = images.build_oci_image("writes")
    pusher = images.Pusher(open_registry.url, requests.Session())
    return pusher.push_image("scratch/writes", "v1", body, blobs, images.OCI_MANIFEST)


WRITES = ["PUT-manifest", "POST-upload", "PATCH-upload", "DELETE-manifest", "DELETE-blob"]


@pytest.fixture(scope="module")
def read_only_proxy(tmp_path_factory, open_registry):
    """A pure mirror: its upstream is configured `writes: refuse` (the default is `pass`)."""
    with running_proxy(tmp_path_factory.mktemp("proxy-read-only"),
                       [upstream("main", open_registry.url, writes="refuse")]) as p:
        yield p


@pytest.mark.parametrize("write", WRITES)
def test_write_methods_refused(read_only_proxy, open_registry, scratch_image, write):
    proxy = read_only_proxy
    img = scratch_image
    layer = json.loads(img.manifest)["layers"][0]["digest"]
    method, path, body = {
        # A valid manifest under a new tag: the upstream would accept it if it got it.
        "PUT-manifest": ("PUT", f"/v2/{img.repo}/manifests/via-proxy", img.manifest),
        "POST-upload": ("POST", f"/v2/{img.repo}/blobs/uploads/", b""),
        "PATCH-upload": ("PATCH", f"/v2/{img.repo}/blobs/uploads/0b5e4f8e-0000-4000-8000-000000000000", b"x"),
        # The registry runs with deletes enabled, so these would really delete.
        "DELETE-manifest": ("DELETE", f"/v2/{img.repo}/manifests/{img.digest}", None),
        "DELETE-blob": ("DELETE", f"/v2/{img.repo}/blobs/{layer}", None),
    }[write]
    resp = send(proxy, method, path, body=body,
                headers={"Content-Type": img.media_type} if body else None)
    assert_oci_error(resp.status, resp.body, {405}, {"UNSUPPORTED"})
    # Nothing reached the upstream: manifest and blob are still there, no new tag appeared.
    base = f"{open_registry.url}/v2/{img.repo}"
    still = requests.get(f"{base}/manifests/{img.digest}", headers={"Accept": img.media_type},
                         timeout=10)
    assert still.status_code == 200 and still.content == img.manifest
    assert requests.head(f"{base}/blobs/{layer}", timeout=10).status_code == 200
    assert "via-proxy" not in requests.get(f"{base}/tags/list", timeout=10).json()["tags"]
    assert_healthy(proxy)


def test_manifest_over_limit(proxy_factory, open_registry, pushed_images):
    limit = 1000
    index, small = pushed_images.index, pushed_images.oci
    assert len(index.manifest) > limit > len(small.manifest), "test images changed size"
    p = proxy_factory([upstream("main", open_registry.url)],
                      limits={"max_manifest_bytes": limit})
    ok = send(p, "GET", f"/v2/{small.repo}/manifests/{small.tag}",
              headers={"Accept": small.media_type})
    assert ok.status == 200 and ok.body == small.manifest
    for ref in (index.tag, index.digest):
        resp = send(p, "GET", f"/v2/{index.repo}/manifests/{ref}",
                    headers={"Accept": index.media_type})
        assert resp.status >= 400, f"{resp.status}: a manifest over the limit was served"
        assert_oci_error(resp.status, resp.body, set(range(400, 600)))
        assert not index.manifest.startswith(resp.body), "body is (part of) the manifest"
    assert_healthy(p)


def test_oversized_request_headers(proxy):
    resp = send(proxy, "GET", "/v2/", headers={"X-Padding": "p" * 20000})  # default 16384
    assert_oci_error(resp.status, resp.body, {431})
    assert_healthy(proxy)


def test_slow_client_is_cut_off(proxy_factory, open_registry):
    p = proxy_factory([upstream("main", open_registry.url)], timeouts={"header": "1s"})
    with socket.create_connection(("127.0.0.1", p.port), timeout=6) as sock:
        sock.sendall(b"GET /v2/ HTT")  # half a request line, then nothing
        start = time.monotonic()
        received = b""
        try:
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                received += chunk
        except ConnectionResetError:
            pass  # closed with a reset: also closed
        except socket.timeout:
            pass  # still open after 6 s: reported below
        elapsed = time.monotonic() - start
    assert elapsed < 5, f"connection still open after {elapsed:.1f}s"
    assert elapsed > 0.5, f"closed after {elapsed:.2f}s: before the 1s header timeout"
    assert received == b"" or received.startswith(b"HTTP/1.1 408"), received[:100]
    assert_healthy(p)


def test_client_disconnects_mid_blob(proxy_factory, open_registry, pushed_images):
    """Clients that hang up during a 64 MiB download leave the proxy healthy and leak-free.

    Two ways to hang up: shutdown() then close() (FIN; the proxy's next writes meet a reset
    and then EPIPE), and a bare close() with unread data (the kernel sends a reset at once).
    """
    proxy = proxy_factory([upstream("main", open_registry.url)])  # its own: it may not survive
    path = f"/v2/{pushed_images.big_repo}/blobs/{pushed_images.big_digest}"
    for attempt in range(6):
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        got = 0
        while got < 1 << 20:
            chunk = sock.recv(65536)
            assert chunk, "proxy closed before 1 MiB"
            got += len(chunk)
        if attempt % 2 == 0:
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        time.sleep(0.2)  # let the proxy's next writes hit the closed connection
        assert_healthy(proxy)
    # The connections are gone from the proxy's books within a few seconds.
    deadline = time.monotonic() + 10
    while True:
        open_now = prom.total(prom.parse(requests.get(proxy.url + "/metrics", timeout=10).text),
                              "accel_proxy_open_connections")
        if open_now <= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert open_now <= 1, f"{open_now} connections still open after the clients left"


@pytest.fixture
def dying_upstream():
    fake = DyingUpstream().start()
    yield fake
    fake.stop()


def get_broken_transfer(port, path, timeout):
    """GETs `path` and returns the status; a 200 must end in an incomplete body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        if resp.status == 200:
            # http.client raises IncompleteRead when a Content-Length or chunked body ends early.
            with pytest.raises((http.client.IncompleteRead, ConnectionError)):
                body = resp.read()
                pytest.fail(f"client got a complete {len(body)}-byte body")
        return resp.status
    finally:
        conn.close()


@pytest.mark.parametrize("path", [
    "/v2/x/y/blobs/sha256:" + "1" * 64,  # large: the splice path
    "/v2/x/y/blobs/" + SMALL_DIGEST,  # small: copied
    "/v2/x/y/manifests/latest",
], ids=["large-blob", "small-blob", "manifest"])
def test_upstream_dies_mid_stream(proxy_factory, dying_upstream, path):
    p = proxy_factory([upstream("dying", dying_upstream.url)])
    status = get_broken_transfer(p.port, path, timeout=30)
    # Refusing before any byte was sent is also honest: an error, not a short blob.
    assert status == 200 or status >= 500
    assert_healthy(p)


@pytest.mark.parametrize("path", [
    "/v2/stall/y/blobs/sha256:" + "1" * 64,  # large: the splice path waits with its own timer
    "/v2/stall/y/blobs/" + SMALL_DIGEST,  # small: copied, under the connection's deadline
    "/v2/stall/y/manifests/latest",
], ids=["large-blob", "small-blob", "manifest"])
def test_upstream_stalls_mid_stream(proxy_factory, dying_upstream, path):
    """An upstream that goes quiet mid-body (open, sending nothing) is given up on after the
    upstream read timeout: the client's transfer breaks, it is not left hanging."""
    p = proxy_factory([upstream("dying", dying_upstream.url)], timeouts={"upstream_read": "1s"})
    start = time.monotonic()
    status = get_broken_transfer(p.port, path, timeout=15)
    elapsed = time.monotonic() - start
    # A manifest is read whole before it is answered: then a 502, before any byte.
    assert status == 200 or (status == 502 and "/manifests/" in path)
    assert 0.8 < elapsed < 8, f"gave up after {elapsed:.1f}s with a 1s upstream read timeout"
    assert_healthy(p)


def assert_502_after_a_second(proxy, path):
    """GET `path` through a proxy whose upstream timeout (1 s) will pass: a 502 OCI error, not
    before the timeout and not long after it."""
    start = time.monotonic()
    resp = send(proxy, "GET", path)
    elapsed = time.monotonic() - start
    assert_oci_error(resp.status, resp.body, {502})
    assert 0.8 < elapsed < 8, f"answered after {elapsed:.1f}s with a 1s upstream timeout"
    assert_healthy(proxy)


def test_upstream_silent_before_answering(proxy_factory, dying_upstream):
    """An upstream that takes the request and never answers gets the client a 502 OCI error
    after the upstream read timeout."""
    p = proxy_factory([upstream("dying", dying_upstream.url)], timeouts={"upstream_read": "1s"})
    assert_502_after_a_second(p, "/v2/stall/silent/manifests/latest")


def test_client_that_stops_reading_is_cut_off(proxy_factory, open_registry, pushed_images):
    """A client that asks for a 64 MiB blob and stops reading is dropped after the idle
    (write) timeout, and the proxy's books show the connection gone."""
    proxy = proxy_factory([upstream("main", open_registry.url)], timeouts={"idle": "1s"})
    path = f"/v2/{pushed_images.big_repo}/blobs/{pushed_images.big_digest}"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(3)  # the proxy's writes block for longer than its 1 s timeout
        got = 0
        try:
            while chunk := sock.recv(1 << 20):
                got += len(chunk)
        except ConnectionResetError:
            pass
    assert got < len(pushed_images.big_data), f"a stalled client still got all {got} bytes"
    open_now = prom.total(prom.parse(requests.get(proxy.url + "/metrics", timeout=10).text),
                          "accel_proxy_open_connections")
    assert open_now <= 1, f"{open_now} connections still open"
    assert_healthy(proxy)


def test_upstream_that_never_accepts_times_out(proxy_factory):
    """An upstream whose accept queue is full drops the proxy's SYNs: the connection attempt
    hangs. The proxy gives up after its connect timeout and answers 502."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    try:
        # Fill the accept queue (never accepted): further SYNs are dropped, connects hang.
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(listener.getsockname())
            fillers.append(s)
        time.sleep(0.2)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        p = proxy_factory([upstream("stuck", url)], timeouts={"upstream_connect": "1s"})
        assert_502_after_a_second(p, "/v2/x/y/manifests/latest")
    finally:
        for s in fillers:
            s.close()
        listener.close()
