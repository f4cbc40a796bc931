"""Learned prefetch, the whole loop through the proxy against a real docker-registry (issue 14,
acceptance 1), for an eStargz and a Nydus variant of one image:

1. Two simulated start-ups (lazy_reader.py: footer and TOC, or the bootstrap layer, then the
   chunks of the files a start-up reads, widened to stargz-snapshotter's 50,000-byte windows for
   eStargz) by two clients (other credentials), each with a background fetch interleaved
   (stargz-snapshotter's background fetcher, nydusd's prefetch-all: the layer from its first
   byte on). Each reads four files both read, and one the other does not.
2. The proxy learns the four files, in first-read order (GET /api/prefetch), and on the next
   request of the image converts the variant again with them; then the suffix tag resolves to a
   new variant whose prefetch region (eStargz: regular files before `.prefetch.landmark`, in
   TOC order) or prefetch table (Nydus, read from the bootstrap here) holds exactly those files
   in that order. The background traffic changed nothing (and was there: the proxy's log counts
   it as background reads).
3. The old variant still pulls by digest, manifest and blobs.
4. A third start-up of the new variant makes one request for all the prefetched files.
5. A restart keeps the learned list and the optimized variant; /metrics counts optimizations.
6. A repository with a prefetch rule in the config: its start-ups are learned, but the config
   wins (state `configured`, nothing converted).
7. Off (`learn_prefetch.enabled: false`): no API, no metrics, nothing learned.
"""
import base64
import hashlib
import json
import random
import re
import threading
import time

import pytest
import requests

import images
import lazy_reader as lr
import variant_env as ve
from proxy import upstream
from registry import Registry

REPO = "learn/app"
CONFIGURED_REPO = "learn/configured"
TAG = "v1"
WINDOW = "2s"
BIG = [f"/usr/lib/app/m{i:02d}a.so" for i in range(24)]
# Both start-ups read these four (first in this order); each reads one more the other does not.
SHARED = [BIG[14], BIG[9], BIG[20], BIG[12]]
READ_1 = [BIG[14], BIG[9], BIG[17], BIG[20], BIG[12]]
READ_2 = [BIG[14], BIG[9], BIG[20], BIG[22], BIG[12]]
AUTH = {name: "Basic " + base64.b64encode(f"{name}:pw".encode()).decode()
        for name in ("alice", "bob", "carol", "dave")}


def layer_files():
    """Incompressible files of 60-140 KB (each crosses a 50,000-byte window, so a read of one
    is told apart from its neighbours), with small text files between them."""
    rng = random.Random("learned-prefetch")
    files = {}
    for i, path in enumerate(BIG):
        files[path.lstrip("/")] = rng.randbytes(rng.randrange(60_000, 140_000))
        files[f"usr/lib/app/m{i:02d}b.txt"] = (f"notes for module {i}\n" * rng.randrange(5, 60)).encode()
    return files


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("learn-registry"), name="registry-learn").start()
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def source(registry):
    pairs = [images.make_layer(layer_files())]
    session = requests.Session()
    ve.push_bytes_image(registry.url, session, CONFIGURED_REPO, TAG, pairs, seed="learn")
    return ve.push_bytes_image(registry.url, session, REPO, TAG, pairs, seed="learn")


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, registry, source):
    variants = ve.variants_config(on_miss="wait", learn_prefetch={"enabled": True, "startups": 2, "window": WINDOW},
                                  prefetch=[{"repositories": [CONFIGURED_REPO], "files": [BIG[3]]}])
    with ve.running_variant_proxy(tmp_path_factory.mktemp("learn-proxy"), [upstream("reg", registry.url)],
                                  variants) as p:
        yield p


def learned(proxy, source_digest, fmt, repo=REPO):
    resp = requests.get(f"{proxy.url}/api/prefetch/reg/{repo}@{source_digest}", timeout=10)
    if resp.status_code == 404:
        return None
    assert resp.status_code == 200, resp.text
    for image in resp.json()["images"]:
        if image["format"] == fmt:
            return image
    return None


def wait_state(proxy, source_digest, fmt, state, repo=REPO, timeout=60):
    return ve.wait_until(lambda: (lambda i: i if i and i["state"] == state else None)(
        learned(proxy, source_digest, fmt, repo)), timeout, f"{fmt} {repo} state {state}", interval=0.1)


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---- the simulated start-ups --------------------------------------------------------------

def estargz_startup(proxy, auth, files, repo=REPO, background=True):
    """A stargz-snapshotter start-up: returns (manifest digest, layer reader, client)."""
    client = lr.Client(proxy.url, auth)
    digest, manifest = lr.image_manifest(client, repo, TAG + "-estargz")
    layer = lr.EstargzLayer(client, repo, manifest["layers"][0]).open()
    layer.prefetch()
    stop, thread = threading.Event(), None
    if background:  # eight windows from the first byte, while the files are read
        thread = threading.Thread(target=lr.background_scan, args=(layer, stop), kwargs={"pace": 0.04, "steps": 8})
        thread.start()
    for path in files:
        assert layer.has(path), path
        layer.read_file(path)
        time.sleep(0.05)
    if thread:
        thread.join(timeout=30)
    return digest, layer, client


