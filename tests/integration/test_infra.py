"""Checks of the test harness itself, straight against the peers (no accel-proxy).

If one of these fails, the failures elsewhere are about the harness, not the proxy. They also
pin the upstream quirks that other tests rely on (a proxy test is only meaningful if the
upstream really behaves that way).
"""
import http.client

import pytest
import requests

import images
import registry_auth
import skopeo
from dying_upstream import DyingUpstream, PROMISED, SENT
from token_server import USERS


@pytest.mark.parametrize("which", ["oci", "docker", "index"])
def test_skopeo_copy_direct_from_registry(open_registry, pushed_images, tmp_path, which):
    image = getattr(pushed_images, which)
    dest = tmp_path / "copy"
    res = skopeo.copy_to_dir(f"127.0.0.1:{open_registry.port}/{image.repo}:{image.tag}", dest)
    assert res.returncode == 0, res.stderr
    skopeo.check_dir_copy(dest, image)


def test_redirect_front_sends_307_to_range_ignoring_storage(redirect_front, pushed_images):
    url = f"{redirect_front.url}/v2/{pushed_images.range_repo}/blobs/{pushed_images.range_digest}"
    for method in ("GET", "HEAD"):
        resp = requests.request(method, url, allow_redirects=False, timeout=10)
        assert resp.status_code == 307
        assert resp.headers["Location"].startswith(redirect_front.storage_url + "/")
    storage = requests.get(resp.headers["Location"], headers={"Range": "bytes=0-99"}, timeout=10)
    assert storage.status_code == 200, "storage must ignore Range for the test to mean anything"
    assert storage.content == pushed_images.range_data
    manifest = requests.get(f"{redirect_front.url}/v2/{pushed_images.oci.repo}/manifests/v1",
                            headers={"Accept": images.OCI_MANIFEST}, timeout=10)
    assert manifest.status_code == 200 and manifest.content == pushed_images.oci.manifest


def test_registry_quirks_the_proxy_must_cover(open_registry, pushed_images):
    base = open_registry.url
    subject = pushed_images.oci
    # No Referrers API in distribution 2.8.
    referrers = requests.get(f"{base}/v2/{subject.repo}/referrers/{subject.digest}", timeout=10)
    assert referrers.status_code == 404
    # An invalid digest is a 500 there; the proxy must answer 400 itself.
    bad = requests.get(f"{base}/v2/{subject.repo}/manifests/sha256:xyz", timeout=10)
    assert bad.status_code == 500


def test_token_registry_enforces_policy(token_registry, token_server):
    alice = registry_auth.session("alice", USERS["alice"])
    p = images.Pusher(token_registry.url, alice)
    body, blobs = images.build_oci_image("infra-token")
    p.push_image("public/infra", "v1", body, blobs, images.OCI_MANIFEST)
    p.push_image("private/infra", "v1", body, blobs, images.OCI_MANIFEST)
    accept = {"Accept": images.OCI_MANIFEST}

    def status(session, repo):
        url = f"{token_registry.url}/v2/{repo}/manifests/v1"
        return session.get(url, headers=accept, timeout=10).status_code

    bob = registry_auth.session("bob", USERS["bob"])
    anon = registry_auth.session()
    assert status(alice, "private/infra") == 200
    assert status(bob, "public/infra") == 200
    assert status(bob, "private/infra") == 401
    assert status(anon, "public/infra") == 200
    assert status(anon, "private/infra") == 401
    wrong = registry_auth.fetch_token(token_server.realm, token_server.SERVICE,
                                      "repository:public/infra:pull", ("alice", "nope"))
    assert wrong.status_code == 401


def test_dying_upstream_really_cuts_the_body():
    fake = DyingUpstream().start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
        conn.request("GET", "/v2/x/blobs/sha256:" + "0" * 64)
        resp = conn.getresponse()
        assert resp.status == 200
        with pytest.raises(http.client.IncompleteRead) as info:
            resp.read()
        assert len(info.value.partial) == SENT and info.value.expected == PROMISED - SENT
    finally:
        fake.stop()
