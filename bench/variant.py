#!/usr/bin/python3
"""Convert-on-pull benchmark for bench/variant (standard library only).

usage: variant.py run [--quick] [--write-results] [--strict] [--no-wait] [--keep-tmp]

bench/variant checks tools, builds a missing binary and then runs `variant.py run`.
Environment (set by bench/variant): REPO_ROOT, ACCEL_PROXY_BIN, BENCH_REPS, BENCH_LAYER_MIB
(size of the generated layer, for debugging), BENCH_CMD (the command line to print).

What it measures, in one run, on one generated image pushed to a loopback docker-registry
(see bench/README.md):
  1. cold: the first pull of bench/app:1-estargz through a freshly started accel-proxy (empty
     cache, `variants: {on_miss: wait}`), until the client has the last byte: bench/pull.py
     (manifest, then every blob at once, read at wire speed), against `accel-proxy convert
     --format estargz docker://REG/bench/app:1 oci:D:x` (wall time); ratio cold / standalone,
     target <= 1.15. The same cold pull by `skopeo copy ... dir:D` is reported beside it:
     skopeo reads at the pace of its own digest checks and file writes.
  2. warm: GET of the largest converted layer through the proxy (a cache hit) with curl, MB/s,
     against nginx serving the same file of the proxy's cache (static location, sendfile on);
     target >= 0.95x nginx. And a whole warm skopeo copy of the variant, for reference.
"""

import hashlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import convert as cv  # noqa: E402  (the load guard and the layer generator of bench/convert)

MB = 1e6
MiB = 1 << 20
HZ = os.sysconf("SC_CLK_TCK")
NPROC = os.cpu_count() or 1

START_WAIT_S = 600        # at most this long waiting for a quiet machine before measuring
PAUSE_BUDGET_S = 120      # in all, pause at most this long mid-run for other load
REPO = "bench/app"
TAG = "1"
SUFFIX = "-estargz"
TARGET_COLD = 1.15        # cold first pull / standalone convert
TARGET_WARM = 0.95        # warm blob GET through the proxy / nginx
GET_REPS_MIN = 3          # blob GET samples are cheap: always at least this many
GET_SAMPLE_BYTES = 1 << 30  # a blob GET sample fetches the layer this many bytes' worth of times

SERVERS = []              # Popen of every server started (stopped at exit)
log = cv.log
STATS = cv.STATS          # retaken, disturbed, paused_s (shared with cv.wait_for_quiet_between)


class SetupError(Exception):
    pass


# ---------------------------------------------------------------------------- CPU accounting