def nydus_startup(proxy, auth, files, repo=REPO, background=True):
    """A nydusd start-up: returns (manifest digest, image reader, client)."""
    client = lr.Client(proxy.url, auth)
    digest, manifest = lr.image_manifest(client, repo, TAG + "-nydus")
    image = lr.NydusImage(client, repo, manifest).open()
    prefetched = image.prefetch()
    stop, thread = threading.Event(), None
    if background:
        thread = threading.Thread(target=lr.background_prefetch_all, args=(image, stop),
                                  kwargs={"run": 60_000, "pace": 0.04, "steps": 8})
        thread.start()
    for path in files:
        assert image.has(path), path
        image.read_file(path)
        time.sleep(0.05)
    if thread:
        thread.join(timeout=30)
    return digest, image, client, prefetched


def requests_touching(client, extents):
    """The ranged blob requests of `client` that overlap any (digest, begin, end) extent."""
    out = []
    for kind, digest, rng in client.log:
        if kind != "blob" or not rng:
            continue
        first, last = (int(x) for x in rng[len("bytes="):].split("-"))
        if any(d == digest and first < e and b <= last for d, b, e in extents):
            out.append(rng)
    return out


def background_lines(proxy, fmt):
    log = (proxy.workdir / "accel-proxy.log").read_text()
    return [int(m.group(1)) for m in
            re.finditer(r"prefetch start-up recorded image=\S+\|" + fmt + r" .*background_reads=(\d+)", log)]


# ---- the tests ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def estargz_learned(proxy, source):
    old, _, _ = estargz_startup(proxy, AUTH["alice"], READ_1)
    old2, _, _ = estargz_startup(proxy, AUTH["bob"], READ_2)
    assert old == old2
    image = wait_state(proxy, source.digest, "estargz", "learned")
    return old, image


@pytest.fixture(scope="module")
def nydus_learned(proxy, source):
    old, _, _, _ = nydus_startup(proxy, AUTH["alice"], READ_1)
    old2, _, _, _ = nydus_startup(proxy, AUTH["bob"], READ_2)
    assert old == old2
    image = wait_state(proxy, source.digest, "nydus", "learned")
    return old, image


def optimize(proxy, source, fmt, old):
    """The next request of the image starts the optimization; then the suffix tag moves."""
    resp = ve.get_manifest(proxy, REPO, f"{TAG}-{fmt}", auth=AUTH["dave"])
    assert resp.status_code == 200 and resp.headers["Docker-Content-Digest"] == old
    image = wait_state(proxy, source.digest, fmt, "optimized", timeout=120)
    resp = ve.get_manifest(proxy, REPO, f"{TAG}-{fmt}", auth=AUTH["dave"])
    assert resp.status_code == 200
    new = resp.headers["Docker-Content-Digest"]
    assert new != old and new == image["variant"]
    return new, image


def assert_old_variant_pulls(proxy, old):
    client = lr.Client(proxy.url, AUTH["carol"])
    digest, body = client.manifest(REPO, old)
    assert digest == old and sha256(body) == old
    for layer in json.loads(body)["layers"]:
        assert sha256(client.blob(REPO, layer["digest"])) == layer["digest"]


