"""Single flight: many clients asking for the same uncached variant cause one conversion, and
a layer shared by several images (same repository, another repository, two conversions at
once) is fetched and converted once, while every variant that uses it stays whole (also after
the shared layer is evicted).

Upstream fetches are counted in the registry's access log (variant_env.RegistryLog: one
Apache-style line per request, which docker-registry writes even at log level warn).
"""
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from proxy import upstream
from registry import Registry
import variant_env as ve
from variant_env import FORMAT, SUFFIX

CLIENTS = 20


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("sf-registry"), name="registry-singleflight").start()
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return {name: ve.layer_files(tmp_path_factory, name)
            for name in ("debian_like", "few_large", "adversarial", "small-b", "small-c",
                         "small-d", "small-e")}


@pytest.fixture(scope="module")
def vproxy(tmp_path_factory, registry):
    variants = ve.variants_config(on_miss="wait", wait_limit="120s", workers=2)
    with ve.running_variant_proxy(tmp_path_factory.mktemp("proxy-sf"),
                                  [upstream("main", registry.url)], variants) as p:
        yield p


def push(registry, repo, tag, layer_pairs, seed):
    return ve.push_layers_image(registry.url, requests.Session(), repo, tag, layer_pairs,
                                seed=seed)


def layer_digests(image):
    return [l["digest"] for l in json.loads(image.manifest)["layers"]]


def conversion_lines(proxy, repo):
    return [l for l in proxy.service.log_text().splitlines()
            if "conversion done" in l and f" repo={repo} " in l]


def test_concurrent_requests_share_one_conversion(vproxy, registry, files):
    image = push(registry, "sf/app", "a", [files["debian_like"], files["few_large"]], "sf-a")
    log = ve.RegistryLog(registry)
    mark = log.mark()
    barrier = threading.Barrier(CLIENTS)

    def pull(_):
        barrier.wait()
        r = ve.get_manifest(vproxy, "sf/app", "a" + SUFFIX, timeout=180)
        return r.status_code, r.headers.get("Docker-Content-Digest"), ve.sha256(r.content)

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(pull, range(CLIENTS)))
    statuses = {s for s, _, _ in results}
    assert statuses == {200}, results
    digests = {d for _, d, _ in results} | {b for _, _, b in results}
    assert len(digests) == 1, f"clients got different manifests: {digests}"
    assert digests != {image.digest}, "the clients got the original image"

    assert ve.conversions(vproxy, "done") == 1
    assert ve.conversions(vproxy) == 1
    joins = ve.metric(vproxy, "accel_proxy_conversion_joins_total", format=FORMAT)
    assert joins >= 1, "no request joined the conversion under way"
    hits = ve.metric(vproxy, "accel_proxy_cache_hits_total", kind="manifest")
    misses = ve.metric(vproxy, "accel_proxy_cache_misses_total", format=FORMAT)
    assert misses >= 1 + joins and misses + hits >= CLIENTS
    assert ve.metric(vproxy, "accel_proxy_conversion_queue_depth") == 0

    time.sleep(0.2)
    gets = log.blob_gets(mark)
    for digest in layer_digests(image):
        assert gets[digest] == 1, f"layer {digest} fetched {gets[digest]} times"
    # The whole variant is then readable by every client.
    ve.converted_objects(vproxy, "sf/app", "a" + SUFFIX)


def test_shared_base_layer_is_converted_once(vproxy, registry, files):
    """b shares debian_like with a (converted by the test above, or here first)."""
    a = push(registry, "sf/app", "a", [files["debian_like"], files["few_large"]], "sf-a")
    b = push(registry, "sf/app", "b", [files["debian_like"], files["small-b"]], "sf-b")
    log = ve.RegistryLog(registry)
    assert ve.get_manifest(vproxy, "sf/app", "a" + SUFFIX).status_code == 200
    mark = log.mark()
    before = len(conversion_lines(vproxy, "sf/app"))
    objects = ve.converted_objects(vproxy, "sf/app", "b" + SUFFIX)
    lines = conversion_lines(vproxy, "sf/app")[before:]
    assert len(lines) == 1 and "layers_converted=1 layers_reused=1" in lines[0], lines
    time.sleep(0.2)
    gets = log.blob_gets(mark)
    base = layer_digests(a)[0]
    assert layer_digests(b)[0] == base
    assert gets[base] == 0, "the shared layer was fetched again"
    assert gets[layer_digests(b)[1]] == 1
    # Same converted base layer in both variants.
    a_layers = [d for k, d, _ in ve.converted_objects(vproxy, "sf/app", "a" + SUFFIX) if k == "blob"]
    b_layers = [d for k, d, _ in objects if k == "blob"]
    assert set(a_layers) & set(b_layers), "the variants do not share the converted base layer"