def tree_cpu_s():
    """CPU seconds used so far by this process and every descendant: live ones from /proc
    (with what they reaped), reaped ones from RUSAGE_CHILDREN."""
    me = os.getpid()
    parent, used = {}, {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2:].split()
        pid = int(name)
        parent[pid] = int(rest[1])
        used[pid] = sum(int(x) for x in rest[11:15]) / HZ   # utime stime cutime cstime
    total = 0.0
    for pid in used:
        p, depth = parent.get(pid), 0
        while p and p != me and depth < 64:
            p, depth = parent.get(p), depth + 1
        if p == me and pid != me:
            total += used[pid]
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def machine_busy_s():
    """CPU seconds the whole machine spent busy since boot: user, nice, system and steal.
    Interrupt and softirq time is left out: loopback traffic between this run's own
    processes is accounted there, not to them."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + (v[7] if len(v) > 7 else 0)) / HZ


class Sample:
    def __init__(self, wall, foreign, rc, out, err):
        self.wall, self.foreign, self.rc, self.out, self.err = wall, foreign, rc, out, err


def run_timed(argv, env=None, cwd=None):
    """Run argv once; wall time and the CPU other processes (not this run's servers, tools or
    this script) used meanwhile."""
    busy0, own0 = machine_busy_s(), tree_cpu_s()
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd)
    cv.RUNNING.append(p)
    try:
        out, err = p.communicate()
    finally:
        cv.RUNNING.remove(p)
    t1 = time.monotonic()
    busy1, own1 = machine_busy_s(), tree_cpu_s()
    foreign = max(0.0, (busy1 - busy0) - (own1 - own0))
    return Sample(t1 - t0, foreign, p.returncode, out.decode("utf-8", "replace"),
                  err.decode("utf-8", "replace"))



def disturbed(s):
    return s.foreign > cv.FOREIGN_LIMIT * s.wall + 0.05   # /proc/stat counts in ticks


# ---------------------------------------------------------------------------- servers

def free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start_server(name, argv, logpath, url, env=None, timeout=20, ok=(200,)):
    logf = open(logpath, "ab")
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                         env=env)
    logf.close()
    SERVERS.append(p)
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise SetupError(f"{name} exited ({p.returncode}) while starting:\n" + tail(logpath))
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status in ok:
                    return p
                last = r.status
        except urllib.error.HTTPError as e:
            if e.code in ok:
                return p
            last = e.code
        except OSError as e:
            last = repr(e)
        time.sleep(0.05)
    raise SetupError(f"{name} did not answer on {url} within {timeout} s ({last}):\n" + tail(logpath))


def stop_server(p, timeout=20):
    if p is None:
        return None
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in SERVERS:
        SERVERS.remove(p)
    return p.returncode


def tail(path, n=20):
    try:
        with open(path, "rb") as f:
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])
    except OSError:
        return ""


def hwm_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / MB
    except OSError:
        pass
    return None


def http(method, url, body=None, headers=None, timeout=120):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def stream_digest(url):
    """(status, sha256 digest, bytes) of a GET, streamed."""
    h = hashlib.sha256()
    n = 0
    with urllib.request.urlopen(url, timeout=300) as r:
        while True:
            b = r.read(4 * MiB)
            if not b:
                break
            h.update(b)
            n += len(b)
        return r.status, "sha256:" + h.hexdigest(), n


# ---------------------------------------------------------------------------- the benchmark

class Bench:
    def __init__(self, args):
        self.quick = "--quick" in args
        self.write_results = "--write-results" in args
        self.strict = "--strict" in args
        self.wait = "--no-wait" not in args
        self.keep_tmp = "--keep-tmp" in args
        self.reps = int(os.environ.get("BENCH_REPS") or (1 if self.quick else 3))
        self.get_reps = max(GET_REPS_MIN, self.reps)
        self.root = os.environ.get("REPO_ROOT") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.accel = os.environ.get("ACCEL_PROXY_BIN") or f"{self.root}/build/accel-proxy"
        self.cmd = os.environ.get("BENCH_CMD") or "bench/variant " + " ".join(args)
        self.layer_total = int(os.environ.get("BENCH_LAYER_MIB") or (96 if self.quick else 384)) * MiB
        self.tmp = None
        self.notes = []
        self.proxy = None          # (Popen, port, cache dir) of the current proxy
        self.proxy_n = 0
        self.res = {"cold": [], "standalone": [], "conv_s": [], "proxy_get": [], "nginx_get": [],
                    "warm_copy": [], "hwm": [], "skopeo_cold": [], "manifest_at": []}
        self.errors = {}
        self.checks = []

    # ------------------------------------------------------------------ setup

    def make_image(self):
        tar = os.path.join(self.tmp, "layer.tar")
        self.gz = tar + ".gz"
        log(f"generating the layer: {self.layer_total // MiB} MiB of files (bench/convert's "
            "generator), tar + gzip -n -6")
        t0 = time.monotonic()
        self.layer_facts = cv.make_big_layer(tar, self.layer_total, self.gz)
        self.tar_bytes = os.path.getsize(tar)
        self.gz_bytes = os.path.getsize(self.gz)
        self.diff_id = cv.sha256_file(tar)
        self.gz_digest = cv.sha256_file(self.gz)
        os.unlink(tar)
        log(f"  {self.layer_facts['files']} files, {self.layer_facts['text_share'] * 100:.0f}% text by "
            f"bytes, {self.tar_bytes / MB:.1f} MB tar, {self.gz_bytes / MB:.1f} MB tar.gz "
            f"({time.monotonic() - t0:.0f} s)")

    def start_registry(self):
        port = free_ports(1)[0]
        self.reg_host = f"127.0.0.1:{port}"
        self.reg_url = f"http://{self.reg_host}"
        data = os.path.join(self.tmp, "registry-data")
        os.makedirs(data)
        conf = os.path.join(self.tmp, "registry.yml")
        with open(conf, "w") as f:
            f.write(f"""version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {data}
  cache:
    blobdescriptor: inmemory
  delete:
    enabled: false
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
""")
        # env -i: any REGISTRY_* variable would override the config file
        start_server("docker-registry", ["env", "-i", "/usr/bin/docker-registry", "serve", conf],
                     os.path.join(self.tmp, "registry.log"), self.reg_url + "/v2/")

    def push_blob(self, path=None, data=None):
        if path:
            digest = cv.sha256_file(path)
            size = os.path.getsize(path)
        else:
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            size = len(data)
        st, hdrs, _ = http("POST", f"{self.reg_url}/v2/{REPO}/blobs/uploads/", b"")
        if st != 202:
            raise SetupError(f"blob upload POST answered {st}")
        loc = hdrs.get("Location")
        if loc.startswith("/"):
            loc = self.reg_url + loc
        loc += ("&" if "?" in loc else "?") + "digest=" + digest
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        if path:
            with open(path, "rb") as f:
                st, _, body = http("PUT", loc, f, headers, timeout=600)
        else:
            st, _, body = http("PUT", loc, data, headers)
        if st != 201:
            raise SetupError(f"blob upload PUT answered {st}: {body[:200]!r}")
        return digest, size

    def push_image(self):
        log("pushing the image to the registry")
        layer = self.push_blob(path=self.gz)
        config = json.dumps({
            "architecture": "amd64", "os": "linux", "created": "2024-01-02T03:04:05Z",
            "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [self.diff_id]},
            "history": [{"created_by": "bench/variant generated layer"}]},
            sort_keys=True, separators=(",", ":")).encode()
        cfg = self.push_blob(data=config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg[0],
                       "size": cfg[1]},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": layer[0], "size": layer[1]}]},
            sort_keys=True, separators=(",", ":")).encode()
        st, _, body = http("PUT", f"{self.reg_url}/v2/{REPO}/manifests/{TAG}", manifest,
                           {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        if st != 201:
            raise SetupError(f"manifest PUT answered {st}: {body[:200]!r}")
        os.unlink(self.gz)   # only the registry's copy stays (in page cache)
        # the registry's file, read once: in page cache for both ways alike
        st, got, n = stream_digest(f"{self.reg_url}/v2/{REPO}/blobs/{layer[0]}")
        if st != 200 or got != layer[0]:
            raise SetupError(f"the registry serves the layer wrong ({st}, {got})")

    def start_proxy(self):
        """A fresh accel-proxy with an empty cache dir (the previous one is stopped)."""
        self.stop_proxy()
        self.proxy_n += 1
        port = free_ports(1)[0]
        d = os.path.join(self.tmp, f"proxy-{self.proxy_n}")
        cache = os.path.join(d, "cache")
        os.makedirs(d)
        conf = os.path.join(d, "accel-proxy.yaml")
        with open(conf, "w") as f:
            f.write(f"""listen: 127.0.0.1:{port}
