"""Helpers for the convert-on-pull tests (test_variant*.py).

- `running_variant_proxy`: an accel-proxy with a `variants:` section. proxy.py has no option
  for it, so the section is put into `Proxy.config` before `start()`;
  `restart()` starts a killed proxy again on the same port and cache directory.
- `RegistryLog`: the upstream registry's access log (distribution writes one Apache-style line
  per request even at log level warn), to count the blob GETs the proxy sent upstream.
- `metric` / `metrics`: the proxy's /metrics, parsed.
- `layer_files` / `push_layers_image` / `push_layers_index`: images made of the generated layers
  of layers.py, pushed with any requests session (so also as alice to a token registry).
- `verify_converted_copy`: a `skopeo copy --all ... dir:` of a variant checked against its
  source: every blob by sha256, every layer eStargz (annotations, reference checker against the
  source layer), configs with the new diff_ids and nothing else changed.
- `Containerd`: a private containerd (own root, state, socket; no CRI) and `ctr`.
- `cache_problems`: `cache-crash-driver check` plus an independent walk of `dump`.
"""
import hashlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

import estargz_tools as et
import images
import layers
import prom
from estargz_tools import TOC_DIGEST, UNCOMPRESSED_SIZE
from process import Service
from proxy import REPO_ROOT, Proxy, supervised

SUFFIX = "-estargz"
FORMAT = "estargz"

# What containerd 1.6 (remotes/docker/resolver.go) and skopeo 1.9 (containers/image
# manifest.DefaultRequestedManifestMIMETypes, joined) send as Accept for a manifest.
CONTAINERD_ACCEPT = ", ".join([images.DOCKER_MANIFEST, images.DOCKER_LIST, images.OCI_MANIFEST,
                               images.OCI_INDEX, "*/*"])
SKOPEO_ACCEPT = ", ".join([images.OCI_MANIFEST, images.DOCKER_MANIFEST,
                           "application/vnd.docker.distribution.manifest.v1+prettyjws",
                           "application/vnd.docker.distribution.manifest.v1+json",
                           images.DOCKER_LIST, images.OCI_INDEX])
MANIFEST_ACCEPT = et.MANIFEST_ACCEPT


# ---- the proxy -----------------------------------------------------------------------------

def variants_config(**overrides):
    """A `variants:` section; values are as YAML wants them (durations as "1s")."""
    section = {"enabled": True}
    section.update(overrides)
    return section


def start_variant_proxy(workdir, upstreams, variants=None, **options) -> Proxy:
    proxy = Proxy(workdir, upstreams, **options)
    if variants is not None:
        proxy.config["variants"] = variants
    return proxy.start()


@contextmanager
def running_variant_proxy(workdir, upstreams, variants=None, **options):
    """Like proxy.running_proxy, with a `variants:` section; stopped with SIGTERM on exit.

    A test that kills the proxy on purpose sets `proxy.stopped_on_purpose` (kill() does).
    """
    def stop_ok(proxy, status):  # a proxy killed (or already stopped) by the test is exempt
        return status in (0, None) or getattr(proxy, "killed", False)

    with supervised(start_variant_proxy(workdir, upstreams, variants, **options), stop_ok) as proxy:
        yield proxy


def kill(proxy):
    """SIGKILL, and wait until it is gone."""
    proxy.stopped_on_purpose = True
    proxy.killed = True
    status = proxy.service.stop(signal.SIGKILL, timeout=10)
    assert status == -signal.SIGKILL, f"proxy exit status {status} after SIGKILL"


def restart(proxy):
    """Start a stopped proxy again: same config file, port and cache directory."""
    proxy.stopped_on_purpose = False
    proxy.killed = False
    return proxy.start()


def cache_dir(proxy) -> Path:
    return Path(proxy.config["cache_dir"])


def metrics(proxy):
    resp = requests.get(proxy.url + "/metrics", timeout=10)
    assert resp.status_code == 200
    return prom.parse(resp.text)


def metric(proxy, name, **labels) -> float:
    return prom.total(metrics(proxy), name, **labels)


