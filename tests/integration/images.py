"""Build small test images from generated files and push them with the registry HTTP API.

Everything is deterministic (fixed seeds, tar mtimes and gzip headers), so the same bytes and
digests come out on every run. Pushing uses a monolithic upload (POST, then PUT with the
whole blob) and a manifest PUT, as the distribution spec describes.
"""
import gzip
import hashlib
import io
import json
import random
import tarfile
from dataclasses import dataclass, field

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

BIG_BLOB_SIZE = 64 * 1024 * 1024
RANGE_BLOB_SIZE = 300_007  # odd size, so off-by-one errors at the end show


def variant_annotations(source_annotations, fmt, source_digest):
    """A converted manifest's annotations: its source's, plus the two naming what it is a variant of."""
    out = dict(source_annotations or {})
    out.update({"io.accel-proxy.variant.format": fmt, "io.accel-proxy.variant.source": source_digest})
    return out


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def encode_json(obj) -> bytes:
    # Fixed formatting; the tests compare exact bytes, so the layout only needs to be stable.
    return json.dumps(obj, indent=2).encode()


@dataclass
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self):
        return sha256_digest(self.data)

    def descriptor(self, **extra):
        d = {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}
        d.update(extra)
        return d


@dataclass
class PushedImage:
    repo: str
    tag: str
    media_type: str
    manifest: bytes
    blobs: dict = field(default_factory=dict)      # digest -> bytes (config and layers)
    children: list = field(default_factory=list)   # PushedImage of each index entry

    @property
    def digest(self):
        return sha256_digest(self.manifest)

    def descriptor(self, **extra):
        d = {"mediaType": self.media_type, "digest": self.digest, "size": len(self.manifest)}
        d.update(extra)
        return d


@dataclass
class ImageSet:
    oci: PushedImage
    docker: PushedImage
    index: PushedImage
    big_repo: str
    big_digest: str
    big_data: bytes
    range_repo: str
    range_digest: str
    range_data: bytes

    def all(self):
        return [self.oci, self.docker, self.index]


# ---- content -------------------------------------------------------------------------------

