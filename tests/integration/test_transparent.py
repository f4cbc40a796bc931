"""Transparent answers: a request the proxy does not serve itself gets the upstream's answer.

Each odd or malformed request of the first table is sent to the registry directly and through
the proxy; the two answers must agree in status, Content-Type and body (for an OCI error body,
its error codes). What distribution 2.8 answers differs by case (its router's text/plain 404,
500 UNKNOWN for a malformed manifest digest, 400 DIGEST_INVALID for a malformed blob digest, 200
ignoring a bad `n`, ...): the point is that the client cannot tell the proxy was there.

The second table is what the proxy refuses itself because forwarding it would be unsafe
(traversal, percent-encoding, empty segments, bytes no URL may hold): a 400 OCI error from the
proxy, and nothing reaches the upstream.
"""
import json
import socket

import pytest

import rawhttp
from checks import assert_healthy, error_codes
from proxy import upstream
from variant_env import RegistryLog, metric, wait_until

ZEROS = "0" * 64
MD5 = "md5:d41d8cd98f00b204e9800998ecf8427e"

# (method, path); {repo} is a repository with an image, {digest} its manifest's digest.
FORWARDED = [
    # Manifest references that are neither a valid tag nor a digest.
    ("GET", "/v2/{repo}/manifests/.INVALID_MANIFEST_NAME"),
    ("HEAD", "/v2/{repo}/manifests/.INVALID_MANIFEST_NAME"),
    ("GET", "/v2/{repo}/manifests/" + "a" * 129),
    ("GET", "/v2/{repo}/manifests/-bad"),
    ("GET", "/v2/{repo}/manifests/a!b"),
    ("GET", "/v2/{repo}/manifests/~x"),
    ("GET", "/v2/{repo}/manifests/a@b"),
    # Malformed digests and unknown algorithms as manifest references.
    ("GET", "/v2/{repo}/manifests/sha256:xyz"),
    ("HEAD", "/v2/{repo}/manifests/sha256:xyz"),
    ("GET", "/v2/{repo}/manifests/sha256:" + "a" * 63),
    ("GET", "/v2/{repo}/manifests/sha256:" + "A" * 64),
    ("GET", "/v2/{repo}/manifests/Sha256:" + ZEROS),
    ("GET", "/v2/{repo}/manifests/" + MD5),
    ("GET", "/v2/{repo}/manifests/sha256+b64:abcd"),
    ("GET", "/v2/{repo}/manifests/sha256:"),
    ("GET", "/v2/{repo}/manifests/:abc"),
    ("GET", "/v2/{repo}/manifests/v1:x"),
    ("GET", "/v2/{repo}/manifests/sha512:" + "0" * 128),
    # Valid but unknown: the upstream's ordinary 404s.
    ("GET", "/v2/{repo}/manifests/" + "a" * 128),
    ("GET", "/v2/{repo}/manifests/sha256:" + ZEROS),
    ("GET", "/v2/nope/manifests/latest"),
    # Malformed blob digests and unknown algorithms.
    ("GET", "/v2/{repo}/blobs/sha256:xyz"),
    ("HEAD", "/v2/{repo}/blobs/sha256:xyz"),
    ("GET", "/v2/{repo}/blobs/sha256:" + "A" * 64),
    ("GET", "/v2/{repo}/blobs/" + MD5),
    ("HEAD", "/v2/{repo}/blobs/" + MD5),
    ("GET", "/v2/{repo}/blobs/sha256+b64:abcd"),
    ("GET", "/v2/{repo}/blobs/sha512:" + "0" * 128),
    ("GET", "/v2/{repo}/blobs/latest"),
    # Invalid repository names.
    ("GET", "/v2/Lib/App/manifests/v1"),
    ("HEAD", "/v2/Lib/App/manifests/v1"),
    ("GET", "/v2/a/b-/manifests/v1"),
    ("GET", "/v2/-a/manifests/v1"),
    ("GET", "/v2/a___b/manifests/v1"),
    ("GET", "/v2/a/_b/manifests/v1"),
    ("GET", "/v2/a~b/manifests/v1"),
    ("GET", "/v2/" + "a" * 256 + "/manifests/v1"),
    ("GET", "/v2/Lib/App/blobs/sha256:" + ZEROS),
    ("GET", "/v2/Lib/App/tags/list"),
    # Tags list and catalog with an `n` that is not a number, and odd `last` values.
    ("GET", "/v2/{repo}/tags/list?n=abc"),
    ("GET", "/v2/{repo}/tags/list?n=-1"),
    ("GET", "/v2/{repo}/tags/list?n="),
    ("GET", "/v2/{repo}/tags/list?n=99999999999999999999999"),
    ("GET", "/v2/{repo}/tags/list?n=abc&last=zzz"),
    ("GET", "/v2/nope/tags/list?n=abc"),
    ("GET", "/v2/_catalog?n=abc"),
    ("GET", "/v2/_catalog?n=-1"),
    # Referrers of something that is not a digest.
    ("GET", "/v2/{repo}/referrers/sha256:xyz"),
    ("GET", "/v2/{repo}/referrers/latest"),
    ("GET", "/v2/{repo}/referrers/" + MD5),
    # /v2/ paths that are no route the proxy knows.
    ("GET", "/v2/{repo}/foo"),
    ("HEAD", "/v2/{repo}/foo"),
    ("GET", "/v2/{repo}/foo/bar"),
    ("GET", "/v2/{repo}/manifests"),
    ("GET", "/v2/_catalogx"),
    ("GET", "/v2/nope"),
    ("GET", "/v2/a~b/c!d"),
    # Reading an upload's state is a read: the upstream answers it.
    ("GET", "/v2/{repo}/blobs/uploads/"),
    ("GET", "/v2/{repo}/blobs/uploads/0b5e4f8e-0000-4000-8000-000000000000"),
    ("HEAD", "/v2/{repo}/blobs/uploads/bogus"),
]