def wait_until(predicate, timeout, what, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def conversions(proxy, outcome=None) -> float:
    labels = {"format": FORMAT}
    if outcome:
        labels["outcome"] = outcome
    return metric(proxy, "accel_proxy_conversions_total", **labels)


def head_manifest(proxy, repo, reference, headers=None, auth=None):
    h = {"Accept": MANIFEST_ACCEPT}
    h.update(headers or {})
    if auth:
        h["Authorization"] = auth
    return requests.head(f"{proxy.url}/v2/{repo}/manifests/{reference}", headers=h, timeout=120)


def get_manifest(proxy, repo, reference, headers=None, auth=None, timeout=120):
    h = {"Accept": MANIFEST_ACCEPT}
    h.update(headers or {})
    if auth:
        h["Authorization"] = auth
    return requests.get(f"{proxy.url}/v2/{repo}/manifests/{reference}", headers=h,
                        timeout=timeout, allow_redirects=False)


# ---- the upstream's access log -------------------------------------------------------------

_ACCESS = re.compile(r'^\S+ - \S+ \[[^\]]+\] "(\w+) (\S+) HTTP/[\d.]+" (\d{3}) ')


class RegistryLog:
    """Requests a docker-registry answered, read from its access log."""

    def __init__(self, registry):
        self.path = Path(registry.workdir) / "registry.log"

    def mark(self) -> int:
        return self.path.stat().st_size

    def requests(self, since=0):
        """[(method, path, status)] logged after offset `since`."""
        with open(self.path, "rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", "replace")
        out = []
        for line in text.splitlines():
            m = _ACCESS.match(line)
            if m:
                out.append((m.group(1), m.group(2).split("?")[0], int(m.group(3))))
        return out

    def blob_gets(self, since=0) -> Counter:
        """digest -> how many GETs of /v2/<repo>/blobs/<digest> (any status) since `since`."""
        counts = Counter()
        for method, path, _status in self.requests(since):
            if method == "GET" and "/blobs/sha256:" in path:
                counts[path.rsplit("/", 1)[1]] += 1
        return counts


# ---- layers and images ---------------------------------------------------------------------

_LAYER_CACHE = {}
_LAYER_LOCK = threading.Lock()


def layer_files(tmp_path_factory, name):
    """(tar+gzip path, tar path) of a layers.py layer, generated once per test session.

    name is a layers.LAYERS name, or "small-<seed>" for a tiny layer of images.py files.
    """
    with _LAYER_LOCK:
        if name not in _LAYER_CACHE:
            outdir = tmp_path_factory.getbasetemp() / "variant-layers"
            outdir.mkdir(exist_ok=True)
            if name.startswith("small-"):
                gz_bytes, tar_bytes = images.make_layer(images.generated_files(name, count=6))
                tar = outdir / f"{name}.tar"
                tar.write_bytes(tar_bytes)
                gz = outdir / f"{name}.tar.gz"
                gz.write_bytes(gz_bytes)
                _LAYER_CACHE[name] = (str(gz), str(tar))
            else:
                tar = layers.LAYERS[name](str(outdir))
                _LAYER_CACHE[name] = (layers.gzip_layer(tar), tar)
        return _LAYER_CACHE[name]


def push_layers_image(base_url, session, repo, tag, layer_pairs, arch="amd64", seed="variant"):
    """An OCI image of (gz path, tar path) layers; tag None pushes by digest. PushedImage
    whose blobs hold the config and the layers."""
    pusher = images.Pusher(base_url, session)
    layer_blobs = [images.Blob(images.OCI_LAYER_GZIP, Path(gz).read_bytes()) for gz, _ in layer_pairs]
    config = {"architecture": arch, "os": "linux", "created": "2024-01-02T03:04:05Z",
              "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"],
                         "Labels": {"seed": seed}},
              "rootfs": {"type": "layers", "diff_ids": [et.sha256_file(t) for _, t in layer_pairs]},
              "history": [{"created_by": f"layer {Path(t).name}"} for _, t in layer_pairs]}
    config_blob = images.Blob(images.OCI_CONFIG, images.encode_json(config))
    manifest = {"schemaVersion": 2, "mediaType": images.OCI_MANIFEST,
                "config": config_blob.descriptor(), "layers": [b.descriptor() for b in layer_blobs],
                "annotations": {"org.example.seed": seed}}
    body = images.encode_json(manifest)
    image = pusher.push_image(repo, tag or images.sha256_digest(body), body,
                              [config_blob] + layer_blobs, images.OCI_MANIFEST)
    image.tag = tag
    return image


