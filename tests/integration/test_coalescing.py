"""Identical manifest requests in flight at the same time share one upstream exchange, and only
holders of the same credential share one (proxy/forward.cpp, "Identical manifest requests share
one upstream exchange").

A SlowFront relay holds every registry answer back, so a burst of requests started together is
in flight at once, and it counts the requests that reach the registry.
"""
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

import variant_env as ve
from checks import assert_healthy
from proxy import upstream
from registry import HTPASSWD_USERS
from slow_front import SlowFront

DELAY = 1.0   # seconds each registry answer is held back
BURST = 24    # requests started together
WORKERS = 2   # the proxy's threads: each coalesces on its own


def burst(n, request):
    """Runs request(i) for i < n in n threads released at the same moment; their results."""
    start = threading.Barrier(n)

    def run(i):
        start.wait()
        return request(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def coalesced(proxy, upstream_name):
    return ve.metric(proxy, "accel_proxy_coalesced_requests_total", upstream=upstream_name)


def coalesced_log_lines(proxy):
    return Path(proxy.service.log_path).read_text(errors="replace").count(" coalesced=true")


@pytest.fixture
def slow_open_registry(open_registry, pushed_images):
    front = SlowFront(open_registry.port, DELAY).start()
    yield front
    front.stop()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_identical_requests_share_one_exchange(proxy_factory, open_registry, pushed_images,
                                               slow_open_registry, method):
    front = slow_open_registry
    p = proxy_factory([upstream("main", front.url)], threads=WORKERS)
    image = pushed_images.oci
    path = f"/v2/{image.repo}/manifests/{image.tag}"
    accept = {"Accept": image.media_type}
    direct = requests.request(method, open_registry.url + path, headers=accept, timeout=10)
    assert direct.status_code == 200

    answers = burst(BURST, lambda i: requests.request(method, p.url + path, headers=accept, timeout=30))
    for resp in answers:
        assert resp.status_code == 200
        assert resp.content == (image.manifest if method == "GET" else b"")
        for name in ("Content-Type", "Docker-Content-Digest", "Content-Length"):
            assert resp.headers.get(name) == direct.headers.get(name), name
    reached = front.count(method, path)
    # Without coalescing every request would reach the registry; with it, one per worker thread
    # (one more if a request of the burst came late enough to lead a flight of its own).
    assert 1 <= reached <= WORKERS + 1, f"{reached} of {BURST} requests reached the registry"
    assert coalesced(p, "main") == BURST - reached
    # The access log says which requests were answered so (each line is written just after its
    # answer, so the last ones may lag the clients by a moment).
    ve.wait_until(lambda: coalesced_log_lines(p) >= BURST - reached, 10, "the access log lines")
    assert coalesced_log_lines(p) == BURST - reached

    # Nothing is kept once answered: the next request asks the registry again.
    again = requests.request(method, p.url + path, headers=accept, timeout=30)
    assert again.status_code == 200
    assert front.count(method, path) == reached + 1
    assert_healthy(p)


def test_answers_are_shared_only_by_the_same_credential(proxy_factory, htpasswd_registry):
    front = SlowFront(htpasswd_registry.port, DELAY).start()
    try:
        p = proxy_factory([upstream("secured", front.url)], threads=WORKERS)
        image = htpasswd_registry.images[0]
        path = f"/v2/{image.repo}/manifests/{image.tag}"
        user, password = next(iter(HTPASSWD_USERS.items()))
        groups = [(user, password), (user, "wrong-" + password), None]  # right, wrong, anonymous

        def request(i):
            auth = groups[i % len(groups)]
            return auth, requests.get(p.url + path, auth=auth, headers={"Accept": image.media_type},
                                      timeout=30)

        for auth, resp in burst(BURST, request):
            if auth == groups[0]:
                assert resp.status_code == 200 and resp.content == image.manifest
            else:
                assert resp.status_code == 401, f"{auth and 'wrong password' or 'anonymous'}: {resp.status_code}"
                assert image.manifest not in resp.content
                assert resp.headers.get("WWW-Authenticate", "").lower().startswith("basic")
        reached = front.count("GET", path)
        # Each credential needs its own exchange (on each worker thread that got one of its requests).
        assert len(groups) <= reached <= len(groups) * WORKERS + 1, reached
        assert coalesced(p, "secured") == BURST - reached
        assert_healthy(p)
    finally:
        front.stop()


def test_coalescing_can_be_turned_off(proxy_factory, pushed_images, slow_open_registry):
    front = slow_open_registry
    p = proxy_factory([upstream("main", front.url)], threads=WORKERS,
                      extra_config={"coalesce_manifests": False})
    image = pushed_images.oci
    path = f"/v2/{image.repo}/manifests/{image.tag}"
    n = 8
    answers = burst(n, lambda i: requests.get(p.url + path, headers={"Accept": image.media_type}, timeout=30))
    assert all(r.status_code == 200 and r.content == image.manifest for r in answers)
    assert front.count("GET", path) == n
    assert coalesced(p, "main") == 0
