"""Write-back: a variant converted through the proxy is pushed to the real upstream registry
(docker-registry 2.8: no Referrers API, so the spec's fallback tag links it to its source), a
second proxy with an empty cache serves it without converting, and the suffix tag never stays on
a variant of an image the source tag no longer names.

Each test has its own registry and proxies; images are small (two generated layers).
"""
import json
import subprocess
import threading
import time

import pytest
import requests

import images
import variant_env as ve
from hook_front import HookFront
from proxy import upstream
from registry import Registry

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
FORMAT_NOTE = "io.accel-proxy.variant.format"
SOURCE_NOTE = "io.accel-proxy.variant.source"


@pytest.fixture
def registry(tmp_path):
    reg = Registry(tmp_path / "registry", name="registry-writeback").start()
    yield reg
    reg.stop()


def small_layers(tmp_path_factory, seed):
    return [ve.layer_files(tmp_path_factory, f"small-{seed}-a"), ve.layer_files(tmp_path_factory, f"small-{seed}-b")]


def writeback_upstream(url, tag=True):
    return upstream("up", url, writeback={"enabled": True, "tag": tag})


def variants(**extra):
    return ve.variants_config(on_miss="wait", wait_limit="120s", tag_ttl="1s", authorization_ttl="1s", **extra)


def registry_manifest(registry, repo, reference):
    """(status, parsed body, digest) of a manifest read straight from the registry."""
    resp = requests.get(f"{registry.url}/v2/{repo}/manifests/{reference}",
                        headers={"Accept": ve.MANIFEST_ACCEPT}, timeout=30)
    if resp.status_code != 200:
        return resp.status_code, None, None
    return 200, resp.json(), ve.sha256(resp.content)


def fallback_referrers(registry, repo, digest):
    status, body, _ = registry_manifest(registry, repo, digest.replace(":", "-"))
    return body["manifests"] if status == 200 else []


def wait_for_writeback(proxy, count=1, timeout=60):
    ve.wait_until(lambda: ve.metric(proxy, "accel_proxy_writebacks_total", outcome="done") >= count
                  or ve.metric(proxy, "accel_proxy_writebacks_total", outcome="failed") > 0,
                  timeout, "the write-back")
    assert ve.metric(proxy, "accel_proxy_writebacks_total", outcome="failed") == 0, proxy.log_tail()


def test_variant_written_back_linked_tagged_and_served_by_a_second_proxy(tmp_path, tmp_path_factory, registry):
    repo = "wb/app"
    source = ve.push_layers_image(registry.url, requests.Session(), repo, "1", small_layers(tmp_path_factory, "wb1"))
    with ve.running_variant_proxy(tmp_path / "a", [writeback_upstream(registry.url)], variants()) as a:
        got = ve.get_manifest(a, repo, "1-estargz")
        assert got.status_code == 200, got.text[:300]
        variant_digest = ve.sha256(got.content)
        wait_for_writeback(a)
        assert ve.metric(a, "accel_proxy_writeback_tags_total", outcome="tagged") == 1

    # The registry holds the variant by digest, names it its source's, and under the suffix tag.
    status, variant, digest = registry_manifest(registry, repo, variant_digest)
    assert status == 200 and digest == variant_digest
    assert variant["subject"]["digest"] == source.digest
    assert variant["annotations"][FORMAT_NOTE] == "estargz"
    assert variant["annotations"][SOURCE_NOTE] == source.digest
    assert "artifactType" not in variant  # Harbor classifies accessories by config type
    for blob in [variant["config"]] + variant["layers"]:
        head = requests.head(f"{registry.url}/v2/{repo}/blobs/{blob['digest']}", timeout=30)
        assert head.status_code == 200, blob
        assert int(head.headers["Content-Length"]) == blob["size"]
    status, _, tagged = registry_manifest(registry, repo, "1-estargz")
    assert status == 200 and tagged == variant_digest
    # No Referrers API on distribution 2.8: the fallback tag lists it, as the spec describes.
    listed = fallback_referrers(registry, repo, source.digest)
    assert [d["digest"] for d in listed] == [variant_digest]
    assert listed[0]["artifactType"] == OCI_CONFIG
    assert listed[0]["annotations"][SOURCE_NOTE] == source.digest
    assert listed[0]["size"] == len(got.content)

    # A second proxy, empty cache: asked by header (the suffix tag would pass straight through),
    # it finds the upstream's variant and serves it without converting.
    with ve.running_variant_proxy(tmp_path / "b", [upstream("up", registry.url)], variants()) as b:
        again = ve.get_manifest(b, repo, "1", headers={"X-Accel-Format": "estargz"})
        assert again.status_code == 200, again.text[:300]
        assert ve.sha256(again.content) == variant_digest
        assert ve.conversions(b) == 0
        assert ve.metric(b, "accel_proxy_variants_found_upstream_total", format="estargz") == 1
        # Its layers pass through from the upstream, whole and by Range.
        layer = variant["layers"][0]
        blob = requests.get(f"{b.url}/v2/{repo}/blobs/{layer['digest']}", timeout=30)
        assert blob.status_code == 200 and ve.sha256(blob.content) == layer["digest"]
        part = requests.get(f"{b.url}/v2/{repo}/blobs/{layer['digest']}", headers={"Range": "bytes=0-9"}, timeout=30)
        assert part.status_code == 206 and part.content == blob.content[:10]
        # The Referrers API through the proxy lists the variant once (cache and upstream agree).
        refs = requests.get(f"{b.url}/v2/{repo}/referrers/{source.digest}", timeout=30).json()
        assert [d["digest"] for d in refs["manifests"]] == [variant_digest]
        # A second request is a cache hit: still no conversion, no second lookup.
        assert ve.sha256(ve.get_manifest(b, repo, "1", headers={"X-Accel-Format": "estargz"}).content) == variant_digest
        assert ve.metric(b, "accel_proxy_variants_found_upstream_total", format="estargz") == 1
        assert ve.conversions(b) == 0


