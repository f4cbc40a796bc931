"""eStargz conversion: `accel-proxy convert-layer` and `accel-proxy convert`.

1. Round trip and reference cross-check: every generated layer (tests/integration/layers.py),
   as plain tar and as tar+gzip, converted with convert-layer; the blob must pass the reference
   checker (build/go/estargz-check, stargz-snapshotter's estargz package) against the ORIGINAL
   tar, and digest, size, diff_id, uncompressed size, TOC digest and footer are recomputed here
   independently.
2. Determinism: the same layer with --threads 1 and 2 (and from tar or tar+gzip) gives the same
   bytes; a multi-platform image converted twice gives the same manifest digest.
3. Registry round trip: Docker schema2, OCI, a 2-platform index and an image of generated
   layers converted registry to registry; skopeo copies the result, every converted layer is
   checked against its source layer, configs carry the new diff_ids; --platform, re-converting a
   converted image, and oci: layouts in both directions.

Needs the Debian packages of the README plus golang-go and
golang-github-containerd-stargz-snapshotter-dev (for tests/estargz/build.sh). About a minute.
"""
import hashlib
import json
import os

import pytest
import requests

import estargz_tools as et
import images
import layers
import skopeo
from estargz_tools import TOC_DIGEST, UNCOMPRESSED_SIZE

LAYER_NAMES = ["debian_like", "many_small", "few_large", "adversarial"]

# Input variants of the round trip: (input file kind, extra convert-layer arguments).
# The tar+gzip variant uses 64 KiB chunks, so files of the small layers are split too.
VARIANTS = {
    "tar": ("tar", ["--threads", "2"]),
    "tar.gz": ("gz", ["--threads", "2", "--chunk-size", "65536", "--compression-level", "6"]),
}


# ---- session fixtures ----------------------------------------------------------------------

@pytest.fixture(scope="session")
def tools():
    """estargz-check and estargz-ref-build, built once by tests/estargz/build.sh."""
    return et.build_tools()


@pytest.fixture(scope="session")
def layer_files(tmp_path_factory):
    """name -> {"tar": path, "gz": path}; each layer generated on first use."""
    outdir = tmp_path_factory.mktemp("layers")
    cache = {}

    def get(name):
        if name not in cache:
            tar = layers.LAYERS[name](str(outdir))
            cache[name] = {"tar": tar, "gz": layers.gzip_layer(tar)}
        return cache[name]
    return get


@pytest.fixture(scope="session")
def converted_layer(tmp_path_factory, layer_files):
    """(name, kind, args) -> (blob path, convert-layer JSON), each conversion run once."""
    outdir = tmp_path_factory.mktemp("converted")
    cache = {}

    def get(name, kind, args):
        key = (name, kind, tuple(args))
        if key not in cache:
            src = layer_files(name)[kind]
            out = outdir / f"{name}-{kind}-{len(cache)}.estargz"
            cache[key] = (out, et.convert_layer_ok(src, out, *args))
        return cache[key]
    return get


def host_of(registry):
    return registry.url.split("://", 1)[1]


def plain_http():
    return ["--src-tls-verify=false", "--dest-tls-verify=false"]


# ---- 1. round trip and reference cross-check -----------------------------------------------

@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", LAYER_NAMES)
def test_convert_layer_round_trip(name, variant, tools, layer_files, converted_layer):
    kind, args = VARIANTS[variant]
    files = layer_files(name)
    blob, facts = converted_layer(name, kind, args)

    # What convert-layer reports about its input.
    assert facts["source_diff_id"] == et.sha256_file(files["tar"])
    assert facts["source_digest"] == et.sha256_file(files[kind])
    assert facts["source_uncompressed_size"] == os.path.getsize(files["tar"])

    # Descriptor facts, recomputed from the file.
    assert facts["media_type"] == images.OCI_LAYER_GZIP
    assert et.sha256_file(blob) == facts["digest"]
    assert os.path.getsize(blob) == facts["size"]
    diff_id, count = et.gunzip_digest(blob)
    assert diff_id == facts["diff_id"], "gzip -dc BLOB | sha256sum differs from diff_id"
    assert count == facts["uncompressed_size"]
    ann = facts["annotations"]
    assert set(ann) >= {TOC_DIGEST, UNCOMPRESSED_SIZE}
    assert ann[UNCOMPRESSED_SIZE] == str(count)

    # Footer and TOC member by hand.
    toc_offset, toc = et.read_toc(blob)
    assert "sha256:" + hashlib.sha256(toc).hexdigest() == ann[TOC_DIGEST]
    assert json.loads(toc)["version"] == 1

    # The reference library against the ORIGINAL tar (not the gzip the converter read).
    summary = et.assert_checker_accepts(tools, blob, ann[TOC_DIGEST], files["tar"])
    assert summary["diff_id"] == facts["diff_id"]
    assert summary["toc_digest"] == ann[TOC_DIGEST]
    assert summary["toc_offset"] == toc_offset
    assert summary["blob_size"] == facts["size"]
    if variant == "tar.gz" and name in ("few_large", "debian_like"):
        assert summary["chunks"] > summary["entries"] // 2, "64 KiB chunks should split files"


