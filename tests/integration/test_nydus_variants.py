"""Convert on pull to Nydus (RAFS v6), end to end against a real docker-registry.

`<tag>-nydus` (or `X-Accel-Format: nydus`, or an Accept parameter `accel-format=nydus`) gets
an image converted from `<tag>` on the first miss and cached, in the shape nydus-snapshotter
expects (research/nydus.md 1.1-1.3a):

- one blob layer per source layer (mediaType application/vnd.oci.image.layer.nydus.blob.v1,
  annotation containerd.io/snapshot/nydus-blob "true"), then a tar+gzip bootstrap layer with
  image/image.boot and the annotations nydus-bootstrap "true" and nydus-fs-version "6";
- config rootfs.diff_ids = the blob digests + the bootstrap tar's digest;
- `subject` = the source manifest's descriptor.

1. A one-platform image (with a layer without file data), a Docker schema2 image and a
   2-platform index: converted on the first GET (metrics and the conversion listing), every
   object downloadable and matching its digest, the bootstrap's blob table (read here, not by
   the proxy's code) naming the blob layers, `accel-proxy check` through the proxy exits 0;
   the second GET is a cache hit; 8 concurrent first GETs share one conversion.
2. skopeo copies the variant to an oci: layout; `accel-proxy check oci:DIR` accepts the copy.
3. Range on a cached Nydus blob: the TOC at the end, multipart, HEAD, 416.
4. Token registry: alice converts and reads; bob and anonymous get nothing of a private
   repository's variant (manifest, blobs by digest, Range, referrers), also not through a
   repository bob may read.
5. Referrers: the Nydus manifest is listed FIRST for its source digest (also with an eStargz
   variant converted before it and an upstream referrer in the `sha256-<hex>` fallback tag),
   and its last layer carries the bootstrap annotation (nydus-snapshotter's checkReferrer);
   for an index source also for each platform's manifest (the digest the snapshotter asks
   about: containerd's cri.manifest-digest label), and the listed Nydus index has `subject`.
6. The mirror header and the Accept parameter on the plain tag.
7. A hardlink to a file of a lower layer converts; one to a file no layer has is refused: a
   clear OCI error naming it (wait, reject) or the original (fallback), no variant cached, a
   retry only after the backoff.
"""
import gzip
import io
import json
import struct
import subprocess
import tarfile
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

import estargz_tools as et
import images
import registry_auth
from checks import assert_oci_error
from multipart import parse_byteranges, parse_content_range
from proxy import require_binary, upstream
from registry import Registry
from registry_auth import fetch_token, parse_challenge
from token_server import USERS
import variant_env as ve

FORMAT = "nydus"
SUFFIX = "-nydus"
NYDUS_BLOB = "application/vnd.oci.image.layer.nydus.blob.v1"
BLOB_ANNOTATION = "containerd.io/snapshot/nydus-blob"
BOOTSTRAP_ANNOTATION = "containerd.io/snapshot/nydus-bootstrap"
FS_VERSION_ANNOTATION = "containerd.io/snapshot/nydus-fs-version"
EROFS_MAGIC = (0xE0F5E1E2).to_bytes(4, "little")
NYDUS_ARTIFACT_TYPE = "application/vnd.oci.image.config.v1+json"  # a variant is an image: its config type (OCI 1.1)
SBOM = "application/vnd.example.sbom.v1"

SINGLE_REPO, INDEX_REPO, ORDER_REPO, BROKEN_REPO = "ny/single", "ny/multi", "ny/order", "ny/broken"
TAG = "v1"
BIG_FILE = 600_000  # one incompressible file: a Nydus blob of about this size


# ---- images --------------------------------------------------------------------------------

def dir_only_layer():
    """A layer without file data (a directory and a symlink): it still gets a Nydus blob."""
    tar = et.tar_bytes([("opt/empty", {"type": tarfile.DIRTYPE, "mode": 0o755}, b""),
                        ("opt/link", {"type": tarfile.SYMTYPE, "linkname": "/etc/app"}, b"")])
    return et.gzip_bytes(tar), tar


def push_bytes_image(registry_url, session, repo, tag, pairs, seed):
    body, blobs, media_type = et.image_blobs(pairs, seed=seed)
    return images.Pusher(registry_url, session).push_image(repo, tag, body, blobs, media_type)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("nydus-registry"), name="registry-nydus").start()
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def single(registry):
    """One platform, three layers: small files, one incompressible 600 KB file, no files."""
    pairs = [images.make_layer(images.generated_files("ny-single", count=6)),
             ve.random_layer("ny-big", BIG_FILE), dir_only_layer()]
    return push_bytes_image(registry.url, requests.Session(), SINGLE_REPO, TAG, pairs, "ny-single")


@pytest.fixture(scope="module")
def index(registry, tmp_path_factory):
    platforms = {"amd64": [ve.layer_files(tmp_path_factory, "small-ny-base"),
                           ve.layer_files(tmp_path_factory, "small-ny-amd64")],
                 "arm64": [ve.layer_files(tmp_path_factory, "small-ny-base"),
                           ve.layer_files(tmp_path_factory, "small-ny-arm64")]}
    return ve.push_layers_index(registry.url, requests.Session(), INDEX_REPO, TAG, platforms,
                                seed="ny-index")


@pytest.fixture(scope="module")
def ordered(registry):
    """An image whose eStargz variant is converted before its Nydus variant."""
    pairs = [images.make_layer(images.generated_files("ny-order", count=4))]
    return push_bytes_image(registry.url, requests.Session(), ORDER_REPO, TAG, pairs, "ny-order")