def test_index_written_back_without_tag_is_found_through_the_fallback_referrers(tmp_path, tmp_path_factory, registry):
    repo = "wb/multi"
    platforms = {"amd64": small_layers(tmp_path_factory, "wbm-amd"), "arm64": small_layers(tmp_path_factory, "wbm-arm")}
    source = ve.push_layers_index(registry.url, requests.Session(), repo, "2", platforms)
    with ve.running_variant_proxy(tmp_path / "a", [writeback_upstream(registry.url, tag=False)], variants()) as a:
        got = ve.get_manifest(a, repo, "2-estargz")
        assert got.status_code == 200, got.text[:300]
        variant_digest = ve.sha256(got.content)
        wait_for_writeback(a)
        assert ve.metric(a, "accel_proxy_writeback_tags_total", outcome="none") == 1
    assert registry_manifest(registry, repo, "2-estargz")[0] == 404  # tag: false
    assert [d["digest"] for d in fallback_referrers(registry, repo, source.digest)] == [variant_digest]
    # Each platform's variant is linked to its own source platform manifest (nydus-snapshotter
    # and containerd ask by the platform manifest's digest).
    variant_children = {c["platform"]["architecture"]: c["digest"] for c in json.loads(got.content)["manifests"]}
    for child in source.children:
        arch = json.loads(child.blobs[json.loads(child.manifest)["config"]["digest"]])["architecture"]
        assert [d["digest"] for d in fallback_referrers(registry, repo, child.digest)] == [variant_children[arch]]

    with ve.running_variant_proxy(tmp_path / "b", [upstream("up", registry.url)], variants()) as b:
        again = ve.get_manifest(b, repo, "2-estargz")
        assert again.status_code == 200 and ve.sha256(again.content) == variant_digest
        assert ve.conversions(b) == 0
        assert ve.metric(b, "accel_proxy_variants_found_upstream_total", format="estargz") == 1
        # The whole variant copies through the second proxy (children and blobs from upstream).
        copy = tmp_path / "copy"
        out = subprocess.run(["skopeo", "copy", "--all", "--src-tls-verify=false",
                                 f"docker://127.0.0.1:{b.port}/{repo}:2-estargz", f"dir:{copy}"],
                                capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr
        assert ve.sha256((copy / "manifest.json").read_bytes()) == variant_digest


class TagWatch:
    """Reads the suffix tag from the registry in a loop and remembers every subject it named."""

    def __init__(self, registry, repo, tag):
        self.registry, self.repo, self.tag = registry, repo, tag
        self.subjects = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            status, body, _ = registry_manifest(self.registry, self.repo, self.tag)
            if status == 200:
                self.subjects.add(body.get("subject", {}).get("digest"))
            time.sleep(0.01)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)


def push_second_image(registry, repo, tmp_path_factory, seed):
    return ve.push_layers_image(registry.url, requests.Session(), repo, "1", small_layers(tmp_path_factory, seed))


def test_source_tag_moved_during_the_conversion(tmp_path, tmp_path_factory, registry):
    """The source tag moves while the variant converts: the suffix tag is not written for the old
    image; the proxy converts the new one and tags that."""
    repo = "race/app"
    old = ve.push_layers_image(registry.url, requests.Session(), repo, "1", small_layers(tmp_path_factory, "race-old"))
    front = HookFront(registry.url, delay=1.0).start()  # blob GETs held back: the conversion takes seconds
    try:
        with ve.running_variant_proxy(tmp_path / "p", [writeback_upstream(front.url)], variants()) as p, \
                TagWatch(registry, repo, "1-estargz") as watch:
            result = {}
            pull = threading.Thread(target=lambda: result.update(r=ve.get_manifest(p, repo, "1-estargz")))
            pull.start()
            ve.wait_until(lambda: any(m == "GET" and "/blobs/" in path for m, path in front.seen), 30,
                          "the conversion to read a blob")
            new = push_second_image(registry, repo, tmp_path_factory, "race-new")
            pull.join(timeout=120)
            # The client asked while the tag named the old image: it gets the old image's variant.
            assert result["r"].status_code == 200
            assert json.loads(result["r"].content)["subject"]["digest"] == old.digest
            ve.wait_until(lambda: ve.metric(p, "accel_proxy_writeback_tags_total", outcome="source-moved") >= 1, 60,
                          "the write-back to notice the move")
            # The new image is converted and tagged in turn.
            ve.wait_until(lambda: registry_manifest(registry, repo, "1-estargz")[0] == 200, 60, "the suffix tag")
            time.sleep(0.2)
        assert watch.subjects == {new.digest}, watch.subjects
        # The old image's variant is still linked to the old image.
        assert len(fallback_referrers(registry, repo, old.digest)) == 1
    finally:
        front.stop()