def test_estargz_learned_and_optimized(proxy, source, estargz_learned):
    old, image = estargz_learned
    assert image["files"] == SHARED
    assert image["startups_agreeing"] == 2 and image["startups_recorded"] == 2
    # The background fetches were there, and left out.
    lines = background_lines(proxy, "estargz")
    assert len(lines) >= 2 and min(lines[:2]) >= 8, lines

    new, image = optimize(proxy, source, "estargz", old)
    assert image["files"] == SHARED
    # The new variant's prefetch region holds exactly the learned files, in first-read order.
    client = lr.Client(proxy.url, AUTH["carol"])
    _, manifest = lr.image_manifest(client, REPO, new)
    layer = lr.EstargzLayer(client, REPO, manifest["layers"][0]).open(probe=False)
    assert layer.prefetched_files() == SHARED
    assert_old_variant_pulls(proxy, old)

    # A third start-up of the new variant: one request brings every prefetched file.
    digest, third, client = estargz_startup(proxy, AUTH["carol"], SHARED, background=False)
    assert digest == new
    extents = [(third.digest, b, e) for p in SHARED for b, e in third.chunks[p]]
    touching = requests_touching(client, extents)
    # stargz-snapshotter's prefetch: [0, landmark) widened to its windows.
    window_end = min(-(-third.landmark // lr.WINDOW) * lr.WINDOW, third.size)
    assert touching == [f"bytes=0-{window_end - 1}"], touching
    assert ve.metric(proxy, "accel_proxy_prefetch_optimizations_total", format="estargz") == 1


def test_nydus_learned_and_optimized(proxy, source, nydus_learned):
    old, image = nydus_learned
    assert image["files"] == SHARED
    assert image["startups_agreeing"] == 2
    lines = background_lines(proxy, "nydus")
    assert len(lines) >= 2 and min(lines[:2]) >= 8, lines

    new, image = optimize(proxy, source, "nydus", old)
    client = lr.Client(proxy.url, AUTH["carol"])
    _, manifest = lr.image_manifest(client, REPO, new)
    nydus = lr.NydusImage(client, REPO, manifest).open()
    # The bootstrap's prefetch table holds exactly the learned files, in first-read order, and
    # their chunks open the blob, one contiguous run.
    assert nydus.bootstrap.prefetch == SHARED
    chunks = [c for p in SHARED for c in nydus.bootstrap.files[p]]
    assert [c[1] for c in chunks] == sorted(c[1] for c in chunks) and chunks[0][1] == 0
    assert len(lr.merged_runs(chunks)) == 1
    assert_old_variant_pulls(proxy, old)

    digest, third, client, prefetched = nydus_startup(proxy, AUTH["carol"], SHARED, background=False)
    assert digest == new and prefetched == 1
    assert len(requests_touching(client, [(b, o, o + s) for b, o, s in chunks])) == 1
    assert ve.metric(proxy, "accel_proxy_prefetch_optimizations_total", format="nydus") == 1


def test_restart_keeps_the_learned_lists(proxy, source, estargz_learned, nydus_learned):
    before = {fmt: learned(proxy, source.digest, fmt) for fmt in ("estargz", "nydus")}
    assert all(b and b["state"] == "optimized" for b in before.values()), before
    ve.kill(proxy)
    ve.restart(proxy)
    for fmt in ("estargz", "nydus"):
        after = learned(proxy, source.digest, fmt)
        assert after["state"] == "optimized" and after["files"] == SHARED
        resp = ve.get_manifest(proxy, REPO, f"{TAG}-{fmt}", auth=AUTH["dave"])
        assert resp.headers["Docker-Content-Digest"] == before[fmt]["variant"]
    listing = requests.get(f"{proxy.url}/api/prefetch", timeout=10).json()["images"]
    assert {(i["repository"], i["format"]) for i in listing} >= {(REPO, "estargz"), (REPO, "nydus")}


def test_a_configured_prefetch_list_wins(proxy, source):
    configured_source = ve.head_manifest(proxy, CONFIGURED_REPO, TAG).headers["Docker-Content-Digest"]
    first, _, _ = estargz_startup(proxy, AUTH["alice"], READ_1, repo=CONFIGURED_REPO, background=False)
    estargz_startup(proxy, AUTH["bob"], READ_2, repo=CONFIGURED_REPO, background=False)
    image = wait_state(proxy, configured_source, "estargz", "configured", repo=CONFIGURED_REPO)
    assert set(SHARED) <= set(image["files"])  # learned (with what the configured prefetch brought)
    conversions = ve.conversions(proxy)
    resp = ve.get_manifest(proxy, CONFIGURED_REPO, f"{TAG}-estargz", auth=AUTH["dave"])
    assert resp.headers["Docker-Content-Digest"] == first
    time.sleep(1)
    assert ve.conversions(proxy) == conversions
    assert learned(proxy, configured_source, "estargz", CONFIGURED_REPO)["state"] == "configured"
    # The variant it serves has the configured file alone before its landmark.
    client = lr.Client(proxy.url, AUTH["carol"])
    _, manifest = lr.image_manifest(client, CONFIGURED_REPO, first)
    layer = lr.EstargzLayer(client, CONFIGURED_REPO, manifest["layers"][0]).open(probe=False)
    assert layer.prefetched_files() == [BIG[3]]


def test_the_api_checks_its_input(proxy, source):
    assert requests.get(f"{proxy.url}/api/prefetch/reg/{REPO}@sha256:{'0' * 64}", timeout=10).status_code == 404
    assert requests.get(f"{proxy.url}/api/prefetch/reg/{REPO}@nonsense", timeout=10).status_code == 400
    assert requests.post(f"{proxy.url}/api/prefetch", timeout=10).status_code == 405


def test_off_records_nothing(tmp_path, registry, source):
    variants = ve.variants_config(on_miss="wait", learn_prefetch={"enabled": False})
    with ve.running_variant_proxy(tmp_path, [upstream("reg", registry.url)], variants) as off:
        estargz_startup(off, AUTH["alice"], READ_1, background=False)
        resp = requests.get(f"{off.url}/api/prefetch", timeout=10)
        assert resp.status_code == 404
        assert "accel_proxy_prefetch" not in requests.get(f"{off.url}/metrics", timeout=10).text
