"""Several upstreams, chosen by containerd's `?ns=<registry host>` parameter.

Registry A and B hold different images under the same name. B is listed first in the config
and A is named as default_upstream, so "first upstream" and "default" cannot be confused.
"""
import pytest
import requests

import images
from proxy import running_proxy, upstream
from registry import Registry

REPO, TAG = "shared/app", "t"


@pytest.fixture(scope="module")
def two_registries(tmp_path_factory):
    regs = {}
    try:
        for name in ("a", "b"):
            reg = Registry(tmp_path_factory.mktemp(f"registry-{name}"), name=f"registry-{name}")
            regs[name] = reg.start()
            body, blobs = images.build_oci_image(f"route-{name}")
            pusher = images.Pusher(reg.url, requests.Session())
            reg.image = pusher.push_image(REPO, TAG, body, blobs, images.OCI_MANIFEST)
            pusher.push_image(REPO, f"only-{name}", body, blobs, images.OCI_MANIFEST)
        yield regs
    finally:
        for reg in regs.values():
            reg.stop()


@pytest.fixture(scope="module")
def routing_proxy(tmp_path_factory, two_registries):
    a, b = two_registries["a"], two_registries["b"]
    ups = [upstream("b", b.url, hosts=["registry-b.example"]),
           upstream("a", a.url, hosts=["registry-a.example"])]
    with running_proxy(tmp_path_factory.mktemp("proxy-routing"), ups, default_upstream="a") as p:
        yield p


def manifest_digest(proxy, query="", method="GET"):
    resp = requests.request(method, f"{proxy.url}/v2/{REPO}/manifests/{TAG}{query}",
                            headers={"Accept": images.OCI_MANIFEST}, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.headers["Docker-Content-Digest"], resp.content


@pytest.mark.parametrize("query,expected", [
    ("", "a"),
    ("?ns=registry-b.example", "b"),
    ("?ns=registry-a.example", "a"),
    ("?ns=unknown.example", "a"),
])
def test_manifest_routed_by_ns(routing_proxy, two_registries, query, expected):
    image = two_registries[expected].image
    digest, body = manifest_digest(routing_proxy, query)
    assert digest == image.digest and body == image.manifest
    head_digest, _ = manifest_digest(routing_proxy, query, method="HEAD")
    assert head_digest == image.digest


def test_sanity_the_two_images_differ(two_registries):
    assert two_registries["a"].image.digest != two_registries["b"].image.digest


def test_blob_and_tags_routed_by_ns(routing_proxy, two_registries):
    b_image = two_registries["b"].image
    digest, data = next(iter(b_image.blobs.items()))
    url = f"{routing_proxy.url}/v2/{REPO}/blobs/{digest}"
    from_b = requests.get(url + "?ns=registry-b.example", timeout=10)
    assert from_b.status_code == 200 and from_b.content == data
    from_default = requests.get(url, timeout=10)
    assert from_default.status_code == 404, "A does not hold B's blob"

    tags_b = requests.get(f"{routing_proxy.url}/v2/{REPO}/tags/list?ns=registry-b.example",
                          timeout=10).json()["tags"]
    tags_a = requests.get(f"{routing_proxy.url}/v2/{REPO}/tags/list", timeout=10).json()["tags"]
    assert sorted(tags_b) == ["only-b", TAG] and sorted(tags_a) == ["only-a", TAG]
