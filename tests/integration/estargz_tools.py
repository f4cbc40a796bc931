"""Helpers for the conversion tests (test_convert.py, test_convert_errors.py).

- run `accel-proxy convert-layer` / `accel-proxy convert`
- the reference checker build/go/estargz-check (built by tests/estargz/build.sh)
- independent byte-level checks of an eStargz blob (footer, TOC member, gunzip digest)
- push images made of given layers (with a config whose diff_ids are right, or wrong on
  purpose), write a plain OCI layout, read manifests back from a registry or a layout
"""
import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import zlib
from pathlib import Path

import requests

import images
from proxy import REPO_ROOT, require_binary

TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
UNCOMPRESSED_SIZE = "io.containers.estargz.uncompressed-size"
FOOTER_SIZE = 51
TOC_NAME = "stargz.index.json"

ESTARGZ_BUILD = REPO_ROOT / "tests" / "estargz" / "build.sh"
TOOLS_DIR = Path(os.environ.get("ESTARGZ_TOOLS", REPO_ROOT / "build" / "go"))

MANIFEST_ACCEPT = ", ".join([images.OCI_MANIFEST, images.OCI_INDEX, images.DOCKER_MANIFEST,
                             images.DOCKER_LIST])

# Every process the tests run gets a bounded time.
LAYER_TIMEOUT = 180
IMAGE_TIMEOUT = 180


# ---- running the converter -----------------------------------------------------------------

def _env(workdir=None):
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    if workdir:
        # No docker config from this machine is ever read.
        env["HOME"] = str(workdir)
        env["DOCKER_CONFIG"] = str(Path(workdir) / "docker-config")
        env["TMPDIR"] = str(workdir)
    return env


def convert_layer(src, out, *args, timeout=LAYER_TIMEOUT):
    """`accel-proxy convert-layer --format estargz SRC OUT ARGS`; the CompletedProcess."""
    argv = [str(require_binary()), "convert-layer", "--format", "estargz", str(src), str(out),
            *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=_env())


def convert_layer_ok(src, out, *args) -> dict:
    p = convert_layer(src, out, *args)
    assert p.returncode == 0, f"convert-layer {src} failed ({p.returncode}): {p.stderr}"
    return json.loads(p.stdout)


def convert(src, dst, *args, workdir=None, timeout=IMAGE_TIMEOUT):
    """`accel-proxy convert --format estargz SRC DST ARGS`; the CompletedProcess.

    workdir (a directory) becomes HOME/TMPDIR, so neither this machine's docker config nor
    its /tmp are involved.
    """
    argv = [str(require_binary()), "convert", "--format", "estargz", str(src), str(dst),
            *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env=_env(workdir))


def convert_json(src, dst, *args, workdir=None) -> dict:
    p = convert(src, dst, "--json", *args, workdir=workdir)
    assert p.returncode == 0, f"convert {src} -> {dst} failed ({p.returncode}): {p.stderr}"
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    assert len(lines) == 1, f"--json should print one line, got {p.stdout!r}"
    return json.loads(lines[0])


# ---- the reference checker -----------------------------------------------------------------

def build_tools() -> dict:
    """Build (or reuse) estargz-check and estargz-ref-build; their paths."""
    TOOLS_DIR.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["sh", str(ESTARGZ_BUILD), str(TOOLS_DIR)], capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, f"tests/estargz/build.sh failed:\n{p.stdout}{p.stderr}"
    tools = {"check": TOOLS_DIR / "estargz-check", "build": TOOLS_DIR / "estargz-ref-build"}
    for path in tools.values():
        assert path.is_file(), f"{path} was not built"
    return tools


