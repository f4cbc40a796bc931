"""Operating the proxy: /metrics, /readyz, graceful shutdown."""
import hashlib
import socket
import time

import requests

import prom
from checks import assert_oci_error
from proxy import upstream
from registry import Registry

REQUESTS_TOTAL = "accel_proxy_http_requests_total"
RESPONSE_BYTES = "accel_proxy_http_response_bytes_total"
UPSTREAM_BUCKET = "accel_proxy_upstream_request_duration_seconds_bucket"
OPEN_CONNECTIONS = "accel_proxy_open_connections"


def scrape(proxy):
    resp = requests.get(proxy.url + "/metrics", timeout=10)
    assert resp.status_code == 200
    assert resp.headers.get("Content-Type", "").startswith("text/plain")
    return prom.parse(resp.text)


def get_manifest(proxy, image):
    resp = requests.get(f"{proxy.url}/v2/{image.repo}/manifests/{image.tag}",
                        headers={"Accept": image.media_type}, timeout=10)
    assert resp.status_code == 200
    return resp


def test_metrics_count_requests(proxy, pushed_images):
    image = pushed_images.oci
    get_manifest(proxy, image)
    before = scrape(proxy)
    names = {n for n, _, _ in before}
    for name in (REQUESTS_TOTAL, RESPONSE_BYTES, UPSTREAM_BUCKET, OPEN_CONNECTIONS):
        assert name in names, f"{name} missing from /metrics"
    for name, labels, _ in before:
        if name == REQUESTS_TOTAL:
            assert {"route", "method", "code"} <= set(labels), labels
        if name == UPSTREAM_BUCKET:
            assert "le" in labels

    for _ in range(5):
        get_manifest(proxy, image)
    after = scrape(proxy)
    grew = (prom.total(after, REQUESTS_TOTAL, method="GET", code="200")
            - prom.total(before, REQUESTS_TOTAL, method="GET", code="200"))
    assert grew >= 5, f"GET 200 counter grew by {grew} after 5 requests"
    sent = prom.total(after, RESPONSE_BYTES) - prom.total(before, RESPONSE_BYTES)
    assert sent >= 5 * len(image.manifest)
    inf_before = prom.total(before, UPSTREAM_BUCKET, le="+Inf")
    assert prom.total(after, UPSTREAM_BUCKET, le="+Inf") >= inf_before + 5


def test_open_connections_gauge(proxy):
    with socket.create_connection(("127.0.0.1", proxy.port)) as idle:
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        idle.recv(4096)  # the connection is accepted and kept alive
        held = prom.total(scrape(proxy), OPEN_CONNECTIONS)
        assert held >= 2, f"open connections {held} with two connected clients"


def test_readyz_follows_upstream(proxy_factory, tmp_path):
    reg = Registry(tmp_path / "registry", name="registry-readyz").start()
    try:
        p = proxy_factory([upstream("main", reg.url)])
        assert requests.get(p.url + "/readyz", timeout=10).status_code == 200
        reg.stop()
        assert _poll_status(p.url + "/readyz", 503), "readyz still not 503 with upstream down"
        assert requests.get(p.url + "/healthz", timeout=10).status_code == 200
        # A pull meanwhile gets a prompt gateway error, as an OCI error body.
        down = requests.get(f"{p.url}/v2/lib/oci-app/manifests/v1", timeout=15)
        assert_oci_error(down.status_code, down.content, set(range(500, 600)))
        reg.start()
        assert _poll_status(p.url + "/readyz", 200), "readyz did not recover"
    finally:
        reg.stop()


def _poll_status(url, want, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if requests.get(url, timeout=10).status_code == want:
            return True
        time.sleep(0.2)
    return False


def test_sigterm_idle_exits_zero(proxy_factory, open_registry):
    p = proxy_factory([upstream("main", open_registry.url)])
    p.terminate()
    assert p.service.wait(timeout=10) == 0


def test_graceful_shutdown_finishes_transfer(proxy_factory, open_registry, pushed_images):
    p = proxy_factory([upstream("main", open_registry.url)], timeouts={"shutdown": "30s"})
    url = f"{p.url}/v2/{pushed_images.big_repo}/blobs/{pushed_images.big_digest}"
    h = hashlib.sha256()
    with requests.get(url, stream=True, timeout=30) as resp:
        assert resp.status_code == 200
        chunks = resp.iter_content(256 * 1024)
        first = next(chunks)
        h.update(first)
        p.terminate()
        after_signal = 0
        for chunk in chunks:  # a slow reader: about 3 s for 64 MiB
            h.update(chunk)
            after_signal += len(chunk)
            time.sleep(0.01)
    assert len(first) + after_signal == len(pushed_images.big_data)
    assert "sha256:" + h.hexdigest() == pushed_images.big_digest
    # Socket buffers hold a few MiB at most; the rest was sent after SIGTERM.
    assert after_signal > 32 * 1024 * 1024
    assert p.service.wait(timeout=20) == 0
