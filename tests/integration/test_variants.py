"""Convert on pull, end to end: a client asks for `<tag>-estargz` (or sends the mirror header,
or an Accept parameter) and gets an eStargz image converted from `<tag>`, cached for next time.

1. skopeo copies the variant of a 2-platform index of real layers (debian_like + adversarial
   and debian_like + a small layer): every blob verifies, every layer carries the eStargz
   annotations and passes the reference checker against its source layer, configs have the
   new diff_ids. Each source layer is fetched once from the upstream (its access log); the
   second pull is a cache hit: hit counters grow, no conversion, no blob GET upstream.
2. The same through a token registry (alice, skopeo --src-creds, token_proxy): same digests.
3. Asking without the suffix: `X-Accel-Format: estargz` (with requests, and with containerd
   1.6's hosts.toml `header` when containerd is installed) and `Accept: ...;accel-format=estargz`;
   the Accept lists containerd and skopeo send by default still get the original bytes; a
   manifest asked for by digest is always those bytes, header or not (containerd pulls
   `image@sha256:...` through the same hosts.toml).
4. Edges: a missing tag, an upstream tag that ends in -estargz, an image already in eStargz, a
   tag moved upstream, `variants.enabled: false`.

containerd is optional (Debian's `containerd` package): without it, or where it cannot run,
the containerd tests are skipped and the header is covered by the requests tests alone.
"""
import json
import os
import time

import pytest
import requests

import estargz_tools as et
import images
import registry_auth
import skopeo
from proxy import upstream
from registry import Registry, TokenAuth
from token_server import USERS
import variant_env as ve
from variant_env import FORMAT, SUFFIX

REPO = "e2e/rootfs"
TAG = "v1"


@pytest.fixture(scope="module")
def tools():
    return et.build_tools()


@pytest.fixture(scope="module")
def platforms(tmp_path_factory):
    debian = ve.layer_files(tmp_path_factory, "debian_like")
    adversarial = ve.layer_files(tmp_path_factory, "adversarial")
    small = ve.layer_files(tmp_path_factory, "small-arm64")
    # debian_like is in both platforms: it is fetched and converted once.
    return {"amd64": [debian, adversarial], "arm64": [debian, small]}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("variants-registry"), name="registry-variants").start()
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def source(registry, platforms):
    return ve.push_layers_index(registry.url, requests.Session(), REPO, TAG, platforms,
                                seed="e2e")


@pytest.fixture(scope="module")
def vproxy(tmp_path_factory, registry, source):
    variants = ve.variants_config(on_miss="wait", wait_limit="120s", authorization_ttl="2s", tag_ttl="1s")
    with ve.running_variant_proxy(tmp_path_factory.mktemp("proxy-variants"),
                                  [upstream("main", registry.url)], variants) as p:
        yield p


@pytest.fixture(scope="module")
def checked_layers():
    """Converted layer digest -> diff_id, for layers the reference checker accepted."""
    return {}


def host(proxy):
    return f"127.0.0.1:{proxy.port}"


def source_layer_digests(image):
    return set(ve.source_layers(image))


# ---- 1. skopeo, open registry --------------------------------------------------------------

