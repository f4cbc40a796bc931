"""Conversion failures: `accel-proxy convert` and `convert-layer` on bad input.

Every case: exit status 1, an "error:" line naming the problem, and nothing at the
destination (no tag in the registry / no manifest in the OCI layout, an existing tag left as
it was, no output file from convert-layer, no temporary files left behind).

Both formats (eStargz and Nydus) are held to this. Bad inputs: a truncated gzip layer, a corrupt tar header, a config diff_id that does not
match the layer, a tar bomb past --max-layer-bytes, '..' in an entry name or a hardlink
target, and (oci: source) blobs on disk that do not match their digests or are missing.
"""
import json
import subprocess
import tarfile

import pytest

import estargz_tools as et
import images

GOOD_FILES = [("etc/", {"type": tarfile.DIRTYPE, "mode": 0o755}, b""),
              ("etc/os-release", b'NAME="Test"\nID=test\n'),
              ("usr/bin/tool", {"mode": 0o755}, images.deterministic_bytes("tool", 30_000))]

MAX_LAYER_BYTES = 1_000_000


def good_tar():
    return et.tar_bytes(GOOD_FILES)


def corrupt_header_tar():
    """A tar whose first header's name bytes were changed: its checksum no longer matches."""
    raw = bytearray(et.tar_bytes([("etc/passwd-like", b"root:x:0:0::/root:/bin/sh\n" * 10)]))
    raw[0:6] = b"XXXXXX"
    return bytes(raw)


def bomb_tar():
    """5 MB of zeros: a few KB compressed, far past MAX_LAYER_BYTES expanded."""
    return et.tar_bytes([("var/bomb", bytes(5_000_000))])


def traversal_tar():
    return et.tar_bytes([("etc/ok", b"ok\n"), ("../../etc/passwd", b"root::0:0::/:/bin/sh\n")])


def hardlink_traversal_tar():
    return et.tar_bytes([("etc/ok", b"ok\n"),
                         ("etc/link", {"type": tarfile.LNKTYPE, "linkname": "../../etc/passwd"},
                          b"")])


def layer(tar: bytes):
    return et.gzip_bytes(tar), tar


def truncated_layer():
    tar = et.tar_bytes([("usr/lib/data.bin", images.deterministic_bytes("trunc", 200_000))])
    gz = et.gzip_bytes(tar)
    return gz[:len(gz) // 2], tar


# name -> (layers after a good first layer, config diff_ids override or None,
#          extra convert arguments, substrings the error message must contain)
CASES = {
    "truncated-gzip": (lambda: [truncated_layer()], None, [], ["gzip", "truncated"]),
    "corrupt-tar-header": (lambda: [layer(corrupt_header_tar())], None, [], ["checksum"]),
    "diff-id-mismatch": (lambda: [layer(good_tar() + bytes(512))], "wrong", [], ["diff_id"]),
    "tar-bomb": (lambda: [layer(bomb_tar())], None, ["--max-layer-bytes", str(MAX_LAYER_BYTES)],
                 ["limit"]),
    "path-traversal": (lambda: [layer(traversal_tar())], None, [], ["../../etc/passwd"]),
    "hardlink-traversal": (lambda: [layer(hardlink_traversal_tar())], None, [],
                           ["../../etc/passwd"]),
}


def build_case(name):
    """(layers, diff_ids or None, extra args, expected substrings) of an error case."""
    make, diff_ids, args, expect = CASES[name]
    layers = [layer(good_tar())] + make()
    if diff_ids == "wrong":
        # The config names the diff_id of a different tar than the layer holds.
        diff_ids = [images.sha256_digest(good_tar()), images.sha256_digest(good_tar())]
    return layers, diff_ids, args, expect


def host_of(registry):
    return registry.url.split("://", 1)[1]


def assert_failed(p, expect, prefix="accel-proxy convert: error:"):
    assert p.returncode == 1, f"exit status {p.returncode}, expected 1\nstdout: {p.stdout}\n" \
                              f"stderr: {p.stderr}"
    assert prefix in p.stderr, f"no '{prefix}' line: {p.stderr!r}"
    message = p.stderr[p.stderr.index(prefix):].strip()
    missing = [s for s in expect if s.lower() not in message.lower()]
    assert not missing, f"error message lacks {missing}: {message!r}"


def assert_nothing_left(workdir):
    leftovers = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.is_file())
    assert leftovers == [], f"temporary files left behind: {leftovers[:10]}"