# ---- 2. determinism ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["debian_like", "few_large"])
def test_convert_layer_same_bytes_for_any_thread_count(name, converted_layer):
    _, two = converted_layer(name, "tar", VARIANTS["tar"][1])
    blob1, one = converted_layer(name, "tar", ["--threads", "1"])
    for key in ("digest", "size", "diff_id", "uncompressed_size", "annotations"):
        assert one[key] == two[key], f"{key} differs between --threads 1 and --threads 2"
    assert et.sha256_file(blob1) == one["digest"]


def test_convert_layer_same_bytes_from_tar_and_tar_gz(converted_layer):
    """The blob depends on the tar content only, not on how the input was compressed."""
    _, from_tar = converted_layer("debian_like", "tar", VARIANTS["tar"][1])
    _, from_gz = converted_layer("debian_like", "gz", VARIANTS["tar"][1])
    assert from_gz["source_digest"] != from_tar["source_digest"]
    for key in ("digest", "size", "diff_id", "annotations"):
        assert from_gz[key] == from_tar[key], f"{key} differs between tar and tar.gz input"


@pytest.fixture(scope="session")
def generated_index(open_registry, layer_files):
    """A 2-platform OCI index of generated layers: amd64 = debian_like, arm64 = many_small."""
    repo = "gen/multi"
    pusher = images.Pusher(open_registry.url, requests.Session())
    children = []
    for arch, name in (("amd64", "debian_like"), ("arm64", "many_small")):
        files = layer_files(name)
        # Children by digest only, as `docker buildx` pushes them.
        _, manifest = et.push_file_layers_image(open_registry.url, repo, None,
                                                [(files["gz"], files["tar"])], arch=arch)
        body = images.encode_json(manifest)
        config = et.get_blob(open_registry.url, repo, manifest["config"]["digest"])
        img = images.PushedImage(repo, None, images.OCI_MANIFEST, body,
                                 {manifest["config"]["digest"]: config})
        children.append(img)
    index = pusher.push_index(repo, "v1", children)
    return index


def test_convert_image_same_digest_for_any_thread_count(open_registry, generated_index,
                                                        tmp_path):
    src = f"docker://{host_of(open_registry)}/{generated_index.repo}:v1"
    results = {}
    for threads in ("1", "2"):
        layout = tmp_path / f"threads{threads}"
        results[threads] = et.convert_json(src, f"oci:{layout}:v1", "--src-tls-verify=false",
                                           "--threads", threads, "--chunk-size", "65536",
                                           workdir=tmp_path)
        tagged = et.layout_tagged(layout, "v1")
        assert tagged and tagged["digest"] == results[threads]["manifest_digest"]
    assert results["1"]["media_type"] == images.OCI_INDEX
    assert results["1"]["layers_converted"] == 2
    assert results["1"]["manifest_digest"] == results["2"]["manifest_digest"]
    names = {t: sorted(p.name for p in (tmp_path / f"threads{t}" / "blobs" / "sha256").iterdir())
             for t in results}
    assert names["1"] == names["2"]


# ---- 3. registry round trip ----------------------------------------------------------------

def manifests_of(top_bytes, fetch):
    """[(platform or None, manifest dict)] of a manifest or index; fetch(digest) -> bytes."""
    top = json.loads(top_bytes)
    if "manifests" not in top:
        return [(None, top)]
    return [(d.get("platform"), json.loads(fetch(d["digest"]))) for d in top["manifests"]]