def test_skopeo_pull_converts_then_second_pull_is_a_cache_hit(vproxy, registry, source, tools,
                                                             checked_layers, tmp_path):
    log = ve.RegistryLog(registry)
    mark = log.mark()
    ref = f"{host(vproxy)}/{REPO}:{TAG}{SUFFIX}"

    first = skopeo.copy_to_dir(ref, tmp_path / "first")
    assert first.returncode == 0, first.stderr
    digest, needed = ve.verify_converted_copy(tmp_path / "first", source, tools, tmp_path,
                                              checked_layers)
    assert digest != source.digest
    # Children, configs and the 4 layers (3 distinct, debian_like shared).
    assert len(needed) == 1 + 2 + 2 + 3
    assert ve.conversions(vproxy, "done") == 1
    assert ve.conversions(vproxy, "failed") == 0
    assert ve.metric(vproxy, "accel_proxy_cache_misses_total", format=FORMAT) >= 1

    # The conversion read each source layer from the upstream exactly once.
    gets = log.blob_gets(mark)
    for layer in source_layer_digests(source):
        assert gets[layer] == 1, f"source layer {layer} fetched {gets[layer]} times"
    assert "layers_reused=1" in vproxy.service.log_text(), "debian_like was converted twice"

    # The proxy answers the variant tag with the converted index (HEAD too).
    head = ve.head_manifest(vproxy, REPO, TAG + SUFFIX)
    assert head.status_code == 200
    assert head.headers["Docker-Content-Digest"] == digest
    assert head.headers["Content-Type"] == images.OCI_INDEX

    # Second pull: served from the cache.
    hits_before = {k: ve.metric(vproxy, "accel_proxy_cache_hits_total", kind=k)
                   for k in ("manifest", "blob")}
    mark = log.mark()
    second = skopeo.copy_to_dir(ref, tmp_path / "second")
    assert second.returncode == 0, second.stderr
    again, _ = ve.verify_converted_copy(tmp_path / "second", source, tools, tmp_path,
                                        checked_layers)
    assert again == digest
    for name, path in ve.copy_blobs(tmp_path / "first").items():
        assert (tmp_path / "second" / path.name).read_bytes() == path.read_bytes()
    assert ve.conversions(vproxy) == 1, "the second pull converted again"
    hits = {k: ve.metric(vproxy, "accel_proxy_cache_hits_total", kind=k)
            for k in ("manifest", "blob")}
    assert hits["manifest"] >= hits_before["manifest"] + 3, hits    # index + 2 children
    assert hits["blob"] >= hits_before["blob"] + 5, hits            # 2 configs + 3 layers
    time.sleep(0.2)  # the registry writes its access log line after the response
    upstream_blob_gets = log.blob_gets(mark)
    assert not upstream_blob_gets, f"the cached pull fetched blobs upstream: {upstream_blob_gets}"


def test_converted_blobs_serve_ranges(vproxy, source):
    """Lazy pulling reads eStargz layers by Range: single and multi-range from the cache."""
    objects = ve.converted_objects(vproxy, REPO, TAG + SUFFIX)
    layer = max((o for o in objects if o[0] == "blob"), key=lambda o: len(o[2]))
    _, digest, data = layer
    url = f"{vproxy.url}/v2/{REPO}/blobs/{digest}"
    r = requests.get(url, headers={"Range": "bytes=-51"}, timeout=30)
    assert r.status_code == 206 and r.content == data[-51:]
    assert r.headers["Content-Range"] == f"bytes {len(data) - 51}-{len(data) - 1}/{len(data)}"
    r = requests.get(url, headers={"Range": "bytes=0-9,100-199"}, timeout=30)
    assert r.status_code == 206
    assert r.headers["Content-Type"].startswith("multipart/byteranges")
    assert data[0:10] in r.content and data[100:200] in r.content
    r = requests.head(url, timeout=30)
    assert r.status_code == 200 and int(r.headers["Content-Length"]) == len(data)
    assert r.headers["Docker-Content-Digest"] == digest


# ---- 2. token auth -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def token_upstream(tmp_path_factory, token_server, platforms):
    auth = TokenAuth(token_server.realm, token_server.SERVICE, token_server.ISSUER,
                     token_server.cert_path)
    reg = Registry(tmp_path_factory.mktemp("variants-token-registry"), mode="token", token=auth,
                   name="registry-variants-token").start()
    try:
        alice = registry_auth.session("alice", USERS["alice"])
        image = ve.push_layers_index(reg.url, alice, "private/" + REPO, TAG, platforms, seed="e2e")
        yield reg, image
    finally:
        reg.stop()


