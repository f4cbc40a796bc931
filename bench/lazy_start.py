#!/usr/bin/python3
"""Learned-prefetch benchmark for bench/lazy_start (standard library only).

usage: lazy_start.py run [--write-results] [--strict] [--keep-tmp] [--no-wait]

bench/lazy_start checks tools, builds a missing binary and then runs `lazy_start.py run`.
Environment (set by bench/lazy_start): REPO_ROOT, ACCEL_PROXY_BIN, BENCH_REPS (default 5),
BENCH_RTT_MS (default 20), BENCH_CMD (the command line to print), ACCEL_BASE_TARBALL.

What it measures, on a python3 image pushed to a loopback docker-registry (see bench/README.md,
"lazy_start"):
  The image: Debian 12 minbase (the tarball docker/make-base-image or tests/container made) as
  its first layer, and this machine's python3.11 with its standard library as the second. The
  start-up: `python3 -c pass`, run once under strace in a chroot of the image's tree; the files
  it opened (and the binary and loader exec opened), in order, are what a start-up reads.
  The reader (tests/integration/lazy_reader.py) behaves like stargz-snapshotter or nydusd:
  manifest, config, per layer the index (footer and TOC; the Nydus bootstrap layer), the prefetch
  region or table when the image has one (one request per contiguous run), then each file of the
  start-up whole, chunk by chunk, skipping what it has. Every request passes a relay that adds
  the round trip (BENCH_RTT_MS) before forwarding it.
  1. learn: two start-ups of each variant by two clients; then the proxy's learned list
     (GET /api/prefetch) and its optimized variants.
  2. ctr-remote: `ctr-remote image optimize --oci` of the same image with the same command, run
     under a private containerd (runc, overlayfs, fanotify records the files it opens), pushed
     to the registry.
  3. start-ups timed, BENCH_REPS each, round-robin after one warm-up each: the eStargz variant
     as first converted, the learned one, ctr-remote's image (which the proxy caches as it is:
     eStargz already; all three served alike, through the same relay); the Nydus variant as
     first converted and the learned one; then again without the added round trip. Targets: learned
     <= 0.75x the first conversion (both formats), learned eStargz <= 1.1x ctr-remote's.
"""

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.environ.get("REPO_ROOT") or os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import convert as cv  # noqa: E402  (log, load, results, run_bench)
import variant as vb  # noqa: E402  (servers)
import lazy_reader as lr  # noqa: E402  (the simulated snapshotters)

REPO = "bench/python"
TAG = "1"
CTR_TAG = "ctr-remote"
COMMAND = ["/usr/bin/python3", "-c", "pass"]
IMAGE_PATH = "/usr/local/bin:/usr/bin:/bin"
TARGET_VS_FIRST = 0.75
TARGET_VS_CTR = 1.1
BASE_TARBALLS = [os.environ.get("ACCEL_BASE_TARBALL", ""),
                 os.path.expanduser("~/.cache/accel-proxy/base-image/debian-bookworm-minbase-amd64.tar"),
                 "/var/tmp/accel-proxy-container/base-image/debian-bookworm-minbase-amd64.tar"]
MTIME = 1_700_000_000
log = cv.log
SetupError = cv.SetupError


def basic(name):
    return "Basic " + base64.b64encode(f"{name}:bench".encode()).decode()


# ---------------------------------------------------------------------------- the image