def assert_converted_manifest(manifest, src_manifest, config, src_config, blob_path, tools,
                              workdir):
    """One converted image manifest against its source: layers, annotations, config."""
    assert manifest["mediaType"] == images.OCI_MANIFEST
    assert manifest["config"]["mediaType"] == images.OCI_CONFIG
    assert len(manifest["layers"]) == len(src_manifest["layers"])
    diff_ids = []
    for layer, src_layer in zip(manifest["layers"], src_manifest["layers"]):
        assert layer["mediaType"] == images.OCI_LAYER_GZIP
        ann = layer.get("annotations") or {}
        assert TOC_DIGEST in ann, f"layer {layer['digest']} has no TOC digest annotation"
        path = blob_path(layer["digest"])
        assert et.sha256_file(path) == layer["digest"]
        assert os.path.getsize(path) == layer["size"]
        diff_id, count = et.gunzip_digest(path)
        assert ann.get(UNCOMPRESSED_SIZE) == str(count)
        diff_ids.append(diff_id)
        # The reference checker against the source layer (tar+gzip; it gunzips it itself).
        source = blob_path(src_layer["digest"], source=True)
        summary = et.assert_checker_accepts(tools, path, ann[TOC_DIGEST], source)
        assert summary["diff_id"] == diff_id
    assert config["rootfs"]["diff_ids"] == diff_ids, "config diff_ids are not the new layers'"
    rest = {k: v for k, v in config.items() if k != "rootfs"}
    src_rest = {k: v for k, v in src_config.items() if k != "rootfs"}
    assert rest == src_rest, "the config changed beyond rootfs.diff_ids"


def check_converted_in_registry(registry, src_repo, src_ref, dst_repo, dst_ref, result, tools,
                                workdir):
    """skopeo copies the converted image; each platform's layers checked against the source."""
    url = registry.url
    got = et.get_manifest(url, dst_repo, dst_ref)
    assert got, f"{dst_repo}:{dst_ref} missing after convert"
    top, content_type = got
    assert images.sha256_digest(top) == result["manifest_digest"]
    assert content_type == result["media_type"]

    copy_dir = workdir / "copy"
    p = skopeo.copy_to_dir(f"{host_of(registry)}/{dst_repo}:{dst_ref}", copy_dir)
    assert p.returncode == 0, p.stderr
    assert (copy_dir / "manifest.json").read_bytes() == top
    for f in copy_dir.iterdir():
        if len(f.name) == 64:
            assert et.sha256_file(f) == "sha256:" + f.name, f"blob {f.name} corrupted"

    def dst_blob(digest, source=False):
        if source:
            path = workdir / (digest[7:] + ".srcblob")
            if not path.exists():
                path.write_bytes(et.get_blob(url, src_repo, digest))
            return path
        return copy_dir / digest[7:]

    def fetch_child(repo, digest):
        path = copy_dir / (digest[7:] + ".manifest.json")
        if repo == dst_repo and path.exists():
            return path.read_bytes()
        return et.get_manifest(url, repo, digest)[0]

    src_top = et.get_manifest(url, src_repo, src_ref)[0]
    converted = manifests_of(top, lambda d: fetch_child(dst_repo, d))
    sources = manifests_of(src_top, lambda d: et.get_manifest(url, src_repo, d)[0])
    assert [pl for pl, _ in converted] == [pl for pl, _ in sources], "platforms differ"
    for (_, m), (_, sm) in zip(converted, sources):
        config = json.loads((copy_dir / m["config"]["digest"][7:]).read_bytes())
        src_config = json.loads(et.get_blob(url, src_repo, sm["config"]["digest"]))
        assert_converted_manifest(m, sm, config, src_config, dst_blob, tools, workdir)
    return json.loads(top)


def layer_sizes(top_bytes, url, repo):
    """Sizes of every layer of a manifest or of all children of an index."""
    sizes = []
    for _, m in manifests_of(top_bytes, lambda d: et.get_manifest(url, repo, d)[0]):
        sizes += [l["size"] for l in m["layers"]]
    return sizes


