"""The eStargz reference tools checked against each other, before our converter is involved.

1. For every generated layer (tests/integration/layers.py) the reference converter
   (estargz-ref-build = estargz.Build from Debian's stargz-snapshotter 0.12) makes a blob and
   estargz-check accepts it against the source layer, with the diffID the library reported.
2. estargz-check rejects blobs that are wrong in one way each (TOC edits, corrupted data,
   bad footer, single gzip member, wrong source, wrong digest).
3. Documented reference behaviour: estargz.Build fails on a PAX sparse file; the blob of
   the densified twin passes the checker against the sparse source.

Run: /usr/bin/python3 -m pytest -q tests/estargz   (builds build/go/ via build.sh; about 20 s)
The tools dir can be overridden with ESTARGZ_TOOLS=DIR.
"""
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import layers  # noqa: E402

FOOTER = 51


@pytest.fixture(scope="session")
def tools():
    out = os.environ.get("ESTARGZ_TOOLS", os.path.join(ROOT, "build", "go"))
    subprocess.run([os.path.join(HERE, "build.sh"), out], check=True)
    return {"check": os.path.join(out, "estargz-check"), "build": os.path.join(out, "estargz-ref-build")}


@pytest.fixture(scope="session")
def layer_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("layers"))


_layer_cache = {}


def layer(layer_dir, name):
    if name not in _layer_cache:
        _layer_cache[name] = layers.LAYERS[name](layer_dir)
    return _layer_cache[name]


def ref_build(tools, src, out, *args):
    p = subprocess.run([tools["build"], src, out, *args], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def run_check(tools, blob, toc_digest, source, *args):
    return subprocess.run([tools["check"], "--blob", blob, "--toc-digest", toc_digest,
                           "--source", source, "--json", *args], capture_output=True, text=True)


def assert_ok(p):
    assert p.returncode == 0, p.stderr + p.stdout
    return json.loads(p.stdout)


def zcat_sha256(path):
    h = hashlib.sha256()
    with gzip.open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return "sha256:" + h.hexdigest()


# ----------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("name", ["debian_like", "many_small", "few_large", "adversarial_nosparse"])
def test_reference_blob_passes(tools, layer_dir, tmp_path, name):
    src = layer(layer_dir, name)
    blob = str(tmp_path / "blob")
    res = ref_build(tools, src, blob)
    out = assert_ok(run_check(tools, blob, res["toc_digest"], src))
    assert out["diff_id"] == res["diff_id"] == zcat_sha256(blob)
    assert out["toc_digest"] == res["toc_digest"]
    assert out["blob_size"] == res["size"] == os.path.getsize(blob)
    print(f"{name}: reference {res['mb_per_s']:.1f} MB/s ({res['uncompressed_input_bytes']} B in "
          f"{res['seconds']:.2f} s), {out['entries']} entries, {out['chunks']} chunks")


def test_gzip_source_and_input(tools, layer_dir, tmp_path):
    gz = layers.gzip_layer(layer(layer_dir, "debian_like"))
    blob = str(tmp_path / "blob")
    res = ref_build(tools, gz, blob, "--procs", "1", "--level", "6", "--chunk-size", "65536")
    assert res["uncompressed_input_bytes"] == os.path.getsize(layer(layer_dir, "debian_like"))
    out = assert_ok(run_check(tools, blob, res["toc_digest"], gz, "--source-gz"))
    assert out["diff_id"] == res["diff_id"]


def test_reference_fails_on_sparse(tools, layer_dir, tmp_path):
    # Debian's estargz 0.12 imports the PAX sparse entry with its real size (64 MiB) but reads
    # the raw archived bytes, so Build stops with "unexpected EOF" (formats.md §5 pitfall 5).
    p = subprocess.run([tools["build"], layer(layer_dir, "adversarial"), str(tmp_path / "blob")],
                       capture_output=True, text=True)
    assert p.returncode != 0
    assert 'error copying "adv/sparse.img": unexpected EOF' in p.stderr


def test_densified_sparse_matches_sparse_source(tools, layer_dir, tmp_path):
    # What a converter that densifies sparse files must produce: the reference blob of the
    # dense twin passes the checker against the sparse source.
    blob = str(tmp_path / "blob")
    res = ref_build(tools, layer(layer_dir, "adversarial_dense"), blob)
    out = assert_ok(run_check(tools, blob, res["toc_digest"], layer(layer_dir, "adversarial")))
    assert out["diff_id"] == res["diff_id"]


def test_prefetch_landmark(tools, layer_dir, tmp_path):
    src = layer(layer_dir, "debian_like")
    lst = tmp_path / "prioritized"
    lst.write_text("/usr/bin/perl\n./etc/os-release\nusr/lib/x86_64-linux-gnu/libfoo07.so.2.0.0\n")
    blob = str(tmp_path / "blob")
    res = ref_build(tools, src, blob, "--prioritized", str(lst))
    p = run_check(tools, blob, res["toc_digest"], src)
    assert p.returncode == 1 and "first TOC entry" in p.stderr
    assert_ok(run_check(tools, blob, res["toc_digest"], src, "--prefetch-landmark", "--prioritized", str(lst)))


# ----------------------------------------------------------------------------- negative tests

@pytest.fixture(scope="module")
def good(tools, layer_dir, tmp_path_factory):
    src = layer(layer_dir, "adversarial_nosparse")
    blob = str(tmp_path_factory.mktemp("good") / "blob")
    res = ref_build(tools, src, blob, "--procs", "1")
    with open(blob, "rb") as f:
        return {"src": src, "blob": f.read(), "toc": res["toc_digest"]}


def footer_bytes(toc_offset):
    return (bytes([0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 26, 0]) + b"SG" + bytes([22, 0]) +
            b"%016xSTARGZ" % toc_offset + bytes([1, 0, 0, 0xff, 0xff]) + bytes(8))


def split_blob(blob):
    off = int(blob[-FOOTER + 16:-FOOTER + 32], 16)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob[off:-FOOTER]))) as tf:
        js = tf.extractfile(tf.next()).read()
    return off, json.loads(js)


