"""Pass-through of the read API: ping, manifests, blobs, catalog, and skopeo pulls."""
import http.client
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

import images
import skopeo
from checks import error_codes, no_redirect_get

MANIFEST_HEADERS = ("Content-Type", "Docker-Content-Digest", "Content-Length")
PRETTYJWS = "application/vnd.docker.distribution.manifest.v1+prettyjws"


def both(method, proxy, registry, path, headers=None):
    """The same request to the proxy and straight to the upstream."""
    via = requests.request(method, proxy.url + path, headers=headers, allow_redirects=False,
                           timeout=30)
    direct = requests.request(method, registry.url + path, headers=headers,
                              allow_redirects=False, timeout=30)
    return via, direct


def test_ping_passes_through(proxy, open_registry):
    via, direct = both("GET", proxy, open_registry, "/v2/")
    assert via.status_code == direct.status_code == 200
    assert via.headers.get("Docker-Distribution-API-Version") == "registry/2.0"
    assert via.content == direct.content


def _images_and_refs():
    for which in ("oci", "docker", "index", "index-child"):
        for ref in ("tag", "digest"):
            if which == "index-child" and ref == "tag":
                continue  # children are pushed by digest only
            yield pytest.param(which, ref, id=f"{which}-by-{ref}")


def _pick(pushed, which):
    if which == "index-child":
        return pushed.index.children[1]
    return getattr(pushed, which)


@pytest.mark.parametrize("which,ref", list(_images_and_refs()))
def test_manifest_get_head_match_upstream(proxy, open_registry, pushed_images, which, ref):
    image = _pick(pushed_images, which)
    path = f"/v2/{image.repo}/manifests/{image.tag if ref == 'tag' else image.digest}"
    accept = {"Accept": image.media_type}

    get, direct = both("GET", proxy, open_registry, path, accept)
    assert get.status_code == direct.status_code == 200
    for name in MANIFEST_HEADERS:
        assert get.headers.get(name) == direct.headers.get(name), name
    assert get.content == direct.content == image.manifest
    assert get.headers["Docker-Content-Digest"] == image.digest

    head, direct_head = both("HEAD", proxy, open_registry, path, accept)
    assert head.status_code == direct_head.status_code == 200
    assert head.content == b""
    for name in MANIFEST_HEADERS:
        assert head.headers.get(name) == get.headers.get(name), f"HEAD and GET disagree on {name}"


ACCEPT_CASES = {
    "oci-manifest": images.OCI_MANIFEST,
    "docker-manifest": images.DOCKER_MANIFEST,
    "oci-index": images.OCI_INDEX,
    "oci-index+manifest": f"{images.OCI_INDEX}, {images.OCI_MANIFEST}",
    "all-four": ", ".join([images.OCI_INDEX, images.OCI_MANIFEST, images.DOCKER_LIST,
                          images.DOCKER_MANIFEST]),
}


@pytest.mark.parametrize("which", ["oci", "docker", "index"])
@pytest.mark.parametrize("accept_name", list(ACCEPT_CASES))
def test_accept_header_selects_like_upstream(proxy, open_registry, pushed_images, which,
                                             accept_name):
    """The client's Accept reaches the upstream: same representation (or refusal) as direct."""
    image = getattr(pushed_images, which)
    path = f"/v2/{image.repo}/manifests/{image.tag}"
    via, direct = both("GET", proxy, open_registry, path, {"Accept": ACCEPT_CASES[accept_name]})
    assert via.status_code == direct.status_code
    assert via.headers.get("Content-Type") == direct.headers.get("Content-Type")
    if direct.status_code == 200 and direct.headers.get("Content-Type") != PRETTYJWS:
        # (schema1 conversions are re-signed per request, so only their type can match.)
        assert via.content == direct.content
        assert via.headers.get("Docker-Content-Digest") == direct.headers.get("Docker-Content-Digest")
    if direct.status_code != 200:
        assert error_codes(via) == error_codes(direct)


def test_accept_really_changes_the_answer(proxy, pushed_images):
    """Guard for the test above: an index asked for as an index, and as a plain manifest."""
    index = pushed_images.index
    url = f"{proxy.url}/v2/{index.repo}/manifests/{index.tag}"
    as_index = requests.get(url, headers={"Accept": images.OCI_INDEX}, timeout=10)
    assert as_index.status_code == 200
    assert as_index.headers["Content-Type"] == images.OCI_INDEX
    assert as_index.content == index.manifest
    as_manifest = requests.get(url, headers={"Accept": images.OCI_MANIFEST}, timeout=10)
    assert as_manifest.status_code == 404, "distribution refuses an index the client can't take"
    docker = pushed_images.docker
    url = f"{proxy.url}/v2/{docker.repo}/manifests/{docker.tag}"
    schema2 = requests.get(url, headers={"Accept": images.DOCKER_MANIFEST}, timeout=10)
    assert schema2.headers["Content-Type"] == images.DOCKER_MANIFEST
    assert schema2.content == docker.manifest


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_conditional_manifest_request_gets_304(proxy, open_registry, pushed_images, method):
    """If-None-Match with the manifest's ETag: 304 as upstream, with no body and no
    Content-Length (a 304 may only carry the full body's length, RFC 9110 §8.6)."""
    image = pushed_images.oci
    path = f"/v2/{image.repo}/manifests/{image.tag}"
    etag = requests.head(open_registry.url + path, headers={"Accept": image.media_type},
                         timeout=10).headers["ETag"]
    headers = {"Accept": image.media_type, "If-None-Match": etag}
    via, direct = both(method, proxy, open_registry, path, headers)
    assert direct.status_code == 304, "the registry's own answer changed"
    assert via.status_code == 304
    assert via.content == b""
    assert "Content-Length" not in via.headers, via.headers
    # The connection stays usable after a 304 (no body was expected or sent).
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        for _ in range(2):
            conn.request(method, path, headers=headers)
            resp = conn.getresponse()
            assert resp.status == 304 and resp.read() == b""
    finally:
        conn.close()