def assert_layout_untouched(layout, tag, index_before=None):
    if index_before is not None:
        assert (layout / "index.json").read_bytes() == index_before, "index.json changed"
        return
    assert et.layout_tagged(layout, tag) is None, f"{tag} was written to the layout"
    assert et.layout_manifests(layout) == [], "the layout's index.json lists manifests"
    assert et.layout_json_blobs(layout) == {}, "a manifest or index blob was written"


@pytest.fixture
def workdir(tmp_path):
    d = tmp_path / "work"
    d.mkdir()
    return d


# ---- registry source -----------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["estargz", "nydus"])
@pytest.mark.parametrize("dst_kind", ["docker", "oci"])
@pytest.mark.parametrize("case", list(CASES))
def test_convert_bad_layer_from_registry(case, dst_kind, fmt, open_registry, tmp_path, workdir):
    layers, diff_ids, args, expect = build_case(case)
    args = [*args, "--format", fmt]  # the last --format given wins
    repo = f"errors/{case}-{dst_kind}-{fmt}"
    et.push_layers_image(open_registry.url, repo, "v1", layers, diff_ids=diff_ids, seed=case)
    host = host_of(open_registry)
    layout = tmp_path / "out"
    dst = f"docker://{host}/{repo}:converted" if dst_kind == "docker" \
        else f"oci:{layout}:converted"
    p = et.convert(f"docker://{host}/{repo}:v1", dst, "--src-tls-verify=false",
                   "--dest-tls-verify=false", *args, workdir=workdir)
    assert_failed(p, expect)
    if dst_kind == "docker":
        assert et.get_manifest(open_registry.url, repo, "converted") is None, \
            "the destination tag exists after a failed convert"
        assert "converted" not in et.tags(open_registry.url, repo)
    else:
        assert_layout_untouched(layout, "converted")
    assert_nothing_left(workdir)


def test_convert_good_image_of_the_same_shape(open_registry, tmp_path, workdir):
    """Control for the cases above: with two good layers the same push and convert work."""
    repo = "errors/control"
    et.push_layers_image(open_registry.url, repo, "v1", [layer(good_tar()), layer(good_tar())],
                         seed="control")
    host = host_of(open_registry)
    p = et.convert(f"docker://{host}/{repo}:v1", f"docker://{host}/{repo}:converted",
                   "--src-tls-verify=false", "--dest-tls-verify=false", "--max-layer-bytes",
                   str(MAX_LAYER_BYTES), "--json", workdir=workdir)
    assert p.returncode == 0, p.stderr
    assert et.get_manifest(open_registry.url, repo, "converted") is not None
    assert_nothing_left(workdir)


@pytest.mark.parametrize("dst_kind", ["docker", "oci"])
def test_failed_convert_keeps_existing_destination_tag(dst_kind, open_registry, tmp_path,
                                                       workdir):
    """A tag that already exists at DST still names the old image after a failed convert."""
    host = host_of(open_registry)
    good_repo, bad_repo = f"errors/keep-good-{dst_kind}", f"errors/keep-bad-{dst_kind}"
    et.push_layers_image(open_registry.url, good_repo, "v1", [layer(good_tar())], seed="keep")
    layers, diff_ids, args, expect = build_case("diff-id-mismatch")
    et.push_layers_image(open_registry.url, bad_repo, "v1", layers, diff_ids=diff_ids,
                         seed="keep-bad")
    layout = tmp_path / "out"
    dst = f"docker://{host}/{good_repo}:converted" if dst_kind == "docker" \
        else f"oci:{layout}:converted"
    ok = et.convert_json(f"docker://{host}/{good_repo}:v1", dst, "--src-tls-verify=false",
                         "--dest-tls-verify=false", workdir=workdir)
    index_before = (layout / "index.json").read_bytes() if dst_kind == "oci" else None

    p = et.convert(f"docker://{host}/{bad_repo}:v1", dst, "--src-tls-verify=false",
                   "--dest-tls-verify=false", workdir=workdir)
    assert_failed(p, expect)
    if dst_kind == "docker":
        got = et.get_manifest(open_registry.url, good_repo, "converted")
        assert got and images.sha256_digest(got[0]) == ok["manifest_digest"], \
            "the existing tag was moved by a failed convert"
    else:
        assert_layout_untouched(layout, "converted", index_before)
    assert_nothing_left(workdir)


