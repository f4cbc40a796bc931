"""Blob Range requests, against two upstream shapes.

direct:   the registry serves the blob and honours Range itself.
redirect: nginx answers blob reads with 307 to a storage server that ignores Range (always
          200 with the whole blob). The proxy must follow the redirect itself and cut the
          requested ranges out; the client never sees the 307.
"""
import hashlib

import pytest
import requests

import skopeo
from checks import assert_healthy, assert_oci_error, no_redirect_get
from images import RANGE_BLOB_SIZE
from multipart import parse_byteranges, parse_content_range
from proxy import running_proxy, upstream


@pytest.fixture(scope="module", params=["direct", "redirect"])
def blob_proxy(request, tmp_path_factory, open_registry, pushed_images):
    if request.param == "direct":
        url = open_registry.url
    else:
        url = request.getfixturevalue("redirect_front").url
    with running_proxy(tmp_path_factory.mktemp(f"proxy-{request.param}"),
                       [upstream("main", url)]) as p:
        yield p


@pytest.fixture(scope="module")
def blob(pushed_images):
    """(repo, digest, data) of the 300,007-byte test blob."""
    assert len(pushed_images.range_data) == RANGE_BLOB_SIZE
    return pushed_images.range_repo, pushed_images.range_digest, pushed_images.range_data


def blob_url(proxy, repo, digest):
    return f"{proxy.url}/v2/{repo}/blobs/{digest}"


def ranged(proxy, blob, spec):
    repo, digest, _ = blob
    return no_redirect_get(blob_url(proxy, repo, digest), headers={"Range": spec})


def test_full_get_and_head(blob_proxy, blob):
    repo, digest, data = blob
    get = no_redirect_get(blob_url(blob_proxy, repo, digest))
    assert get.status_code == 200
    assert get.content == data
    assert int(get.headers["Content-Length"]) == len(data)
    assert get.headers.get("Accept-Ranges") == "bytes"
    head = requests.head(blob_url(blob_proxy, repo, digest), allow_redirects=False, timeout=10)
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["Content-Length"]) == len(data)
    assert head.headers.get("Accept-Ranges") == "bytes"


SIZE = RANGE_BLOB_SIZE
SINGLE_RANGES = [
    ("bytes=0-99", 0, 99),
    ("bytes=100-", 100, SIZE - 1),
    ("bytes=-100", SIZE - 100, SIZE - 1),
    ("bytes=1234-1234", 1234, 1234),
    ("bytes=300000-999999999", 300000, SIZE - 1),  # an end past the blob is cut to its size
]


@pytest.mark.parametrize("spec,first,last", SINGLE_RANGES, ids=[c[0] for c in SINGLE_RANGES])
def test_single_range(blob_proxy, blob, spec, first, last):
    _, _, data = blob
    resp = ranged(blob_proxy, blob, spec)
    assert resp.status_code == 206, spec
    assert parse_content_range(resp.headers.get("Content-Range")) == (first, last, len(data))
    assert int(resp.headers["Content-Length"]) == last - first + 1
    assert resp.content == data[first:last + 1]


def _check_multipart(resp, data, expected):
    assert resp.status_code == 206
    parts = parse_byteranges(resp.headers.get("Content-Type"), resp.content)
    if "Content-Length" in resp.headers:
        assert int(resp.headers["Content-Length"]) == len(resp.content)
    assert len(parts) == len(expected)
    for (headers, body), (first, last) in zip(parts, expected):
        assert parse_content_range(headers.get("content-range")) == (first, last, len(data))
        assert body == data[first:last + 1]


def test_multi_range(blob_proxy, blob):
    _, _, data = blob
    resp = ranged(blob_proxy, blob, "bytes=0-9,20-29,-5")
    _check_multipart(resp, data, [(0, 9), (20, 29), (len(data) - 5, len(data) - 1)])


def test_multi_range_keeps_requested_order(blob_proxy, blob):
    _, _, data = blob
    resp = ranged(blob_proxy, blob, "bytes=50-59,0-9")
    _check_multipart(resp, data, [(50, 59), (0, 9)])


def test_unsatisfiable_range(blob_proxy, blob):
    _, _, data = blob
    resp = ranged(blob_proxy, blob, "bytes=999999999-")
    assert resp.status_code == 416
    assert resp.headers.get("Content-Range") == f"bytes */{len(data)}"


@pytest.mark.parametrize("spec", ["bytes=abc", "bytes=5-2"])
def test_malformed_range(blob_proxy, blob, spec):
    resp = ranged(blob_proxy, blob, spec)
    assert_oci_error(resp.status_code, resp.content, {416}, {"RANGE_INVALID"})
    assert_healthy(blob_proxy)


def test_unknown_range_unit_is_ignored(blob_proxy, blob):
    _, _, data = blob
    resp = ranged(blob_proxy, blob, "items=0-1")
    assert resp.status_code == 200
    assert resp.content == data


def test_big_blob_streams_whole(blob_proxy, pushed_images):
    url = blob_url(blob_proxy, pushed_images.big_repo, pushed_images.big_digest)
    with requests.get(url, stream=True, allow_redirects=False, timeout=60) as resp:
        assert resp.status_code == 200
        h = hashlib.sha256()
        size = 0
        for chunk in resp.iter_content(1 << 20):
            h.update(chunk)
            size += len(chunk)
    assert size == len(pushed_images.big_data)
    assert "sha256:" + h.hexdigest() == pushed_images.big_digest


def test_big_blob_ranges(blob_proxy, pushed_images):
    data = pushed_images.big_data
    big = (pushed_images.big_repo, pushed_images.big_digest, data)
    middle = len(data) // 2
    resp = ranged(blob_proxy, big, f"bytes={middle}-{middle + 99}")
    assert resp.status_code == 206 and resp.content == data[middle:middle + 100]
    resp = ranged(blob_proxy, big, "bytes=-100")
    assert resp.status_code == 206 and resp.content == data[-100:]
    resp = ranged(blob_proxy, big, f"bytes=0-1,{middle}-{middle + 1}")
    _check_multipart(resp, data, [(0, 1), (middle, middle + 1)])


def test_skopeo_copy(blob_proxy, pushed_images, tmp_path):
    """A whole pull through the proxy, layers included, for both upstream shapes."""
    image = pushed_images.index
    dest = tmp_path / "copy"
    res = skopeo.copy_to_dir(f"127.0.0.1:{blob_proxy.port}/{image.repo}:{image.tag}", dest)
    assert res.returncode == 0, res.stderr
    skopeo.check_dir_copy(dest, image)