def test_skopeo_pull_through_token_auth(tmp_path_factory, token_upstream, vproxy, tools,
                                        checked_layers, tmp_path):
    reg, image = token_upstream
    variants = ve.variants_config(on_miss="wait", wait_limit="120s", authorization_ttl="2s")
    with ve.running_variant_proxy(tmp_path_factory.mktemp("proxy-variants-token"),
                                  [upstream("secure", reg.url, token_proxy=True)],
                                  variants) as tp:
        ref = f"{host(tp)}/{image.repo}:{TAG}{SUFFIX}"
        creds = f"alice:{USERS['alice']}"
        first = skopeo.copy_to_dir(ref, tmp_path / "first", creds=creds)
        assert first.returncode == 0, first.stderr
        digest, _ = ve.verify_converted_copy(tmp_path / "first", image, tools, tmp_path,
                                             checked_layers)
        # Same source bytes as in the open registry: the same variant, digest for digest.
        open_digest = ve.head_manifest(vproxy, REPO, TAG + SUFFIX).headers["Docker-Content-Digest"]
        assert digest == open_digest
        assert ve.conversions(tp, "done") == 1

        log = ve.RegistryLog(reg)
        mark = log.mark()
        second = skopeo.copy_to_dir(ref, tmp_path / "second", creds=creds)
        assert second.returncode == 0, second.stderr
        assert ve.verify_converted_copy(tmp_path / "second", image, tools, tmp_path,
                                        checked_layers)[0] == digest
        assert ve.conversions(tp) == 1
        time.sleep(0.2)
        assert not log.blob_gets(mark), "the cached pull fetched blobs upstream"
        # Cached blobs went to alice only after a read check (upstream, or remembered).
        checks = sum(ve.metric(tp, "accel_proxy_authorization_checks_total", result=r)
                     for r in ("allowed", "cached"))
        assert checks >= 5
        assert ve.metric(tp, "accel_proxy_authorization_checks_total", result="denied") == 0

        # Without credentials skopeo gets nothing.
        denied = skopeo.copy_to_dir(ref, tmp_path / "anon")
        assert denied.returncode != 0
        assert not (tmp_path / "anon" / "manifest.json").exists()


# ---- 3. asking by header and by Accept -----------------------------------------------------

@pytest.fixture(scope="module")
def variant_digest(vproxy, source):
    resp = ve.get_manifest(vproxy, REPO, TAG + SUFFIX)
    assert resp.status_code == 200, resp.text
    return ve.sha256(resp.content)


@pytest.mark.parametrize("method", ["HEAD", "GET"])
def test_mirror_header_on_ordinary_tag(vproxy, source, variant_digest, method):
    headers = {"X-Accel-Format": FORMAT, "Accept": ve.CONTAINERD_ACCEPT}
    resp = requests.request(method, f"{vproxy.url}/v2/{REPO}/manifests/{TAG}", headers=headers,
                            timeout=60)
    assert resp.status_code == 200
    assert resp.headers["Docker-Content-Digest"] == variant_digest
    assert resp.headers["Content-Type"] == images.OCI_INDEX
    if method == "GET":
        assert ve.sha256(resp.content) == variant_digest
    # Header names and values are case-insensitive.
    resp = requests.head(f"{vproxy.url}/v2/{REPO}/manifests/{TAG}",
                         headers={"x-accel-format": "eStargz", "Accept": ve.CONTAINERD_ACCEPT},
                         timeout=60)
    assert resp.headers["Docker-Content-Digest"] == variant_digest