def random_layer(seed, size):
    """(gz bytes, tar bytes) of one incompressible file: its converted size is about `size`."""
    return images.make_layer({f"data/{seed}.bin": images.deterministic_bytes(seed, size)})


def push_bytes_image(base_url, session, repo, tag, layer_pairs, seed="variant"):
    """A one-platform OCI image of in-memory (gz bytes, tar bytes) layers; PushedImage."""
    body, blobs, media_type = et.image_blobs(layer_pairs, seed=seed)
    return images.Pusher(base_url, session).push_image(repo, tag, body, blobs, media_type)


def push_layers_index(base_url, session, repo, tag, platforms, seed="variant"):
    """A multi-platform OCI index; platforms: {arch: [(gz, tar), ...]}. Children by digest."""
    children = [push_layers_image(base_url, session, repo, None, pairs, arch=arch, seed=seed)
                for arch, pairs in platforms.items()]
    return images.Pusher(base_url, session).push_index(
        repo, tag, children, {"org.example.seed": seed})


def source_layers(image):
    """digest -> bytes of every layer of a PushedImage (and its children)."""
    out = {}
    for m in [image] + list(image.children):
        if m.manifest and "layers" in json.loads(m.manifest):
            for l in json.loads(m.manifest)["layers"]:
                out[l["digest"]] = m.blobs[l["digest"]]
    return out


# ---- checking what a client got ------------------------------------------------------------

def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def copy_blobs(copy_dir):
    """digest -> path of every blob and child manifest of a skopeo dir: copy."""
    out = {}
    for p in Path(copy_dir).iterdir():
        if len(p.name) == 64:
            out["sha256:" + p.name] = p
        elif p.name.endswith(".manifest.json") and len(p.name) == 64 + len(".manifest.json"):
            out["sha256:" + p.name[:64]] = p
    return out