def test_source_tag_moved_during_the_tag_push_is_repaired(tmp_path, tmp_path_factory, registry):
    """The source tag moves between the proxy's check and its tag PUT (the hook moves it just before
    the PUT reaches the registry): the proxy sees it moved afterwards and takes the suffix tag back
    (distribution 2.8 cannot delete a tag: the variant is deleted by digest and pushed again), then
    tags the new image's variant."""
    repo = "race2/app"
    old = ve.push_layers_image(registry.url, requests.Session(), repo, "1", small_layers(tmp_path_factory, "race2-old"))
    front = HookFront(registry.url).start()
    moved = {}
    front.hook("PUT", rf"^/v2/{repo}/manifests/1-estargz$",
               lambda: moved.update(new=push_second_image(registry, repo, tmp_path_factory, "race2-new")))
    try:
        with ve.running_variant_proxy(tmp_path / "p", [writeback_upstream(front.url)], variants()) as p:
            got = ve.get_manifest(p, repo, "1-estargz")
            assert got.status_code == 200, got.text[:300]
            old_variant = ve.sha256(got.content)
            ve.wait_until(lambda: ve.metric(p, "accel_proxy_writeback_tags_total", outcome="repaired") >= 1, 60,
                          "the repair")
            new = moved["new"]
            # Afterwards: the suffix tag names a variant of the new image (or, for a moment, nothing).
            ve.wait_until(lambda: registry_manifest(registry, repo, "1-estargz")[0] == 200, 60,
                          "the new image's variant to be tagged")
            status, body, _ = registry_manifest(registry, repo, "1-estargz")
            assert body["subject"]["digest"] == new.digest
            # Counted once the proxy has re-resolved the source after its PUT, a moment later.
            ve.wait_until(lambda: ve.metric(p, "accel_proxy_writeback_tags_total", outcome="tagged") >= 1, 30,
                          "the tag write to be counted")
            assert ve.metric(p, "accel_proxy_writeback_tags_total", outcome="unrepaired") == 0
        # The old variant is still there by digest and still linked to the old image.
        assert registry_manifest(registry, repo, old_variant)[0] == 200
        assert [d["digest"] for d in fallback_referrers(registry, repo, old.digest)] == [old_variant]
    finally:
        front.stop()


def test_concurrent_write_backs_of_one_source_both_land_in_its_fallback_referrers_tag(tmp_path, tmp_path_factory, registry):
    """Two variants of one image written back at once (eStargz and Nydus) both end up listed in the
    source's fallback referrers tag. The registry keeps only the last write of a tag, so the proxy
    must not let two writers read the index before either wrote it: the front holds the first
    read of the tag until a second one arrives (or 3 s pass), which without the proxy's lock makes
    both writers read the same index; with it, reads and writes of the tag never interleave."""
    repo = "two/app"
    source = ve.push_layers_image(registry.url, requests.Session(), repo, "1", small_layers(tmp_path_factory, "two"))
    fallback = source.digest.replace(":", "-")
    tag_path = f"/v2/{repo}/manifests/{fallback}"
    front = HookFront(registry.url).start()

    def hold_first_read():
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and sum(1 for m, p in front.seen if m == "GET" and p == tag_path) < 2:
            time.sleep(0.02)

    front.hook("GET", rf"^{tag_path}$", hold_first_read)
    try:
        with ve.running_variant_proxy(tmp_path / "p", [writeback_upstream(front.url, tag=False)], variants()) as p:
            results = {}
            pulls = [threading.Thread(target=lambda s=suffix: results.update({s: ve.get_manifest(p, repo, f"1-{s}")}))
                     for suffix in ("estargz", "nydus")]
            for t in pulls:
                t.start()
            for t in pulls:
                t.join(timeout=180)
            variant_digests = set()
            for suffix in ("estargz", "nydus"):
                assert results[suffix].status_code == 200, results[suffix].text[:300]
                variant_digests.add(ve.sha256(results[suffix].content))
            wait_for_writeback(p, count=2)
        listed = {d["digest"] for d in fallback_referrers(registry, repo, source.digest)}
        assert listed == variant_digests
        # The tag's requests, in arrival order: between two writes of the index there is the first
        # writer's read-back and the second writer's own read; interleaved writers would show fewer.
        order = [m for m, p in front.seen if p == tag_path and m in ("GET", "PUT")]
        puts = [i for i, m in enumerate(order) if m == "PUT"]
        assert len(puts) == 2, order
        assert order[puts[0] + 1:puts[1]].count("GET") >= 2, order
    finally:
        front.stop()