@pytest.fixture(scope="module")
def broken(registry):
    """Layer 2 hardlinks a file that no layer has: a Nydus bootstrap cannot express the link
    (the merge finds no inode to name), so the Nydus conversion fails."""
    lower = et.tar_bytes([("etc/base", b"base file\n")])
    upper = et.tar_bytes([("etc/other", b"other\n"),
                          ("etc/link", {"type": tarfile.LNKTYPE, "linkname": "etc/missing"}, b"")])
    pairs = [(et.gzip_bytes(lower), lower), (et.gzip_bytes(upper), upper)]
    return push_bytes_image(registry.url, requests.Session(), BROKEN_REPO, TAG, pairs, "ny-broken")


@pytest.fixture(scope="module")
def lower_link(registry):
    """Layer 2 hardlinks a file of layer 1 (valid OCI): the Nydus merge makes it a second name
    of the lower inode."""
    lower = et.tar_bytes([("etc/base", b"base file\n" * 100)])
    upper = et.tar_bytes([("etc/other", b"other\n"),
                          ("etc/link", {"type": tarfile.LNKTYPE, "linkname": "etc/base"}, b"")])
    pairs = [(et.gzip_bytes(lower), lower), (et.gzip_bytes(upper), upper)]
    return push_bytes_image(registry.url, requests.Session(), "ny/lowerlink", TAG, pairs,
                            "ny-lowerlink")


def variants(**overrides):
    base = dict(on_miss="wait", wait_limit="60s", authorization_ttl="2s", tag_ttl="1s")
    base.update(overrides)
    return ve.variants_config(**base)


@pytest.fixture(scope="module")
def vproxy(tmp_path_factory, registry, single, index):
    with ve.running_variant_proxy(tmp_path_factory.mktemp("proxy-nydus"),
                                  [upstream("main", registry.url)], variants()) as p:
        yield p


# ---- helpers -------------------------------------------------------------------------------

def host(proxy):
    return f"127.0.0.1:{proxy.port}"


def conversions(proxy, outcome=None, fmt=FORMAT):
    labels = {"format": fmt}
    if outcome:
        labels["outcome"] = outcome
    return ve.metric(proxy, "accel_proxy_conversions_total", **labels)