# ---- oci: source with damaged blobs ---------------------------------------------------------

def oci_source(tmp_path):
    """A plain OCI layout (written here, not by the converter) with a 2-layer image 'v1'."""
    tar1 = good_tar()
    tar2 = et.tar_bytes([("opt/data.txt", b"some data\n" * 5000)])
    body, blobs, media_type = et.image_blobs([layer(tar1), layer(tar2)], seed="oci-src")
    src = et.write_oci_layout(tmp_path / "src", "v1", body, blobs, media_type)
    return src, json.loads(body), tar2


def regzip(tar: bytes) -> bytes:
    """The same tar, compressed differently: same diff_id, different digest."""
    import gzip
    return gzip.compress(tar, compresslevel=1, mtime=12345)


def damage_layer(src, manifest, tar2):
    path = et.layout_blob_path(src, manifest["layers"][1]["digest"])
    data = regzip(tar2)
    assert data != path.read_bytes()
    path.write_bytes(data)
    return [manifest["layers"][1]["digest"][7:19]]


def damage_config(src, manifest, tar2):
    path = et.layout_blob_path(src, manifest["config"]["digest"])
    config = json.loads(path.read_bytes())
    config["config"]["Cmd"] = ["/bin/evil"]
    path.write_bytes(images.encode_json(config))
    return [manifest["config"]["digest"][7:19]]


def remove_layer(src, manifest, tar2):
    et.layout_blob_path(src, manifest["layers"][1]["digest"]).unlink()
    return [manifest["layers"][1]["digest"][7:19]]


DAMAGE = {"layer-content-not-its-digest": (damage_layer, ["digest"]),
          "config-content-not-its-digest": (damage_config, ["digest"]),
          "layer-blob-missing": (remove_layer, [])}


def test_convert_undamaged_oci_source(tmp_path, workdir):
    """Control for the damage cases: the layout as written converts."""
    src, _, _ = oci_source(tmp_path)
    result = et.convert_json(f"oci:{src}:v1", f"oci:{tmp_path / 'out'}:v1", workdir=workdir)
    assert result["layers_converted"] == 2
    assert et.layout_tagged(tmp_path / "out", "v1")["digest"] == result["manifest_digest"]