def estargz_check(tools, blob, toc_digest, source, timeout=180):
    """Run estargz-check --json; (returncode, parsed summary or None, stderr)."""
    argv = [str(tools["check"]), "--blob", str(blob), "--toc-digest", toc_digest,
            "--source", str(source), "--json"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    try:
        summary = json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        summary = None
    return p.returncode, summary, p.stderr


def assert_checker_accepts(tools, blob, toc_digest, source) -> dict:
    rc, summary, err = estargz_check(tools, blob, toc_digest, source)
    detail = (summary or {}).get("error") or err.strip()
    assert rc == 0 and summary and summary.get("ok") is True, \
        f"estargz-check rejects {Path(blob).name} (source {Path(source).name}): {detail}"
    return summary


# ---- independent byte checks ---------------------------------------------------------------

def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def gunzip_digest(path):
    """(sha256 digest, byte count) of `gzip -dc PATH` (every member)."""
    h = hashlib.sha256()
    n = 0
    with subprocess.Popen(["gzip", "-dc", str(path)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as p:
        for chunk in iter(lambda: p.stdout.read(1 << 20), b""):
            h.update(chunk)
            n += len(chunk)
        err = p.stderr.read()
    assert p.returncode == 0, f"gzip -dc {path}: {err.decode(errors='replace')}"
    return "sha256:" + h.hexdigest(), n


def parse_footer(footer: bytes) -> int:
    """Assert the 51-byte eStargz footer layout; the TOC offset it names."""
    assert len(footer) == FOOTER_SIZE
    assert footer[:10] == bytes.fromhex("1f8b08040000000000ff"), \
        f"footer gzip header {footer[:10].hex()}"
    assert footer[10:12] == b"\x1a\x00", f"footer XLEN {footer[10:12].hex()}"
    assert footer[12:14] == b"SG", f"footer subfield id {footer[12:14]!r}"
    assert footer[14:16] == b"\x16\x00", f"footer subfield LEN {footer[14:16].hex()}"
    hexpart = footer[16:32]
    assert all(c in b"0123456789abcdef" for c in hexpart), f"footer offset {hexpart!r}"
    assert footer[32:38] == b"STARGZ", f"footer magic {footer[32:38]!r}"
    assert footer[38:43] == b"\x01\x00\x00\xff\xff", f"footer deflate block {footer[38:43].hex()}"
    assert footer[43:51] == bytes(8), f"footer CRC/ISIZE {footer[43:51].hex()}"
    return int(hexpart, 16)


def read_toc(path):
    """Check footer and TOC member by hand; (toc offset, TOC JSON bytes)."""
    data = Path(path).read_bytes()
    assert len(data) > FOOTER_SIZE
    offset = parse_footer(data[-FOOTER_SIZE:])
    assert 0 < offset < len(data) - FOOTER_SIZE, f"TOC offset {offset} outside the blob"
    member = data[offset:len(data) - FOOTER_SIZE]
    assert member[:3] == b"\x1f\x8b\x08", f"no gzip member at TOC offset {offset}"
    d = zlib.decompressobj(wbits=31)
    raw = d.decompress(member) + d.flush()
    assert d.eof and d.unused_data == b"", "TOC member is not exactly one gzip member"
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
        first = tf.next()
        assert first is not None and first.name == TOC_NAME, \
            f"first entry of the TOC member is {first and first.name!r}"
        toc = tf.extractfile(first).read()
        assert tf.next() is None, "TOC member holds more than the TOC entry"
    return offset, toc


def write_source_tar(blob: bytes, path) -> Path:
    """A source layer blob (gzip or plain tar) as a plain tar file."""
    path = Path(path)
    path.write_bytes(gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob)
    return path


# ---- building and pushing images -----------------------------------------------------------

def tar_bytes(entries, fmt=tarfile.PAX_FORMAT) -> bytes:
    """A tar of (name, data) pairs, or (name, TarInfo-kwargs dict, data) triples."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for e in entries:
            name, opts, data = (e[0], {}, e[1]) if len(e) == 2 else e
            info = tarfile.TarInfo(name)
            info.mtime, info.mode = 1_600_000_000, 0o644
            for k, v in opts.items():
                setattr(info, k, v)
            if info.isreg():
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="", compresslevel=6) as f:
        f.write(data)
    return out.getvalue()


def image_blobs(layers, arch="amd64", docker=False, diff_ids=None, seed="convert-test"):
    """Manifest bytes and blobs of a one-platform image.

    layers: list of (layer blob bytes, uncompressed tar bytes or its digest).
    diff_ids: override the config's rootfs.diff_ids (to make them wrong on purpose).
    """
    layer_type = images.DOCKER_LAYER_GZIP if docker else images.OCI_LAYER_GZIP
    config_type = images.DOCKER_CONFIG if docker else images.OCI_CONFIG
    manifest_type = images.DOCKER_MANIFEST if docker else images.OCI_MANIFEST
    blobs = [images.Blob(layer_type, blob) for blob, _ in layers]
    if diff_ids is None:
        diff_ids = [t if isinstance(t, str) else images.sha256_digest(t) for _, t in layers]
    config = {
        "architecture": arch, "os": "linux", "created": "2024-01-02T03:04:05Z",
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"], "Labels": {"seed": seed}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"layer {n}"} for n in range(len(layers))],
    }
    config_blob = images.Blob(config_type, images.encode_json(config))
    manifest = {"schemaVersion": 2, "mediaType": manifest_type,
                "config": config_blob.descriptor(),
                "layers": [b.descriptor() for b in blobs]}
    return images.encode_json(manifest), [config_blob] + blobs, manifest_type


def push_layers_image(registry_url, repo, tag, layers, **kwargs) -> images.PushedImage:
    """Push an image made of layers (see image_blobs); the PushedImage."""
    body, blobs, media_type = image_blobs(layers, **kwargs)
    pusher = images.Pusher(registry_url, requests.Session())
    return pusher.push_image(repo, tag, body, blobs, media_type)


def push_large_blob(registry_url, repo, path) -> str:
    """Push a blob from a file (monolithic upload, streamed from disk); its digest."""
    digest = sha256_file(path)
    s = requests.Session()
    base = registry_url.rstrip("/")
    if s.head(f"{base}/v2/{repo}/blobs/{digest}", timeout=30).status_code == 200:
        return digest
    start = s.post(f"{base}/v2/{repo}/blobs/uploads/", timeout=30)
    assert start.status_code == 202, (start.status_code, start.text)
    location = start.headers["Location"]
    if location.startswith("/"):
        location = base + location
    sep = "&" if "?" in location else "?"
    with open(path, "rb") as f:
        put = s.put(f"{location}{sep}digest={digest}", data=f, timeout=300,
                    headers={"Content-Type": "application/octet-stream",
                             "Content-Length": str(os.path.getsize(path))})
    assert put.status_code == 201, (put.status_code, put.text)
    return digest


def push_file_layers_image(registry_url, repo, tag, layer_files, arch="amd64"):
    """Push an OCI image whose layers are files (tar+gzip, with their plain tar digests).

    layer_files: list of (gz path, tar path); tag None pushes by digest only.
    Returns (manifest digest, manifest dict).
    """
    s = requests.Session()
    layers = []
    diff_ids = []
    for gz, tar in layer_files:
        digest = push_large_blob(registry_url, repo, gz)
        layers.append({"mediaType": images.OCI_LAYER_GZIP, "digest": digest,
                       "size": os.path.getsize(gz)})
        diff_ids.append(sha256_file(tar))
    config = {"architecture": arch, "os": "linux", "created": "2024-01-02T03:04:05Z",
              "config": {"Cmd": ["/bin/sh"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids},
              "history": [{"created_by": f"generated {Path(t).name}"} for _, t in layer_files]}
    config_blob = images.Blob(images.OCI_CONFIG, images.encode_json(config))
    pusher = images.Pusher(registry_url, s)
    pusher.push_blob(repo, config_blob.data)
    manifest = {"schemaVersion": 2, "mediaType": images.OCI_MANIFEST,
                "config": config_blob.descriptor(), "layers": layers}
    body = images.encode_json(manifest)
    reference = tag or images.sha256_digest(body)
    return pusher.push_manifest(repo, reference, body, images.OCI_MANIFEST), manifest


def get_manifest(registry_url, repo, reference):
    """(bytes, content type) of a manifest, or None when the registry answers 404."""
    r = requests.get(f"{registry_url}/v2/{repo}/manifests/{reference}",
                     headers={"Accept": MANIFEST_ACCEPT}, timeout=30)
    if r.status_code == 404:
        return None
    assert r.status_code == 200, (r.status_code, r.text[:300])
    return r.content, r.headers.get("Content-Type", "").split(";")[0].strip()


def get_blob(registry_url, repo, digest) -> bytes:
    r = requests.get(f"{registry_url}/v2/{repo}/blobs/{digest}", timeout=120)
    assert r.status_code == 200, (r.status_code, digest)
    assert images.sha256_digest(r.content) == digest
    return r.content


def tags(registry_url, repo):
    r = requests.get(f"{registry_url}/v2/{repo}/tags/list", timeout=30)
    if r.status_code == 404:
        return []
    assert r.status_code == 200, (r.status_code, r.text[:300])
    return r.json().get("tags") or []


def registry_blob_count(registry) -> int:
    """How many blobs (layers, configs and manifests) the registry's storage holds."""
    return sum(1 for _ in registry.blob_dir.glob("*/*/*/data")) if registry.blob_dir.exists() \
        else 0


# ---- OCI image layouts ---------------------------------------------------------------------

def write_oci_layout(directory, tag, manifest: bytes, blobs, media_type) -> Path:
    """A plain OCI image layout holding one image tagged `tag`."""
    d = Path(directory)
    (d / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (d / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    for data in [manifest] + [b.data for b in blobs]:
        (d / "blobs" / "sha256" / images.sha256_digest(data)[7:]).write_bytes(data)
    index = {"schemaVersion": 2, "mediaType": images.OCI_INDEX, "manifests": [{
        "mediaType": media_type, "digest": images.sha256_digest(manifest),
        "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (d / "index.json").write_bytes(images.encode_json(index))
    return d


def layout_blob_path(directory, digest) -> Path:
    algo, hexpart = digest.split(":", 1)
    return Path(directory) / "blobs" / algo / hexpart


def layout_manifests(directory):
    """The index.json manifests of a layout ([] when there is no layout or index.json)."""
    path = Path(directory) / "index.json"
    if not path.exists():
        return []
    return json.loads(path.read_text()).get("manifests") or []


def layout_tagged(directory, tag):
    """The index.json descriptor tagged `tag`, or None."""
    for m in layout_manifests(directory):
        if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag:
            return m
    return None


def layout_json_blobs(directory):
    """Blobs of a layout that parse as an image manifest or index (name -> dict)."""
    out = {}
    blobs = Path(directory) / "blobs" / "sha256"
    if not blobs.is_dir():
        return out
    for p in blobs.iterdir():
        if not p.is_file() or p.stat().st_size > 1 << 20:
            continue
        try:
            doc = json.loads(p.read_bytes())
        except ValueError:
            continue
        if isinstance(doc, dict) and ("layers" in doc or "manifests" in doc):
            out[p.name] = doc
    return out