@pytest.mark.parametrize("kind", ["docker", "oci", "index"])
def test_convert_registry_to_registry(kind, open_registry, pushed_images, tools, tmp_path):
    image = {"docker": pushed_images.docker, "oci": pushed_images.oci,
             "index": pushed_images.index}[kind]
    host = host_of(open_registry)
    result = et.convert_json(f"docker://{host}/{image.repo}:v1",
                             f"docker://{host}/{image.repo}:v1-estargz", *plain_http(),
                             workdir=tmp_path)
    children = image.children or [image]
    nlayers = sum(len(json.loads(c.manifest)["layers"]) for c in children)
    assert result["already_converted"] is False
    assert result["layers_converted"] == nlayers and result["layers_kept"] == 0
    expected_type = images.OCI_INDEX if kind == "index" else images.OCI_MANIFEST
    assert result["media_type"] == expected_type
    top = check_converted_in_registry(open_registry, image.repo, "v1", image.repo,
                                      "v1-estargz", result, tools, tmp_path)
    assert result["bytes_out"] == sum(layer_sizes(json.dumps(top), open_registry.url, image.repo))
    assert result["bytes_in"] == sum(layer_sizes(image.manifest, open_registry.url, image.repo))
    if kind == "index":
        src = json.loads(image.manifest)
        assert top["mediaType"] == images.OCI_INDEX
        assert top.get("annotations") == images.variant_annotations(src.get("annotations"), "estargz", image.digest)
        assert [d["platform"] for d in top["manifests"]] == \
            [d["platform"] for d in src["manifests"]]
        for d in top["manifests"]:
            assert d["mediaType"] == images.OCI_MANIFEST


@pytest.fixture(scope="session")
def generated_image(open_registry, layer_files):
    """An OCI image whose layers are the generated debian_like and adversarial layers."""
    files = [layer_files("debian_like"), layer_files("adversarial")]
    digest, _ = et.push_file_layers_image(open_registry.url, "gen/rootfs", "v1",
                                          [(f["gz"], f["tar"]) for f in files])
    return "gen/rootfs", digest


def test_convert_generated_layers_registry_to_registry(open_registry, generated_image, tools,
                                                       tmp_path):
    repo, _ = generated_image
    host = host_of(open_registry)
    result = et.convert_json(f"docker://{host}/{repo}:v1", f"docker://{host}/{repo}:v1-estargz",
                             *plain_http(), "--chunk-size", "1048576", workdir=tmp_path)
    assert result["layers_converted"] == 2 and result["already_converted"] is False
    check_converted_in_registry(open_registry, repo, "v1", repo, "v1-estargz", result, tools,
                                tmp_path)


def test_convert_one_platform_of_index(open_registry, pushed_images, tools, tmp_path):
    index = pushed_images.index
    host = host_of(open_registry)
    result = et.convert_json(f"docker://{host}/{index.repo}:v1",
                             f"docker://{host}/{index.repo}:v1-arm64-estargz", *plain_http(),
                             "--platform", "linux/arm64", workdir=tmp_path)
    amd64, arm64 = index.children
    assert result["layers_converted"] == len(json.loads(arm64.manifest)["layers"])
    assert result["media_type"] == images.OCI_INDEX
    top_bytes, _ = et.get_manifest(open_registry.url, index.repo, "v1-arm64-estargz")
    top = json.loads(top_bytes)
    by_arch = {d["platform"]["architecture"]: d for d in top["manifests"]}
    assert set(by_arch) == {"amd64", "arm64"}
    assert by_arch["amd64"]["digest"] == amd64.digest, "amd64 was not kept as it was"
    assert by_arch["arm64"]["digest"] != arm64.digest
    arm_manifest = json.loads(et.get_manifest(open_registry.url, index.repo,
                                              by_arch["arm64"]["digest"])[0])
    assert all(TOC_DIGEST in (l.get("annotations") or {}) for l in arm_manifest["layers"])
    # skopeo can copy the mixed index; every blob verifies.
    copy_dir = tmp_path / "copy"
    p = skopeo.copy_to_dir(f"{host}/{index.repo}:v1-arm64-estargz", copy_dir)
    assert p.returncode == 0, p.stderr
    assert (copy_dir / (amd64.digest[7:] + ".manifest.json")).read_bytes() == amd64.manifest
    for f in copy_dir.iterdir():
        if len(f.name) == 64:
            assert et.sha256_file(f) == "sha256:" + f.name


