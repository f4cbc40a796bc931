"""OCI image layouts for the tests: write one from tar layers, read images back out of one.

build_layout(dir, tars, tag) writes oci-layout, index.json (tag in
org.opencontainers.image.ref.name) and blobs/sha256/...: each layer as tar+gzip (`gzip -n`,
deterministic), a config whose rootfs.diff_ids are the sha256 of the uncompressed tars and
whose history has one entry per layer plus one empty_layer entry, and an OCI manifest.
"""
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
NYDUS_BLOB = "application/vnd.oci.image.layer.nydus.blob.v1"
REF_NAME = "org.opencontainers.image.ref.name"
ANN_NYDUS_BLOB = "containerd.io/snapshot/nydus-blob"
ANN_NYDUS_BOOTSTRAP = "containerd.io/snapshot/nydus-bootstrap"
ANN_NYDUS_FS_VERSION = "containerd.io/snapshot/nydus-fs-version"


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return "sha256:" + h.hexdigest()


def _dump(obj) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=False).encode()


@dataclass
class LayoutImage:
    dir: str
    tag: str
    manifest_descriptor: dict   # as listed in index.json (without the ref-name annotation)
    manifest: dict
    config: dict

    @property
    def ref(self):
        return f"oci:{self.dir}:{self.tag}"

    def blob_path(self, digest):
        return blob_path(self.dir, digest)


def blob_path(layout_dir, digest) -> str:
    algo, hexd = digest.split(":", 1)
    return os.path.join(layout_dir, "blobs", algo, hexd)


def _put_blob(layout_dir, data: bytes = None, path=None) -> tuple:
    """Store bytes (or a file, copied) as a blob; returns (digest, size)."""
    os.makedirs(os.path.join(layout_dir, "blobs", "sha256"), exist_ok=True)
    if data is not None:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with open(blob_path(layout_dir, digest), "wb") as f:
            f.write(data)
        return digest, len(data)
    digest = sha256_file(path)
    dst = blob_path(layout_dir, digest)
    if not os.path.exists(dst):
        shutil.copyfile(path, dst)
    return digest, os.path.getsize(dst)


def gzip_file(path, level=6) -> str:
    """path + '.gz' via `gzip -n` (same bytes every run); reused when already there."""
    out = str(path) + ".gz"
    if not os.path.exists(out):
        with open(out + ".tmp", "wb") as fo:
            subprocess.run(["gzip", "-n", f"-{level}", "-c", str(path)], check=True, stdout=fo)
        os.replace(out + ".tmp", out)
    return out


def build_layout(layout_dir, tar_paths, tag="v1", created="2024-01-01T00:00:00Z", gzip_layers=True) -> LayoutImage:
    """An OCI image layout at layout_dir holding one image (tag) with the given layers
    (tar+gzip, or plain tar with gzip_layers=False)."""
    layout_dir = str(layout_dir)
    os.makedirs(os.path.join(layout_dir, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(layout_dir, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    layer_descs, diff_ids, history = [], [], []
    history.append({"created": created, "created_by": "/bin/sh -c #(nop)  ENV PATH=/usr/bin", "empty_layer": True})
    for i, tar in enumerate(tar_paths):
        diff_ids.append(sha256_file(tar))
        digest, size = _put_blob(layout_dir, path=gzip_file(tar) if gzip_layers else tar)
        layer_descs.append({"mediaType": OCI_LAYER_GZIP if gzip_layers else OCI_LAYER_TAR,
                            "digest": digest, "size": size})
        history.append({"created": created, "created_by": f"test layer {i}: {os.path.basename(tar)}"})
    config = {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }
    cdigest, csize = _put_blob(layout_dir, data=_dump(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": cdigest, "size": csize},
        "layers": layer_descs,
    }
    mbytes = _dump(manifest)
    mdigest, msize = _put_blob(layout_dir, data=mbytes)
    mdesc = {"mediaType": OCI_MANIFEST, "digest": mdigest, "size": msize}
    index_path = os.path.join(layout_dir, "index.json")
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    if os.path.exists(index_path):
        with open(index_path) as f:
            index = json.load(f)
        index["manifests"] = [m for m in index.get("manifests", [])
                              if m.get("annotations", {}).get(REF_NAME) != tag]
    index["manifests"].append({**mdesc, "annotations": {REF_NAME: tag}})
    with open(index_path, "wb") as f:
        f.write(_dump(index))
    return LayoutImage(layout_dir, tag, mdesc, manifest, config)


def read_image(layout_dir, tag) -> LayoutImage:
    """The single-manifest image tagged tag in layout_dir."""
    layout_dir = str(layout_dir)
    with open(os.path.join(layout_dir, "index.json")) as f:
        index = json.load(f)
    hits = [m for m in index.get("manifests", []) if m.get("annotations", {}).get(REF_NAME) == tag]
    assert len(hits) == 1, f"{layout_dir}/index.json: {len(hits)} entries tagged {tag!r}: {index}"
    desc = {k: v for k, v in hits[0].items() if k != "annotations"}
    with open(blob_path(layout_dir, desc["digest"]), "rb") as f:
        mbytes = f.read()
    assert "sha256:" + hashlib.sha256(mbytes).hexdigest() == desc["digest"], "manifest digest mismatch"
    assert len(mbytes) == desc["size"], "manifest size mismatch"
    manifest = json.loads(mbytes)
    with open(blob_path(layout_dir, manifest["config"]["digest"]), "rb") as f:
        config = json.loads(f.read())
    return LayoutImage(layout_dir, tag, desc, manifest, config)


def tar_members(data: bytes):
    """(name, TarInfo, content or None) of an uncompressed tar in memory."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for ti in tf.getmembers():
            out.append((ti.name, ti, tf.extractfile(ti).read() if ti.isreg() else None))
    return out


def gunzip_file(path) -> bytes:
    with gzip.open(path, "rb") as f:
        return f.read()
