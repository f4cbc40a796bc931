"""The proxy's own https listener (`tls:` in its config) and certificate reload on SIGHUP.

A throwaway CA (pki.py) signs the proxy's certificate. Clients that are given the CA pull over
https (requests, skopeo, containerd's ctr with a hosts.toml naming the CA); clients that are
not given it fail. A certificate replaced on disk and announced with SIGHUP is what new
connections get, while a large blob download that was in flight across the reload completes
with the right digest; a broken certificate or a key that does not match leaves the old pair in
use. Certificates the proxy cannot use stop it at start with a configuration error.
"""
import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time

import pytest
import requests

import images
import prom
import registry_auth
import skopeo
import variant_env as ve
import yamlconf
from checks import assert_healthy
from pki import issue_server, make_pki, serial_of, serial_of_der
from proxy import REPO_ROOT, require_binary, upstream
from token_server import USERS


# ---- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def live_pair(tmp_path, pki):
    """The (cert, key) files the proxy is configured with: a copy of the CA-signed server pair,
    which a test may replace on disk."""
    d = tmp_path / "tls"
    d.mkdir()
    cert, key = d / "tls.crt", d / "tls.key"
    shutil.copy(pki.server[0], cert)
    shutil.copy(pki.server[1], key)
    return cert, key


@pytest.fixture
def tls_proxy(proxy_factory, open_registry, pushed_images, live_pair, pki):
    return proxy_factory([upstream("main", open_registry.url)], tls=live_pair, ca=pki.ca)


@pytest.fixture
def containerd(tmp_path):
    if not (os.access(ve.CONTAINERD, os.X_OK) and os.access(ve.CTR, os.X_OK)):
        pytest.fail("containerd is not installed: apt-get install containerd", pytrace=False)
    c = ve.Containerd(tmp_path / "containerd")
    try:
        c.start()
    except RuntimeError as exc:
        c.stop()
        pytest.skip(f"containerd cannot run here (it needs root): {exc}")
    yield c
    c.stop()


# ---- helpers -------------------------------------------------------------------------------

def tls_client(ca):
    return ssl.create_default_context(cafile=str(ca))