@pytest.mark.parametrize("kind", ["oci", "index"])
def test_convert_converted_image_again_changes_nothing(kind, open_registry, pushed_images,
                                                       tmp_path):
    image = pushed_images.oci if kind == "oci" else pushed_images.index
    host = host_of(open_registry)
    first = et.convert_json(f"docker://{host}/{image.repo}:v1",
                            f"docker://{host}/{image.repo}:v1-estargz-src", *plain_http(),
                            workdir=tmp_path)
    before = et.registry_blob_count(open_registry)
    again = et.convert_json(f"docker://{host}/{image.repo}:v1-estargz-src",
                            f"docker://{host}/{image.repo}:v1-estargz-again", *plain_http(),
                            workdir=tmp_path)
    assert again["already_converted"] is True
    assert again["manifest_digest"] == first["manifest_digest"]
    assert again["layers_converted"] == 0
    assert et.registry_blob_count(open_registry) == before, "a second convert stored new blobs"
    got = et.get_manifest(open_registry.url, image.repo, "v1-estargz-again")
    assert got and images.sha256_digest(got[0]) == first["manifest_digest"]


def test_convert_via_oci_layout(open_registry, pushed_images, tools, tmp_path):
    """docker:// -> oci:DIR:tag (converted) -> docker:// (copied as it is)."""
    host = host_of(open_registry)
    layout = tmp_path / "layout"
    for image, tag in ((pushed_images.oci, "app"), (pushed_images.index, "multi")):
        result = et.convert_json(f"docker://{host}/{image.repo}:v1", f"oci:{layout}:{tag}",
                                 "--src-tls-verify=false", workdir=tmp_path)
        assert result["already_converted"] is False
        tagged = et.layout_tagged(layout, tag)
        assert tagged and tagged["digest"] == result["manifest_digest"]
        assert tagged["mediaType"] == result["media_type"]
    assert json.loads((layout / "oci-layout").read_text())["imageLayoutVersion"] == "1.0.0"
    assert len(et.layout_manifests(layout)) == 2
    for p in (layout / "blobs" / "sha256").iterdir():
        assert et.sha256_file(p) == "sha256:" + p.name, f"layout blob {p.name} corrupted"

    # Layers in the layout against their sources.
    tagged = et.layout_tagged(layout, "app")
    manifest = json.loads(et.layout_blob_path(layout, tagged["digest"]).read_bytes())
    src_manifest = json.loads(pushed_images.oci.manifest)
    config = json.loads(et.layout_blob_path(layout, manifest["config"]["digest"]).read_bytes())
    src_config = json.loads(pushed_images.oci.blobs[src_manifest["config"]["digest"]])

    def blob_path(digest, source=False):
        if source:
            path = tmp_path / (digest[7:] + ".srcblob")
            path.write_bytes(pushed_images.oci.blobs[digest])
            return path
        return et.layout_blob_path(layout, digest)
    assert_converted_manifest(manifest, src_manifest, config, src_config, blob_path, tools,
                              tmp_path)

    # And back to a registry, into a new repository: nothing to convert, everything copied.
    for tag, repo in (("app", "fromoci/app"), ("multi", "fromoci/multi")):
        digest = et.layout_tagged(layout, tag)["digest"]
        result = et.convert_json(f"oci:{layout}:{tag}", f"docker://{host}/{repo}:v2",
                                 "--dest-tls-verify=false", workdir=tmp_path)
        assert result["already_converted"] is True
        assert result["manifest_digest"] == digest
        got = et.get_manifest(open_registry.url, repo, "v2")
        assert got and got[0] == et.layout_blob_path(layout, digest).read_bytes()
        copy_dir = tmp_path / f"copy-{tag}"
        p = skopeo.copy_to_dir(f"{host}/{repo}:v2", copy_dir)
        assert p.returncode == 0, p.stderr
        for f in copy_dir.iterdir():
            if len(f.name) == 64:
                assert et.sha256_file(f) == "sha256:" + f.name
                assert f.read_bytes() == \
                    et.layout_blob_path(layout, "sha256:" + f.name).read_bytes()