@pytest.mark.parametrize("accept", [
    images.OCI_INDEX + ";accel-format=estargz, " + images.OCI_MANIFEST,
    images.OCI_MANIFEST + ", " + images.OCI_INDEX + "; accel-format=\"estargz\"",
    ve.CONTAINERD_ACCEPT + ", " + images.OCI_INDEX + ";q=0.9;accel-format=estargz",
])
def test_accept_parameter_asks_for_the_variant(vproxy, variant_digest, accept):
    resp = requests.get(f"{vproxy.url}/v2/{REPO}/manifests/{TAG}", headers={"Accept": accept},
                        timeout=60)
    assert resp.status_code == 200
    assert ve.sha256(resp.content) == variant_digest
    assert resp.headers["Docker-Content-Digest"] == variant_digest


@pytest.mark.parametrize("headers", [
    {"Accept": ve.CONTAINERD_ACCEPT},
    {"Accept": ve.SKOPEO_ACCEPT},
    {"Accept": images.OCI_INDEX},
    {"Accept": images.OCI_INDEX + ", */*"},
    {"Accept": ve.CONTAINERD_ACCEPT, "X-Accel-Format": "no-such-format"},
    {"Accept": images.OCI_INDEX + ";accel-format=no-such-format"},
], ids=["containerd", "skopeo", "oci-index", "any", "unknown-header", "unknown-accept"])
@pytest.mark.parametrize("method", ["HEAD", "GET"])
def test_default_accept_lists_get_the_original(vproxy, registry, source, variant_digest, headers,
                                               method):
    resp = requests.request(method, f"{vproxy.url}/v2/{REPO}/manifests/{TAG}", headers=headers,
                            timeout=60)
    direct = requests.request(method, f"{registry.url}/v2/{REPO}/manifests/{TAG}",
                              headers=headers, timeout=60)
    assert resp.status_code == direct.status_code == 200
    assert resp.headers["Content-Type"] == direct.headers["Content-Type"]
    assert resp.headers["Docker-Content-Digest"] == source.digest
    if method == "GET":
        assert resp.content == source.manifest


def test_skopeo_ordinary_tag_gets_the_original(vproxy, source, variant_digest, tmp_path):
    """skopeo's own Accept list on the plain tag: the original index, byte for byte."""
    p = skopeo.copy_to_dir(f"{host(vproxy)}/{REPO}:{TAG}", tmp_path / "orig")
    assert p.returncode == 0, p.stderr
    skopeo.check_dir_copy(tmp_path / "orig", source)


@pytest.mark.parametrize("headers", [
    {"X-Accel-Format": FORMAT, "Accept": ve.CONTAINERD_ACCEPT},
    {"Accept": images.OCI_INDEX + ";accel-format=estargz, " + images.OCI_MANIFEST},
], ids=["header", "accept"])
def test_by_digest_request_keeps_content_addressing(vproxy, source, variant_digest, headers):
    """A manifest asked for BY DIGEST must be those bytes: a client (containerd with the
    hosts.toml header pulls `image@sha256:...` too) checks what it gets against the digest."""
    for reference in [source.digest] + [c.digest for c in source.children]:
        resp = requests.get(f"{vproxy.url}/v2/{REPO}/manifests/{reference}", headers=headers,
                            timeout=60)
        assert resp.status_code == 200
        assert ve.sha256(resp.content) == reference, \
            f"asked for {reference}, got {ve.sha256(resp.content)}"
        assert resp.headers["Docker-Content-Digest"] == reference


# ---- containerd with the hosts.toml header -------------------------------------------------

@pytest.fixture
def containerd(tmp_path):
    if not (os.access(ve.CONTAINERD, os.X_OK) and os.access(ve.CTR, os.X_OK)):
        pytest.skip("containerd is not installed (apt-get install containerd); the header is "
                    "tested with requests above")
    c = ve.Containerd(tmp_path / "containerd")
    try:
        c.start()
    except RuntimeError as exc:
        c.stop()
        pytest.skip(f"containerd cannot run here: {exc}")
    yield c
    c.stop()


def ctr_pull(containerd, hosts_dir, ref):
    return containerd.ctr("images", "pull", "--all-platforms", "--hosts-dir", str(hosts_dir),
                          "--plain-http", ref)