def python_layer(path):
    """This machine's python3.11, its shared libraries the base lacks and its standard library
    (file times kept, so the .pyc files stay valid), as a tar."""
    def add(tf, src, arc, keep_time=True):
        ti = tf.gettarinfo(src, arcname=arc)
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        if not keep_time:
            ti.mtime = MTIME
        if ti.isfile():
            with open(src, "rb") as f:
                tf.addfile(ti, f)
        elif ti.isdir() or ti.issym():
            tf.addfile(ti)

    def directory(tf, name):
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, MTIME
        tf.addfile(ti)

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for d in ("usr", "usr/bin", "usr/lib", "usr/lib/x86_64-linux-gnu"):
            directory(tf, d)
        add(tf, "/usr/bin/python3.11", "usr/bin/python3.11")
        link = tarfile.TarInfo("usr/bin/python3")
        link.type, link.linkname, link.mtime = tarfile.SYMTYPE, "python3.11", MTIME
        tf.addfile(link)
        for lib in ("libexpat.so.1.8.10", "libexpat.so.1"):
            add(tf, f"/usr/lib/x86_64-linux-gnu/{lib}", f"usr/lib/x86_64-linux-gnu/{lib}", keep_time=False)
        for root, dirs, files in os.walk("/usr/lib/python3.11"):
            dirs.sort()
            add(tf, root, root.lstrip("/"))
            for f in sorted(files):
                p = os.path.join(root, f)
                if os.path.islink(p) or os.path.isfile(p):
                    add(tf, p, p.lstrip("/"))


def resolve_in(rootfs, path, depth=0):
    """`path` inside the tree at `rootfs` with every symlink followed there; None if missing."""
    if depth > 40:
        return None
    parts = [p for p in path.split("/") if p and p != "."]
    out = []
    for i, part in enumerate(parts):
        if part == "..":
            out = out[:-1]
            continue
        cand = os.path.join(rootfs, *out, part)
        if os.path.islink(cand):
            target = os.readlink(cand)
            rest = "/".join(parts[i + 1:])
            base = target if target.startswith("/") else "/" + "/".join(out + [target])
            return resolve_in(rootfs, base + ("/" + rest if rest else ""), depth + 1)
        if not os.path.lexists(cand):
            return None
        out.append(part)
    return "/" + "/".join(out)


def interpreter_of(binary):
    """The PT_INTERP of an ELF file (the loader exec maps), or None."""
    with open(binary, "rb") as f:
        data = f.read(1 << 16)
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return None
    phoff = int.from_bytes(data[32:40], "little")
    phentsize = int.from_bytes(data[54:56], "little")
    phnum = int.from_bytes(data[56:58], "little")
    for i in range(phnum):
        at = phoff + i * phentsize
        if int.from_bytes(data[at:at + 4], "little") == 3:  # PT_INTERP
            off = int.from_bytes(data[at + 8:at + 16], "little")
            size = int.from_bytes(data[at + 32:at + 40], "little")
            with open(binary, "rb") as f:
                f.seek(off)
                return f.read(size).rstrip(b"\0").decode()
    return None


def record_startup(rootfs, tmp):
    """The regular files `COMMAND` reads, in first-open order, as paths in the image: strace of
    it in a chroot of the image's tree (opens after its execve; the binary and its loader, which
    exec opens, first)."""
    trace = os.path.join(tmp, "strace.log")
    # The environment a container gets (the image's PATH, and HOME, which containerd sets):
    # without HOME python looks the user up in /etc/passwd.
    p = subprocess.run(["strace", "-f", "-qq", "-e", "trace=openat,open,execve", "-o", trace,
                        "env", "-i", f"PATH={IMAGE_PATH}", "HOME=/root", "/usr/sbin/chroot", rootfs, *COMMAND],
                       capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise SetupError(f"{' '.join(COMMAND)} in the image's tree failed ({p.returncode}): {p.stderr[-500:]}")
    opened, started = [], False
    with open(trace) as f:
        for line in f:
            if not started:
                started = f'execve("{COMMAND[0]}"' in line
                continue
            if ("openat(" in line or "open(" in line) and '"' in line and "= -1" not in line:
                opened.append(line.split('"')[1])
    binary = resolve_in(rootfs, COMMAND[0])
    interp = interpreter_of(os.path.join(rootfs, binary.lstrip("/")))
    files, seen = [], set()
    for path in [COMMAND[0]] + ([interp] if interp else []) + opened:
        real = resolve_in(rootfs, path if path.startswith("/") else "/" + path)
        if real and real not in seen and os.path.isfile(os.path.join(rootfs, real.lstrip("/"))):
            seen.add(real)
            files.append(real)
    return files


# ---------------------------------------------------------------------------- the relay

class DelayRelay:
    """A TCP relay that holds each request `rtt` seconds before passing it on (the round trip
    between a node and the proxy); answers pass at once. Requests here are header-only GETs,
    one recv each. 127.0.0.1 only."""

    def __init__(self, target_port, rtt):
        self.target_port, self.rtt = target_port, rtt
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.sockets, self.stopping = [], False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopping:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src, dst, delayed):
        try:
            while data := src.recv(1 << 20):
                if delayed and self.rtt:
                    time.sleep(self.rtt)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self):
        self.stopping = True
        for s in [self.listener] + self.sockets:
            try:
                s.close()
            except OSError:
                pass


