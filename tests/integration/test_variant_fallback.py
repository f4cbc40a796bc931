"""What a pull gets while its variant is not ready, per `variants.on_miss`, and after a failed
conversion.

- fallback: the pull waits up to `variants.wait`, then gets the ORIGINAL image (a pull never
  fails because of conversion); once the conversion is done, the variant.
- reject: 404 MANIFEST_UNKNOWN until the variant is there.
- wait: up to `wait_limit`.
- a conversion that fails (a layer with `../../etc/passwd`) is remembered: pulls within
  `retry_backoff` get the original without a new attempt; after it, one new attempt.
- a full queue: the original at once.

The slow image: debian_like + few_large (~60 MiB of mixed content), compressed on one thread at
level 9, so a conversion takes seconds; each scenario has its own proxy and cache.
"""
import time

import pytest
import requests

import estargz_tools as et
import images
from checks import assert_oci_error
from proxy import upstream
from registry import Registry
import variant_env as ve
from variant_env import SUFFIX

SLOW = {"threads": 1, "compression_level": 9}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("fallback-registry"), name="registry-fallback").start()
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def big(registry, tmp_path_factory):
    pairs = [ve.layer_files(tmp_path_factory, "debian_like"),
             ve.layer_files(tmp_path_factory, "few_large")]
    return ve.push_layers_image(registry.url, requests.Session(), "fb/big", "1", pairs,
                                seed="fallback")


@pytest.fixture(scope="module")
def small(registry, tmp_path_factory):
    """Two quick images."""
    return [ve.push_layers_image(registry.url, requests.Session(), "fb/small", tag,
                                 [ve.layer_files(tmp_path_factory, f"small-fb-{tag}")],
                                 seed=f"fb-{tag}")
            for tag in ("a", "b")]


@pytest.fixture(scope="module")
def broken(registry):
    """An image whose layer escapes the root: every conversion of it fails."""
    tar = et.tar_bytes([("etc/ok", b"ok\n"), ("../../etc/passwd", b"root::0:0::/:/bin/sh\n")])
    body, blobs, media_type = et.image_blobs([(et.gzip_bytes(tar), tar)], seed="broken")
    return images.Pusher(registry.url, requests.Session()).push_image(
        "fb/broken", "1", body, blobs, media_type)


def start(tmp_path_factory, registry, name, **variants):
    return ve.running_variant_proxy(tmp_path_factory.mktemp(name),
                                    [upstream("main", registry.url)],
                                    ve.variants_config(**variants))


def pull(proxy, repo, reference, **kw):
    resp = ve.get_manifest(proxy, repo, reference, **kw)
    return resp, ve.sha256(resp.content)


def wait_for_conversions(proxy, n, outcome="done", timeout=120):
    ve.wait_until(lambda: ve.conversions(proxy, outcome) >= n, timeout,
                  f"{n} conversion(s) {outcome}")


def assert_variant(resp, source):
    assert resp.status_code == 200, resp.text[:300]
    manifest = resp.json()
    assert ve.sha256(resp.content) != source.digest
    assert all(et.TOC_DIGEST in l.get("annotations", {}) for l in manifest["layers"])
    assert resp.headers["Docker-Content-Digest"] == ve.sha256(resp.content)


