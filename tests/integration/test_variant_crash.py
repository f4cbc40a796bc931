"""kill -9 of the proxy while it converts and while it evicts: the cache directory stays
consistent (`cache-crash-driver check` and an independent walk of the raw LMDB index against the
files, see variant_env.cache_problems), and a proxy restarted on it serves correct variants.
"""
import itertools
import random
import threading
import time

import pytest
import requests

import estargz_tools as et
import skopeo
from proxy import upstream
from registry import Registry
import variant_env as ve
from variant_env import SUFFIX


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("crash-registry"), name="registry-crash").start()
    yield reg
    reg.stop()


def fresh_proxy(tmp_path_factory, registry, name, **variants):
    return ve.running_variant_proxy(tmp_path_factory.mktemp(name),
                                    [upstream("main", registry.url)],
                                    ve.variants_config(**variants))


def log_since(proxy, offset):
    return proxy.service.log_text()[offset:]


def assert_consistent(proxy, when):
    problems, index = ve.cache_problems(ve.cache_dir(proxy))
    assert problems == [], f"cache inconsistent {when}: {problems}"
    leftovers = list((ve.cache_dir(proxy) / "blobs" / "tmp").iterdir()) \
        if (ve.cache_dir(proxy) / "blobs" / "tmp").exists() else []
    assert leftovers == [], f"temporary files left {when}: {leftovers}"
    return index


def test_kill_during_conversion(tmp_path_factory, registry, tmp_path):
    """A ~60 MiB mixed layer (few_large) after debian_like, compressed on one thread at level
    9 (about 2 s for few_large alone here); the proxy is killed at three moments of the
    conversion, the cache is checked, the proxy restarted on it; the last run converts to the
    end and verifies. A layer converted before a kill is reused after it, so every kill comes
    before few_large's uninterrupted conversion could end."""
    pairs = [ve.layer_files(tmp_path_factory, "debian_like"),
             ve.layer_files(tmp_path_factory, "few_large")]
    source = ve.push_layers_image(registry.url, requests.Session(), "crash/big", "1", pairs,
                                  seed="crash")
    with fresh_proxy(tmp_path_factory, registry, "proxy-crash-convert", on_miss="reject",
                     threads=1, compression_level=9, workers=1) as proxy:
        mid_conversion_kills = 0
        for delay in (0.4, 1.0, 1.6):
            offset = len(proxy.service.log_text())
            r = ve.get_manifest(proxy, "crash/big", "1" + SUFFIX)
            assert r.status_code == 404, "reject mode answers 404 while converting"
            time.sleep(delay)
            ve.kill(proxy)
            if "conversion done" not in log_since(proxy, offset):
                mid_conversion_kills += 1
            assert_consistent(proxy, f"after a kill {delay}s into the conversion")
            ve.restart(proxy)
        assert mid_conversion_kills >= 2, "the conversion ended before the kills"

        # Now let it finish: reject answers 404 until the variant is there. (Waiting for the
        # variant, not for a log line: a conversion that ended just before the last kill leaves
        # nothing more to log.)
        ve.wait_until(lambda: ve.get_manifest(proxy, "crash/big", "1" + SUFFIX).status_code == 200,
                      120, "the conversion after the restarts", interval=0.2)
        copy = skopeo.copy_to_dir(f"127.0.0.1:{proxy.port}/crash/big:1{SUFFIX}", tmp_path / "copy")
        assert copy.returncode == 0, copy.stderr
        digest, _ = ve.verify_converted_copy(tmp_path / "copy", source, et.build_tools(), tmp_path)
        assert digest != source.digest
        ve.kill(proxy)
        index = assert_consistent(proxy, "after the conversion")
        assert any(v.get("d") == digest for v in index["manifest_variants"].values()), \
            "the variant is not in the index"
        ve.restart(proxy)
        # Still there after a restart: no conversion needed.
        r = ve.get_manifest(proxy, "crash/big", "1" + SUFFIX)
        assert r.status_code == 200 and ve.sha256(r.content) == digest
        assert ve.conversions(proxy) == 0


EVICTION_IMAGES = 12
LAYER_BYTES = 200_000


@pytest.fixture(scope="module")
def small_images(registry):
    """Many images of one incompressible ~200 KB layer each, in one repository."""
    tags = []
    for n in range(EVICTION_IMAGES):
        ve.push_bytes_image(registry.url, requests.Session(), "crash/evict", f"t{n}",
                            [ve.random_layer(f"evict-{n}", LAYER_BYTES)], seed=f"evict-{n}")
        tags.append(f"t{n}")
    return tags


def test_kill_during_eviction(tmp_path_factory, registry, small_images):
    """cache_max_bytes holds about 3 variants, so every conversion evicts; a client converts
    one tag after another while the proxy is killed at random moments."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    limit = 3 * LAYER_BYTES + 20_000
    # Round and round: with room for about 3 variants, a tag asked again was evicted meanwhile
    # and is converted again.
    tags = itertools.cycle(small_images)
    evictions = 0
    with fresh_proxy(tmp_path_factory, registry, "proxy-crash-evict", on_miss="wait",
                     wait_limit="30s", cache_max_bytes=limit, workers=2) as proxy:
        for round_ in range(5):
            stop = threading.Event()
            done = []

            def client():
                for tag in tags:
                    if stop.is_set():
                        return
                    try:
                        r = ve.get_manifest(proxy, "crash/evict", tag + SUFFIX, timeout=30)
                        done.append((tag, r.status_code))
                    except requests.RequestException:
                        return

            thread = threading.Thread(target=client)
            thread.start()
            time.sleep(rng.uniform(0.3, 1.0))
            evictions += ve.metric(proxy, "accel_proxy_cache_evictions_total")
            stop.set()
            ve.kill(proxy)
            thread.join(timeout=30)
            assert done, f"no conversion finished in round {round_} (seed {seed})"
            assert all(s == 200 for _, s in done), f"round {round_}: {done} (seed {seed})"
            index = assert_consistent(proxy, f"after kill {round_ + 1} (seed {seed})")
            held = sum(e["s"] for e in index["blobs"].values())
            assert held <= limit + 2 * (LAYER_BYTES + 50_000), f"the cache holds {held} bytes"
            ve.restart(proxy)
        assert evictions >= 3, "conversions did not evict"

        # After all that, the proxy converts and serves a variant whole.
        tag = next(tags)
        objects = ve.converted_objects(proxy, "crash/evict", tag + SUFFIX)
        assert len(objects) == 3
    assert ve.cache_problems(ve.cache_dir(proxy))[0] == []