def deterministic_bytes(seed, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def generated_files(seed, count=4):
    """A few text and binary files, different per seed."""
    rng = random.Random(seed)
    files = {}
    for i in range(count):
        if i % 2 == 0:
            words = [f"{seed}-line-{n}-{rng.randrange(10**9)}" for n in range(rng.randrange(20, 80))]
            files[f"etc/app/{seed}-{i}.txt"] = ("\n".join(words) + "\n").encode()
        else:
            files[f"usr/lib/app/{seed}-{i}.bin"] = rng.randbytes(rng.randrange(1000, 20000))
    return files


def make_layer(files: dict):
    """Return (gzipped tar, uncompressed tar) of files, with fixed metadata."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_600_000_000
            tar.addfile(info)
        for path in sorted(files):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(files[path]), 0o644, 1_600_000_000
            tar.addfile(info, io.BytesIO(files[path]))
    tar_bytes = raw.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, filename="") as f:
        f.write(tar_bytes)
    return gz.getvalue(), tar_bytes


def _image_parts(seed, arch, layer_type, config_type, nlayers=2):
    layers, diff_ids = [], []
    for n in range(nlayers):
        gz, tar = make_layer(generated_files(f"{seed}-{arch}-{n}"))
        layers.append(Blob(layer_type, gz))
        diff_ids.append(sha256_digest(tar))
    config = {
        "architecture": arch, "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"], "Labels": {"seed": str(seed)}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"generated layer {n}"} for n in range(nlayers)],
    }
    return Blob(config_type, encode_json(config)), layers


def build_oci_image(seed, arch="amd64"):
    config, layers = _image_parts(seed, arch, OCI_LAYER_GZIP, OCI_CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.descriptor(),
                "layers": [l.descriptor() for l in layers]}
    return encode_json(manifest), [config] + layers


def build_docker_image(seed, arch="amd64"):
    config, layers = _image_parts(seed, arch, DOCKER_LAYER_GZIP, DOCKER_CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": config.descriptor(),
                "layers": [l.descriptor() for l in layers]}
    return encode_json(manifest), [config] + layers


# ---- pushing -------------------------------------------------------------------------------

class Pusher:
    """Pushes blobs and manifests to one registry through a requests session."""

    def __init__(self, base_url, session):
        self.base = base_url.rstrip("/")
        self.s = session

    def push_blob(self, repo, data: bytes) -> str:
        digest = sha256_digest(data)
        head = self.s.head(f"{self.base}/v2/{repo}/blobs/{digest}", timeout=30)
        if head.status_code == 200:
            return digest
        start = self.s.post(f"{self.base}/v2/{repo}/blobs/uploads/", timeout=30)
        assert start.status_code == 202, (start.status_code, start.text)
        location = start.headers["Location"]
        if location.startswith("/"):
            location = self.base + location
        sep = "&" if "?" in location else "?"
        put = self.s.put(f"{location}{sep}digest={digest}", data=data, timeout=120,
                         headers={"Content-Type": "application/octet-stream"})
        assert put.status_code == 201, (put.status_code, put.text)
        assert put.headers.get("Docker-Content-Digest") == digest
        return digest

    def push_manifest(self, repo, reference, body: bytes, media_type) -> str:
        resp = self.s.put(f"{self.base}/v2/{repo}/manifests/{reference}", data=body,
                          headers={"Content-Type": media_type}, timeout=30)
        assert resp.status_code == 201, (resp.status_code, resp.text)
        digest = sha256_digest(body)
        assert resp.headers.get("Docker-Content-Digest") == digest
        return digest

    def push_image(self, repo, tag, manifest: bytes, blobs, media_type) -> PushedImage:
        for b in blobs:
            self.push_blob(repo, b.data)
        self.push_manifest(repo, tag, manifest, media_type)
        return PushedImage(repo, tag, media_type, manifest, {b.digest: b.data for b in blobs})

    def push_index(self, repo, tag, children, annotations=None) -> PushedImage:
        """Push children (PushedImage, already in repo) under an OCI index."""
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [], "annotations": annotations or {}}
        for child in children:
            config = json.loads(child.blobs[json.loads(child.manifest)["config"]["digest"]])
            index["manifests"].append(child.descriptor(
                platform={"architecture": config["architecture"], "os": config["os"]},
                annotations={"org.opencontainers.image.ref.name": f"{tag}-{config['architecture']}"}))
        body = encode_json(index)
        self.push_manifest(repo, tag, body, OCI_INDEX)
        return PushedImage(repo, tag, OCI_INDEX, body, {}, list(children))

    def push_artifact(self, repo, subject: PushedImage, artifact_type, payload: bytes, tag=None):
        """An OCI artifact manifest (image manifest with artifactType) whose subject is given."""
        empty = Blob(OCI_EMPTY, b"{}")
        layer = Blob("application/vnd.example.payload.v1", payload)
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
                    "config": empty.descriptor(), "layers": [layer.descriptor()],
                    "subject": subject.descriptor(),
                    "annotations": {"org.example.kind": artifact_type}}
        body = encode_json(manifest)
        return self.push_image(repo, tag or sha256_digest(body), body, [empty, layer], OCI_MANIFEST)


def push_small_images(base_url, session, prefix="lib"):
    """Push an OCI image, a Docker schema2 image and a 2-platform OCI index under prefix/."""
    p = Pusher(base_url, session)
    body, blobs = build_oci_image("oci")
    oci = p.push_image(f"{prefix}/oci-app", "v1", body, blobs, OCI_MANIFEST)
    body, blobs = build_docker_image("docker")
    docker = p.push_image(f"{prefix}/docker-app", "v1", body, blobs, DOCKER_MANIFEST)

    children = []
    for arch in ("amd64", "arm64"):
        body, blobs = build_oci_image("multi", arch)
        # Children are pushed by digest only, as `docker buildx` does.
        img = p.push_image(f"{prefix}/multi", sha256_digest(body), body, blobs, OCI_MANIFEST)
        img.tag = None
        children.append(img)
    # Annotations make the index larger than 1000 bytes (the limit test relies on it).
    notes = {"org.opencontainers.image.description": "multi-platform test index " + "x" * 600,
             "org.opencontainers.image.source": "generated by tests/integration/images.py"}
    index = p.push_index(f"{prefix}/multi", "v1", children, notes)
    return oci, docker, index


def push_test_images(base_url, session, prefix="lib") -> ImageSet:
    """The small images plus a 64 MiB blob (streaming) and a 300 KB blob (ranges)."""
    oci, docker, index = push_small_images(base_url, session, prefix)
    p = Pusher(base_url, session)
    big = deterministic_bytes("big-blob", BIG_BLOB_SIZE)
    big_digest = p.push_blob(f"{prefix}/big", big)
    small = deterministic_bytes("range-blob", RANGE_BLOB_SIZE)
    range_digest = p.push_blob(f"{prefix}/ranged", small)
    return ImageSet(oci, docker, index, f"{prefix}/big", big_digest, big,
                      f"{prefix}/ranged", range_digest, small)