def test_fallback_serves_the_original_until_converted(tmp_path_factory, registry, big):
    with start(tmp_path_factory, registry, "proxy-fallback", on_miss="fallback", wait="500ms",
               **SLOW) as proxy:
        started = time.monotonic()
        resp, digest = pull(proxy, "fb/big", "1" + SUFFIX)
        elapsed = time.monotonic() - started
        assert resp.status_code == 200
        assert digest == big.digest and resp.content == big.manifest, "not the original image"
        assert resp.headers["Docker-Content-Digest"] == big.digest
        assert 0.4 <= elapsed < 5, f"the pull waited {elapsed:.2f}s (wait is 0.5s)"
        assert ve.conversions(proxy) == 0, "the conversion was too quick for this test"
        # A second pull meanwhile joins the conversion and also gets the original.
        head = ve.head_manifest(proxy, "fb/big", "1" + SUFFIX)
        assert head.status_code == 200 and head.headers["Docker-Content-Digest"] == big.digest
        # The original's blobs are readable through the proxy as usual.
        for digest in big.blobs:
            r = requests.head(f"{proxy.url}/v2/fb/big/blobs/{digest}", timeout=30)
            assert r.status_code == 200
        assert "variant fallback" in proxy.service.log_text()

        wait_for_conversions(proxy, 1)
        resp, digest = pull(proxy, "fb/big", "1" + SUFFIX)
        assert_variant(resp, big)
        assert ve.conversions(proxy) == 1
        assert ve.metric(proxy, "accel_proxy_conversion_joins_total") >= 1


def test_reject_answers_404_until_converted(tmp_path_factory, registry, big):
    with start(tmp_path_factory, registry, "proxy-reject", on_miss="reject", **SLOW) as proxy:
        started = time.monotonic()
        resp, _ = pull(proxy, "fb/big", "1" + SUFFIX)
        assert time.monotonic() - started < 2, "reject must not wait for the conversion"
        assert_oci_error(resp.status_code, resp.content, {404}, {"MANIFEST_UNKNOWN"})
        head = ve.head_manifest(proxy, "fb/big", "1" + SUFFIX)
        assert head.status_code == 404
        # The original tag is untouched.
        resp, digest = pull(proxy, "fb/big", "1")
        assert resp.status_code == 200 and digest == big.digest
        wait_for_conversions(proxy, 1)
        resp, _ = pull(proxy, "fb/big", "1" + SUFFIX)
        assert_variant(resp, big)
        assert ve.conversions(proxy) == 1


def test_wait_limit(tmp_path_factory, registry, big, small):
    with start(tmp_path_factory, registry, "proxy-wait", on_miss="wait", wait_limit="500ms",
               **SLOW) as proxy:
        # A quick conversion is waited for.
        resp, _ = pull(proxy, "fb/small", "a" + SUFFIX)
        assert_variant(resp, small[0])
        # A slow one is not waited for beyond wait_limit; no original image either.
        started = time.monotonic()
        resp, digest = pull(proxy, "fb/big", "1" + SUFFIX)
        elapsed = time.monotonic() - started
        assert 0.4 <= elapsed < 5, elapsed
        assert resp.status_code != 200 and digest != big.digest
        assert_oci_error(resp.status_code, resp.content, {502, 503, 404})
        wait_for_conversions(proxy, 2)
        resp, _ = pull(proxy, "fb/big", "1" + SUFFIX)
        assert_variant(resp, big)


def test_failed_conversion_is_retried_only_after_backoff(tmp_path_factory, registry, broken):
    with start(tmp_path_factory, registry, "proxy-failing", on_miss="fallback", wait="10s",
               retry_backoff="2s") as proxy:
        for attempt in range(2):
            resp, digest = pull(proxy, "fb/broken", "1" + SUFFIX)
            assert resp.status_code == 200, resp.text
            assert digest == broken.digest, "a failed conversion must fall back to the original"
        assert ve.conversions(proxy, "failed") == 1, "the second pull tried again"
        assert ve.conversions(proxy, "done") == 0
        log = proxy.service.log_text()
        failures = [l for l in log.splitlines() if " conversion failed " in l]
        assert len(failures) == 1 and "../../etc/passwd" in failures[0], failures

        # After the backoff, one new attempt; then the backoff doubles (4s).
        time.sleep(2.1)
        for attempt in range(2):
            resp, digest = pull(proxy, "fb/broken", "1" + SUFFIX)
            assert resp.status_code == 200 and digest == broken.digest
        assert ve.conversions(proxy, "failed") == 2
        time.sleep(2.1)
        resp, digest = pull(proxy, "fb/broken", "1" + SUFFIX)
        assert digest == broken.digest
        assert ve.conversions(proxy, "failed") == 2, "the backoff did not double"