def verify_converted_copy(copy_dir, source, tools, workdir, checked=None):
    """Check a `skopeo copy --all` dir: copy of the variant of `source` (a PushedImage).

    Returns (top manifest digest, {digest: bytes-size} of every converted object the client
    needed). `checked` (a dict) remembers layers the reference checker already accepted.
    """
    checked = {} if checked is None else checked
    copy_dir = Path(copy_dir)
    top_bytes = (copy_dir / "manifest.json").read_bytes()
    top = json.loads(top_bytes)
    files = copy_blobs(copy_dir)
    for digest, path in files.items():
        assert et.sha256_file(path) == digest, f"{path.name} does not match its digest"
    src_top = json.loads(source.manifest)
    needed = {sha256(top_bytes): len(top_bytes)}
    if "manifests" in src_top:
        assert top.get("mediaType") == images.OCI_INDEX and "manifests" in top, "not an index"
        assert [d.get("platform") for d in top["manifests"]] == \
            [d.get("platform") for d in src_top["manifests"]], "platforms differ"
        assert top.get("annotations") == images.variant_annotations(src_top.get("annotations"), FORMAT, source.digest)
        pairs = []
        for d, child in zip(top["manifests"], source.children):
            assert d["mediaType"] == images.OCI_MANIFEST
            assert d["digest"] != child.digest, "a platform was not converted"
            body = files[d["digest"]].read_bytes()
            assert len(body) == d["size"]
            needed[d["digest"]] = d["size"]
            pairs.append((json.loads(body), child))
    else:
        pairs = [(top, source)]
    src_layer_bytes = source_layers(source)
    for manifest, src in pairs:
        src_manifest = json.loads(src.manifest)
        assert manifest["mediaType"] == images.OCI_MANIFEST
        assert len(manifest["layers"]) == len(src_manifest["layers"])
        config = json.loads(files[manifest["config"]["digest"]].read_bytes())
        needed[manifest["config"]["digest"]] = manifest["config"]["size"]
        src_config = json.loads(src.blobs[src_manifest["config"]["digest"]])
        diff_ids = []
        for layer, src_layer in zip(manifest["layers"], src_manifest["layers"]):
            assert layer["mediaType"] == images.OCI_LAYER_GZIP
            ann = layer.get("annotations") or {}
            assert TOC_DIGEST in ann and UNCOMPRESSED_SIZE in ann, \
                f"layer {layer['digest']} lacks the eStargz annotations: {ann}"
            path = files[layer["digest"]]
            assert path.stat().st_size == layer["size"]
            needed[layer["digest"]] = layer["size"]
            if layer["digest"] not in checked:
                source_path = Path(workdir) / (src_layer["digest"][7:] + ".src")
                if not source_path.exists():
                    source_path.write_bytes(src_layer_bytes[src_layer["digest"]])
                summary = et.assert_checker_accepts(tools, path, ann[TOC_DIGEST], source_path)
                assert summary["toc_digest"] == ann[TOC_DIGEST]
                assert str(summary["uncompressed_size"]) == ann[UNCOMPRESSED_SIZE]
                checked[layer["digest"]] = summary["diff_id"]
            diff_ids.append(checked[layer["digest"]])
        assert config["rootfs"]["diff_ids"] == diff_ids, "config diff_ids are not the new layers'"
        rest = {k: v for k, v in config.items() if k != "rootfs"}
        assert rest == {k: v for k, v in src_config.items() if k != "rootfs"}, \
            "the config changed beyond rootfs.diff_ids"
        assert manifest.get("annotations") == images.variant_annotations(src_manifest.get("annotations"), FORMAT, src.digest)
    assert set(files) == set(needed) - {sha256(top_bytes)}, "the copy holds other blobs"
    return sha256(top_bytes), needed


def converted_objects(proxy, repo, reference, auth=None):
    """Everything a client fetches for a variant: [(kind, digest, bytes)] with kind
    "manifest" or "blob", read through the proxy (top manifest by tag first)."""
    out = []
    resp = get_manifest(proxy, repo, reference, auth=auth)
    assert resp.status_code == 200, (resp.status_code, resp.text[:300])
    top = resp.json()
    out.append(("manifest", sha256(resp.content), resp.content))
    manifests = [top]
    for d in top.get("manifests", []):
        r = get_manifest(proxy, repo, d["digest"], auth=auth)
        assert r.status_code == 200, (r.status_code, r.text[:300])
        out.append(("manifest", d["digest"], r.content))
        manifests.append(r.json())
    seen = set()
    for m in manifests:
        for d in ([m["config"]] if "config" in m else []) + m.get("layers", []):
            if d["digest"] in seen:
                continue
            seen.add(d["digest"])
            r = requests.get(f"{proxy.url}/v2/{repo}/blobs/{d['digest']}", timeout=120,
                             headers={"Authorization": auth} if auth else {})
            assert r.status_code == 200, (r.status_code, d["digest"], r.text[:300])
            assert sha256(r.content) == d["digest"]
            out.append(("blob", d["digest"], r.content))
    return out


# ---- containerd ----------------------------------------------------------------------------

CONTAINERD = "/usr/bin/containerd"
CTR = "/usr/bin/ctr"


