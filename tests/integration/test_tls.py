"""An https upstream: CA bundles, certificate verification, hostname checks.

A throwaway CA is made for the module (pki.py); docker-registry serves https with a certificate it
signed. The proxy must trust that CA only when `ca_file` names it (the system store does not
know it), skip verification only when `insecure_skip_verify` says so, and check that the
certificate names the host of the upstream URL.
"""
import hashlib
import json
import subprocess
import warnings

import pytest
import requests

import images
import skopeo
from checks import assert_healthy, assert_oci_error
from pki import make_pki
from proxy import upstream
from registry import Registry


# ---- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory, pki):
    """https registry whose certificate names 127.0.0.1 and localhost; small images pushed."""
    reg = Registry(tmp_path_factory.mktemp("registry-tls"), name="registry-tls",
                   tls=pki.server).start()
    try:
        session = requests.Session()
        # Without this, REQUESTS_CA_BUNDLE in the environment overrides session.verify.
        session.trust_env = False
        session.verify = str(pki.ca)
        reg.images = images.push_small_images(reg.url, session, "tls")
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def wrong_name_registry(tmp_path_factory, pki):
    """https registry whose (CA-signed) certificate names only wrong.example."""
    reg = Registry(tmp_path_factory.mktemp("registry-wrong-name"), name="registry-wrong-name",
                   tls=pki.wrong_name).start()
    try:
        # The content is there, so only the hostname check can make a pull fail.
        session = requests.Session()
        session.trust_env = False
        session.verify = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # InsecureRequestWarning
            reg.images = images.push_small_images(reg.url, session, "tls")
        yield reg
    finally:
        reg.stop()


# ---- helpers -------------------------------------------------------------------------------

def _first_layer(image):
    return json.loads(image.manifest)["layers"][0]["digest"]


def assert_pull_works(proxy, image):
    """Manifest by tag and a layer blob through the proxy, byte for byte."""
    resp = requests.get(f"{proxy.url}/v2/{image.repo}/manifests/{image.tag}",
                        headers={"Accept": image.media_type}, timeout=15)
    assert resp.status_code == 200, (resp.status_code, resp.text[:300])
    assert resp.content == image.manifest
    assert resp.headers.get("Docker-Content-Digest") == image.digest
    digest = _first_layer(image)
    blob = requests.get(f"{proxy.url}/v2/{image.repo}/blobs/{digest}", timeout=15)
    assert blob.status_code == 200, (blob.status_code, blob.text[:300])
    assert "sha256:" + hashlib.sha256(blob.content).hexdigest() == digest
    assert blob.content == image.blobs[digest]


def assert_pull_refused(proxy, image):
    """Manifest and blob GET both get 502 UNAVAILABLE, and the proxy stays up."""
    paths = [f"/v2/{image.repo}/manifests/{image.tag}",
             f"/v2/{image.repo}/blobs/{_first_layer(image)}"]
    for path in paths:
        resp = requests.get(proxy.url + path, headers={"Accept": image.media_type}, timeout=15)
        assert_oci_error(resp.status_code, resp.content, {502}, {"UNAVAILABLE"})
    assert_healthy(proxy)


# ---- tests ---------------------------------------------------------------------------------

def test_premise_registry_serves_our_ca_only(tls_registry, pki):
    """Direct: verifying with our CA works; with the system store it fails (so (b) means it)."""
    ok = requests.get(tls_registry.url + "/v2/", verify=str(pki.ca), timeout=5)
    assert ok.status_code == 200
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(tls_registry.url + "/v2/", timeout=5)


def test_ca_file_pull_and_skopeo(proxy_factory, tls_registry, pki, tmp_path):
    proxy = proxy_factory([upstream("tls", tls_registry.url, ca_file=str(pki.ca))])
    oci, docker, index = tls_registry.images
    assert_pull_works(proxy, oci)
    assert_pull_works(proxy, docker)
    dest = tmp_path / "copy"
    res = skopeo.copy_to_dir(f"127.0.0.1:{proxy.port}/{index.repo}:{index.tag}", dest)
    assert res.returncode == 0, res.stderr
    skopeo.check_dir_copy(dest, index)


def test_unknown_ca_gets_502(proxy_factory, tls_registry):
    """No ca_file: the system CAs do not know ours, so the handshake fails -> 502."""
    proxy = proxy_factory([upstream("tls", tls_registry.url)])
    image = tls_registry.images[0]
    assert_pull_refused(proxy, image)
    # A second round: the failed handshakes left nothing broken behind.
    assert_pull_refused(proxy, image)


def test_insecure_skip_verify_works(proxy_factory, tls_registry):
    proxy = proxy_factory([upstream("tls", tls_registry.url, insecure_skip_verify=True)])
    for image in tls_registry.images[:2]:
        assert_pull_works(proxy, image)


def test_hostname_in_url_checked_against_certificate(proxy_factory, tls_registry,
                                                     wrong_name_registry, pki):
    image = tls_registry.images[0]
    # The certificate names DNS localhost: reaching it as https://localhost:PORT verifies.
    by_name = proxy_factory([upstream("tls", f"https://localhost:{tls_registry.port}",
                                      ca_file=str(pki.ca))])
    assert_pull_works(by_name, image)

    # A CA-signed certificate for wrong.example only: refused by IP and by localhost.
    for host in ("127.0.0.1", "localhost"):
        wrong = proxy_factory([upstream("wrong", f"https://{host}:{wrong_name_registry.port}",
                                        ca_file=str(pki.ca))])
        assert_pull_refused(wrong, wrong_name_registry.images[0])

    # Control: the same upstream with verification off serves the image, so the 502 above
    # came from the hostname check and nothing else.
    skip = proxy_factory([upstream("wrong", wrong_name_registry.url, insecure_skip_verify=True)])
    assert_pull_works(skip, wrong_name_registry.images[0])


def test_push_through_the_proxy_to_an_https_upstream(proxy_factory, tls_registry, pki, open_registry, pushed_images,
                                                     tmp_path):
    """A push streams to a TLS upstream too (the buffered path, not splice): skopeo copies a
    2-platform index through the proxy, and the registry then serves the same digests."""
    proxy = proxy_factory([upstream("tls", tls_registry.url, ca_file=str(pki.ca))])
    image = pushed_images.index
    argv = [skopeo.SKOPEO, "--insecure-policy", "copy", "--all", "--src-tls-verify=false", "--dest-tls-verify=false",
            f"docker://127.0.0.1:{open_registry.port}/{image.repo}:{image.tag}",
            f"docker://127.0.0.1:{proxy.port}/pushed-tls/multi:{image.tag}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    got = requests.get(f"{tls_registry.url}/v2/pushed-tls/multi/manifests/{image.tag}", verify=str(pki.ca),
                       headers={"Accept": "application/vnd.oci.image.index.v1+json"}, timeout=10)
    assert got.status_code == 200
    assert "sha256:" + hashlib.sha256(got.content).hexdigest() == image.digest
    for child in json.loads(got.content)["manifests"]:
        head = requests.head(f"{tls_registry.url}/v2/pushed-tls/multi/manifests/{child['digest']}",
                             verify=str(pki.ca), headers={"Accept": child["mediaType"]}, timeout=10)
        assert head.status_code == 200, child
    assert_healthy(proxy)