def with_toc(blob, toc):
    """Replace the TOC member (and footer) of blob; returns (blob, toc digest)."""
    off, _ = split_blob(blob)
    js = json.dumps(toc, indent="\t", ensure_ascii=False).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        ti = tarfile.TarInfo("stargz.index.json")
        ti.size, ti.mode, ti.uname, ti.gname = len(js), 0, "", ""
        tf.addfile(ti, io.BytesIO(js))
    member = gzip.compress(buf.getvalue(), mtime=0)
    return blob[:off] + member + footer_bytes(off), "sha256:" + hashlib.sha256(js).hexdigest()


def entry(toc, name):
    return next(e for e in toc["entries"] if e["name"] == name and e["type"] != "chunk")


def check_bytes(tools, tmp_path, blob, toc_digest, src, *args):
    p = tmp_path / "mut.blob"
    p.write_bytes(blob)
    return run_check(tools, str(p), toc_digest, src, *args)


def test_rewritten_toc_control(tools, good, tmp_path):
    # the TOC surgery used below, with no edit, still passes
    _, toc = split_blob(good["blob"])
    blob, dgst = with_toc(good["blob"], toc)
    assert_ok(check_bytes(tools, tmp_path, blob, dgst, good["src"]))


def _set(name, key, value):
    def edit(toc):
        entry(toc, name)[key] = value
    return edit


def _pop(name, key):
    def edit(toc):
        entry(toc, name).pop(key)
    return edit


def _swap_offsets(toc):
    a, b = entry(toc, "adv/setuid"), entry(toc, "adv/setgid")
    a["offset"], b["offset"] = b["offset"], a["offset"]


def _drop_landmark(toc):
    toc["entries"] = [e for e in toc["entries"] if e["name"] != ".no.prefetch.landmark"]


def _drop_chunk(toc):
    i = next(i for i, e in enumerate(toc["entries"]) if e["type"] == "chunk")
    del toc["entries"][i]


TOC_EDITS = {
    "innerOffset": (_set("adv/xattrs", "innerOffset", 0), "innerOffset"),
    "mode": (_set("adv/setuid", "mode", 0o755), "mode"),
    "uid": (_set("adv/bigids", "uid", 3000001), "uid/gid"),
    "xattr dropped": (lambda t: entry(t, "adv/ping").pop("xattrs"), "xattrs"),
    "xattr value": (lambda t: entry(t, "adv/xattrs")["xattrs"].update({"user.comment": "aGVsbG8="}), "xattr"),
    "modtime": (_set("adv/old-1901", "modtime", "1902-01-01T00:00:00Z"), "modtime"),
    "symlink target": (_set("adv/dangling", "linkName", "no/such/fil"), "link target"),
    "device": (_set("adv/null", "devMinor", 5), "device"),
    "chunkDigest missing": (_pop("adv/ping", "chunkDigest"), "chunkDigest"),
    "chunkDigest wrong": (_set("adv/ping", "chunkDigest", "sha256:" + "0" * 64), "chunkDigest mismatch"),
    "digest wrong": (_set("adv/ping", "digest", "sha256:" + "1" * 64), "digest"),
    "offsets swapped": (_swap_offsets, "increasing"),
    "no landmark": (_drop_landmark, "first TOC entry"),
    "chunk missing": (_drop_chunk, "chunks cover"),
    "unknown key": (_set("adv/zero", "NumLink", 1), "unknown key"),
    "size": (_set("adv/opq/kept", "size", 6), "size"),
}