def test_backoff_is_not_cut_short_by_rounding(tmp_path_factory, registry, broken):
    """retry_backoff 1500ms: a pull 0.2s after a failure must not try again, also when a
    wall-clock second begins in between."""
    with start(tmp_path_factory, registry, "proxy-failing-round", on_miss="fallback",
               wait="10s", retry_backoff="1500ms") as proxy:
        now = time.time()
        time.sleep((0.9 - now % 1) % 1)            # just before a second begins
        resp, digest = pull(proxy, "fb/broken", "1" + SUFFIX)
        assert digest == broken.digest and ve.conversions(proxy, "failed") == 1
        time.sleep(0.2)                             # just after it began
        resp, digest = pull(proxy, "fb/broken", "1" + SUFFIX)
        assert digest == broken.digest
        assert ve.conversions(proxy, "failed") == 1, \
            "retried 0.2s after a failure although retry_backoff is 1.5s"


def test_failed_conversion_in_wait_and_reject_modes(tmp_path_factory, registry, broken):
    for mode in ("wait", "reject"):
        with start(tmp_path_factory, registry, f"proxy-failing-{mode}", on_miss=mode,
                   wait_limit="10s", retry_backoff="60s") as proxy:
            resp, _ = pull(proxy, "fb/broken", "1" + SUFFIX)
            if mode == "reject":
                assert_oci_error(resp.status_code, resp.content, {404}, {"MANIFEST_UNKNOWN"})
                wait_for_conversions(proxy, 1, "failed")
            else:
                assert resp.status_code >= 400
                assert_oci_error(resp.status_code, resp.content, {502, 503, 404})
            resp, _ = pull(proxy, "fb/broken", "1" + SUFFIX)
            assert resp.status_code >= 400
            assert ve.conversions(proxy, "failed") == 1


def test_full_queue_falls_back_at_once(tmp_path_factory, registry, big, small):
    with start(tmp_path_factory, registry, "proxy-queue", on_miss="fallback", wait="1s",
               workers=1, queue=1, **SLOW) as proxy:
        resp, digest = pull(proxy, "fb/big", "1" + SUFFIX)          # running
        assert digest == big.digest
        resp, digest = pull(proxy, "fb/small", "a" + SUFFIX)        # queued
        assert digest == small[0].digest
        assert ve.metric(proxy, "accel_proxy_conversion_queue_depth") == 1
        started = time.monotonic()
        resp, digest = pull(proxy, "fb/small", "b" + SUFFIX)        # no room
        assert time.monotonic() - started < 0.8, "a full queue should not make the pull wait"
        assert resp.status_code == 200 and digest == small[1].digest
        assert "conversion queue is full" in proxy.service.log_text()
        wait_for_conversions(proxy, 2)
        assert ve.conversions(proxy) == 2
        resp, _ = pull(proxy, "fb/small", "a" + SUFFIX)
        assert_variant(resp, small[0])
        # b was never queued: asked again, it is converted now.
        resp, _ = pull(proxy, "fb/small", "b" + SUFFIX)
        assert resp.status_code == 200
        wait_for_conversions(proxy, 3)
        resp, _ = pull(proxy, "fb/small", "b" + SUFFIX)
        assert_variant(resp, small[1])


def test_queue_zero_still_converts(tmp_path_factory, registry, small):
    """`variants.queue: 0` (accepted by the config check): no conversion waits for a worker,
    but one that finds a worker free must still run."""
    with start(tmp_path_factory, registry, "proxy-queue0", on_miss="wait", wait_limit="30s",
               workers=1, queue=0) as proxy:
        resp, _ = pull(proxy, "fb/small", "a" + SUFFIX)
        assert_variant(resp, small[0])
