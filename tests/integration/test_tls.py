"""An https upstream: CA bundles, certificate verification, hostname checks.

A throwaway CA is made for the module; docker-registry serves https with a certificate it
signed. The proxy must trust that CA only when `ca_file` names it (the system store does not
know it), skip verification only when `insecure_skip_verify` says so, and check that the
certificate names the host of the upstream URL.
"""
import datetime
import hashlib
import ipaddress
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import images
import skopeo
from checks import assert_healthy, assert_oci_error
from proxy import upstream
from registry import Registry


# ---- a throwaway PKI -----------------------------------------------------------------------

@dataclass
class Pki:
    ca: Path            # CA certificate (PEM): the `ca_file`
    server: tuple       # (cert, key) for IP 127.0.0.1 and DNS localhost
    wrong_name: tuple   # (cert, key) for DNS wrong.example only


def _key():
    return ec.generate_private_key(ec.SECP256R1())  # fast to make, fine for TLS 1.2 and 1.3


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _validity(builder):
    now = datetime.datetime.now(datetime.timezone.utc)
    return (builder.not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2)))


def _write_key(key, path):
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _write_cert(cert, path):
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _leaf(directory, stem, ca_key, ca_cert, cn, sans):
    key = _key()
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .add_extension(x509.SubjectAlternativeName(sans), critical=False)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    cert = _validity(builder).sign(ca_key, hashes.SHA256())
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
    _write_cert(cert, cert_path)
    _write_key(key, key_path)
    return cert_path, key_path


def make_pki(directory: Path) -> Pki:
    ca_key = _key()
    ca_builder = (x509.CertificateBuilder().subject_name(_name("accel-proxy test CA"))
                  .issuer_name(_name("accel-proxy test CA")).public_key(ca_key.public_key())
                  .serial_number(x509.random_serial_number())
                  .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                  .add_extension(x509.KeyUsage(
                      digital_signature=True, content_commitment=False, key_encipherment=False,
                      data_encipherment=False, key_agreement=False, key_cert_sign=True,
                      crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                  .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                                 critical=False))
    ca_cert = _validity(ca_builder).sign(ca_key, hashes.SHA256())
    ca_path = directory / "ca.pem"
    _write_cert(ca_cert, ca_path)
    server = _leaf(directory, "server", ca_key, ca_cert, "127.0.0.1",
                   [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    wrong = _leaf(directory, "wrong-name", ca_key, ca_cert, "wrong.example",
                  [x509.DNSName("wrong.example")])
    return Pki(ca_path, server, wrong)


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