@pytest.mark.parametrize("what", list(TOC_EDITS))
def test_checker_rejects_toc_edit(tools, good, tmp_path, what):
    edit, needle = TOC_EDITS[what]
    _, toc = split_blob(good["blob"])
    edit(toc)
    blob, dgst = with_toc(good["blob"], toc)
    p = check_bytes(tools, tmp_path, blob, dgst, good["src"])
    assert p.returncode == 1, p.stdout
    assert needle.lower() in p.stderr.lower(), p.stderr
    assert json.loads(p.stdout)["ok"] is False


def test_checker_rejects_wrong_digest(tools, good, tmp_path):
    p = check_bytes(tools, tmp_path, good["blob"], "sha256:" + "2" * 64, good["src"])
    assert p.returncode == 1 and "TOC JSON digest" in p.stderr


def test_checker_rejects_corrupt_payload(tools, good, tmp_path):
    _, toc = split_blob(good["blob"])
    e = entry(toc, "adv/ping")
    blob = bytearray(good["blob"])
    blob[e["offset"] + 200] ^= 0x55
    p = check_bytes(tools, tmp_path, bytes(blob), good["toc"], good["src"])
    assert p.returncode == 1, p.stdout


def test_checker_rejects_bad_footer(tools, good, tmp_path):
    blob = bytearray(good["blob"])
    blob[-FOOTER + 9] = 3       # OS byte: unix instead of 255
    p = check_bytes(tools, tmp_path, bytes(blob), good["toc"], good["src"])
    assert p.returncode == 1 and "footer" in p.stderr


def test_checker_rejects_single_member(tools, good, tmp_path):
    # same decompressed bytes and TOC, but everything before the TOC in one gzip member
    off, toc = split_blob(good["blob"])
    data = gzip.decompress(good["blob"][:off])
    head = gzip.compress(data, mtime=0)
    blob = head + good["blob"][off:-FOOTER]
    # offsets in the TOC no longer point at members; keep the TOC, fix the footer
    blob += footer_bytes(len(head))
    p = check_bytes(tools, tmp_path, blob, good["toc"], good["src"])
    assert p.returncode == 1, p.stdout
    assert "gzip member" in p.stderr or "1f8b08" in p.stderr or "offset" in p.stderr, p.stderr


def test_checker_rejects_other_source(tools, good, layer_dir, tmp_path):
    # the source with one header changed (adv/setuid mode 04755 -> 0755)
    src = bytearray(open(good["src"], "rb").read())
    i = src.index(b"adv/setuid\0")
    hdr = src[i:i + 512]
    assert hdr[100:107] == b"0004755"
    hdr[100:107] = b"0000755"
    hdr[148:156] = b" " * 8
    hdr[148:156] = b"%06o\0 " % sum(hdr)
    src[i:i + 512] = hdr
    other = tmp_path / "other.tar"
    other.write_bytes(bytes(src))
    p = check_bytes(tools, tmp_path, good["blob"], good["toc"], str(other))
    assert p.returncode == 1 and "mode" in p.stderr and "adv/setuid" in p.stderr, p.stderr


def test_checker_rejects_other_content(tools, good, tmp_path):
    src = bytearray(open(good["src"], "rb").read())
    i = src.index(b"file with xattrs\n")
    src[i] ^= 0x20
    other = tmp_path / "other.tar"
    other.write_bytes(bytes(src))
    p = check_bytes(tools, tmp_path, good["blob"], good["toc"], str(other))
    assert p.returncode == 1 and "adv/xattrs" in p.stderr, p.stderr


def test_layers_are_deterministic(layer_dir, tmp_path):
    for name in ("adversarial", "many_small"):
        a = layer(layer_dir, name)
        b = layers.LAYERS[name](str(tmp_path))
        assert open(a, "rb").read() == open(b, "rb").read(), name