def answer(port, method, path):
    """(status, Content-Type, what the body says): error codes for an OCI error, the parsed
    document for other JSON, else the bytes."""
    resp = rawhttp.request(port, method, path)
    content_type = resp.headers.get("Content-Type")
    body = resp.body
    if body and content_type and "json" in content_type:
        doc = json.loads(body)
        body = error_codes(body) if isinstance(doc, dict) and "errors" in doc else doc
    return resp.status, content_type, body


@pytest.mark.parametrize("method,path", FORWARDED, ids=[f"{m} {p[:60]}" for m, p in FORWARDED])
def test_upstream_answer_reaches_the_client(proxy, open_registry, pushed_images, method, path):
    path = path.format(repo=pushed_images.oci.repo, digest=pushed_images.oci.digest)
    direct = answer(open_registry.port, method, path)
    via_proxy = answer(proxy.port, method, path)
    assert via_proxy == direct, f"registry answered {direct!r:.300}, proxy {via_proxy!r:.300}"


def test_conformance_invalid_manifest_name_is_the_registrys_404(proxy, open_registry, pushed_images):
    """The distribution-spec conformance suite's case: not a 400 from the proxy any more."""
    path = f"/v2/{pushed_images.oci.repo}/manifests/.INVALID_MANIFEST_NAME"
    resp = rawhttp.request(proxy.port, "GET", path)
    assert resp.status == 404
    assert resp.body == rawhttp.request(open_registry.port, "GET", path).body