# ---------------------------------------------------------------------------- start-ups

def estargz_startup(url, ref, auth, files, repo=REPO):
    """One stargz-snapshotter start-up; (seconds, requests, bytes, requests for file data)."""
    t0 = time.perf_counter()
    client = lr.Client(url, auth)
    _, manifest = lr.image_manifest(client, repo, ref)
    client.blob(repo, manifest["config"]["digest"])
    layers = [lr.EstargzLayer(client, repo, d).open() for d in manifest["layers"]]
    index_requests = len(client.log)
    for layer in layers:
        layer.prefetch()
    for path in files:
        for layer in reversed(layers):  # the upper layer's file wins
            if layer.has(path):
                layer.read_file(path)
                break
    seconds = time.perf_counter() - t0
    client.close()
    return seconds, len(client.log), client.received, len(client.log) - index_requests


def nydus_startup(url, ref, auth, files, repo=REPO):
    """One nydusd start-up; (seconds, requests, bytes, requests for file data)."""
    t0 = time.perf_counter()
    client = lr.Client(url, auth)
    _, manifest = lr.image_manifest(client, repo, ref)
    client.blob(repo, manifest["config"]["digest"])
    image = lr.NydusImage(client, repo, manifest).open()
    index_requests = len(client.log)
    image.prefetch()
    for path in files:
        image.read_file(path)
    seconds = time.perf_counter() - t0
    client.close()
    return seconds, len(client.log), client.received, len(client.log) - index_requests


# ---------------------------------------------------------------------------- the bench