def ctr_image_digest(containerd, ref):
    ls = containerd.ctr("images", "ls")
    assert ls.returncode == 0, ls.stderr
    for line in ls.stdout.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == ref:
            return next(f for f in fields if f.startswith("sha256:"))
    return None


def test_containerd_pull_with_mirror_header(containerd, vproxy, source, variant_digest, tmp_path):
    hosts_dir = ve.write_hosts_toml(tmp_path / "hosts", host(vproxy), {"X-Accel-Format": FORMAT})
    ref = f"{host(vproxy)}/{REPO}:{TAG}"
    p = ctr_pull(containerd, hosts_dir, ref)
    assert p.returncode == 0, p.stdout + p.stderr
    assert ctr_image_digest(containerd, ref) == variant_digest
    # The content containerd stored is the variant: layers with the eStargz annotations.
    stored = set(containerd.ctr("content", "ls", "-q").stdout.split())
    index = json.loads(containerd.ctr("content", "get", variant_digest).stdout)
    assert index["mediaType"] == images.OCI_INDEX
    for d in index["manifests"]:
        child = json.loads(containerd.ctr("content", "get", d["digest"]).stdout)
        for layer in child["layers"]:
            assert et.TOC_DIGEST in layer.get("annotations", {}), layer
            assert layer["digest"] in stored, f"layer {layer['digest']} not in containerd's store"

    # Without the header, the same tag is the original.
    plain = ve.write_hosts_toml(tmp_path / "hosts-plain", host(vproxy))
    p = ctr_pull(containerd, plain, ref)
    assert p.returncode == 0, p.stdout + p.stderr
    assert ctr_image_digest(containerd, ref) == source.digest


def test_containerd_pull_by_digest_with_mirror_header(containerd, vproxy, source,
                                                      variant_digest, tmp_path):
    """`image@sha256:<original>` through a mirror whose hosts.toml adds the header (it is
    added to every request): the pull must succeed and be the original image."""
    hosts_dir = ve.write_hosts_toml(tmp_path / "hosts", host(vproxy), {"X-Accel-Format": FORMAT})
    ref = f"{host(vproxy)}/{REPO}@{source.digest}"
    p = ctr_pull(containerd, hosts_dir, ref)
    assert p.returncode == 0, p.stdout + p.stderr
    assert ctr_image_digest(containerd, ref) == source.digest


# ---- edges of asking -----------------------------------------------------------------------

def test_variant_of_a_missing_tag_is_404(vproxy, registry):
    resp = ve.get_manifest(vproxy, REPO, "no-such-tag" + SUFFIX)
    direct = requests.get(f"{registry.url}/v2/{REPO}/manifests/no-such-tag",
                          headers={"Accept": ve.MANIFEST_ACCEPT}, timeout=30)
    assert resp.status_code == direct.status_code == 404
    assert ve.metric(vproxy, "accel_proxy_conversions_total", outcome="failed") == 0


def test_upstream_tag_with_the_suffix_wins(vproxy, registry, platforms):
    """An upstream tag that happens to end in -estargz is served as it is, not converted."""
    own = ve.push_layers_image(registry.url, requests.Session(), REPO, "own" + SUFFIX,
                               [platforms["arm64"][1]], seed="own")
    ve.push_layers_image(registry.url, requests.Session(), REPO, "own",
                         [platforms["arm64"][1]], seed="other")
    before = ve.conversions(vproxy)
    resp = ve.get_manifest(vproxy, REPO, "own" + SUFFIX)
    assert resp.status_code == 200 and resp.content == own.manifest
    assert ve.conversions(vproxy) == before