# (method, raw request-target bytes, accepted error codes). Sent over a raw socket: no client
# library would send most of these.
REFUSED = [
    ("GET", b"/v2/../../etc/passwd/manifests/x", {"NAME_INVALID"}),
    ("GET", b"/v2/{repo}/../../b/manifests/x", {"NAME_INVALID"}),
    ("GET", b"/v2/{repo}/./manifests/v1", {"NAME_INVALID"}),
    ("GET", b"/v2/a/%2e%2e/b/manifests/x", {"NAME_INVALID"}),
    ("GET", b"/v2/lib%2Foci-app/manifests/v1", {"NAME_INVALID"}),
    ("GET", b"/v2/{repo}/manifests/%76%31", {"NAME_INVALID"}),
    ("GET", b"/v2/a//b/manifests/v1", {"NAME_INVALID"}),  # the registry redirects to a/b
    ("GET", b"/v2/{repo}/manifests/v1/", {"NAME_INVALID"}),  # the registry redirects
    ("GET", b"/v2/{repo}/tags/list/", {"NAME_INVALID"}),
    ("HEAD", b"/v2/{repo}/blobs/sha256:" + ZEROS.encode() + b"/", {"NAME_INVALID"}),
    ("GET", b"/v2/{repo}/manifests/v\\1", {"NAME_INVALID"}),
    ("GET", b"/v2/{repo}/manifests/caf\xc3\xa9", {"NAME_INVALID", "UNSUPPORTED"}),
    ("GET", b"/v2/{repo}/manifests/v\x011", {"NAME_INVALID", "UNSUPPORTED"}),
    ("GET", b"/v2/{repo}/manifests/v\x7f1", {"NAME_INVALID", "UNSUPPORTED"}),
]


def raw_exchange(port, method, target: bytes):
    """Sends one request with `target` as given; returns (status, headers text, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(method.encode() + b" " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, _, headers = head.decode("latin-1").partition("\r\n")
    return int(status_line.split()[1]), headers.lower(), body


@pytest.mark.parametrize("method,target,codes", REFUSED,
                         ids=[f"{m} {t[:60]!r}" for m, t, _ in REFUSED])
def test_unsafe_targets_are_refused_by_the_proxy(proxy, open_registry, pushed_images, method, target, codes):
    target = target.replace(b"{repo}", pushed_images.oci.repo.encode())
    log = RegistryLog(open_registry)
    mark = log.mark()
    status, headers, body = raw_exchange(proxy.port, method, target)
    assert status == 400, f"{status}: {body[:300]!r}"
    assert "content-type: application/json" in headers
    if method == "GET":
        assert error_codes(body)[0] in codes
    # A request of our own marks the log's end: nothing but it may have come since `mark`.
    assert rawhttp.request(open_registry.port, "GET", "/v2/").status == 200
    sent = wait_until(lambda: log.requests(mark), 5, "the registry's access log")
    assert sent == [("GET", "/v2/", 200)], f"an unsafe target reached the upstream: {sent}"
    assert_healthy(proxy)


def test_variants_leave_malformed_references_to_the_upstream(proxy_factory, open_registry, pushed_images):
    """With convert-on-pull on, a malformed tag or digest asked for as a variant (header, Accept
    or tag suffix) is forwarded once, as written: no resolution, no cache lookup, no conversion."""
    p = proxy_factory([upstream("main", open_registry.url)], extra_config={"variants": {"enabled": True}})
    repo = pushed_images.oci.repo
    log = RegistryLog(open_registry)
    asks = [
        ("/manifests/.INVALID_MANIFEST_NAME", {"X-Accel-Format": "estargz"}),
        ("/manifests/-bad", {"Accept": "application/vnd.oci.image.manifest.v1+json;accel-format=estargz"}),
        ("/manifests/.bad-estargz", {}),
        ("/manifests/sha256:xyz", {"X-Accel-Format": "estargz"}),
        ("/blobs/sha256:xyz", {}),
        ("/blobs/" + MD5, {}),
    ]
    for suffix, headers in asks:
        path = f"/v2/{repo}{suffix}"
        mark = log.mark()
        via_proxy = rawhttp.request(p.port, "GET", path, headers=headers)
        direct = rawhttp.request(open_registry.port, "GET", path, headers=headers)
        assert (via_proxy.status, via_proxy.headers.get("Content-Type")) == \
            (direct.status, direct.headers.get("Content-Type")), path
        # The proxy's request and then ours, the same: no HEAD probe or tag resolution before.
        sent = wait_until(lambda: len(log.requests(mark)) >= 2 and log.requests(mark), 5,
                          "the registry's access log")
        assert sent == [("GET", path, direct.status)] * 2, f"{path}: upstream saw {sent}"
    assert metric(p, "accel_proxy_cache_misses_total") == 0
    assert metric(p, "accel_proxy_authorization_checks_total") == 0
    assert_healthy(p)