class Bench:
    def __init__(self, args):
        self.write_results = "--write-results" in args
        self.strict = "--strict" in args
        self.keep_tmp = "--keep-tmp" in args
        self.wait = "--no-wait" not in args
        self.reps = int(os.environ.get("BENCH_REPS", "5"))
        self.rtt = int(os.environ.get("BENCH_RTT_MS", "20")) / 1000
        self.root = ROOT
        self.tmp = None
        self.misses = []
        self.notes = []
        self.containerd = None
        self.mounts_root = None

    # --- setup
    def base_tarball(self):
        for path in BASE_TARBALLS:
            if path and os.path.isfile(path) and os.path.getsize(path) > 1 << 20:
                return path
        raise SetupError("no Debian 12 minbase tarball: run docker/make-base-image (or set ACCEL_BASE_TARBALL)")

    def make_image(self):
        base = self.base_tarball()
        self.base_path = base
        py = os.path.join(self.tmp, "python.tar")
        python_layer(py)
        self.layer_tars = [base, py]
        rootfs = os.path.join(self.tmp, "rootfs")
        os.makedirs(rootfs)
        for tar in self.layer_tars:
            subprocess.run(["tar", "-xf", tar, "-C", rootfs], check=True, capture_output=True)
        self.files = record_startup(rootfs, self.tmp)
        self.file_bytes = sum(os.path.getsize(os.path.join(rootfs, f.lstrip("/"))) for f in self.files)
        shutil.rmtree(rootfs, ignore_errors=True)
        log(f"start-up of `{' '.join(COMMAND)}`: {len(self.files)} files, {self.file_bytes / 1e6:.1f} MB")

    def start_registry(self):
        port, = vb.free_ports(1)
        self.reg_url = f"http://127.0.0.1:{port}"
        conf = os.path.join(self.tmp, "registry.yml")
        with open(conf, "w") as f:
            f.write(f"version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {self.tmp}/registry-data}}, "
                    f"delete: {{enabled: true}}}}\nhttp: {{addr: 127.0.0.1:{port}}}\n")
        vb.start_server("docker-registry", ["env", "-i", "/usr/bin/docker-registry", "serve", conf],
                        os.path.join(self.tmp, "registry.log"), self.reg_url + "/v2/")

    def push_blob(self, data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        req = urllib.request.Request(f"{self.reg_url}/v2/{REPO}/blobs/uploads/", method="POST")
        with urllib.request.urlopen(req) as r:
            loc = r.headers["Location"]
        loc = loc if loc.startswith("http") else self.reg_url + loc
        sep = "&" if "?" in loc else "?"
        req = urllib.request.Request(f"{loc}{sep}digest={digest}", data=data, method="PUT",
                                     headers={"Content-Type": "application/octet-stream"})
        urllib.request.urlopen(req).close()
        return digest

    def push_image(self):
        layers, diff_ids, self.layer_bytes = [], [], 0
        for path in self.layer_tars:
            with open(path, "rb") as f:
                raw = f.read()
            gz = gzip.compress(raw, 6, mtime=0)
            self.layer_bytes += len(gz)
            layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                           "digest": self.push_blob(gz), "size": len(gz)})
            diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "config": {"Cmd": COMMAND, "Env": [f"PATH={IMAGE_PATH}"]},
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}, sort_keys=True).encode()
        cdesc = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": self.push_blob(config),
                 "size": len(config)}
        manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": cdesc, "layers": layers}, sort_keys=True).encode()
        req = urllib.request.Request(f"{self.reg_url}/v2/{REPO}/manifests/{TAG}", data=manifest, method="PUT",
                                     headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        urllib.request.urlopen(req).close()
        self.source = "sha256:" + hashlib.sha256(manifest).hexdigest()
        log(f"pushed {REPO}:{TAG} ({self.layer_bytes / 1e6:.1f} MB of layers)")

    def start_proxy(self):
        port, = vb.free_ports(1)
        self.proxy_url = f"http://127.0.0.1:{port}"
        conf = os.path.join(self.tmp, "proxy.yaml")
        with open(conf, "w") as f:
            f.write(f"listen: 127.0.0.1:{port}\nthreads: 2\ncache_dir: {self.tmp}/proxy-cache\nlog_level: info\n"
                    f"upstreams:\n  - name: reg\n    url: {self.reg_url}\n"
                    "variants:\n  on_miss: wait\n  learn_prefetch: {enabled: true, startups: 2, window: 10s}\n")
        self.proxy_log = os.path.join(self.tmp, "proxy.log")
        self.proxy = vb.start_server("accel-proxy", [os.environ["ACCEL_PROXY_BIN"], "serve", "--config", conf],
                                     self.proxy_log, self.proxy_url + "/healthz")

    def api(self):
        with urllib.request.urlopen(f"{self.proxy_url}/api/prefetch/reg/{REPO}@{self.source}", timeout=10) as r:
            return {i["format"]: i for i in json.loads(r.read())["images"]}

    def wait_state(self, fmt, states, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                image = self.api().get(fmt)
            except OSError:
                image = None
            if image and image["state"] in states:
                return image
            time.sleep(0.2)
        raise RuntimeError(f"{fmt}: no state {states} within {timeout} s (proxy log: {self.proxy_log})")

    # --- ctr-remote
    def ctr(self, *args, timeout=600):
        return subprocess.run(["ctr-remote", "-a", self.ctr_socket, "-n", "bench", *args], capture_output=True,
                              text=True, timeout=timeout, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": self.tmp})

    def ctr_remote(self):
        """ctr-remote image optimize with a private containerd; the optimized image goes to the
        registry as :ctr-remote. Returns None, or why it could not be done."""
        d = os.path.join(self.tmp, "containerd")
        os.makedirs(d)
        self.mounts_root = d
        self.ctr_socket = os.path.join(d, "c.sock")
        with open(os.path.join(d, "config.toml"), "w") as f:
            f.write("\n".join([
                "version = 2", f'root = "{d}/root"', f'state = "{d}/state"',
                'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",'
                ' "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",'
                ' "io.containerd.snapshotter.v1.zfs"]',
                "[grpc]", f'  address = "{self.ctr_socket}"', "[ttrpc]", f'  address = "{self.ctr_socket}.ttrpc"',
                "[debug]", '  address = ""', "[metrics]", '  address = ""', ""]))
        logf = open(os.path.join(d, "containerd.log"), "ab")
        self.containerd = subprocess.Popen(["/usr/bin/containerd", "--config", os.path.join(d, "config.toml")],
                                           stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        logf.close()
        deadline = time.monotonic() + 30
        while not (os.path.exists(self.ctr_socket) and self.ctr("version", timeout=10).returncode == 0):
            if self.containerd.poll() is not None or time.monotonic() > deadline:
                return "containerd did not start: " + vb.tail(os.path.join(d, "containerd.log"), 5)
            time.sleep(0.2)
        ref = f"{self.reg_url[len('http://'):]}/{REPO}"
        p = self.ctr("images", "pull", "--plain-http", f"{ref}:{TAG}")
        if p.returncode != 0:
            return f"ctr-remote images pull failed: {p.stderr[-400:]}"
        t0 = time.monotonic()
        record = os.path.join(self.tmp, "ctr-remote-record.json")
        p = self.ctr("image", "optimize", "--oci", "--period", "5", "--record-out", record,
                     "--entrypoint", json.dumps(COMMAND[:1]), "--args", json.dumps(COMMAND[1:]),
                     f"{ref}:{TAG}", f"{ref}:{CTR_TAG}")
        self.ctr_seconds = time.monotonic() - t0
        if p.returncode != 0:
            return f"ctr-remote image optimize failed: {p.stderr[-600:]}"
        if "container exit with code 0" not in p.stderr:
            return "the command failed in ctr-remote's container: " + p.stderr[-600:]
        p = self.ctr("images", "push", "--plain-http", f"{ref}:{CTR_TAG}")
        if p.returncode != 0:
            return f"ctr-remote images push failed: {p.stderr[-400:]}"
        self.ctr_files = []
        with open(record) as f:
            for line in f:
                if line.strip():
                    path = "/" + json.loads(line)["path"]
                    if path not in self.ctr_files:
                        self.ctr_files.append(path)
        log(f"ctr-remote optimize: {self.ctr_seconds:.1f} s, {len(self.ctr_files)} files recorded")
        return None

    def stop_containerd(self):
        if self.containerd and self.containerd.poll() is None:
            self.ctr("images", "rm", "--sync", f"{self.reg_url[7:]}/{REPO}:{TAG}", timeout=60)
            self.containerd.terminate()
            try:
                self.containerd.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.containerd.kill()
                self.containerd.wait()
        if self.mounts_root:  # what containerd may have left mounted below our temp dir
            with open("/proc/mounts") as f:
                mounts = [line.split()[1] for line in f if line.split()[1].startswith(self.mounts_root)]
            for m in sorted(mounts, key=len, reverse=True):
                subprocess.run(["umount", "-l", m], capture_output=True)

    # --- learning
    def learn(self):
        relay = DelayRelay(int(self.proxy_url.rsplit(":", 1)[1]), self.rtt)
        try:
            for name in ("learner-a", "learner-b"):
                estargz_startup(relay.url, f"{TAG}-estargz", basic(name), self.files)
                nydus_startup(relay.url, f"{TAG}-nydus", basic(name), self.files)
            self.first = {}
            for fmt in ("estargz", "nydus"):
                self.wait_state(fmt, ("learned",), 60)
                with urllib.request.urlopen(urllib.request.Request(
                        f"{self.proxy_url}/v2/{REPO}/manifests/{TAG}-{fmt}",
                        headers={"Accept": lr.MANIFEST_ACCEPT, "Authorization": basic("trigger")})) as r:
                    self.first[fmt] = r.headers["Docker-Content-Digest"]
            self.learned = {fmt: self.wait_state(fmt, ("optimized",), 600) for fmt in ("estargz", "nydus")}
            if self.ctr_error is None:
                # ctr-remote's image is eStargz already: the proxy caches it as it is (by digest
                # below, so no learning of ours touches it), served like ours.
                with urllib.request.urlopen(urllib.request.Request(
                        f"{self.proxy_url}/v2/{REPO}/manifests/{CTR_TAG}-estargz",
                        headers={"Accept": lr.MANIFEST_ACCEPT, "Authorization": basic("trigger")}), timeout=600) as r:
                    self.ctr_digest = r.headers["Docker-Content-Digest"]
                with urllib.request.urlopen(urllib.request.Request(
                        f"{self.reg_url}/v2/{REPO}/manifests/{CTR_TAG}", method="HEAD",
                        headers={"Accept": lr.MANIFEST_ACCEPT})) as r:
                    if r.headers["Docker-Content-Digest"] != self.ctr_digest:
                        raise RuntimeError("the proxy changed ctr-remote's image instead of keeping it")
        finally:
            relay.stop()
        for fmt, image in self.learned.items():
            log(f"{fmt}: learned {len(image['files'])} files from {image['startups_agreeing']} start-ups; "
                f"first variant {self.first[fmt][:19]}, optimized {image['variant'][:19]}")

    # --- measuring
    def measure(self, rtt):
        proxy = DelayRelay(int(self.proxy_url.rsplit(":", 1)[1]), rtt)
        kinds = [("estargz, first conversion", estargz_startup, proxy, self.first["estargz"]),
                 ("estargz, learned", estargz_startup, proxy, f"{TAG}-estargz")]
        if self.ctr_error is None:
            kinds.append(("estargz, ctr-remote optimize", estargz_startup, proxy, self.ctr_digest))
        kinds += [("nydus, first conversion", nydus_startup, proxy, self.first["nydus"]),
                  ("nydus, learned", nydus_startup, proxy, f"{TAG}-nydus")]
        samples = {k[0]: [] for k in kinds}
        try:
            for rep in range(self.reps + 1):  # the first round warms up
                for name, startup, relay, ref in kinds:
                    got = startup(relay.url, ref, basic(f"bench-{rep}"), self.files)
                    if rep:
                        samples[name].append(got)
        finally:
            proxy.stop()
        return samples

    def run(self):
        self.load_start = cv.loadavg()
        if self.wait:
            quiet, waited = cv.wait_for_quiet_start(300)
            if not quiet:
                self.notes.append(f"the machine did not quiet down within {waited:.0f} s; measured anyway")
            self.load_start = cv.loadavg()
        self.tmp = tempfile.mkdtemp(prefix="lazy-start-", dir="/var/tmp")
        self.make_image()
        self.start_registry()
        self.push_image()
        try:
            self.ctr_error = self.ctr_remote()
        finally:
            self.stop_containerd()
        if self.ctr_error:
            log("ctr-remote: " + self.ctr_error)
        self.start_proxy()
        self.learn()
        self.samples = self.measure(self.rtt)
        self.samples0 = self.measure(0) if self.rtt else None
        self.load_end = cv.loadavg()
        return self.report()

    # --- report
    def report(self):
        def med(name, samples, i=0):
            return statistics.median(s[i] for s in samples[name])

        t = {name: med(name, self.samples) for name in self.samples}
        rows = []
        for name in self.samples:
            s = self.samples[name]
            rows.append(f"| {name} | {t[name] * 1000:.0f} | "
                        + ", ".join(f"{x[0] * 1000:.0f}" for x in s)
                        + f" | {med(name, self.samples, 1):.0f} | {med(name, self.samples, 3):.0f} | "
                        f"{med(name, self.samples, 2) / 1e6:.1f} |"
                        + (f" {med(name, self.samples0) * 1000:.0f} |" if self.samples0 else " - |"))
        checks = []

        def check(what, value, target):
            ok = value <= target
            checks.append(f"- {what}: **{value:.2f}x** (target <= {target}x) {'met' if ok else 'MISSED'}")
            if not ok:
                self.misses.append(what)

        check("eStargz learned / first conversion", t["estargz, learned"] / t["estargz, first conversion"],
              TARGET_VS_FIRST)
        check("Nydus learned / first conversion", t["nydus, learned"] / t["nydus, first conversion"], TARGET_VS_FIRST)
        if self.ctr_error is None:
            check("eStargz learned / ctr-remote optimize", t["estargz, learned"] / t["estargz, ctr-remote optimize"],
                  TARGET_VS_CTR)
        learned = self.learned["estargz"]["files"]
        md = [f"## lazy_start: {time.strftime('%Y-%m-%d %H:%M')} ({os.environ.get('BENCH_CMD', 'bench/lazy_start')})",
              "",
              f"- machine: {os.cpu_count()} cores, load average {self.load_start[0]:.2f} at start, "
              f"{self.load_end[0]:.2f} at the end (other sessions share the machine)",
              f"- image: {REPO}:{TAG}, Debian 12 minbase ({os.path.basename(self.base_path)}) + this machine's "
              f"python3.11 and standard library, {self.layer_bytes / 1e6:.1f} MB of tar.gz layers",
              f"- start-up: `{' '.join(COMMAND)}` recorded with strace in a chroot of the image: "
              f"{len(self.files)} files, {self.file_bytes / 1e6:.1f} MB, read whole, in the order first opened",
              f"- reader: tests/integration/lazy_reader.py (stargz-snapshotter: 50,000-byte windows, the "
              f"prefetch region in one request; nydusd: the bootstrap layer, the prefetch table's chunks "
              f"in one request per contiguous run); a relay adds {self.rtt * 1000:.0f} ms before each request",
              f"- learned: {len(learned)} files (eStargz; {len(self.learned['nydus']['files'])} Nydus) from 2 start-ups "
              "(each file of a 50,000-byte window that no other file explains counts, so small neighbours "
              "of a file read come along)"]
        if self.ctr_error is None:
            overlap = len(set(self.ctr_files) & set(self.files))
            md.append(f"- ctr-remote image optimize (stargz-snapshotter 0.12, containerd 1.6, runc, fanotify): "
                      f"{self.ctr_seconds:.1f} s, recorded {len(self.ctr_files)} files "
                      f"({overlap} of the strace start-up's {len(self.files)}); its image is served from "
                      "the proxy's cache as it is (eStargz already), like the variants")
        else:
            md.append(f"- ctr-remote image optimize could not be compared: {self.ctr_error}")
        md += self.notes and ["- notes: " + "; ".join(self.notes)] or []
        md += ["", f"| start-up | median ms | samples ms | requests | file-data requests | MB | median ms at 0 ms RTT |",
               "|---|---|---|---|---|---|---|", *rows, "", *checks]
        return "\n".join(md)


def main(argv):
    if not argv or argv[0] != "run":
        print(__doc__, file=sys.stderr)
        return 2
    b = Bench(argv[1:])

    def cleanup():
        b.stop_containerd()
        for p in list(vb.SERVERS):
            vb.stop_server(p, timeout=5)
    return cv.run_bench(b, errors=(RuntimeError, subprocess.SubprocessError, OSError), cleanup=cleanup)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