def listing(proxy):
    resp = requests.get(proxy.url + "/api/conversions", timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()["conversions"]


def blob_url(proxy, repo, digest):
    return f"{proxy.url}/v2/{repo}/blobs/{digest}"


def get_blob(proxy, repo, digest, auth=None, headers=None, method="GET"):
    h = dict(headers or {})
    if auth:
        h["Authorization"] = auth
    return requests.request(method, blob_url(proxy, repo, digest), headers=h, timeout=60,
                            allow_redirects=False)


def descriptor_of(image):
    return {"mediaType": image.media_type, "digest": image.digest, "size": len(image.manifest)}


def bootstrap_of(layer_bytes):
    """(uncompressed tar, {name: bytes or None}) of a bootstrap layer."""
    tar = gzip.decompress(layer_bytes)
    members = {}
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        for m in tf.getmembers():
            members[m.name.rstrip("/")] = tf.extractfile(m).read() if m.isreg() else None
    return tar, members


def check_nydus_blob_bytes(data):
    """A Nydus blob ends in the 512-byte GNU tar header of its TOC (research/nydus.md 1.4)."""
    assert len(data) >= 512 + 128, f"a Nydus blob of {len(data)} bytes"
    header = data[-512:]
    assert header[:13] == b"rafs.blob.toc", f"last header names {header[:16]!r}"
    assert header[257:265] == b"ustar  \0", f"not a GNU tar header: {header[257:265]!r}"


def blob_table(bootstrap):
    """The RAFS v6 blob table of a bootstrap, read independently of the proxy's code
    (research/nydus.md 2.3-2.5): [{id, index, features, ci_offset, ci_csize}], checked
    against the device table (slot i names blob i)."""
    table_offset, table_size = struct.unpack_from("<QI", bootstrap, 1160)
    assert table_size % 256 == 0 and table_offset % 4096 == 0, (table_offset, table_size)
    assert table_offset + table_size <= len(bootstrap)
    out = []
    for i in range(table_size // 256):
        at = table_offset + 256 * i
        blob_id = bootstrap[at:at + 64].decode("ascii")
        index, = struct.unpack_from("<I", bootstrap, at + 64)
        features, = struct.unpack_from("<I", bootstrap, at + 84)
        ci_offset, ci_csize = struct.unpack_from("<QQ", bootstrap, at + 112)
        device_id = bootstrap[1408 + 128 * i:1408 + 128 * i + 64].decode("ascii")
        assert device_id == blob_id, f"device slot {i} names {device_id}, blob {i} is {blob_id}"
        out.append({"id": blob_id, "index": index, "features": features,
                    "ci_offset": ci_offset, "ci_csize": ci_csize})
    return out


def check_nydus_image(proxy, repo, manifest_bytes, source, auth=None):
    """Check one Nydus image manifest (bytes, as served) against its source (PushedImage):
    layers, annotations, config, subject, every blob by digest. Returns {digest: bytes}."""
    manifest = json.loads(manifest_bytes)
    src_manifest = json.loads(source.manifest)
    src_config = json.loads(source.blobs[src_manifest["config"]["digest"]])
    assert manifest["mediaType"] == images.OCI_MANIFEST
    assert manifest["schemaVersion"] == 2
    assert manifest.get("subject") == descriptor_of(source), \
        f"subject {manifest.get('subject')} is not the source {descriptor_of(source)}"
    layers = manifest["layers"]
    n = len(src_manifest["layers"])
    assert len(layers) == n + 1, f"{len(layers)} layers for {n} source layers"
    got = {}
    for d in [manifest["config"]] + layers:
        resp = get_blob(proxy, repo, d["digest"], auth=auth)
        assert resp.status_code == 200, (d["digest"], resp.status_code, resp.text[:200])
        assert ve.sha256(resp.content) == d["digest"], f"blob {d['digest']} does not match"
        assert len(resp.content) == d["size"]
        got[d["digest"]] = resp.content
    src_digests = {l["digest"] for l in src_manifest["layers"]}
    for layer in layers[:-1]:
        assert layer["mediaType"] == NYDUS_BLOB, layer
        assert (layer.get("annotations") or {}).get(BLOB_ANNOTATION) == "true", layer
        assert "containerd.io/uncompressed" not in (layer.get("annotations") or {}), layer
        assert layer["digest"] not in src_digests, "a source layer was kept as it is"
        check_nydus_blob_bytes(got[layer["digest"]])
    boot = layers[-1]
    assert boot["mediaType"] == images.OCI_LAYER_GZIP, boot
    ann = boot.get("annotations") or {}
    assert ann.get(BOOTSTRAP_ANNOTATION) == "true", boot
    assert ann.get(FS_VERSION_ANNOTATION) == "6", boot
    assert BLOB_ANNOTATION not in ann, boot
    tar, members = bootstrap_of(got[boot["digest"]])
    assert "image/image.boot" in members, f"bootstrap tar holds {sorted(members)}"
    bootstrap = members["image/image.boot"]
    assert bootstrap[1024:1028] == EROFS_MAGIC, "image.boot has no EROFS superblock"
    assert len(bootstrap) % 4096 == 0, f"image.boot is {len(bootstrap)} bytes"
    # The merged bootstrap names blobs by their layer digests (nydusd fetches
    # /v2/<repo>/blobs/sha256:<id>), in position, without INLINED_FS_META, and each blob's
    # chunk-info array plus its 4096-byte header lies inside that blob.
    blob_layers = {l["digest"][7:]: l for l in layers[:-1]}
    table = blob_table(bootstrap)
    for i, entry in enumerate(table):
        assert entry["id"] in blob_layers, f"blob {i} {entry['id']} is no layer of the manifest"
        assert entry["index"] == i
        assert not entry["features"] & 0x2, f"blob {i} still has INLINED_FS_META"
        size = blob_layers[entry["id"]]["size"]
        assert entry["ci_offset"] + entry["ci_csize"] + 4096 <= size, (entry, size)
    assert len({e["id"] for e in table}) == len(table), "a blob is listed twice"
    config = json.loads(got[manifest["config"]["digest"]])
    assert manifest["config"]["mediaType"] == images.OCI_CONFIG
    assert config["rootfs"]["diff_ids"] == [l["digest"] for l in layers[:-1]] + [ve.sha256(tar)], \
        "config diff_ids are not the blob digests plus the bootstrap tar's digest"
    assert config["history"][:-1] == src_config["history"]
    assert config["history"][-1] == {"created_by": "Nydus Converter",
                                     "comment": "Nydus Bootstrap Layer"}
    rest = {k: v for k, v in config.items() if k not in ("rootfs", "history")}
    assert rest == {k: v for k, v in src_config.items() if k not in ("rootfs", "history")}
    got["blob_table"] = [e["id"] for e in table]
    return got


def run_check(image_ref, workdir, *args):
    """`accel-proxy check IMAGE ARGS` with a private HOME (no docker config of this machine)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "DOCKER_CONFIG": str(workdir / "dc"),
           "TMPDIR": str(workdir)}
    return subprocess.run([str(require_binary()), "check", image_ref, *args],
                          capture_output=True, text=True, timeout=120, env=env)


def skopeo_to_oci(ref, dest, all_images):
    argv = ["/usr/bin/skopeo", "--insecure-policy", "copy", "--src-tls-verify=false"]
    if all_images:
        argv.append("--all")
    argv += [f"docker://{ref}", f"oci:{dest}:latest"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(dest) + ".home",
           "REGISTRY_AUTH_FILE": str(dest) + ".auth.json"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, env=env)


def hits(proxy):
    return ve.metric(proxy, "accel_proxy_cache_hits_total")


# ---- 1. first GET converts, second is a cache hit ------------------------------------------

@pytest.fixture(scope="module")
def single_variant(vproxy, single):
    """The first GET of ny/single:v1-nydus (the conversion): (response, the objects)."""
    assert conversions(vproxy) == 0
    misses = ve.metric(vproxy, "accel_proxy_cache_misses_total", format=FORMAT)
    resp = ve.get_manifest(vproxy, SINGLE_REPO, TAG + SUFFIX)
    assert resp.status_code == 200, (resp.status_code, resp.text[:300])
    assert ve.metric(vproxy, "accel_proxy_cache_misses_total", format=FORMAT) == misses + 1
    return resp, check_nydus_image(vproxy, SINGLE_REPO, resp.content, single)


def test_single_manifest_converted_on_first_get(vproxy, single, single_variant, tmp_path):
    resp, objects = single_variant
    digest = ve.sha256(resp.content)
    assert digest != single.digest
    assert resp.headers["Content-Type"] == images.OCI_MANIFEST
    assert resp.headers["Docker-Content-Digest"] == digest
    assert conversions(vproxy, "done") == 1 and conversions(vproxy, "failed") == 0
    entries = [c for c in listing(vproxy) if c["repository"] == SINGLE_REPO]
    assert [(c["format"], c["source"], c["state"]) for c in entries] == \
        [(FORMAT, single.digest, "done")], entries
    # The incompressible file went into its blob (about its size).
    blob_sizes = [len(objects[l["digest"]]) for l in json.loads(resp.content)["layers"][:-1]]
    assert BIG_FILE <= blob_sizes[1] < BIG_FILE + 64 * 1024, blob_sizes
    # The layer without file data has a blob layer but no blob in the bootstrap's table.
    layers = json.loads(resp.content)["layers"]
    assert objects["blob_table"] == [layers[0]["digest"][7:], layers[1]["digest"][7:]]

    check = run_check(f"docker://{host(vproxy)}/{SINGLE_REPO}:{TAG}{SUFFIX}", tmp_path,
                      "--tls-verify=false")
    assert check.returncode == 0, check.stdout + check.stderr


def test_single_manifest_second_get_is_a_cache_hit(vproxy, single, single_variant):
    resp, _ = single_variant
    before_hits, before_conv = hits(vproxy), conversions(vproxy)
    misses = ve.metric(vproxy, "accel_proxy_cache_misses_total", format=FORMAT)
    again = ve.get_manifest(vproxy, SINGLE_REPO, TAG + SUFFIX)
    assert again.status_code == 200 and again.content == resp.content
    head = ve.head_manifest(vproxy, SINGLE_REPO, TAG + SUFFIX)
    assert head.status_code == 200
    assert head.headers["Docker-Content-Digest"] == ve.sha256(resp.content)
    assert conversions(vproxy) == before_conv, "the second request converted again"
    assert ve.metric(vproxy, "accel_proxy_cache_misses_total", format=FORMAT) == misses
    assert hits(vproxy) >= before_hits + 1, "the hit counter did not grow"
    # The variant manifest by its own digest too.
    by_digest = ve.get_manifest(vproxy, SINGLE_REPO, ve.sha256(resp.content))
    assert by_digest.status_code == 200 and by_digest.content == resp.content


@pytest.fixture(scope="module")
def index_variant(vproxy, index):
    before = conversions(vproxy, "done")
    resp = ve.get_manifest(vproxy, INDEX_REPO, TAG + SUFFIX)
    assert resp.status_code == 200, (resp.status_code, resp.text[:300])
    assert conversions(vproxy, "done") == before + 1
    return resp


def test_index_converted_on_first_get(vproxy, index, index_variant, tmp_path):
    resp = index_variant
    top = resp.json()
    src_top = json.loads(index.manifest)
    assert resp.headers["Content-Type"] == images.OCI_INDEX
    assert top["mediaType"] == images.OCI_INDEX
    assert ve.sha256(resp.content) != index.digest
    assert [d.get("platform") for d in top["manifests"]] == \
        [d.get("platform") for d in src_top["manifests"]]
    bootstraps = []
    for d, child in zip(top["manifests"], index.children):
        assert d["mediaType"] == images.OCI_MANIFEST and d["digest"] != child.digest
        r = ve.get_manifest(vproxy, INDEX_REPO, d["digest"])
        assert r.status_code == 200 and ve.sha256(r.content) == d["digest"]
        assert len(r.content) == d["size"]
        check_nydus_image(vproxy, INDEX_REPO, r.content, child)
        bootstraps.append(r.json()["layers"][-1]["digest"])
    # The shared base layer is one Nydus blob in both platforms.
    children = [ve.get_manifest(vproxy, INDEX_REPO, d["digest"]).json() for d in top["manifests"]]
    assert children[0]["layers"][0]["digest"] == children[1]["layers"][0]["digest"]
    assert bootstraps[0] != bootstraps[1]
    entries = [c for c in listing(vproxy) if c["repository"] == INDEX_REPO]
    assert [(c["format"], c["source"], c["state"]) for c in entries] == \
        [(FORMAT, index.digest, "done")], entries

    check = run_check(f"docker://{host(vproxy)}/{INDEX_REPO}:{TAG}{SUFFIX}", tmp_path,
                      "--tls-verify=false")
    assert check.returncode == 0, check.stdout + check.stderr

    before_hits, before_conv = hits(vproxy), conversions(vproxy)
    again = ve.get_manifest(vproxy, INDEX_REPO, TAG + SUFFIX)
    assert again.status_code == 200 and again.content == resp.content
    assert conversions(vproxy) == before_conv
    assert hits(vproxy) >= before_hits + 1


def test_docker_schema2_source(vproxy, registry, tmp_path):
    """A Docker schema2 source: the variant is an OCI manifest (layer annotations survive),
    its subject keeps the Docker media type."""
    pairs = [images.make_layer(images.generated_files("ny-docker", count=4))]
    body, blobs, media_type = et.image_blobs(pairs, docker=True, seed="ny-docker")
    source = images.Pusher(registry.url, requests.Session()).push_image(
        "ny/docker", TAG, body, blobs, media_type)
    resp = ve.get_manifest(vproxy, "ny/docker", TAG + SUFFIX)
    assert resp.status_code == 200, resp.text[:300]
    check_nydus_image(vproxy, "ny/docker", resp.content, source)
    assert resp.json()["subject"]["mediaType"] == images.DOCKER_MANIFEST
    check = run_check(f"docker://{host(vproxy)}/ny/docker:{TAG}{SUFFIX}", tmp_path,
                      "--tls-verify=false")
    assert check.returncode == 0, check.stdout + check.stderr


def test_concurrent_first_requests_share_one_conversion(vproxy, registry):
    from concurrent.futures import ThreadPoolExecutor
    pairs = [images.make_layer(images.generated_files("ny-concurrent", count=6)),
             ve.random_layer("ny-concurrent", 2_500_000)]  # three 1 MiB chunks
    source = push_bytes_image(registry.url, requests.Session(), "ny/concurrent", TAG, pairs,
                              "ny-concurrent")
    before = conversions(vproxy, "done")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: ve.get_manifest(vproxy, "ny/concurrent", TAG + SUFFIX),
                                range(8)))
    assert [a.status_code for a in answers] == [200] * 8
    assert len({a.content for a in answers}) == 1
    assert conversions(vproxy, "done") == before + 1, "the requests did not share one conversion"
    check_nydus_image(vproxy, "ny/concurrent", answers[0].content, source)


# ---- 2. skopeo to an OCI layout ------------------------------------------------------------

@pytest.mark.parametrize("which", ["single", "index"])
def test_skopeo_copy_to_oci_layout_and_check(vproxy, single_variant, index_variant, which,
                                             tmp_path):
    repo = SINGLE_REPO if which == "single" else INDEX_REPO
    want = ve.sha256(single_variant[0].content if which == "single" else index_variant.content)
    before = conversions(vproxy)
    dest = tmp_path / "oci"
    p = skopeo_to_oci(f"{host(vproxy)}/{repo}:{TAG}{SUFFIX}", dest, all_images=(which == "index"))
    assert p.returncode == 0, p.stderr
    layout_index = json.loads((dest / "index.json").read_text())
    assert [m["digest"] for m in layout_index["manifests"]] == [want], \
        "skopeo wrote another manifest than the proxy's variant (did it convert layers?)"
    check = run_check(f"oci:{dest}", tmp_path / "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert conversions(vproxy) == before


# ---- 3. Range on a cached Nydus blob -------------------------------------------------------

@pytest.fixture(scope="module")
def big_blob(single_variant):
    """(digest, bytes) of the Nydus blob of the 600 KB file."""
    resp, objects = single_variant
    d = resp.json()["layers"][1]["digest"]
    return d, objects[d]


def test_range_single_toc_at_the_end(vproxy, big_blob):
    digest, data = big_blob
    before = hits(vproxy)
    resp = get_blob(vproxy, SINGLE_REPO, digest, headers={"Range": "bytes=-4096"})
    assert resp.status_code == 206, resp.status_code
    assert parse_content_range(resp.headers.get("Content-Range")) == \
        (len(data) - 4096, len(data) - 1, len(data))
    assert int(resp.headers["Content-Length"]) == 4096
    assert resp.content == data[-4096:]
    check_nydus_blob_bytes(resp.content)
    assert hits(vproxy) >= before + 1, "the blob was not served from the cache"
    middle = len(data) // 2
    resp = get_blob(vproxy, SINGLE_REPO, digest, headers={"Range": f"bytes={middle}-{middle + 99}"})
    assert resp.status_code == 206 and resp.content == data[middle:middle + 100]


def test_range_multi(vproxy, big_blob):
    digest, data = big_blob
    n = len(data)
    resp = get_blob(vproxy, SINGLE_REPO, digest, headers={"Range": f"bytes=0-9,{n - 4096}-{n - 4000},-5"})
    assert resp.status_code == 206
    parts = parse_byteranges(resp.headers.get("Content-Type"), resp.content)
    expected = [(0, 9), (n - 4096, n - 4000), (n - 5, n - 1)]
    assert len(parts) == len(expected)
    for (headers, body), (first, last) in zip(parts, expected):
        assert parse_content_range(headers.get("content-range")) == (first, last, n)
        assert body == data[first:last + 1]


def test_range_head_and_unsatisfiable(vproxy, big_blob):
    digest, data = big_blob
    head = get_blob(vproxy, SINGLE_REPO, digest, method="HEAD")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["Content-Length"]) == len(data)
    assert head.headers.get("Accept-Ranges") == "bytes"
    assert head.headers.get("Docker-Content-Digest") == digest
    full = get_blob(vproxy, SINGLE_REPO, digest)
    assert full.status_code == 200 and full.content == data
    assert full.headers.get("Accept-Ranges") == "bytes"
    resp = get_blob(vproxy, SINGLE_REPO, digest, headers={"Range": f"bytes={len(data)}-"})
    assert resp.status_code == 416
    assert resp.headers.get("Content-Range") == f"bytes */{len(data)}"


# ---- 4. authorization per client -----------------------------------------------------------

AUTH_REPOS = {"private": "private/nydus-app", "public": "public/nydus-app"}


@pytest.fixture(scope="module")
def auth_sources(token_registry):
    alice = registry_auth.session("alice", USERS["alice"])
    out = {}
    for key, repo in AUTH_REPOS.items():
        pairs = [images.make_layer(images.generated_files(f"ny-auth-{key}", count=4)),
                 ve.random_layer(f"ny-auth-{key}", 100_000)]
        out[key] = push_bytes_image(token_registry.url, alice, repo, TAG, pairs, f"ny-auth-{key}")
    return out


def client_token(proxy, user, repo):
    """What a client does after the 401: the proxy's realm, with its credentials (or none)."""
    r = requests.get(f"{proxy.url}/v2/{repo}/manifests/{TAG}{SUFFIX}", timeout=30)
    assert r.status_code == 401, (r.status_code, r.text[:200])
    scheme, params = parse_challenge(r.headers.get("WWW-Authenticate", ""))
    assert scheme == "bearer" and params["realm"].endswith("/auth/token/secure")
    creds = None if user is None else (user, USERS[user])
    tok = fetch_token(params["realm"], params.get("service"), params.get("scope"), creds)
    assert tok.status_code == 200, tok.text
    body = tok.json()
    return "Bearer " + (body.get("token") or body.get("access_token"))


def assert_denied(resp, what, secrets, statuses=(401, 403)):
    assert resp.status_code in statuses, f"{what}: {resp.status_code} {resp.text[:200]}"
    for data in secrets:
        assert len(data) < 64 or data not in resp.content, f"{what}: converted bytes leaked"


def test_authorization_per_client(tmp_path_factory, token_registry, auth_sources, tmp_path):
    with ve.running_variant_proxy(tmp_path_factory.mktemp("proxy-nydus-auth"),
                                  [upstream("secure", token_registry.url, token_proxy=True)],
                                  variants()) as proxy:
        repo = AUTH_REPOS["private"]
        alice = client_token(proxy, "alice", repo)
        resp = ve.get_manifest(proxy, repo, TAG + SUFFIX, auth=alice)
        assert resp.status_code == 200, (resp.status_code, resp.text[:300])
        objects = check_nydus_image(proxy, repo, resp.content, auth_sources["private"], auth=alice)
        assert conversions(proxy, "done") == 1
        nydus_blobs = [l["digest"] for l in resp.json()["layers"][:-1]]
        variant_digest = ve.sha256(resp.content)
        check = run_check(f"docker://{host(proxy)}/{repo}:{TAG}{SUFFIX}", tmp_path,
                          "--tls-verify=false", "--creds", f"alice:{USERS['alice']}")
        assert check.returncode == 0, check.stdout + check.stderr
        # The public repository's variant, for the cross-repository requests below.
        pub = AUTH_REPOS["public"]
        bob_pub = client_token(proxy, "bob", pub)
        r = ve.get_manifest(proxy, pub, TAG + SUFFIX, auth=bob_pub)
        assert r.status_code == 200, (r.status_code, r.text[:300])
        assert conversions(proxy, "done") == 2

        secrets = [resp.content] + [v for v in objects.values() if isinstance(v, bytes)]
        for user in ("bob", None):
            who = user or "anonymous"
            auth = client_token(proxy, user, repo)
            r = ve.get_manifest(proxy, repo, TAG + SUFFIX, auth=auth)
            assert_denied(r, f"{who} {repo}:{TAG}{SUFFIX}", secrets)
            r = ve.get_manifest(proxy, repo, variant_digest, auth=auth)
            assert_denied(r, f"{who} {repo}@{variant_digest}", secrets)
            for digest in nydus_blobs:
                for method, headers in (("GET", None), ("HEAD", None),
                                        ("GET", {"Range": "bytes=-4096"})):
                    r = get_blob(proxy, repo, digest, auth=auth, method=method, headers=headers)
                    assert_denied(r, f"{who} {method} {headers} {repo}@{digest}", secrets)
            # Through a repository the client may read: those blobs are not that repository's.
            pub_auth = client_token(proxy, user, pub)
            for digest in nydus_blobs + [variant_digest]:
                kind = "manifests" if digest == variant_digest else "blobs"
                r = requests.get(f"{proxy.url}/v2/{pub}/{kind}/{digest}", timeout=30,
                                 headers={"Authorization": pub_auth,
                                          "Accept": ve.MANIFEST_ACCEPT})
                assert_denied(r, f"{who} {pub}/{kind}/{digest}", secrets, (401, 403, 404))
            # Its referrers do not name the variant to a client that may not read the source.
            r = requests.get(f"{proxy.url}/v2/{repo}/referrers/{auth_sources['private'].digest}",
                             headers={"Authorization": auth}, timeout=30)
            assert_denied(r, f"{who} referrers of {repo}", secrets)
            assert variant_digest.encode() not in r.content
            # Without any credentials: a 401 pointing at the proxy.
            r = get_blob(proxy, repo, nydus_blobs[0])
            assert_denied(r, f"no token {repo}@{nydus_blobs[0]}", secrets, (401,))
        # alice sees the variant among the referrers of her source.
        r = requests.get(f"{proxy.url}/v2/{repo}/referrers/{auth_sources['private'].digest}",
                         headers={"Authorization": alice}, timeout=30)
        assert r.status_code == 200, (r.status_code, r.text[:300])
        assert [d["digest"] for d in r.json()["manifests"]][:1] == [variant_digest]
        # alice still reads (cached), and nothing was converted again.
        r = get_blob(proxy, repo, nydus_blobs[-1], auth=alice, headers={"Range": "bytes=0-9"})
        assert r.status_code == 206 and r.content == objects[nydus_blobs[-1]][:10]
        assert conversions(proxy) == 2
        assert ve.metric(proxy, "accel_proxy_authorization_checks_total", result="denied") >= 1


# ---- 5. referrers --------------------------------------------------------------------------

def get_referrers(proxy, repo, digest, query=""):
    resp = requests.get(f"{proxy.url}/v2/{repo}/referrers/{digest}{query}", timeout=30)
    assert resp.status_code == 200, (resp.status_code, resp.text[:300])
    assert resp.headers.get("Content-Type", "").split(";")[0] == images.OCI_INDEX
    body = resp.json()
    assert body.get("schemaVersion") == 2 and body.get("mediaType") == images.OCI_INDEX
    return body


def check_referrer_like_snapshotter(proxy, repo, source_digest, nydus_digest):
    """nydus-snapshotter's checkReferrer: the FIRST referrer only, its last layer must carry
    the bootstrap annotation; then it pulls that layer and unpacks image/image.boot."""
    body = get_referrers(proxy, repo, source_digest)
    assert body["manifests"], f"no referrers for {source_digest}"
    first = body["manifests"][0]
    assert first["digest"] == nydus_digest, \
        f"first referrer is {first}, not the Nydus variant {nydus_digest}"
    assert first["mediaType"] == images.OCI_MANIFEST
    r = ve.get_manifest(proxy, repo, first["digest"])
    assert r.status_code == 200 and ve.sha256(r.content) == first["digest"]
    assert first["size"] == len(r.content)
    manifest = r.json()
    assert manifest["subject"]["digest"] == source_digest
    last = manifest["layers"][-1]
    assert (last.get("annotations") or {}).get(BOOTSTRAP_ANNOTATION) == "true", last
    blob = get_blob(proxy, repo, last["digest"])
    assert blob.status_code == 200
    assert "image/image.boot" in bootstrap_of(blob.content)[1]
    return body


@pytest.fixture(scope="module")
def upstream_referrer(registry, single):
    """An SBOM referring to ny/single:v1, listed in the upstream's fallback tag sha256-<hex>."""
    pusher = images.Pusher(registry.url, requests.Session())
    sbom = pusher.push_artifact(SINGLE_REPO, single, SBOM, b'{"sbom": "nydus test"}')
    idx = {"schemaVersion": 2, "mediaType": images.OCI_INDEX,
           "manifests": [sbom.descriptor(artifactType=SBOM)]}
    pusher.push_manifest(SINGLE_REPO, single.digest.replace(":", "-"), images.encode_json(idx),
                         images.OCI_INDEX)
    return sbom


def test_referrers_nydus_first_with_estargz_and_upstream_referrer(vproxy, single, single_variant,
                                                                  upstream_referrer):
    nydus_digest = ve.sha256(single_variant[0].content)
    estargz = ve.get_manifest(vproxy, SINGLE_REPO, TAG + "-estargz")
    assert estargz.status_code == 200, estargz.text[:300]
    estargz_digest = ve.sha256(estargz.content)
    body = check_referrer_like_snapshotter(vproxy, SINGLE_REPO, single.digest, nydus_digest)
    listed = [d["digest"] for d in body["manifests"]]
    assert sorted(listed) == sorted([nydus_digest, estargz_digest, upstream_referrer.digest]), listed
    by_digest = {d["digest"]: d for d in body["manifests"]}
    assert by_digest[nydus_digest].get("artifactType") == NYDUS_ARTIFACT_TYPE
    assert by_digest[upstream_referrer.digest].get("artifactType") == SBOM
    # Each variant says what it is, and of what, in the annotations copied from its manifest.
    for digest, fmt in ((nydus_digest, "nydus"), (estargz_digest, "estargz")):
        notes = by_digest[digest].get("annotations") or {}
        assert notes.get("io.accel-proxy.variant.format") == fmt, by_digest[digest]
        assert notes.get("io.accel-proxy.variant.source") == single.digest, by_digest[digest]
    # Filtered to image configs: both variants (Nydus first), not the SBOM.
    only = get_referrers(vproxy, SINGLE_REPO, single.digest, "?artifactType=" + quote(NYDUS_ARTIFACT_TYPE, safe=""))
    assert [d["digest"] for d in only["manifests"]] == [nydus_digest, estargz_digest]
    sboms = get_referrers(vproxy, SINGLE_REPO, single.digest, f"?artifactType={SBOM}")
    assert [d["digest"] for d in sboms["manifests"]] == [upstream_referrer.digest]


def test_referrers_nydus_first_when_estargz_was_converted_before(vproxy, ordered):
    estargz = ve.get_manifest(vproxy, ORDER_REPO, TAG + "-estargz")
    assert estargz.status_code == 200, estargz.text[:300]
    before = get_referrers(vproxy, ORDER_REPO, ordered.digest)
    assert [d["digest"] for d in before["manifests"]] == [ve.sha256(estargz.content)]
    nydus = ve.get_manifest(vproxy, ORDER_REPO, TAG + SUFFIX)
    assert nydus.status_code == 200, nydus.text[:300]
    check_nydus_image(vproxy, ORDER_REPO, nydus.content, ordered)
    body = check_referrer_like_snapshotter(vproxy, ORDER_REPO, ordered.digest,
                                           ve.sha256(nydus.content))
    assert [d["digest"] for d in body["manifests"]] == \
        [ve.sha256(nydus.content), ve.sha256(estargz.content)]


def test_referrers_of_a_platform_manifest_list_its_nydus_manifest(vproxy, index, index_variant):
    """nydus-snapshotter asks for the referrers of the image manifest it pulls, i.e. of one
    platform's manifest: each source child must list its Nydus child first."""
    top = index_variant.json()
    for d, child in zip(top["manifests"], index.children):
        check_referrer_like_snapshotter(vproxy, INDEX_REPO, child.digest, d["digest"])


def test_referrers_of_an_index_list_its_nydus_index_with_subject(vproxy, index, index_variant):
    """The referrers of the source index list the Nydus index first; a referrer is a manifest
    whose `subject` names that digest (distribution spec 1.1), so the variant index must carry
    it, like the converted image manifests do."""
    body = get_referrers(vproxy, INDEX_REPO, index.digest)
    want = ve.sha256(index_variant.content)
    assert body["manifests"] and body["manifests"][0]["digest"] == want, body
    assert body["manifests"][0]["mediaType"] == images.OCI_INDEX
    assert index_variant.json().get("subject") == descriptor_of(index), \
        f"listed as a referrer of {index.digest}, but its subject is " \
        f"{index_variant.json().get('subject')}"


# ---- 6. mirror header and Accept parameter -------------------------------------------------

@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("headers", [
    {"X-Accel-Format": "nydus", "Accept": ve.CONTAINERD_ACCEPT},
    {"x-accel-format": "Nydus", "Accept": ve.CONTAINERD_ACCEPT},
    {"Accept": images.OCI_MANIFEST + ";accel-format=nydus, " + images.OCI_INDEX},
    {"Accept": ve.CONTAINERD_ACCEPT + ", " + images.OCI_MANIFEST + "; accel-format=\"nydus\""},
], ids=["header", "header-case", "accept", "accept-quoted"])
def test_plain_tag_asks_for_nydus(vproxy, single, single_variant, headers, method):
    want = ve.sha256(single_variant[0].content)
    resp = requests.request(method, f"{vproxy.url}/v2/{SINGLE_REPO}/manifests/{TAG}",
                            headers=headers, timeout=60)
    assert resp.status_code == 200, resp.text[:300]
    assert resp.headers["Docker-Content-Digest"] == want
    assert resp.headers["Content-Type"] == images.OCI_MANIFEST
    if method == "GET":
        assert resp.content == single_variant[0].content
    # Without it, the plain tag is the original.
    plain = requests.get(f"{vproxy.url}/v2/{SINGLE_REPO}/manifests/{TAG}",
                         headers={"Accept": ve.CONTAINERD_ACCEPT}, timeout=60)
    assert plain.status_code == 200 and plain.content == single.manifest


def test_plain_index_tag_with_header(vproxy, index, index_variant):
    resp = requests.get(f"{vproxy.url}/v2/{INDEX_REPO}/manifests/{TAG}",
                        headers={"X-Accel-Format": FORMAT, "Accept": ve.CONTAINERD_ACCEPT},
                        timeout=60)
    assert resp.status_code == 200 and resp.content == index_variant.content


# ---- 7. a layer the converter refuses ------------------------------------------------------

def test_hardlink_to_a_lower_layer_converts(vproxy, lower_link, tmp_path):
    resp = ve.get_manifest(vproxy, "ny/lowerlink", TAG + SUFFIX)
    assert resp.status_code == 200, resp.text[:300]
    check_nydus_image(vproxy, "ny/lowerlink", resp.content, lower_link)
    check = run_check(f"docker://{host(vproxy)}/ny/lowerlink:{TAG}{SUFFIX}", tmp_path,
                      "--tls-verify=false")
    assert check.returncode == 0, check.stdout + check.stderr


def start_broken_proxy(tmp_path_factory, registry, name, **overrides):
    return ve.running_variant_proxy(tmp_path_factory.mktemp(name), [upstream("main", registry.url)],
                                    variants(**overrides))


def assert_no_variant_listed(proxy, source):
    for entry in listing(proxy):
        if entry["source"] == source.digest:
            assert entry["state"] == "failed", entry


def assert_nothing_cached_for(proxy, source, converted):
    """After the proxy stopped (the cache is locked while it runs): the cache is consistent,
    holds no variant of the failed source, and does hold the one of `converted` (so the
    check can tell)."""
    problems, idx = ve.cache_problems(ve.cache_dir(proxy))
    assert problems == [], problems
    keys = list(idx["manifest_variants"])
    assert not [k for k in keys if source.digest in k], f"a variant of the failed source: {keys}"
    assert [k for k in keys if converted.digest in k], f"the good image's variant is missing: {keys}"


def error_message(resp):
    return " ".join(e.get("message", "") for e in resp.json()["errors"])


def failure_lines(proxy):
    return [l for l in proxy.service.log_text().splitlines() if " conversion failed " in l]


@pytest.mark.parametrize("mode", ["wait", "reject"])
def test_refused_layer_gives_a_clear_error(tmp_path_factory, registry, broken, lower_link, mode):
    with start_broken_proxy(tmp_path_factory, registry, f"proxy-nydus-broken-{mode}", on_miss=mode,
                            wait_limit="30s", retry_backoff="2s") as proxy:
        resp = ve.get_manifest(proxy, BROKEN_REPO, TAG + SUFFIX)
        if mode == "reject":
            assert_oci_error(resp.status_code, resp.content, {404}, {"MANIFEST_UNKNOWN"})
            ve.wait_until(lambda: conversions(proxy, "failed") >= 1, 30, "the failed conversion")
        else:
            assert_oci_error(resp.status_code, resp.content, {502, 503})
            assert "etc/missing" in error_message(resp), resp.text
        assert conversions(proxy, "failed") == 1 and conversions(proxy, "done") == 0
        lines = failure_lines(proxy)
        assert len(lines) == 1 and "etc/missing" in lines[0], lines
        entries = [c for c in listing(proxy) if c["source"] == broken.digest]
        assert entries and entries[0]["format"] == FORMAT and entries[0]["state"] == "failed"
        assert "etc/missing" in entries[0]["error"], entries
        assert_no_variant_listed(proxy, broken)

        # Within the backoff: an error again, no new attempt.
        resp = ve.get_manifest(proxy, BROKEN_REPO, TAG + SUFFIX)
        assert resp.status_code >= 400
        assert_oci_error(resp.status_code, resp.content,
                         {404} if mode == "reject" else {502, 503},
                         {"MANIFEST_UNKNOWN"} if mode == "reject" else None)
        assert "etc/missing" in error_message(resp), \
            f"the error does not say why the conversion failed: {resp.text}"
        assert conversions(proxy, "failed") == 1, "retried within retry_backoff"
        # The original tag is untouched.
        plain = ve.get_manifest(proxy, BROKEN_REPO, TAG)
        assert plain.status_code == 200 and plain.content == broken.manifest
        # After the backoff: one new attempt, which fails the same way.
        time.sleep(2.2)
        resp = ve.get_manifest(proxy, BROKEN_REPO, TAG + SUFFIX)
        assert resp.status_code >= 400
        ve.wait_until(lambda: conversions(proxy, "failed") >= 2, 30, "the second attempt")
        assert conversions(proxy, "failed") == 2
        assert_no_variant_listed(proxy, broken)
        # A good image converts on the same proxy (positive control for the cache check).
        good = ve.get_manifest(proxy, "ny/lowerlink", TAG + SUFFIX)
        if mode == "reject":
            ve.wait_until(lambda: conversions(proxy, "done") >= 1, 30, "the good conversion")
        else:
            assert good.status_code == 200, good.text[:300]
    assert_nothing_cached_for(proxy, broken, lower_link)


def test_refused_layer_falls_back_to_the_original(tmp_path_factory, registry, broken, lower_link):
    with start_broken_proxy(tmp_path_factory, registry, "proxy-nydus-broken-fallback",
                            on_miss="fallback", wait="10s", retry_backoff="60s") as proxy:
        for _ in range(2):
            resp = ve.get_manifest(proxy, BROKEN_REPO, TAG + SUFFIX)
            assert resp.status_code == 200, resp.text[:300]
            assert resp.content == broken.manifest, "a failed conversion must give the original"
            assert resp.headers["Docker-Content-Digest"] == broken.digest
        assert conversions(proxy, "failed") == 1 and conversions(proxy, "done") == 0
        assert_no_variant_listed(proxy, broken)
        good = ve.get_manifest(proxy, "ny/lowerlink", TAG + SUFFIX)
        assert good.status_code == 200
        ve.wait_until(lambda: conversions(proxy, "done") >= 1, 30, "the good conversion")
    assert_nothing_cached_for(proxy, broken, lower_link)