def test_variant_of_an_estargz_image_is_that_image(vproxy, registry, variant_digest):
    """An image already in eStargz (here: the variant, pushed upstream as `conv`) is not
    converted again: its variant is the image itself."""
    objects = ve.converted_objects(vproxy, REPO, TAG + SUFFIX)
    pusher = images.Pusher(registry.url, requests.Session())
    top = objects[0][2]
    for kind, digest, data in objects[1:]:
        if kind == "blob":
            pusher.push_blob(REPO, data)
    for kind, digest, data in objects[1:]:
        if kind == "manifest":
            pusher.push_manifest(REPO, digest, data, images.OCI_MANIFEST)
    pusher.push_manifest(REPO, "conv", top, images.OCI_INDEX)
    resp = ve.get_manifest(vproxy, REPO, "conv" + SUFFIX)
    assert resp.status_code == 200
    assert ve.sha256(resp.content) == variant_digest
    # Its blobs are all readable through the proxy under that tag's variant.
    ve.converted_objects(vproxy, REPO, "conv" + SUFFIX)


def test_moved_tag_gets_a_new_variant(vproxy, registry, platforms):
    s = requests.Session()
    first = ve.push_layers_image(registry.url, s, "e2e/moving", "t", [platforms["arm64"][1]],
                                 seed="move-1")
    v1 = ve.get_manifest(vproxy, "e2e/moving", "t" + SUFFIX)
    assert v1.status_code == 200 and ve.sha256(v1.content) != first.digest
    second = ve.push_layers_image(registry.url, s, "e2e/moving", "t", [platforms["arm64"][1]],
                                  seed="move-2")
    # Within tag_ttl (1 s here) the proxy may still answer from its resolution of the old tag;
    # once it has passed, the variant follows the moved tag.
    time.sleep(1.5)
    v2 = ve.get_manifest(vproxy, "e2e/moving", "t" + SUFFIX)
    assert v2.status_code == 200
    assert ve.sha256(v2.content) not in (ve.sha256(v1.content), second.digest), \
        "the variant still follows the old image"
    assert v2.json()["annotations"] == images.variant_annotations({"org.example.seed": "move-2"}, "estargz", second.digest)


def test_variants_disabled(tmp_path_factory, registry, source):
    variants = ve.variants_config(enabled=False)
    with ve.running_variant_proxy(tmp_path_factory.mktemp("proxy-novariants"),
                                  [upstream("main", registry.url)], variants) as p:
        assert ve.get_manifest(p, REPO, TAG + SUFFIX).status_code == 404
        resp = ve.get_manifest(p, REPO, TAG, headers={"X-Accel-Format": FORMAT})
        assert resp.status_code == 200 and resp.content == source.manifest
        resp = ve.get_manifest(p, REPO, TAG, headers={
            "Accept": images.OCI_INDEX + ";accel-format=estargz"})
        assert resp.status_code == 200 and ve.sha256(resp.content) == source.digest


def test_tag_resolution_is_reused_within_tag_ttl(vproxy, registry, platforms):
    """A variant request resolves its source tag upstream once per tag_ttl (1 s here) for a
    client whose read grant is fresh; after the TTL it resolves again."""
    s = requests.Session()
    ve.push_layers_image(registry.url, s, "e2e/ttl", "t", [platforms["arm64"][1]], seed="ttl-1")
    log = ve.RegistryLog(registry)
    assert ve.get_manifest(vproxy, "e2e/ttl", "t" + SUFFIX).status_code == 200

    def source_resolutions(since):
        return sum(1 for method, path, _ in log.requests(since)
                   if method == "HEAD" and path == "/v2/e2e/ttl/manifests/t")

    mark = log.mark()
    for _ in range(3):
        assert ve.get_manifest(vproxy, "e2e/ttl", "t" + SUFFIX).status_code == 200
    assert source_resolutions(mark) <= 1  # the first may fall just after the TTL of the pull above
    time.sleep(1.5)
    mark = log.mark()
    assert ve.get_manifest(vproxy, "e2e/ttl", "t" + SUFFIX).status_code == 200
    assert source_resolutions(mark) == 1