def peer_serial(proxy, ca):
    """The serial of the certificate a new connection to the proxy is shown."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw:
        with tls_client(ca).wrap_socket(raw, server_hostname="127.0.0.1") as s:
            return serial_of_der(s.getpeercert(binary_form=True))


def metric(proxy, name, **labels):
    resp = requests.get(proxy.url + "/metrics", verify=proxy.verify, timeout=10)
    assert resp.status_code == 200
    return prom.total(prom.parse(resp.text), name, **labels)


def wait_for_metric(proxy, name, value, timeout=10, **labels):
    deadline = time.monotonic() + timeout
    while (seen := metric(proxy, name, **labels)) < value:
        assert time.monotonic() < deadline, f"{name}{labels} stayed at {seen}, expected {value}"
        time.sleep(0.05)


def replace_pair(live_pair, cert_bytes, key_bytes):
    """Writes a new pair over the live files as a renewal tool does: new file, then rename."""
    for path, data in zip(live_pair, (cert_bytes, key_bytes)):
        tmp = path.with_suffix(".new")
        tmp.write_bytes(data)
        os.replace(tmp, path)


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class SlowBlobRead:
    """A GET of a blob over its own TLS connection whose body is read only when asked: with a
    small receive buffer, the proxy's writes stay blocked (the transfer in flight) meanwhile."""

    def __init__(self, proxy, ca, repo, digest):
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        raw.settimeout(30)
        raw.connect(("127.0.0.1", proxy.port))
        self.sock = tls_client(ca).wrap_socket(raw, server_hostname="127.0.0.1")
        self.serial = serial_of_der(self.sock.getpeercert(binary_form=True))
        self.sock.sendall(f"GET /v2/{repo}/blobs/{digest} HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\n"
                          "Connection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            assert chunk, f"connection closed before the response head: {head!r}"
            head += chunk
        head, body = head.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 200"), lines[0]
        fields = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        self.length = int(fields["content-length"])
        self.received = len(body)
        self.hash = hashlib.sha256(body)

    def read(self, at_least):
        """Reads until `at_least` body bytes came (or the end); returns the count so far."""
        while self.received < at_least:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.received += len(chunk)
            self.hash.update(chunk)
        return self.received

    def finish(self):
        """Reads the rest at full speed; returns (body bytes received, their digest)."""
        self.read(float("inf"))
        self.sock.close()
        return self.received, "sha256:" + self.hash.hexdigest()


EXAMPLE_HOSTS_TOML = REPO_ROOT / "configs" / "containerd" / "proxy-https.toml"


def write_https_hosts_toml(hosts_dir, host_port, ca=None):
    """hosts_dir/<host:port>/hosts.toml: the shipped configs/containerd/proxy-https.toml with
    only the proxy's address and the CA path changed (without `ca`: its line dropped)."""
    text = EXAMPLE_HOSTS_TOML.read_text().replace("proxy.example:5443", host_port)
    lines = text.splitlines()
    ca_lines = [i for i, line in enumerate(lines) if line.strip().startswith("ca = ")]
    assert len(ca_lines) == 1, "the example names the CA once"
    if ca:
        lines[ca_lines[0]] = f'  ca = "{ca}"'
    else:
        del lines[ca_lines[0]]
    d = hosts_dir / host_port
    d.mkdir(parents=True, exist_ok=True)
    (d / "hosts.toml").write_text("\n".join(lines) + "\n")
    return hosts_dir


# ---- pulls over https ------------------------------------------------------------------------

def test_pull_over_https_with_the_ca(tls_proxy, pushed_images, pki):
    image = pushed_images.oci
    resp = requests.get(f"{tls_proxy.url}/v2/{image.repo}/manifests/{image.tag}",
                        headers={"Accept": image.media_type}, verify=str(pki.ca), timeout=15)
    assert resp.status_code == 200, resp.text[:300]
    assert resp.content == image.manifest
    layer = json.loads(image.manifest)["layers"][0]["digest"]
    blob = requests.get(f"{tls_proxy.url}/v2/{image.repo}/blobs/{layer}", verify=str(pki.ca),
                        timeout=15)
    assert blob.status_code == 200
    assert sha256(blob.content) == layer
    # A big blob takes the path that is splice(2) over plain TCP: here it is copied and encrypted.
    big = requests.get(f"{tls_proxy.url}/v2/{pushed_images.big_repo}/blobs/{pushed_images.big_digest}",
                       verify=str(pki.ca), timeout=60)
    assert big.status_code == 200
    assert sha256(big.content) == pushed_images.big_digest
    # And a Range of it, over a kept-alive TLS connection.
    with requests.Session() as session:
        session.trust_env = False  # else REQUESTS_CA_BUNDLE in the environment overrides verify
        session.verify = str(pki.ca)
        for first in (0, 1 << 20):
            part = session.get(f"{tls_proxy.url}/v2/{pushed_images.big_repo}/blobs/"
                               f"{pushed_images.big_digest}", headers={"Range": f"bytes={first}-{first + 999}"},
                               timeout=30)
            assert part.status_code == 206
            assert part.content == pushed_images.big_data[first:first + 1000]


def test_clients_without_the_ca_or_without_tls_fail(tls_proxy, pki):
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(tls_proxy.url + "/v2/", timeout=10)  # the system store does not know our CA
    before = metric(tls_proxy, "accel_proxy_tls_handshake_failures_total")
    assert before >= 1  # the refused handshake above
    # Plain http to the https listener: no answer in clear, the connection closes.
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{tls_proxy.port}/v2/", timeout=10)
    assert metric(tls_proxy, "accel_proxy_tls_handshake_failures_total") == before + 1
    assert_healthy(tls_proxy)


def test_silent_client_is_dropped_after_the_header_timeout(proxy_factory, open_registry, pki, live_pair):
    """The handshake runs under timeouts.header: a connection that never starts one costs a
    socket for that long, not forever."""
    proxy = proxy_factory([upstream("main", open_registry.url)], tls=live_pair, ca=pki.ca,
                          timeouts={"header": "1s"})
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as silent:
        started = time.monotonic()
        assert silent.recv(1) == b""  # closed by the proxy
        assert 0.8 < time.monotonic() - started < 5
    wait_for_metric(proxy, "accel_proxy_tls_handshake_failures_total", 1)
    assert_healthy(proxy)


def test_skopeo_over_https(tls_proxy, pushed_images, pki, tmp_path):
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(pki.ca, certs / "ca.crt")  # skopeo reads the *.crt files of --src-cert-dir
    index = pushed_images.index
    ref = f"127.0.0.1:{tls_proxy.port}/{index.repo}:{index.tag}"
    dest = tmp_path / "copy"
    res = skopeo.copy_to_dir(ref, dest, cert_dir=certs)
    assert res.returncode == 0, res.stderr
    skopeo.check_dir_copy(dest, index)

    refused = skopeo.copy_to_dir(ref, tmp_path / "refused", tls_verify=True)
    assert refused.returncode != 0
    assert "certificate" in refused.stderr, refused.stderr


def test_ctr_pull_over_https(tls_proxy, pushed_images, pki, containerd, tmp_path):
    index = pushed_images.index
    host_port = f"127.0.0.1:{tls_proxy.port}"
    ref = f"{host_port}/{index.repo}:{index.tag}"

    untrusted = write_https_hosts_toml(tmp_path / "hosts-untrusted", host_port)
    res = containerd.ctr("images", "pull", "--all-platforms", "--hosts-dir", str(untrusted), ref)
    assert res.returncode != 0, res.stdout
    assert "certificate" in res.stderr, res.stderr

    hosts = write_https_hosts_toml(tmp_path / "hosts", host_port, ca=pki.ca)
    res = containerd.ctr("images", "pull", "--all-platforms", "--hosts-dir", str(hosts), ref)
    assert res.returncode == 0, res.stdout + res.stderr
    ls = containerd.ctr("images", "ls")
    row = next((line.split() for line in ls.stdout.splitlines() if line.startswith(ref + " ")), None)
    assert row is not None, ls.stdout
    assert index.digest in row, (row, index.digest)
    # Every manifest and blob of every platform is in containerd's content store (which checks
    # each digest as it writes), and a layer read back has its digest.
    stored = set(containerd.ctr("content", "ls", "-q").stdout.split())
    expected = {index.digest} | {child.digest for child in index.children}
    for child in index.children:
        expected |= set(child.blobs)
    assert expected <= stored, expected - stored
    layer = json.loads(index.children[0].manifest)["layers"][0]["digest"]
    got = subprocess.run([ve.CTR, "--address", containerd.socket, "--namespace", "accel-test",
                          "content", "get", layer], capture_output=True, timeout=60)
    assert got.returncode == 0
    assert sha256(got.stdout) == layer


def test_token_realm_is_https(proxy_factory, token_registry, pki, live_pair, tmp_path):
    """With token_proxy the Bearer realm points clients at the proxy: over TLS, an https URL
    (an http one would send their passwords in clear, or fail). skopeo logs in through it."""
    alice = registry_auth.session("alice", USERS["alice"])
    index = images.push_small_images(token_registry.url, alice, "tls-private")[2]
    proxy = proxy_factory([upstream("tok", token_registry.url, token_proxy=True)], tls=live_pair, ca=pki.ca)
    resp = requests.get(proxy.url + "/v2/", verify=str(pki.ca), timeout=10)
    assert resp.status_code == 401
    _, params = registry_auth.parse_challenge(resp.headers["WWW-Authenticate"])
    assert params["realm"] == f"https://127.0.0.1:{proxy.port}/auth/token/tok"

    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(pki.ca, certs / "ca.crt")
    res = skopeo.copy_to_dir(f"127.0.0.1:{proxy.port}/{index.repo}:{index.tag}", tmp_path / "copy",
                             creds=f"alice:{USERS['alice']}", cert_dir=certs)
    assert res.returncode == 0, res.stderr
    skopeo.check_dir_copy(tmp_path / "copy", index)


def test_cached_variant_blobs_over_https(proxy_factory, open_registry, pki, live_pair, monkeypatch):
    """Blobs served from the variant cache go out with sendfile(2) over plain TCP; over TLS they
    are copied and encrypted: whole, by Range and by multi-range, byte for byte."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki.ca))  # the variant_env helpers' requests
    source = ve.push_bytes_image(open_registry.url, requests.Session(), "tls/cached", "v1",
                                 [ve.random_layer("tls-cached", 3 << 20)], seed="tls-cached")
    proxy = proxy_factory([upstream("main", open_registry.url)], tls=live_pair, ca=pki.ca,
                          extra_config={"variants": ve.variants_config(on_miss="wait", wait_limit="120s")})
    objects = ve.converted_objects(proxy, "tls/cached", "v1" + ve.SUFFIX)  # converts, then reads
    assert objects[0][1] != source.digest
    _, digest, data = max((o for o in objects if o[0] == "blob"), key=lambda o: len(o[2]))
    assert len(data) > 2 << 20
    hits = ve.metric(proxy, "accel_proxy_cache_hits_total", kind="blob")
    url = f"{proxy.url}/v2/tls/cached/blobs/{digest}"
    whole = requests.get(url, timeout=60)
    assert whole.status_code == 200 and sha256(whole.content) == digest
    part = requests.get(url, headers={"Range": "bytes=1000000-1999999"}, timeout=60)
    assert part.status_code == 206 and part.content == data[1000000:2000000]
    multi = requests.get(url, headers={"Range": "bytes=0-9,-51"}, timeout=60)
    assert multi.status_code == 206
    assert data[:10] in multi.content and data[-51:] in multi.content
    assert ve.metric(proxy, "accel_proxy_cache_hits_total", kind="blob") >= hits + 3


# ---- reload on SIGHUP --------------------------------------------------------------------------

def test_sighup_new_certificate_for_new_connections_in_flight_download_completes(
        tls_proxy, pushed_images, pki, live_pair, tmp_path):
    old_serial = serial_of(pki.server[0])
    assert peer_serial(tls_proxy, pki.ca) == old_serial

    download = SlowBlobRead(tls_proxy, pki.ca, pushed_images.big_repo, pushed_images.big_digest)
    assert download.serial == old_serial
    assert download.length == len(pushed_images.big_data)
    before_reload = download.read(1 << 20)

    renewed = issue_server(pki, tmp_path, "renewed")
    replace_pair(live_pair, renewed[0].read_bytes(), renewed[1].read_bytes())
    tls_proxy.reload()
    wait_for_metric(tls_proxy, "accel_proxy_tls_reloads_total", 1, result="ok")
    new_serial = serial_of(renewed[0])
    assert new_serial != old_serial
    assert peer_serial(tls_proxy, pki.ca) == new_serial

    # The download began before the reload and most of it is still to come.
    assert before_reload < download.length // 4
    received, digest = download.finish()
    assert received == download.length
    assert digest == pushed_images.big_digest

    log = tls_proxy.service.log_text()
    reloads = [line for line in log.splitlines() if "tls reloaded" in line]
    assert len(reloads) == 1, reloads
    # The log prints the serial's bytes in hex (a leading zero nibble included): compare numbers.
    logged = re.search(r"serial=([0-9A-Fa-f]+)", reloads[0])
    assert logged and int(logged.group(1), 16) == new_serial, reloads[0]
    assert metric(tls_proxy, "accel_proxy_tls_reloads_total", result="failed") == 0
    assert_healthy(tls_proxy)


def test_sighup_with_a_broken_pair_keeps_the_old_one(tls_proxy, pushed_images, pki, live_pair, tmp_path):
    old_serial = serial_of(pki.server[0])
    good_key = live_pair[1].read_bytes()
    image = pushed_images.oci

    def still_serving_the_old_pair():
        assert peer_serial(tls_proxy, pki.ca) == old_serial
        resp = requests.get(f"{tls_proxy.url}/v2/{image.repo}/manifests/{image.tag}",
                            headers={"Accept": image.media_type}, verify=str(pki.ca), timeout=15)
        assert resp.status_code == 200 and resp.content == image.manifest

    # Not a certificate at all (a renewal tool that wrote half a file).
    replace_pair(live_pair, b"-----BEGIN CERTIFICATE-----\nnot base64\n", good_key)
    tls_proxy.reload()
    wait_for_metric(tls_proxy, "accel_proxy_tls_reloads_total", 1, result="failed")
    still_serving_the_old_pair()

    # A new certificate with the old key: they do not match.
    renewed = issue_server(pki, tmp_path, "renewed")
    replace_pair(live_pair, renewed[0].read_bytes(), good_key)
    tls_proxy.reload()
    wait_for_metric(tls_proxy, "accel_proxy_tls_reloads_total", 2, result="failed")
    still_serving_the_old_pair()

    log = tls_proxy.service.log_text()
    assert "tls reload failed" in log and "does not match" in log and "no PEM certificate" in log
    assert metric(tls_proxy, "accel_proxy_tls_reloads_total", result="ok") == 0

    # Fixed on disk: the next SIGHUP takes it.
    replace_pair(live_pair, renewed[0].read_bytes(), renewed[1].read_bytes())
    tls_proxy.reload()
    wait_for_metric(tls_proxy, "accel_proxy_tls_reloads_total", 1, result="ok")
    assert peer_serial(tls_proxy, pki.ca) == serial_of(renewed[0])


def test_sighup_without_tls_is_harmless(proxy_factory, open_registry):
    proxy = proxy_factory([upstream("main", open_registry.url)])
    proxy.reload()
    deadline = time.monotonic() + 10
    while "no certificate to reload" not in proxy.service.log_text():
        assert time.monotonic() < deadline, proxy.log_tail()
        time.sleep(0.05)
    assert proxy.alive()
    assert_healthy(proxy)


# ---- refused at start --------------------------------------------------------------------------

@pytest.mark.parametrize("case, message", [
    ("missing certificate", "tls.cert_file '{cert}': cannot read: No such file or directory"),
    ("garbage certificate", "tls.cert_file '{cert}': no PEM certificate"),
    ("key of another certificate", "tls.key_file '{key}' does not match the certificate"),
    ("certificate as key", "tls.key_file '{key}': no unencrypted PEM private key"),
])
def test_unusable_files_stop_the_start(case, message, pki, tmp_path):
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(pki.server[0], cert)
    shutil.copy(pki.server[1], key)
    if case == "missing certificate":
        cert.unlink()
    elif case == "garbage certificate":
        cert.write_text("hello\n")
    elif case == "key of another certificate":
        shutil.copy(pki.wrong_name[1], key)
    elif case == "certificate as key":
        shutil.copy(pki.server[0], key)
    config = tmp_path / "accel-proxy.yaml"
    config.write_text(yamlconf.dump({
        "listen": "127.0.0.1:0", "cache_dir": str(tmp_path / "cache"),
        "upstreams": [upstream("main", "http://127.0.0.1:9")],
        "tls": {"cert_file": str(cert), "key_file": str(key)}}))
    res = subprocess.run([str(require_binary()), "serve", "--config", str(config)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2, res.stdout + res.stderr
    expected = "accel-proxy: configuration error: " + message.format(cert=cert, key=key)
    assert expected in res.stderr, res.stderr