@pytest.mark.parametrize("dst_kind", ["docker", "oci"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_convert_damaged_oci_source(damage, dst_kind, open_registry, tmp_path, workdir):
    src, manifest, tar2 = oci_source(tmp_path)
    do, expect = DAMAGE[damage]
    expect = expect + do(src, manifest, tar2)    # the message names the blob
    layout = tmp_path / "out"
    repo = f"errors/oci-{damage}"
    dst = f"docker://{host_of(open_registry)}/{repo}:converted" if dst_kind == "docker" \
        else f"oci:{layout}:converted"
    p = et.convert(f"oci:{src}:v1", dst, "--dest-tls-verify=false", workdir=workdir)
    assert_failed(p, expect)
    if dst_kind == "docker":
        assert et.get_manifest(open_registry.url, repo, "converted") is None
    else:
        assert_layout_untouched(layout, "converted")
    assert_nothing_left(workdir)


# ---- usage and reference errors ------------------------------------------------------------

def test_convert_missing_source_tag(open_registry, tmp_path, workdir):
    host = host_of(open_registry)
    et.push_layers_image(open_registry.url, "errors/exists", "v1", [layer(good_tar())])
    p = et.convert(f"docker://{host}/errors/exists:nope", f"oci:{tmp_path / 'out'}:x",
                   "--src-tls-verify=false", workdir=workdir)
    assert_failed(p, ["nope"])
    assert_layout_untouched(tmp_path / "out", "x")


@pytest.mark.parametrize("args, expect", [
    (["--format", "nydus-v9", "SRC", "DST"], ["unknown format"]),
    (["--format", "estargz", "not-a-location", "DST"], ["not-a-location"]),
    (["--format", "estargz", "SRC", "DST", "--threads", "many"], ["--threads"]),
])
def test_convert_usage_errors(args, expect, tmp_path, workdir):
    src = et.write_oci_layout(tmp_path / "a", "x", *et.image_blobs([layer(good_tar())])[:2],
                              images.OCI_MANIFEST)
    argv = [str(et.require_binary()), "convert"] + [
        {"SRC": f"oci:{src}:x", "DST": f"oci:{tmp_path / 'b'}:x"}.get(a, a) for a in args]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=et._env(workdir))
    assert_failed(p, expect)
    assert not (tmp_path / "b").exists(), "a usage error created the destination"


# ---- convert-layer -------------------------------------------------------------------------

LAYER_CASES = {
    "path-traversal": (traversal_tar, ".tar", [], ["../../etc/passwd"]),
    "hardlink-traversal": (hardlink_traversal_tar, ".tar", [], ["../../etc/passwd"]),
    "truncated-gzip": (lambda: truncated_layer()[0], ".tar.gz", [], ["gzip", "truncated"]),
    "corrupt-tar-header": (corrupt_header_tar, ".tar", [], ["checksum"]),
    "tar-bomb": (lambda: et.gzip_bytes(bomb_tar()), ".tar.gz",
                 ["--max-layer-bytes", str(MAX_LAYER_BYTES)], ["limit"]),
    "truncated-tar": (lambda: good_tar()[:700], ".tar", [], ["truncated"]),
}


@pytest.mark.parametrize("fmt", ["estargz", "nydus"])
@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_convert_layer_rejects(case, fmt, tmp_path):
    make, suffix, args, expect = LAYER_CASES[case]
    args = [*args, "--format", fmt]
    src = tmp_path / ("input" + suffix)
    src.write_bytes(make())
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "layer.estargz"
    p = et.convert_layer(src, out, *args)
    assert_failed(p, expect, prefix="accel-proxy convert-layer: error:")
    assert not out.exists(), "OUT exists after a failed convert-layer"
    assert list(outdir.iterdir()) == [], "temporary files left next to OUT"


# ---- limits checked before any work ----------------------------------------------------------

@pytest.mark.parametrize("fmt", ["estargz", "nydus"])
def test_image_over_the_limit_is_refused_before_reading_a_layer(fmt, tmp_path, workdir):
    """--max-image-bytes below the image's layers: refused naming the limit, nothing written.
    The first layer is removed from the source first, so reading any layer would fail with a
    different error: the refusal must come before."""
    src, manifest, _ = oci_source(tmp_path)
    total = sum(l["size"] for l in manifest["layers"])
    et.layout_blob_path(src, manifest["layers"][0]["digest"]).unlink()
    layout = tmp_path / "out"
    p = et.convert(f"oci:{src}:v1", f"oci:{layout}:converted", "--format", fmt,
                   "--max-image-bytes", str(total - 1), workdir=workdir)
    assert_failed(p, ["over the limit", str(total - 1)])
    assert_layout_untouched(layout, "converted")
    assert_nothing_left(workdir)
    # At the limit it is the missing layer that stops it: the limit itself passes.
    p = et.convert(f"oci:{src}:v1", f"oci:{layout}:converted", "--format", fmt,
                   "--max-image-bytes", str(total), workdir=workdir)
    assert p.returncode == 1 and "over the limit" not in p.stderr, p.stderr