def test_unknown_manifest_and_blob_errors_pass_through(proxy, open_registry, pushed_images):
    repo = pushed_images.oci.repo
    for path in (f"/v2/{repo}/manifests/no-such-tag",
                 f"/v2/{repo}/blobs/sha256:{'0' * 64}",
                 "/v2/no/such-repo/manifests/v1"):
        via, direct = both("GET", proxy, open_registry, path, {"Accept": images.OCI_MANIFEST})
        assert via.status_code == direct.status_code == 404, path
        assert error_codes(via) == error_codes(direct), path


def test_blob_get_and_head(proxy, open_registry, pushed_images):
    image = pushed_images.oci
    for digest, data in image.blobs.items():
        path = f"/v2/{image.repo}/blobs/{digest}"
        get = no_redirect_get(proxy.url + path)
        assert get.status_code == 200
        assert get.content == data
        assert get.headers.get("Docker-Content-Digest") == digest
        assert int(get.headers["Content-Length"]) == len(data)
        head = requests.head(proxy.url + path, timeout=10)
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["Content-Length"]) == len(data)
        assert head.headers.get("Docker-Content-Digest") == digest


def test_catalog_passes_through(proxy, open_registry, pushed_images):
    via, direct = both("GET", proxy, open_registry, "/v2/_catalog")
    assert via.status_code == direct.status_code == 200
    assert via.json() == direct.json()
    assert {i.repo for i in pushed_images.all()} <= set(via.json()["repositories"])
    paged, paged_direct = both("GET", proxy, open_registry, "/v2/_catalog?n=2")
    assert paged.status_code == 200
    assert paged.json() == paged_direct.json() and len(paged.json()["repositories"]) == 2
    assert paged.headers.get("Link") == paged_direct.headers.get("Link")


@pytest.mark.parametrize("which", ["oci", "docker", "index"])
def test_skopeo_copy_through_proxy(proxy, pushed_images, tmp_path, which):
    image = getattr(pushed_images, which)
    dest = tmp_path / "copy"
    res = skopeo.copy_to_dir(f"127.0.0.1:{proxy.port}/{image.repo}:{image.tag}", dest)
    assert res.returncode == 0, res.stderr
    skopeo.check_dir_copy(dest, image)


def test_parallel_pulls(proxy, pushed_images):
    """Many concurrent requests of several kinds: every answer complete and correct."""
    oci = pushed_images.oci
    data = pushed_images.range_data
    blob_url = f"{proxy.url}/v2/{pushed_images.range_repo}/blobs/{pushed_images.range_digest}"

    def manifest():
        r = requests.get(f"{proxy.url}/v2/{oci.repo}/manifests/{oci.tag}",
                         headers={"Accept": oci.media_type}, timeout=30)
        return r.status_code == 200 and r.content == oci.manifest

    def blob():
        r = requests.get(blob_url, timeout=30)
        return r.status_code == 200 and r.content == data

    def ranged():
        r = requests.get(blob_url, headers={"Range": "bytes=1000-1999"}, timeout=30)
        return r.status_code == 206 and r.content == data[1000:2000]

    jobs = [manifest, blob, ranged] * 16
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda job: (job.__name__, job()), jobs))
    failed = [name for name, ok in results if not ok]
    assert not failed, f"{len(failed)} of {len(jobs)} parallel requests wrong: {failed}"


def test_keepalive_after_head_and_errors(proxy, pushed_images):
    """One connection carries GET, HEAD, 404 and 206 answers without losing framing."""
    oci = pushed_images.oci
    layer, layer_data = next(iter(oci.blobs.items()))
    steps = [
        ("HEAD", f"/v2/{oci.repo}/blobs/{layer}", {}, 200, b""),
        ("GET", f"/v2/{oci.repo}/manifests/{oci.tag}", {"Accept": oci.media_type}, 200, oci.manifest),
        ("HEAD", f"/v2/{oci.repo}/manifests/{oci.tag}", {"Accept": oci.media_type}, 200, b""),
        ("GET", f"/v2/{oci.repo}/manifests/missing", {"Accept": oci.media_type}, 404, None),
        ("GET", f"/v2/{oci.repo}/blobs/{layer}", {"Range": "bytes=0-9"}, 206, layer_data[:10]),
        ("GET", f"/v2/{oci.repo}/blobs/{layer}", {}, 200, layer_data),
    ]
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        for method, path, headers, status, body in steps * 2:
            conn.request(method, path, headers=headers)
            resp = conn.getresponse()
            got = resp.read()
            assert resp.status == status, (method, path)
            if body is not None:
                assert got == body, (method, path)
    finally:
        conn.close()