class Containerd:
    """A private containerd: own root, state and socket, no CRI, nothing of the host's."""

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket = str(self.workdir / "c.sock")
        self.config = self.workdir / "config.toml"
        self.service = None

    def start(self, timeout=30):
        root, state = self.workdir / "root", self.workdir / "state"
        self.config.write_text("\n".join([
            "version = 2",
            f'root = "{root}"',
            f'state = "{state}"',
            'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",'
            ' "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",'
            ' "io.containerd.snapshotter.v1.zfs"]',
            "[grpc]", f'  address = "{self.socket}"',
            "[ttrpc]", f'  address = "{self.socket}.ttrpc"',
            "[debug]", '  address = ""', "[metrics]", '  address = ""', ""]))
        self.service = Service("containerd", [CONTAINERD, "--config", self.config],
                               self.workdir / "containerd.log")
        self.service.start()
        deadline = time.monotonic() + timeout
        while True:
            if not self.service.alive():
                raise RuntimeError("containerd exited while starting:\n" + self.service.log_tail())
            if os.path.exists(self.socket) and self.ctr("version", timeout=10).returncode == 0:
                return self
            if time.monotonic() > deadline:
                raise RuntimeError("containerd did not answer:\n" + self.service.log_tail())
            time.sleep(0.1)

    def ctr(self, *args, timeout=180):
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.workdir)}
        return subprocess.run([CTR, "--address", self.socket, "--namespace", "accel-test", *args],
                              capture_output=True, text=True, timeout=timeout, env=env)

    def stop(self):
        if self.service:
            self.service.stop()


def write_hosts_toml(hosts_dir, host_port, headers=None):
    """hosts_dir/<host:port>/hosts.toml: plain http to that host, with extra headers."""
    d = Path(hosts_dir) / host_port
    d.mkdir(parents=True, exist_ok=True)
    lines = [f'server = "http://{host_port}"', "",
             f'[host."http://{host_port}"]', '  capabilities = ["pull", "resolve"]']
    if headers:
        lines.append(f'  [host."http://{host_port}".header]')
        for k, v in headers.items():
            lines.append(f'    {k} = ["{v}"]')
    (d / "hosts.toml").write_text("\n".join(lines) + "\n")
    return Path(hosts_dir)


# ---- the cache on disk ---------------------------------------------------------------------

DRIVER = Path(os.environ.get("ACCEL_CACHE_DRIVER", REPO_ROOT / "build" / "cache-crash-driver"))


def require_driver():
    if not os.access(DRIVER, os.X_OK):
        pytest.fail(f"{DRIVER} not found: build it (ninja -C build cache-crash-driver) or set "
                    "ACCEL_CACHE_DRIVER", pytrace=False)
    return DRIVER


def cache_problems(directory, reconcile=True):
    """`cache-crash-driver check DIR` (the cache's own reconciliation and check), then an
    independent walk of the raw index (`dump`) against the files. [] when consistent.
    `reconcile=False` skips the check, which needs the cache closed: for a running proxy."""
    driver = str(require_driver())
    problems = []
    if reconcile:
        check = subprocess.run([driver, "check", str(directory)], capture_output=True, text=True,
                               timeout=120)
        if check.returncode != 0:
            problems.append(f"check exit {check.returncode}: {check.stdout}{check.stderr}")
    dump = subprocess.run([driver, "dump", str(directory)], capture_output=True, text=True,
                          timeout=120)
    assert dump.returncode == 0, dump.stderr
    index = json.loads(dump.stdout)
    blob_dir = Path(directory) / "blobs" / "sha256"
    entries = index["blobs"]
    for digest, entry in entries.items():
        path = blob_dir / digest.removeprefix("sha256:")
        if not path.is_file():
            problems.append(f"entry without file: {digest}")
        elif path.stat().st_size != entry["s"]:
            problems.append(f"size mismatch: {digest}")
        elif et.sha256_file(path) != digest:
            problems.append(f"content does not match its digest: {digest}")
    if blob_dir.is_dir():
        for p in blob_dir.iterdir():
            if "sha256:" + p.name not in entries:
                problems.append(f"file without entry: {p.name}")
    for table in ("manifest_variants", "layer_variants"):
        for key, record in index[table].items():
            problems += [f"{table} {key} needs missing {d}" for d in record["b"] if d not in entries]
    return problems, index