cache_dir: {cache}
log_level: warn
upstreams:
  - name: bench
    url: {self.reg_url}
variants:
  enabled: true
  on_miss: wait
  wait_limit: 10m
""")
        p = start_server("accel-proxy", [self.accel, "serve", "--config", conf],
                         os.path.join(d, "accel-proxy.log"), f"http://127.0.0.1:{port}/healthz")
        self.proxy = (p, port, cache, d)
        return self.proxy

    def stop_proxy(self):
        if not self.proxy:
            return
        p, port, cache, d = self.proxy
        rc = stop_server(p)
        if rc != 0:
            self.notes.append(f"accel-proxy #{self.proxy_n} exited with status {rc} on SIGTERM")
        shutil.rmtree(d, ignore_errors=True)
        self.proxy = None

    def proxy_metric(self, name, **labels):
        p, port, _, _ = self.proxy
        st, _, body = http("GET", f"http://127.0.0.1:{port}/metrics")
        total = 0.0
        for line in body.decode().splitlines():
            m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$', line)
            if not m or m.group(1) != name:
                continue
            have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(m.group(4))
        return total

    def start_nginx(self, cache_dir):
        port = free_ports(1)[0]
        d = os.path.join(self.tmp, "nginx")
        os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
        conf = os.path.join(d, "nginx.conf")
        # As root, workers would switch to "nobody", who cannot read the private temp dir.
        user = "user root;\n" if os.geteuid() == 0 else ""
        with open(conf, "w") as f:
            f.write(f"""{user}worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path {d}/tmp/client;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        location = /ping {{ return 200 "ok\\n"; }}
        location /blobs/ {{ alias {cache_dir}/blobs/sha256/; }}
    }}
}}
""")
        p = start_server("nginx", ["/usr/sbin/nginx", "-p", d, "-c", conf, "-g", "daemon off;"],
                         os.path.join(d, "nginx.log"), f"http://127.0.0.1:{port}/ping")
        return p, f"http://127.0.0.1:{port}"

    # ------------------------------------------------------------------ samples

    def measured(self, what, fn):
        """fn() -> Sample; taken again (at most twice) when other processes disturbed it."""
        for attempt in range(cv.RETAKES + 1):
            s = fn()
            if s.rc != 0 or not disturbed(s):
                return s
            if self.wait and attempt < cv.RETAKES and STATS["paused_s"] < PAUSE_BUDGET_S:
                STATS["retaken"] += 1
                log(f"  other processes used {s.foreign / s.wall:.2f} cores during {what}: "
                    "pausing until quiet, then taking it again")
                cv.wait_for_quiet_between(max_s=60)
            else:
                STATS["disturbed"].append(f"{what} ({s.foreign / s.wall:.2f} cores of other load)")
                return s
        return s

    def skopeo_env(self):
        home = os.path.join(self.tmp, "skopeo-home")
        os.makedirs(home, exist_ok=True)
        return {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": self.tmp,
                "REGISTRY_AUTH_FILE": os.path.join(home, "auth.json")}

    def skopeo_copy(self, port, dest):
        shutil.rmtree(dest, ignore_errors=True)
        return run_timed(["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false",
                          f"docker://127.0.0.1:{port}/{REPO}:{TAG}{SUFFIX}", f"dir:{dest}"],
                         env=self.skopeo_env())

    def pull(self, port):
        return run_timed(["/usr/bin/python3", os.path.join(self.root, "bench", "pull.py"),
                          f"http://127.0.0.1:{port}", REPO, f"{TAG}{SUFFIX}"])

    def cold_sample(self, rep, client):
        """A cold pull by `client`: "pull" (bench/pull.py: manifest, then every blob at once,
        read at wire speed; done at the last byte) or "skopeo" (skopeo copy to dir:, which also
        checks digests and writes files as it reads)."""
        def once():
            _, port, _, _ = self.start_proxy()    # untimed: fresh process, empty cache
            if client == "pull":
                return self.pull(port)
            return self.skopeo_copy(port, os.path.join(self.tmp, "cold-copy"))
        s = self.measured(f"cold pull ({client}) rep {rep + 1}", once)
        if s.rc != 0:
            raise RuntimeError(f"cold pull ({client}) through the proxy failed: "
                               + (s.err.strip() or s.out.strip())[-400:])
        conv = self.proxy_metric("accel_proxy_conversion_duration_seconds_sum", format="estargz")
        done = self.proxy_metric("accel_proxy_conversions_total", format="estargz", outcome="done")
        misses = self.proxy_metric("accel_proxy_cache_misses_total")
        if done != 1 or misses != 1:
            self.checks.append(f"cold pull ({client}) rep {rep + 1}: {done:g} conversions, {misses:g} "
                               "misses (expected 1 and 1)")
        self.res["hwm"].append(hwm_mb(self.proxy[0].pid))
        if client == "pull":
            facts = json.loads(s.out)
            self.res["conv_s"].append(conv)
            self.res["manifest_at"].append(facts["manifest_s"])
            self.res["cold"].append(s.wall)
            extra = f"manifest after {facts['manifest_s']:.2f} s, {facts['bytes'] / MB:.1f} MB received"
        else:
            self.res["skopeo_cold"].append(s.wall)
            self.cold_manifest = cv.sha256_file(os.path.join(self.tmp, "cold-copy", "manifest.json"))
            extra = "digests checked, files written"
        log(f"  rep {rep + 1}/{self.reps} cold pull ({client}) {s.wall:8.2f} s; conversion {conv:.2f} s "
            f"by the proxy's metric; {extra}; others {s.foreign / s.wall:.2f} cores")
        return s

    def standalone_sample(self, rep):
        dest = os.path.join(self.tmp, "standalone-oci")
        work = os.path.join(self.tmp, "standalone-work")

        def once():
            shutil.rmtree(dest, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
            os.makedirs(work)
            env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work,
                   "DOCKER_CONFIG": os.path.join(work, "docker-config")}
            return run_timed([self.accel, "convert", "--format", "estargz", "--json",
                              f"docker://{self.reg_host}/{REPO}:{TAG}", f"oci:{dest}:x",
                              "--src-tls-verify=false"], env=env)
        s = self.measured(f"standalone convert rep {rep + 1}", once)
        if s.rc != 0:
            raise RuntimeError("accel-proxy convert failed: " + s.err.strip()[-400:])
        with open(os.path.join(dest, "index.json")) as f:
            self.standalone_manifest = json.load(f)["manifests"][0]["digest"]
        log(f"  rep {rep + 1}/{self.reps} standalone convert                {s.wall:8.2f} s "
            f"(others {s.foreign / s.wall:.2f} cores)")
        return s

    def curl_get(self, url, size, what):
        """One sample: the blob gets_per_sample times in a row on one keep-alive connection
        (one curl); bytes/s = all bytes / the sum of the transfers' times. None on an error."""
        n = self.gets_per_sample

        def once():
            return run_timed(["curl", "-s", "--max-time", "300",
                              "-w", "%{http_code} %{size_download} %{time_total}\\n"]
                             + [arg for _ in range(n) for arg in ("-o", "/dev/null", url)])
        s = self.measured(what, once)
        lines = s.out.split("\n")[:n] if s.rc == 0 else []
        total = secs = 0.0
        for line in lines:
            try:
                code, got, t = line.split()
            except ValueError:
                break
            if code != "200" or int(got) != size:
                log(f"  {what}: status {code}, {got} of {size} bytes")
                return None
            total += int(got)
            secs += float(t)
        if len(lines) != n or total != n * size or secs <= 0:
            log(f"  {what}: curl exit {s.rc}, {len(lines)} of {n} transfers: {s.err.strip()[-200:]}")
            return None
        return total / secs

    # ------------------------------------------------------------------ run

    def run(self):
        t_start = time.monotonic()
        self.load_start, notes = cv.start_conditions(self.wait, START_WAIT_S)
        self.notes.extend(notes)
        t_measure = time.monotonic()
        self.tmp = tempfile.mkdtemp(prefix="accel-bench-variant.", dir=os.environ.get("TMPDIR") or "/tmp")
        try:
            self.make_image()
            self.start_registry()
            self.push_image()
            self.measure_cold()
            self.measure_warm()
        finally:
            self.stop_proxy()
            for p in list(SERVERS):
                stop_server(p)
            if self.keep_tmp:
                log(f"kept {self.tmp}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
        self.elapsed = time.monotonic() - t_measure
        self.elapsed_total = time.monotonic() - t_start
        self.load_end = cv.loadavg()
        return self.report()

    def measure_cold(self):
        log(f"cold first pull vs standalone convert, {self.reps} repetition(s)")
        for rep in range(self.reps):
            order = ["pull", "skopeo", "standalone"]
            if rep % 2:
                order.reverse()
            for way in order:
                if way == "standalone":
                    self.res["standalone"].append(self.standalone_sample(rep).wall)
                else:
                    self.cold_sample(rep, way)
        # the last proxy (its cache holds the variant) stays for the warm measurements
        if self.proxy is None or self.res["cold"] == []:
            raise RuntimeError("no proxy left for the warm measurements")
        if self.cold_manifest == self.standalone_manifest:
            self.checks_ok_same = f"same image as the standalone conversion (manifest {self.cold_manifest[:19]}…)"
        else:
            self.checks_ok_same = None
            self.checks.append(f"the variant the proxy served ({self.cold_manifest[:19]}…) differs from "
                               f"the standalone conversion ({self.standalone_manifest[:19]}…)")

    def measure_warm(self):
        p, port, cache, _ = self.proxy
        proxy_url = f"http://127.0.0.1:{port}"
        with open(os.path.join(self.tmp, "cold-copy", "manifest.json")) as f:
            manifest = json.load(f)
        layer = max(manifest["layers"], key=lambda l: l["size"])
        self.warm_digest, self.warm_size = layer["digest"], layer["size"]
        hexd = self.warm_digest.split(":", 1)[1]
        path = os.path.join(cache, "blobs", "sha256", hexd)
        if not os.path.isfile(path) or os.path.getsize(path) != self.warm_size:
            raise SetupError(f"the converted layer is not at {path} with {self.warm_size} bytes")
        self.gets_per_sample = max(1, -(-GET_SAMPLE_BYTES // self.warm_size))
        ngx, nginx_url = self.start_nginx(cache)
        urls = {"proxy_get": f"{proxy_url}/v2/{REPO}/blobs/{self.warm_digest}",
                "nginx_get": f"{nginx_url}/blobs/{hexd}"}
        misses0 = self.proxy_metric("accel_proxy_cache_misses_total")
        hits0 = self.proxy_metric("accel_proxy_cache_hits_total", kind="blob")
        # untimed: both serve the same bytes (and the file is in page cache for both)
        for way, url in urls.items():
            st, got, n = stream_digest(url)
            if st != 200 or got != self.warm_digest or n != self.warm_size:
                raise SetupError(f"{way}: {url} gave status {st}, {n} bytes, {got}")
        log(f"warm: GET of the largest converted layer ({self.warm_size / MB:.1f} MB), "
            f"{self.gets_per_sample} times a sample, {self.get_reps} repetition(s), proxy vs nginx")
        for rep in range(self.get_reps):
            order = ["proxy_get", "nginx_get"] if rep % 2 == 0 else ["nginx_get", "proxy_get"]
            for way in order:
                v = self.curl_get(urls[way], self.warm_size, f"{way} rep {rep + 1}")
                self.res[way].append(v)
                log(f"  rep {rep + 1}/{self.get_reps} {'accel-proxy' if way == 'proxy_get' else 'nginx':<11} "
                    + ("ERR" if v is None else f"{v / MB:9.1f} MB/s"))
        log(f"warm: whole skopeo copy of the variant (cache hit), {self.reps} repetition(s)")
        for rep in range(self.reps):
            dest = os.path.join(self.tmp, "warm-copy")
            s = self.measured(f"warm skopeo copy rep {rep + 1}", lambda: self.skopeo_copy(port, dest))
            if s.rc != 0:
                raise RuntimeError("warm skopeo copy failed: " + s.err.strip()[-400:])
            self.res["warm_copy"].append(s.wall)
            log(f"  rep {rep + 1}/{self.reps} warm skopeo copy {s.wall:8.2f} s")
        if self.proxy_metric("accel_proxy_cache_misses_total") != misses0:
            self.checks.append("a warm request was a cache miss")
        if self.proxy_metric("accel_proxy_cache_hits_total", kind="blob") <= hits0:
            self.checks.append("the warm blob GETs were not cache hits")
        self.nginx_hwm = None
        stop_server(ngx)

    # ------------------------------------------------------------------ report

    @staticmethod
    def med(values):
        if not values or any(v is None for v in values):
            return None
        return statistics.median(values)

    def report(self):
        cold, alone = self.med(self.res["cold"]), self.med(self.res["standalone"])
        conv = self.med(self.res["conv_s"])
        pget, nget = self.med(self.res["proxy_get"]), self.med(self.res["nginx_get"])
        warm = self.med(self.res["warm_copy"])
        r_cold = cold / alone if cold and alone else None
        r_warm = pget / nget if pget and nget else None
        ok_cold = r_cold is not None and r_cold <= TARGET_COLD
        ok_warm = r_warm is not None and r_warm >= TARGET_WARM
        self.misses = (not ok_cold) + (not ok_warm) + len(self.checks)

        def secs(v):
            return "ERR" if v is None else f"{v:.2f} s"

        def all_s(vs):
            return ", ".join("ERR" if v is None else f"{v:.2f}" for v in vs)

        def all_mb(vs):
            return ", ".join("ERR" if v is None else f"{v / MB:.0f}" for v in vs)

        mb = self.tar_bytes / MB
        L = []
        out = L.append
        out("| measurement | accel-proxy | reference | ratio | target | result |")
        out("|---|---:|---:|---:|---|---|")
        out(f"| cold first pull of `{REPO}:{TAG}{SUFFIX}` (empty cache), time until the client has the "
            f"last byte (`bench/pull.py`), vs standalone `accel-proxy convert` | {secs(cold)} | "
            f"{secs(alone)} | {'ERR' if r_cold is None else f'{r_cold:.3f}×'} | ≤ {TARGET_COLD:g}× | "
            f"**{'PASS' if ok_cold else 'MISS'}** |")
        sk = self.med(self.res["skopeo_cold"])
        out(f"| cold first pull by `skopeo copy` to `dir:` (empty cache; skopeo reads at the pace of "
            f"its digest checks and file writes) vs standalone | {secs(sk)} | {secs(alone)} | "
            f"{'ERR' if not (sk and alone) else f'{sk / alone:.3f}×'} | reference only | |")
        out(f"| warm GET of the largest converted layer ({self.warm_size / MB:.1f} MB), MB/s, vs "
            f"nginx from the cache file | {'ERR' if pget is None else f'{pget / MB:.0f}'} | "
            f"{'ERR' if nget is None else f'{nget / MB:.0f}'} | "
            f"{'ERR' if r_warm is None else f'{r_warm:.3f}×'} | ≥ {TARGET_WARM:g}× | "
            f"**{'PASS' if ok_warm else 'MISS'}** |")
        out(f"| warm pull of the variant (skopeo copy, cache hit) | {secs(warm)} | | | reference only | |")
        out("")
        out("Samples (in order of repetition):")
        out("")
        out(f"- cold pull to the last byte (bench/pull.py), s: {all_s(self.res['cold'])}; of which until "
            f"the manifest, s: {all_s(self.res['manifest_at'])}; conversion (the proxy's "
            f"`accel_proxy_conversion_duration_seconds`), s: {all_s(self.res['conv_s'])}")
        out(f"- cold pull by skopeo, s: {all_s(self.res['skopeo_cold'])}")
        out(f"- standalone convert, s: {all_s(self.res['standalone'])}")
        if cold and conv:
            out(f"- cold pull: {mb / cold:.1f} MB/s of uncompressed layer end to end; conversion "
                f"{conv:.2f} s, the remaining {cold - conv:.2f} s are the client's start and requests "
                "and the transfer of the converted image, which cannot start before the manifest "
                "(it names every converted layer's digest)")
        if alone:
            out(f"- standalone convert: {mb / alone:.1f} MB/s of uncompressed layer")
        out(f"- warm blob GET, MB/s: accel-proxy {all_mb(self.res['proxy_get'])}; nginx "
            f"{all_mb(self.res['nginx_get'])} (median of {self.get_reps} samples; a sample is "
            f"{self.gets_per_sample} GETs in a row on one connection, bytes / summed transfer times)")
        out(f"- warm skopeo copy, s: {all_s(self.res['warm_copy'])}")
        hwm = [h for h in self.res["hwm"] if h]
        if hwm:
            out(f"- accel-proxy peak RSS (VmHWM) after a cold pull: {max(hwm):.1f} MB")
        out("")
        out("Checks: " + ("; ".join(
            ([self.checks_ok_same] if getattr(self, "checks_ok_same", None) else []) +
            ["each cold pull: 1 conversion and 1 cache miss; warm requests: cache hits, no miss"
             if not self.checks else "**" + "; ".join(self.checks) + "**"])) + ".")
        self.body = "\n".join(L)
        return self.compose()

    def compose(self):
        now, host, binary, notes = cv.block_facts(self.root, self.accel, self.notes)
        mode = (f"quick (smoke run: {self.layer_total // MiB} MiB layer, {self.reps} repetition; "
                "not comparable with full runs)") if self.quick else f"full ({self.reps} repetitions, median)"
        paused = f", of which {STATS['paused_s']:.0f} s paused for other load" if STATS["paused_s"] >= 1 else ""
        f = self.layer_facts
        md = [f"### variant, {now}", "",
              f"- command: `{self.cmd}` (mode: {mode}; {self.elapsed:.0f} s measuring{paused}, "
              f"{self.elapsed_total:.0f} s in all)",
              f"- host: {host}; load average at start {' '.join(f'{x:.2f}' for x in self.load_start)}, "
              f"at end {' '.join(f'{x:.2f}' for x in self.load_end)}",
              f"- accel-proxy: {binary}; `serve` with `variants: {{on_miss: wait}}`, "
              "other settings default (2 worker threads, compression level 6, 4 MiB chunks)",
              f"- image: `{REPO}:{TAG}`, one layer generated by bench/convert's generator: "
              f"{self.layer_total // MiB} MiB of file content ({f['files']} files, "
              f"{f['text_share'] * 100:.0f}% text-like by bytes), {self.tar_bytes / MB:.1f} MB tar, "
              f"{self.gz_bytes / MB:.1f} MB tar.gz (`gzip -n -6`), on docker-registry 2.8 (loopback, "
              "filesystem storage in `$TMPDIR`)",
              "- cold: against a freshly started proxy with an empty cache each time, wall time of "
              "`bench/pull.py http://PROXY bench/app 1-estargz` (GET of the manifest, then of every "
              "blob at once, bodies read at wire speed and dropped: it ends at the last byte), and "
              "of `skopeo copy --src-tls-verify=false docker://PROXY/bench/app:1-estargz dir:D` for "
              "reference; standalone: wall time of "
              "`accel-proxy convert --format estargz docker://REG/bench/app:1 oci:D:x --src-tls-verify=false`; "
              "order alternates per repetition",
              "- warm: `curl` GETs of `/v2/bench/app/blobs/<digest>` (the largest converted layer) through the "
              "proxy against nginx 1.22 (`sendfile on`, static `alias` of the proxy's "
              "`CACHE_DIR/blobs/sha256/`), alternating, after one untimed GET each; a sample is the "
              "blob fetched repeatedly (about 1 GiB) on one keep-alive connection, MB/s = bytes / "
              "summed transfer times (`%{time_total}`); MB = 10^6 bytes",
              ]
        if notes:
            md.append("- notes: " + "; ".join(notes))
        md += ["", self.body.rstrip(), ""]
        return "\n".join(md)


def main(argv):
    if not argv or argv[0] != "run":
        print(__doc__, file=sys.stderr)
        return 2

    def stop_servers():
        for p in list(SERVERS):
            stop_server(p, timeout=5)
    return cv.run_bench(Bench(argv[1:]), errors=(SetupError, RuntimeError), cleanup=stop_servers)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