def test_shared_base_layer_across_repositories(vproxy, registry, files):
    """c lives in another repository and shares debian_like with sf/app: the conversion reuses
    the converted layer, and a client of sf/other must be able to read all of c's variant."""
    push(registry, "sf/app", "a", [files["debian_like"], files["few_large"]], "sf-a")
    assert ve.get_manifest(vproxy, "sf/app", "a" + SUFFIX).status_code == 200
    c = push(registry, "sf/other", "c", [files["debian_like"], files["small-c"]], "sf-c")
    log = ve.RegistryLog(registry)
    mark = log.mark()
    resp = ve.get_manifest(vproxy, "sf/other", "c" + SUFFIX)
    assert resp.status_code == 200 and ve.sha256(resp.content) != c.digest
    lines = conversion_lines(vproxy, "sf/other")
    assert len(lines) == 1 and "layers_reused=1" in lines[0], lines
    time.sleep(0.2)
    assert log.blob_gets(mark)[layer_digests(c)[0]] == 0, "the shared layer was fetched again"
    manifest = resp.json()
    for d in [manifest["config"]] + manifest["layers"]:
        r = requests.get(f"{vproxy.url}/v2/sf/other/blobs/{d['digest']}", timeout=60)
        assert r.status_code == 200, \
            f"sf/other@{d['digest']} ({d['mediaType']}): {r.status_code} {r.text[:200]}"
        assert ve.sha256(r.content) == d["digest"]


def test_concurrent_conversions_share_a_new_layer(vproxy, registry, files):
    """d and e (different tags) both need adversarial, converted by no one yet; requested at
    the same moment, the layer is fetched and converted once."""
    d = push(registry, "sf/pair", "d", [files["adversarial"], files["small-d"]], "sf-d")
    e = push(registry, "sf/pair", "e", [files["small-e"], files["adversarial"]], "sf-e")
    log = ve.RegistryLog(registry)
    mark = log.mark()
    barrier = threading.Barrier(2)

    def pull(tag):
        barrier.wait()
        return ve.get_manifest(vproxy, "sf/pair", tag + SUFFIX, timeout=180)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(pull, ["d", "e"]))
    assert [r.status_code for r in results] == [200, 200]
    time.sleep(0.2)
    gets = log.blob_gets(mark)
    shared = layer_digests(d)[0]
    assert layer_digests(e)[1] == shared
    assert gets[shared] == 1, f"the shared layer was fetched {gets[shared]} times"
    lines = conversion_lines(vproxy, "sf/pair")
    assert len(lines) == 2
    assert sum("layers_reused=1" in l for l in lines) == 1, lines
    for tag in ("d", "e"):
        ve.converted_objects(vproxy, "sf/pair", tag + SUFFIX)


def test_evicting_a_shared_layer_keeps_other_variants_whole(tmp_path_factory, registry):
    """a = [L1, L2] and b = [L1, L3] (one repository); b's conversion reuses a's converted L1.
    cache_max_bytes holds about two and a half layers, and L1 is the least recently used blob
    when b's conversion ends, so it is evicted then. Whatever the proxy serves for b's variant
    afterwards must be complete: every blob its manifest names can be fetched."""
    size = 200_000
    l1, l2, l3 = (ve.random_layer(f"shared-evict-{n}", size) for n in (1, 2, 3))
    s = requests.Session()
    ve.push_bytes_image(registry.url, s, "sf/evict", "a", [l1, l2], seed="ev-a")
    ve.push_bytes_image(registry.url, s, "sf/evict", "b", [l1, l3], seed="ev-b")
    variants = ve.variants_config(on_miss="wait", wait_limit="60s", cache_max_bytes=size * 5 // 2)
    with ve.running_variant_proxy(tmp_path_factory.mktemp("proxy-sf-evict"),
                                  [upstream("main", registry.url)], variants) as proxy:
        a_objects = ve.converted_objects(proxy, "sf/evict", "a" + SUFFIX)
        a_layer1 = json.loads(a_objects[0][2])["layers"][0]["digest"]
        time.sleep(0.05)
        for kind, digest, _ in a_objects:   # everything of a but L1 is used again: L1 is oldest
            if digest != a_layer1:
                path = "manifests" if kind == "manifest" else "blobs"
                assert requests.get(f"{proxy.url}/v2/sf/evict/{path}/{digest}",
                                    headers={"Accept": ve.MANIFEST_ACCEPT},
                                    timeout=30).status_code == 200
        time.sleep(0.05)
        resp = ve.get_manifest(proxy, "sf/evict", "b" + SUFFIX)
        assert resp.status_code == 200, f"b's own conversion: {resp.status_code} {resp.text[:200]}"
        assert ve.metric(proxy, "accel_proxy_cache_evictions_total") >= 1, "nothing was evicted"
        assert "layers_reused=1" in proxy.service.log_text()
        # b's variant, as served now, is whole.
        b = ve.get_manifest(proxy, "sf/evict", "b" + SUFFIX).json()
        for d in [b["config"]] + b["layers"]:
            r = requests.get(f"{proxy.url}/v2/sf/evict/blobs/{d['digest']}", timeout=30)
            assert r.status_code == 200, \
                f"b's variant names {d['digest']} ({d['mediaType']}), which answers " \
                f"{r.status_code}: {r.text[:200]}"
