#!/usr/bin/python3
"""Layer conversion benchmark for bench/convert (standard library only).

usage: convert.py run [--quick] [--write-results] [--strict] [--no-wait] [--keep-tmp]
                      [--formats estargz,nydus]
       convert.py make-big-layer OUT.tar BYTES     (the generator alone, for inspection)

bench/convert checks tools, builds missing binaries and then runs `convert.py run`.
Environment (set by bench/convert): REPO_ROOT, ACCEL_PROXY_BIN, ESTARGZ_REF_BIN,
ESTARGZ_CHECK_BIN, BENCH_REPS, BENCH_BIG_MIB (size of the big layer, for debugging),
BENCH_CMD (the command line to print).

What it measures, on the same input layers and in one run (see bench/README.md):
  accel-proxy convert-layer --format estargz IN.tar.gz OUT     (default options)
  estargz-ref-build IN.tar.gz OUT                              (Go reference, level 9)
  gzip -1 -c IN.tar; pigz -pN -c IN.tar; gunzip -c IN.tar.gz; gzip -dc IN.tar.gz | pigz -pN
and, for Nydus (--formats: estargz, nydus or both, the default):
  accel-proxy convert-layer --format nydus IN.tar.gz OUT       (default options)
  gzip -dc IN.tar.gz | zstd -3 -TN; zstd -3 -TN -c IN.tar; gunzip -c IN.tar.gz
Every timed sample is wall time (time.monotonic) around the subprocesses; MB/s is the
layer's uncompressed tar bytes / 1e6 / median wall seconds.
"""

import datetime
import hashlib
import io
import json
import math
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

MB = 1e6
MiB = 1 << 20
GiB = 1 << 30
HZ = os.sysconf("SC_CLK_TCK")
NPROC = os.cpu_count() or 1
GNU_TIME = "/usr/bin/time"

LOAD_LIMIT = 0.8          # 1-minute load average below which the machine counts as quiet
START_WAIT_S = 900        # at most this long waiting for a quiet machine before measuring
FOREIGN_LIMIT = 0.20      # other processes using this many cores during a sample: disturbed
RETAKES = 2               # a disturbed sample is taken again at most this often
PAUSE_BUDGET_S = 600      # in all, pause at most this long for other load during a run
SMALL_LAYER_BYTES = 64 * 1000 * 1000   # layers smaller than this (uncompressed) are ...
SMALL_LAYER_REPS = 7      # ... measured this many times in full runs (median)
COMPILERS = {"cc1plus", "cc1", "lto1", "ld", "ld.bfd", "ld.gold", "ld.lld", "collect2",
             "clang", "clang++", "rustc", "compile", "link"}

TARGET_SPEED_VS_REF = 5.0
TARGET_SIZE_VS_REF = 1.02
TARGET_VS_PIPE = 0.7
TARGET_RSS_MB = 256.0
TARGET_NYDUS_VS_PIPE = 1.0
TARGET_NYDUS_SIZE_VS_PIPE = 1.05
NYDUS_COMPRESSORS = ("zstd", "lz4_block", "none")
FORMATS = ("estargz", "nydus")
LEVELS = (6, 7, 8, 9)

RUNNING = []              # Popen objects of the sample being run (killed on interrupt)
STATS = {"retaken": 0, "disturbed": [], "paused_s": 0.0}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class SetupError(Exception):
    pass


# ---------------------------------------------------------------------------- machine state

def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def compilers_running():
    """Names of compilers/linkers running (like `pgrep -f cc1plus`, and a few more)."""
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm in COMPILERS or comm.startswith(("clang-", "clang++-")):
            found.add(comm)
    return sorted(found)


def cpu_busy_s():
    """Seconds of CPU the whole machine has spent busy (all cores) since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest is inside user)
    return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / HZ


def self_cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def wait_for_quiet_start(max_s):
    """Before measuring: wait until load1 < LOAD_LIMIT and no compiler runs."""
    t0 = time.monotonic()
    last_log = -1e9
    while True:
        load1 = loadavg()[0]
        comps = compilers_running()
        if load1 < LOAD_LIMIT and not comps:
            return True, time.monotonic() - t0
        waited = time.monotonic() - t0
        if waited >= max_s:
            return False, waited
        if time.monotonic() - last_log >= 60:
            what = f"load average {load1:.2f}" + (f", compiling ({', '.join(comps)})" if comps else "")
            log(f"machine busy ({what}): waiting for load < {LOAD_LIMIT} and no compiler "
                f"(waited {waited:.0f} s of at most {max_s} s; --no-wait skips)")
            last_log = time.monotonic()
        time.sleep(5)


def start_conditions(wait, max_wait_s):
    """The start of a run: wait for a quiet machine (unless `wait` is false), log the load.
    Returns (load averages at start, notes for the results block)."""
    notes = []
    if wait:
        ok, waited = wait_for_quiet_start(max_wait_s)
        if not ok:
            notes.append(f"machine still busy after {waited:.0f} s of waiting: measured anyway")
            log("WARNING: " + notes[-1])
        elif waited >= 1:
            notes.append(f"waited {waited:.0f} s for a quiet machine")
    load = loadavg()
    comps = compilers_running()
    log(f"load average at start: {' '.join(f'{x:.2f}' for x in load)}"
        + (f"; compiling: {', '.join(comps)}" if comps else "; no compiler running"))
    if comps:
        notes.append(f"a compiler was running at start ({', '.join(comps)})")
    return load, notes


def wait_for_quiet_between(max_s=180, quiet_s=5):
    """Mid-run (our own load keeps the load average up): wait until other processes use
    < FOREIGN_LIMIT cores for quiet_s seconds in a row and no compiler runs."""
    t0 = time.monotonic()
    quiet = 0
    prev = cpu_busy_s()
    while time.monotonic() - t0 < max_s:
        time.sleep(1)
        cur = cpu_busy_s()
        busy = cur - prev
        prev = cur
        if busy < FOREIGN_LIMIT and not compilers_running():
            quiet += 1
            if quiet >= quiet_s:
                break
        else:
            quiet = 0
    waited = time.monotonic() - t0
    STATS["paused_s"] += waited
    return waited


# ---------------------------------------------------------------------------- running samples

class RunFailed(Exception):
    pass


class Sample:
    __slots__ = ("wall", "cpu", "foreign", "rss_kb", "stdout", "rc")


def run_pipeline(argvs, out_path=None, env=None, rss_file=None, errpath=None):
    """Run argvs (a pipeline: list of argv lists) once; stdout of the last one goes to
    out_path (None: /dev/null; "capture": a temp file whose text is returned)."""
    errf = open(errpath, "wb") if errpath else subprocess.DEVNULL
    capture = out_path == "capture"
    if capture:
        outf = tempfile.TemporaryFile()
    elif out_path:
        outf = open(out_path, "wb")
    else:
        outf = subprocess.DEVNULL
    procs = []
    try:
        busy0, self0 = cpu_busy_s(), self_cpu_s()
        t0 = time.monotonic()
        prev = None
        for i, argv in enumerate(argvs):
            last = i == len(argvs) - 1
            p = subprocess.Popen(argv, stdin=prev.stdout if prev else subprocess.DEVNULL,
                                 stdout=outf if last else subprocess.PIPE, stderr=errf, env=env)
            RUNNING.append(p)
            procs.append(p)
            if prev:
                prev.stdout.close()
            prev = p
        rcs, cpu, rss = [], 0.0, 0
        for p in procs:
            _, status, ru = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            rcs.append(p.returncode)
            cpu += ru.ru_utime + ru.ru_stime
            rss = max(rss, ru.ru_maxrss)
        t1 = time.monotonic()
        busy1, self1 = cpu_busy_s(), self_cpu_s()
    finally:
        for p in procs:
            if p in RUNNING:
                RUNNING.remove(p)
        if errpath:
            errf.close()
        if not capture and out_path:
            outf.close()
    s = Sample()
    s.wall = t1 - t0
    s.cpu = cpu
    s.foreign = max(0.0, (busy1 - busy0) - cpu - (self1 - self0))
    s.rss_kb = rss
    s.rc = next((rc for rc in rcs if rc != 0), 0)
    s.stdout = ""
    if capture:
        outf.seek(0)
        s.stdout = outf.read().decode("utf-8", "replace")
        outf.close()
    if rss_file:
        try:
            with open(rss_file) as f:
                s.rss_kb = int(f.read().split()[-1])
        except (OSError, ValueError, IndexError):
            pass
    return s


def disturbed(s):
    # /proc/stat counts in ticks: allow 0.05 s of slack for short samples
    return s.foreign > FOREIGN_LIMIT * s.wall + 0.05


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(4 * MiB)
            if not b:
                break
            h.update(b)
    return "sha256:" + h.hexdigest()


def warm(path):
    """Read a file once so that it is in the page cache for every tool alike."""
    with open(path, "rb") as f:
        while f.read(8 * MiB):
            pass


# ---------------------------------------------------------------------------- the big layer

def make_big_layer(tar_path, total, gz_path=None):
    """A deterministic layer of about `total` bytes of file content: a directory tree of
    small, medium and large files, ~60% (by bytes) compressible text-like and ~40%
    incompressible random. PAX tar (like Go/Docker writers); gz_path: also `gzip -n -6`
    of the same bytes, written while the tar is generated. Returns facts about it."""
    seed = "bench/convert big layer v1"
    rng = random.Random(seed)

    # text: Zipf-distributed synthetic words -> lines -> paragraphs (gzip -6 ratio ~2.9)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    lw = [12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8, 2.4, 2.4, 2.2,
          2.0, 2.0, 1.9, 1.5, 1.0, 0.8, 0.15, 0.15, 0.1, 0.07]
    words = ["".join(rng.choices(letters, lw, k=rng.randint(2, 10))) for _ in range(3000)]
    ww = [1.0 / (i + 1) for i in range(len(words))]
    seps = [" "] * 8 + [", ", ". ", " = ", "(", ") ", "_", "/", ": "]
    lines = []
    for _ in range(16384):
        ws = rng.choices(words, ww, k=rng.randint(1, 14))
        s = " " * rng.choice([0, 0, 0, 2, 4, 4, 8]) + ws[0]
        for w in ws[1:]:
            s += rng.choice(seps) + w
        lines.append((s + "\n").encode())
    paras = [b"".join(rng.choices(lines, k=32)) for _ in range(4096)]
    avg_para = sum(map(len, paras)) / len(paras)

    # directory tree
    tops = ["usr/lib/x86_64-linux-gnu", "usr/share/doc", "usr/lib/python3/dist-packages",
            "usr/share/locale", "opt/app/lib", "opt/app/assets", "usr/local/lib", "var/lib/app"]
    dirs = set()
    for t in tops:
        parts = t.split("/")
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    leaf = list(tops)
    for _ in range(max(40, total // (3 * MiB // 2))):   # about one directory per 1.5 MiB
        d = rng.choice(leaf) + "/" + rng.choice(words[:800]) + str(rng.randint(0, 99))
        if d not in dirs:
            dirs.add(d)
            leaf.append(d)

    text_ext = ["py", "txt", "json", "h", "conf", "html", "js", "md", "xml", "yaml"]
    rand_ext = ["so", "bin", "png", "gz", "jpg", "woff2", "zip", "pack"]
    files = []   # (path, size, kind, index)
    content = text_b = 0
    i = 0
    while content < total:
        r = rng.random()
        if r < 0.90:      # by count 90% small, 9.5% medium, 0.5% large
            size = int(math.exp(rng.uniform(math.log(100), math.log(64 * 1024))))
        elif r < 0.995:
            size = int(math.exp(rng.uniform(math.log(64 * 1024), math.log(2 * MiB))))
        else:
            size = int(math.exp(rng.uniform(math.log(2 * MiB), math.log(64 * MiB))))
        size = min(size, total - content)
        kind = "text" if text_b <= 0.6 * content else "rand"
        ext = rng.choice(text_ext if kind == "text" else rand_ext)
        path = f"{rng.choice(leaf)}/{rng.choice(words[:1500])}-{i}.{ext}"
        files.append((path, size, kind, i))
        content += size
        text_b += size if kind == "text" else 0
        i += 1

    entries = [(tuple(d.split("/")), "dir", d, 0, "", 0) for d in dirs]
    entries += [(tuple(p.split("/")), "reg", p, sz, k, n) for p, sz, k, n in files]
    entries.sort()

    gz = None
    if gz_path:
        gzf = open(gz_path, "wb")
        gz = subprocess.Popen(["gzip", "-n", "-6", "-c"], stdin=subprocess.PIPE, stdout=gzf)
        RUNNING.append(gz)
        gzf.close()

    class Tee:
        """The tar stream to the file and to gzip at once (tarfile only needs these)."""
        def __init__(self, f):
            self.f = f
            self.pos = 0

        def tell(self):
            return self.pos

        def write(self, b):
            self.f.write(b)
            if gz:
                gz.stdin.write(b)
            self.pos += len(b)
            return len(b)

    with open(tar_path, "wb") as raw:
        tee = Tee(raw)
        tf = tarfile.open(fileobj=tee, mode="w", format=tarfile.PAX_FORMAT)
        for _, typ, path, size, kind, n in entries:
            ti = tarfile.TarInfo(path)
            ti.mtime = 1_700_000_000
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            if typ == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
                continue
            if kind == "text":
                r = random.Random(f"{seed}/{n}")
                data = b"".join(r.choices(paras, k=int(size / avg_para) + 2))
                while len(data) < size:
                    data += b"".join(r.choices(paras, k=int((size - len(data)) / avg_para) + 2))
                data = data[:size]
                ti.mode = 0o644
            else:
                data = hashlib.shake_256(f"{seed}/{n}".encode()).digest(size)
                ti.mode = 0o755 if path.endswith((".so", ".bin")) else 0o644
            ti.size = size
            tf.addfile(ti, io.BytesIO(data))
        tf.close()
    if gz:
        gz.stdin.close()
        if gz.wait() != 0:
            raise SetupError("gzip -n -6 of the big layer failed")
        RUNNING.remove(gz)
    return {"files": len(files), "dirs": len(dirs), "content": content,
            "text_share": text_b / max(content, 1)}


# ---------------------------------------------------------------------------- the benchmark

def parse_formats(args):
    """--formats LIST or --formats=LIST (comma-separated, of FORMATS; default all)."""
    val = None
    for i, a in enumerate(args):
        if a == "--formats":
            if i + 1 >= len(args):
                raise SetupError("--formats needs a value (estargz, nydus or estargz,nydus)")
            val = args[i + 1]
        elif a.startswith("--formats="):
            val = a.split("=", 1)[1]
    if val is None:
        return FORMATS
    got = [f.strip() for f in val.split(",") if f.strip()]
    bad = [f for f in got if f not in FORMATS]
    if bad or not got:
        raise SetupError(f"--formats: unknown format(s) {', '.join(bad) or '(none)'}; "
                         f"choose from {', '.join(FORMATS)}")
    return tuple(f for f in FORMATS if f in got)


class Bench:
    def __init__(self, args):
        self.quick = "--quick" in args
        self.write_results = "--write-results" in args
        self.strict = "--strict" in args
        self.wait = "--no-wait" not in args
        self.keep_tmp = "--keep-tmp" in args
        self.formats = parse_formats(args)
        self.estargz = "estargz" in self.formats
        self.nydus = "nydus" in self.formats
        self.reps = int(os.environ.get("BENCH_REPS") or (1 if self.quick else 3))
        # A layer that converts in a fifth of a second is at the mercy of one scheduler hiccup:
        # the small layers get more repetitions (each costs about a second) in full runs.
        self.small_reps = self.reps if self.quick else max(self.reps, SMALL_LAYER_REPS)
        self.root = os.environ.get("REPO_ROOT") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.accel = os.environ.get("ACCEL_PROXY_BIN") or f"{self.root}/build/accel-proxy"
        self.ref = os.environ.get("ESTARGZ_REF_BIN") or f"{self.root}/build/go/estargz-ref-build"
        self.check = os.environ.get("ESTARGZ_CHECK_BIN") or f"{self.root}/build/go/estargz-check"
        self.cmd = os.environ.get("BENCH_CMD") or "bench/convert " + " ".join(args)
        self.big_total = int(os.environ.get("BENCH_BIG_MIB") or (256 if self.quick else 1024)) * MiB
        self.has_time = os.access(GNU_TIME, os.X_OK)
        self.results = {}      # layer -> tool -> dict
        self.layers = []       # (name, tar, tar.gz)
        self.info = {}         # layer -> facts
        self.notes = []
        self.default_level = None
        self.env_ref = {k: v for k, v in os.environ.items() if k != "GOMAXPROCS"}
        self.tmp = None

    # ------------------------------------------------------------------ tools

    def tools_for(self, layer):
        name, tar, gz = layer
        p = f"-p{NPROC}"
        tools = []
        if self.estargz:
            tools += [
                ("accel", "accel-proxy"),
                ("ref", "reference"),
                ("gzip1", "gzip -1"),
                ("pigz", f"pigz {p}"),
                ("gunzip", "gunzip -c"),
                ("pipe", f"gzip -dc | pigz {p}"),
            ]
            if name in ("debian_like", "big"):
                for lv in LEVELS:
                    if name == "big" and lv == self.default_level:
                        continue   # the default run is this level (same output): reuse it
                    tools.append((f"L{lv}", f"accel-proxy level {lv}"))
        if self.nydus:
            tools += [
                ("nydus", "accel-proxy nydus"),
                ("zpipe", f"gzip -dc | zstd -3 -T{NPROC}"),
                ("zstd", f"zstd -3 -T{NPROC}"),
            ]
            if not self.estargz:
                tools.append(("gunzip", "gunzip -c"))   # the inflate bound of the pipeline
        return tools

    def command(self, tool, layer, out):
        """(argvs, out_path for the last stdout, env, rss_file)"""
        name, tar, gz = layer
        rss = None
        if tool == "accel" or tool.startswith("L"):
            argv = [self.accel, "convert-layer", "--format", "estargz", gz, out]
            if tool.startswith("L"):
                argv += ["--compression-level", tool[1:]]
            if self.has_time:
                rss = out + ".rss"
                argv = [GNU_TIME, "-f", "%M", "-o", rss] + argv
            return [argv], "capture", None, rss
        if tool == "nydus":
            argv = [self.accel, "convert-layer", "--format", "nydus", gz, out]
            if self.has_time:
                rss = out + ".rss"
                argv = [GNU_TIME, "-f", "%M", "-o", rss] + argv
            return [argv], "capture", None, rss
        if tool == "zpipe":
            return [["gzip", "-dc", gz], ["zstd", "-q", "-3", f"-T{NPROC}", "-c"]], out, None, None
        if tool == "zstd":
            return [["zstd", "-q", "-3", f"-T{NPROC}", "-c", tar]], out, None, None
        if tool == "ref":
            return [[self.ref, gz, out]], "capture", self.env_ref, None
        if tool == "gzip1":
            return [["gzip", "-1", "-c", tar]], out, None, None
        if tool == "pigz":
            return [["pigz", f"-p{NPROC}", "-c", tar]], out, None, None
        if tool == "gunzip":
            return [["gunzip", "-c", gz]], None, None, None
        if tool == "pipe":
            return [["gzip", "-dc", gz], ["pigz", f"-p{NPROC}"]], out, None, None
        raise ValueError(tool)

    def sample(self, tool, layer, rep):
        """One timed sample (taken again if other processes disturbed it)."""
        name = layer[0]
        out = os.path.join(self.tmp, f"out.{name}.{tool}")
        argvs, out_path, env, rss = self.command(tool, layer, out)
        errpath = out + ".err"
        for attempt in range(RETAKES + 1):
            for f in (out, rss):
                if f and os.path.exists(f):
                    os.unlink(f)
            s = run_pipeline(argvs, out_path, env, rss, errpath)
            if s.rc != 0:
                with open(errpath, "rb") as f:
                    err = f.read().decode("utf-8", "replace").strip().splitlines()[-5:]
                raise RunFailed(f"exit status {s.rc}: " + " | ".join(err))
            if not disturbed(s):
                break
            if self.wait and attempt < RETAKES and STATS["paused_s"] < PAUSE_BUDGET_S:
                STATS["retaken"] += 1
                log(f"  other processes used {s.foreign / s.wall:.2f} cores during {tool} on "
                    f"{name}: pausing until quiet, then taking it again")
                wait_for_quiet_between()
            else:
                STATS["disturbed"].append(f"{tool} on {name} rep {rep + 1} "
                                          f"({s.foreign / s.wall:.2f} cores of other load)")
                break
        size = os.path.getsize(out) if os.path.exists(out) else None
        return s, out, size

    def reps_for(self, layer):
        return self.small_reps if os.path.getsize(layer[1]) < SMALL_LAYER_BYTES else self.reps

    def reps_text(self):
        if self.small_reps == self.reps:
            return f"median of {self.reps}"
        return f"median of {self.reps}; of {self.small_reps} for the layers under {SMALL_LAYER_BYTES // MB} MB"

    def measure_layer(self, layer):
        name, tar, gz = layer
        ubytes = os.path.getsize(tar)
        reps = self.reps_for(layer)
        warm(tar)
        warm(gz)
        tools = self.tools_for(layer)
        res = self.results.setdefault(name, {})
        for key, label in tools:
            res[key] = {"label": label, "walls": [], "cpus": [], "rss": [], "size": None,
                        "digests": set(), "json": None, "err": None}
        for rep in range(reps):
            k = rep % len(tools)
            for key, label in tools[k:] + tools[:k]:   # rotate the order per repetition
                r = res[key]
                if r["err"]:
                    continue
                try:
                    s, out, size = self.sample(key, layer, rep)
                except RunFailed as e:
                    r["err"] = str(e)
                    log(f"  {label} on {name} FAILED: {e}")
                    continue
                r["walls"].append(s.wall)
                r["cpus"].append(s.cpu)
                r["rss"].append(s.rss_kb)
                if size is not None:
                    if r["size"] is not None and r["size"] != size:
                        r["size_varies"] = True
                    r["size"] = size
                if key in ("accel", "ref", "nydus") or key.startswith("L"):
                    try:
                        r["json"] = json.loads(s.stdout.strip().splitlines()[-1])
                    except (ValueError, IndexError):
                        r["err"] = "no JSON on stdout"
                    if key != "ref" and out and os.path.exists(out):
                        r["digests"].add(sha256_file(out))
                    if key == "accel" and rep == 0 and not r["err"]:
                        self.verify(layer, out, r)
                    if key == "nydus" and rep == 0 and not r["err"]:
                        self.verify_nydus(layer, r)
                log(f"  {name:<12} rep {rep + 1}/{reps} {label:<22} {s.wall:8.3f} s "
                    f"{ubytes / MB / s.wall:9.1f} MB/s" + (f"  {size / MB:9.2f} MB" if size else "")
                    + f"  (CPU {s.cpu:.2f} s; others {s.foreign / s.wall:.2f} cores)")
                if out and os.path.exists(out):
                    os.unlink(out)

    def verify(self, layer, out, r):
        """Untimed: the first accel-proxy blob of each layer through the reference checker."""
        name, tar, gz = layer
        j = r["json"] or {}
        toc = (j.get("annotations") or {}).get("containerd.io/snapshot/stargz/toc.digest")
        if j.get("digest") and r["digests"] and j["digest"] not in r["digests"]:
            r["check"] = "MISMATCH: reported digest differs from the file's sha256"
            return
        if not os.access(self.check, os.X_OK) or not toc:
            r["check"] = "not checked" + ("" if toc else " (no TOC digest in the JSON)")
            return
        t0 = time.monotonic()
        p = subprocess.run([self.check, "--blob", out, "--toc-digest", toc, "--source", gz],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        dt = time.monotonic() - t0
        if p.returncode == 0:
            r["check"] = "passes estargz-check"
        else:
            r["check"] = "FAILS estargz-check: " + p.stderr.decode("utf-8", "replace").strip()[-200:]
        log(f"  {name}: accel-proxy blob {r['check']} ({dt:.1f} s, untimed)")

    def verify_nydus(self, layer, r):
        """Untimed: the first Nydus blob's JSON against the file and the source. (A lone blob
        has no image around it for `accel-proxy check`; the tests check blobs in images.)"""
        name, tar, gz = layer
        j = r["json"] or {}
        bad = []
        if not j.get("digest") or j["digest"] not in r["digests"]:
            bad.append("reported digest is not the file's sha256")
        if j.get("size") != r["size"]:
            bad.append(f"reported size {j.get('size')} is not the file's {r['size']}")
        if j.get("media_type") != "application/vnd.oci.image.layer.nydus.blob.v1":
            bad.append(f"media type {j.get('media_type')}")
        if j.get("source_uncompressed_size") != os.path.getsize(tar):
            bad.append("source_uncompressed_size is not the tar's size")
        if j.get("source_diff_id") != sha256_file(tar):
            bad.append("source_diff_id is not the tar's sha256")
        if j.get("source_digest") != sha256_file(gz):
            bad.append("source_digest is not the .tar.gz's sha256")
        r["check"] = ("MISMATCH: " + "; ".join(bad)) if bad else "digest, size, source digests match"
        if bad:
            log(f"  {name}: nydus blob {r['check']}")

    def detect_default_level(self):
        r = self.results.get("debian_like", {})
        d = r.get("accel", {}).get("digests")
        for lv in LEVELS:
            if d and r.get(f"L{lv}", {}).get("digests") == d:
                self.default_level = lv
        if self.default_level:
            log(f"accel-proxy's default compression level is {self.default_level} "
                f"(same blob as --compression-level {self.default_level} on debian_like)")

    def determinism(self, layer):
        name, tar, gz = layer
        d = {}
        for key, argv, env in (
                ("accel1", [self.accel, "convert-layer", "--format", "estargz", gz, "@", "--threads", "1"], None),
                ("accel2", [self.accel, "convert-layer", "--format", "estargz", gz, "@", "--threads", "2"], None),
                ("ref1", [self.ref, gz, "@", "--procs", "1"], {**self.env_ref, "GOMAXPROCS": "1"}),
                ("ref2", [self.ref, gz, "@", "--procs", "2"], {**self.env_ref, "GOMAXPROCS": "2"})):
            out = os.path.join(self.tmp, f"det.{key}")
            argv = [out if a == "@" else a for a in argv]
            p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            if p.returncode != 0:
                d[key] = ("ERR", p.stderr.decode("utf-8", "replace").strip()[-200:])
            else:
                j = json.loads(p.stdout.decode().strip().splitlines()[-1])
                d[key] = (sha256_file(out), j.get("digest") or j.get("toc_digest"))
            if os.path.exists(out):
                os.unlink(out)
        return d

    def determinism_nydus(self, layer):
        """Nydus blobs with --threads 1 and 2, for each compressor: {compressor: {threads:
        (sha256 of the file or "ERR", reported digest or the error)}}."""
        name, tar, gz = layer
        d = {}
        for comp in NYDUS_COMPRESSORS:
            for th in (1, 2):
                out = os.path.join(self.tmp, f"det.nydus.{comp}.{th}")
                argv = [self.accel, "convert-layer", "--format", "nydus", "--threads", str(th),
                        "--compressor", comp, gz, out]
                p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                if p.returncode != 0:
                    res = ("ERR", p.stderr.decode("utf-8", "replace").strip()[-200:])
                else:
                    try:
                        j = json.loads(p.stdout.decode().strip().splitlines()[-1])
                        res = (sha256_file(out), j.get("digest"), os.path.getsize(out))
                    except (ValueError, IndexError):
                        res = ("ERR", "no JSON on stdout")
                d.setdefault(comp, {})[th] = res
                if os.path.exists(out):
                    os.unlink(out)
        return d

    # ------------------------------------------------------------------ inputs

    def make_inputs(self):
        log("generating the test layers (tests/integration/layers.py --gzip)")
        lay = os.path.join(self.tmp, "layers")
        p = subprocess.run(["/usr/bin/python3", f"{self.root}/tests/integration/layers.py", lay,
                            "--gzip", "debian_like", "many_small", "few_large"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if p.returncode != 0:
            raise SetupError("layers.py failed: " + p.stderr.decode("utf-8", "replace")[-500:])
        for n in ("debian_like", "many_small", "few_large"):
            tar, gz = f"{lay}/{n}.tar", f"{lay}/{n}.tar.gz"
            if not (os.path.exists(tar) and os.path.exists(gz)):
                raise SetupError(f"layers.py did not write {tar} and {gz}")
            self.layers.append((n, tar, gz))
            with tarfile.open(tar) as tf:
                self.info[n] = {"files": sum(1 for m in tf if m.isfile())}
        big_tar = os.path.join(self.tmp, "big.tar")
        big_gz = big_tar + ".gz"
        log(f"generating the big layer: {self.big_total // MiB} MiB of files, tar + gzip -n -6")
        t0 = time.monotonic()
        facts = make_big_layer(big_tar, self.big_total, big_gz)
        log(f"  big layer: {facts['files']} files in {facts['dirs']} directories, "
            f"{facts['text_share'] * 100:.0f}% text by bytes, {os.path.getsize(big_tar) / MB:.1f} MB tar, "
            f"{os.path.getsize(big_gz) / MB:.1f} MB tar.gz ({time.monotonic() - t0:.0f} s)")
        self.layers.append(("big", big_tar, big_gz))
        self.info["big"] = facts
        for n, tar, gz in self.layers:
            self.info[n]["tar_bytes"] = os.path.getsize(tar)
            self.info[n]["gz_bytes"] = os.path.getsize(gz)

    # ------------------------------------------------------------------ main

    def run(self):
        t_start = time.monotonic()
        self.load_start, notes = start_conditions(self.wait, START_WAIT_S)
        self.notes.extend(notes)
        t_measure = time.monotonic()

        self.tmp = tempfile.mkdtemp(prefix="accel-bench-convert.", dir=os.environ.get("TMPDIR") or "/tmp")
        try:
            self.make_inputs()
            for layer in self.layers:
                log(f"measuring {layer[0]} ({os.path.getsize(layer[1]) / MB:.1f} MB uncompressed), "
                    f"{self.reps_for(layer)} repetition(s)")
                self.measure_layer(layer)
                if layer[0] == "debian_like" and self.estargz:
                    self.detect_default_level()
            if self.estargz:
                log("determinism: accel-proxy --threads 1 vs 2, reference --procs 1 vs 2 on debian_like")
                self.det = self.determinism(self.layers[0])
            if self.nydus:
                log("determinism: accel-proxy nydus --threads 1 vs 2 per compressor "
                    f"({', '.join(NYDUS_COMPRESSORS)}) on debian_like")
                self.det_nydus = self.determinism_nydus(self.layers[0])
        finally:
            if self.keep_tmp:
                log(f"kept {self.tmp}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
        self.elapsed = time.monotonic() - t_measure
        self.elapsed_total = time.monotonic() - t_start
        self.load_end = loadavg()
        return self.report()

    # ------------------------------------------------------------------ report

    def med(self, layer, tool, what="walls"):
        r = self.results.get(layer, {}).get(tool)
        if not r or r["err"] or not r[what]:
            return None
        return statistics.median(r[what])

    def mbps(self, layer, tool):
        w = self.med(layer, tool)
        if w is None:
            return None
        return self.info[layer]["tar_bytes"] / MB / w

    def count_targets(self, fmt, targets):
        """Adds a format's target rows [(target, layer, value, ok)] to the tallies."""
        c = self.counts.setdefault(fmt, [0, 0])
        c[0] += sum(1 for t in targets if not t[3])
        c[1] += len(targets)
        self.big_misses += sum(1 for t in targets if t[1] == "big" and not t[3])
        self.big_targets += sum(1 for t in targets if t[1] == "big")

    def report(self):
        self.counts = {}   # format -> [missed, checks]
        self.big_misses = self.big_targets = 0
        lines = []
        out = lines.append
        P = f"-p{NPROC}"
        names = [n for n, _, _ in self.layers]
        lname = {n: ("big (generated)" if n == "big" else n) for n in names}
        tools = [("accel", "accel-proxy"), ("ref", "reference (Go, level 9)"), ("gzip1", "gzip -1"),
                 ("pigz", f"pigz {P}"), ("gunzip", "gunzip -c"), ("pipe", f"gzip -dc \\| pigz {P}")]

        def f1(x, unit=""):
            return "ERR" if x is None else f"{x:.1f}{unit}"

        def cell(layer, tool):
            r = self.results[layer].get(tool)
            if r and r["err"]:
                return "ERR"
            return f1(self.mbps(layer, tool))

        def size(layer, tool):
            r = self.results[layer].get(tool)
            if not r or r["err"] or r["size"] is None:
                return None
            return r["size"]

        # inputs
        out("| layer | files | uncompressed MB | .tar.gz MB |")
        out("|---|---:|---:|---:|")
        for n in names:
            i = self.info[n]
            out(f"| {lname[n]} | {i['files']} | {i['tar_bytes'] / MB:.1f} | {i['gz_bytes'] / MB:.1f} |")
        out("")
        if self.estargz:
            out(f"**Throughput**, MB/s of uncompressed input ({self.reps_text()}):")
            out("")
            out("| layer | " + " | ".join(l for _, l in tools) + " |")
            out("|---|" + "---:|" * len(tools))
            for n in names:
                out(f"| {lname[n]} | " + " | ".join(cell(n, t) for t, _ in tools) + " |")
            out("")
            out("**Output size**, MB:")
            out("")
            sz_tools = [t for t in tools if t[0] != "gunzip"]
            out("| layer | " + " | ".join(l for _, l in sz_tools) + " |")
            out("|---|" + "---:|" * len(sz_tools))
            for n in names:
                cells = []
                for t, _ in sz_tools:
                    s = size(n, t)
                    cells.append("ERR" if s is None else f"{s / MB:.2f}")
                out(f"| {lname[n]} | " + " | ".join(cells) + " |")
            out("")

            # accel-proxy vs the references
            targets = []   # (target, layer, value text, ok)
            out("**accel-proxy against the references**:")
            out("")
            out(f"| layer | MB/s | × reference | size vs reference | × gzip -dc \\| pigz {P} | "
                "CPU s / wall s | peak RSS MB | blob |")
            out("|---|---:|---:|---:|---:|---:|---:|---|")
            for n in names:
                a, ref, pipe = self.mbps(n, "accel"), self.mbps(n, "ref"), self.mbps(n, "pipe")
                sa, sr = size(n, "accel"), size(n, "ref")
                x_ref = a / ref if a and ref else None
                x_size = sa / sr if sa and sr else None
                x_pipe = a / pipe if a and pipe else None
                cpu, wall = self.med(n, "accel", "cpus"), self.med(n, "accel")
                rss = max(self.results[n]["accel"]["rss"] or [0]) * 1024 / MB
                r = self.results[n]["accel"]
                blob = r.get("check", "") if not r["err"] else "ERR: " + r["err"][:120]
                if len(r["digests"]) > 1:
                    blob += "; DIFFERENT digests across repetitions"
                out(f"| {lname[n]} | {f1(a)} | {'ERR' if x_ref is None else f'{x_ref:.2f}×'} | "
                    f"{'ERR' if x_size is None else f'{x_size * 100:.1f}%'} | "
                    f"{'ERR' if x_pipe is None else f'{x_pipe:.2f}×'} | "
                    f"{'ERR' if cpu is None else f'{cpu:.2f} / {wall:.2f}'} | "
                    f"{f'{rss:.1f}' if rss else 'ERR'} | {blob} |")
                targets.append((f"throughput ≥ {TARGET_SPEED_VS_REF:g}× reference", n,
                                None if x_ref is None else f"{x_ref:.2f}×",
                                x_ref is not None and x_ref >= TARGET_SPEED_VS_REF))
                targets.append((f"output ≤ {TARGET_SIZE_VS_REF:g}× reference size", n,
                                None if x_size is None else f"{x_size:.3f}×",
                                x_size is not None and x_size <= TARGET_SIZE_VS_REF))
                targets.append((f"throughput ≥ {TARGET_VS_PIPE:g}× `gzip -dc \\| pigz {P}`", n,
                                None if x_pipe is None else f"{x_pipe:.2f}×",
                                x_pipe is not None and x_pipe >= TARGET_VS_PIPE))
                if n == "big":
                    targets.append((f"peak RSS < {TARGET_RSS_MB:g} MB", n,
                                    f"{rss:.1f} MB" if rss else None, bool(rss) and rss < TARGET_RSS_MB))
            out("")
            rss_how = (f"`{GNU_TIME} -f %M`" if self.has_time else "wait4() ru_maxrss") + " (KiB × 1024 / 10^6)"
            out(f"Peak RSS: largest of the repetitions, by {rss_how}. CPU s: user + system of the "
                "process, median. Blob: the first accel-proxy blob of each layer, checked against the "
                "source by `estargz-check` (untimed).")
            out("")

            # targets
            out("**Targets**:")
            out("")
            out("| target | layer | measured | result |")
            out("|---|---|---:|---|")
            order = sorted(targets, key=lambda t: (t[1] != "big",))
            for tgt, n, val, ok in order:
                out(f"| {tgt} | {lname[n]} | {val or 'ERR'} | **{'PASS' if ok else 'MISS'}** |")
            self.count_targets("eStargz", targets)
            out("")

            # determinism
            d = self.det
            def dg(k):
                return d[k][0] if d[k][0] != "ERR" else "ERR (" + d[k][1] + ")"
            same_a = d["accel1"][0] == d["accel2"][0] != "ERR"
            same_r = d["ref1"][0] == d["ref2"][0] != "ERR"
            dflt = self.results["debian_like"]["accel"]["digests"]
            out("**Determinism** (debian_like):")
            out("")
            out(f"- accel-proxy `--threads 1` vs `--threads 2`: "
                f"{'same blob' if same_a else 'DIFFERENT blobs'} ({dg('accel1')[:19]}… vs {dg('accel2')[:19]}…)"
                f"{'' if not dflt else ('; the default run gives the same' if d['accel2'][0] in dflt else '; the default run DIFFERS')}"
                f" — **{'PASS' if same_a else 'MISS'}**")
            out(f"- reference `--procs 1` vs `--procs 2` (GOMAXPROCS): "
                f"{'same blob' if same_r else 'different blobs'} ({dg('ref1')[:19]}… vs {dg('ref2')[:19]}…)"
                f"{'' if same_r else ' — expected: its TOC depends on GOMAXPROCS'}")
            self.counts["eStargz"][0] += 0 if same_a else 1
            self.counts["eStargz"][1] += 1
            out("")

            # compression levels
            ref_names = [n for n in ("big", "debian_like") if n in self.results]
            out(f"**accel-proxy `--compression-level`** (MB/s of uncompressed input, {self.reps_text()}; "
                "size vs the reference's blob):")
            out("")
            hdr = "| level |"
            for n in ref_names:
                hdr += f" {lname[n]} MB/s | × reference | size MB | vs reference |"
            out(hdr)
            out("|---|" + "---:|---:|---:|---:|" * len(ref_names))
            for lv in LEVELS:
                row = f"| {lv}{' (default)' if lv == self.default_level else ''} |"
                for n in ref_names:
                    key = f"L{lv}"
                    if key not in self.results[n] or (lv == self.default_level and n == "big"):
                        key = "accel"
                    v, rv = self.mbps(n, key), self.mbps(n, "ref")
                    s, sr = size(n, key), size(n, "ref")
                    row += (f" {f1(v)} | {'ERR' if not (v and rv) else f'{v / rv:.2f}×'} | "
                            f"{'ERR' if s is None else f'{s / MB:.2f}'} | "
                            f"{'ERR' if not (s and sr) else f'{s / sr * 100:.1f}%'} |")
                out(row)
            if self.default_level and "big" in ref_names:
                out("")
                out(f"Level {self.default_level} on the big layer is the default run above (the same blob "
                    "on debian_like, so not measured twice).")
            out("")
        if self.nydus:
            self.report_nydus(out, lname, f1, size)
        self.misses = sum(self.counts[k][0] for k in self.counts)
        self.ntargets = sum(self.counts[k][1] for k in self.counts)
        self.body = "\n".join(lines)
        return self.compose()

    def report_nydus(self, out, lname, f1, size):
        """The Nydus part of the block: throughput and sizes against `gzip -dc | zstd -3 -TN`,
        targets, determinism."""
        names = [n for n, _, _ in self.layers]
        T = f"-T{NPROC}"
        pipe_l = f"gzip -dc \\| zstd -3 {T}"    # in a table cell
        pipe_t = f"gzip -dc | zstd -3 {T}"       # in text

        def ratio(a, b, fmt):
            return None if not (a and b) else fmt.format(a / b)

        out(f"**Nydus**: `accel-proxy convert-layer --format nydus IN.tar.gz OUT` (default options: "
            f"zstd level 3, 1 MiB chunks, {NPROC} threads) against `{pipe_t}` over the same .tar.gz "
            f"(the physical-limit reference); MB/s of uncompressed input ({self.reps_text()}) and "
            "output size in MB. For scale: `zstd -3` alone from the .tar, and `gunzip -c` (the "
            "single-threaded inflate that bounds the pipeline).")
        out("")
        out(f"| layer | accel-proxy nydus MB/s | {pipe_l} MB/s | zstd -3 {T} (.tar) MB/s | gunzip -c MB/s | "
            f"nydus MB | {pipe_l} MB | zstd -3 {T} (.tar) MB |")
        out("|---|" + "---:|" * 7)

        def mb(n, t):
            s_ = size(n, t)
            return "ERR" if s_ is None else f"{s_ / MB:.2f}"

        def speed(n, t):
            r = self.results[n].get(t)
            return "ERR" if (r is None or r["err"]) else f1(self.mbps(n, t))
        for n in names:
            out(f"| {lname[n]} | {speed(n, 'nydus')} | {speed(n, 'zpipe')} | {speed(n, 'zstd')} | "
                f"{speed(n, 'gunzip')} | {mb(n, 'nydus')} | {mb(n, 'zpipe')} | {mb(n, 'zstd')} |")
        out("")
        out(f"**accel-proxy nydus against `{pipe_t}`**:")
        out("")
        out("| layer | × pipeline throughput | size vs pipeline | nydus CPU s / wall s | "
            "pipeline CPU s / wall s | nydus peak RSS MB | blob |")
        out("|---|---:|---:|---:|---:|---:|---|")
        targets = []
        big_note = ""
        if self.big_total != GiB:
            big_note = (f" (the target is for a 1 GiB layer; this run's big layer is "
                        f"{self.big_total // MiB} MiB{', --quick' if self.quick else ''})")
        for n in names:
            a, pipe = self.mbps(n, "nydus"), self.mbps(n, "zpipe")
            sa, sp = size(n, "nydus"), size(n, "zpipe")
            x_pipe = a / pipe if a and pipe else None
            x_size = sa / sp if sa and sp else None
            r = self.results[n]["nydus"]
            rss = max(r["rss"] or [0]) * 1024 / MB
            cpu = ("ERR" if self.med(n, "nydus") is None
                   else f"{self.med(n, 'nydus', 'cpus'):.2f} / {self.med(n, 'nydus'):.2f}")
            pcpu = ("ERR" if self.med(n, "zpipe") is None
                    else f"{self.med(n, 'zpipe', 'cpus'):.2f} / {self.med(n, 'zpipe'):.2f}")
            blob = r.get("check", "") if not r["err"] else "ERR: " + r["err"][:120]
            if len(r["digests"]) > 1:
                blob += "; DIFFERENT digests across repetitions"
            out(f"| {lname[n]} | {ratio(a, pipe, '{:.2f}×') or 'ERR'} | "
                f"{ratio(sa, sp, '{:.1%}') or 'ERR'} | {cpu} | {pcpu} | "
                f"{f'{rss:.1f}' if rss else 'ERR'} | {blob} |")
            targets.append((f"throughput ≥ {TARGET_NYDUS_VS_PIPE:g}× `{pipe_l}`", n,
                            None if x_pipe is None else f"{x_pipe:.2f}×",
                            x_pipe is not None and x_pipe >= TARGET_NYDUS_VS_PIPE))
            targets.append((f"output ≤ {TARGET_NYDUS_SIZE_VS_PIPE:g}× `{pipe_l}` size", n,
                            None if x_size is None else f"{x_size:.3f}×",
                            x_size is not None and x_size <= TARGET_NYDUS_SIZE_VS_PIPE))
            if n == "big":
                targets.append((f"peak RSS < {TARGET_RSS_MB:g} MB{big_note}", n,
                                f"{rss:.1f} MB" if rss else None, bool(rss) and rss < TARGET_RSS_MB))
        out("")
        rss_how = (f"`{GNU_TIME} -f %M`" if self.has_time else "wait4() ru_maxrss") + " (KiB × 1024 / 10^6)"
        out(f"Peak RSS: largest of the repetitions, by {rss_how}. CPU s: user + system of all the "
            "command's processes, median. Blob: the first nydus blob of each layer (untimed): the "
            "reported digest and size against the file, `source_diff_id` / `source_digest` / "
            "`source_uncompressed_size` against the .tar and .tar.gz.")
        out("")
        out("**Nydus targets**:")
        out("")
        out("| target | layer | measured | result |")
        out("|---|---|---:|---|")
        for tgt, n, val, ok in sorted(targets, key=lambda t: (t[1] != "big",)):
            out(f"| {tgt} | {lname[n]} | {val or 'ERR'} | **{'PASS' if ok else 'MISS'}** |")
        self.count_targets("Nydus", targets)
        out("")

        # determinism
        d = self.det_nydus
        dflt = self.results["debian_like"]["nydus"]["digests"]
        out("**Nydus determinism** (debian_like; `--threads 1` vs `--threads 2` per `--compressor`):")
        out("")
        for comp in NYDUS_COMPRESSORS:
            r1, r2 = d[comp][1], d[comp][2]
            if r1[0] == "ERR" or r2[0] == "ERR":
                err = r1[1] if r1[0] == "ERR" else r2[1]
                text, ok = f"ERR ({err})", False
            else:
                same = r1[0] == r2[0]
                reported = r1[1] == r1[0] and r2[1] == r2[0]
                ok = same and reported
                text = (f"{'same blob' if same else 'DIFFERENT blobs'} ({r1[0][:19]}… vs {r2[0][:19]}…), "
                        f"{r1[2] / MB:.2f} MB; reported digest "
                        f"{'= the file sha256' if reported else 'DIFFERS from the file sha256'}")
                if comp == "zstd" and dflt:
                    dsame = r2[0] in dflt
                    ok = ok and dsame
                    text += "; the default run gives the same" if dsame else "; the default run DIFFERS"
            out(f"- `--compressor {comp}`: {text} — **{'PASS' if ok else 'MISS'}**")
            c = self.counts.setdefault("Nydus", [0, 0])
            c[0] += 0 if ok else 1
            c[1] += 1
        out("")

    def inputs_text(self):
        gz = ["accel-proxy"] + (["the reference"] if self.estargz else []) + ["`gunzip`"]
        gz.append("the pipelines" if self.estargz and self.nydus else "the pipeline")
        tar = (["`gzip -1`", "`pigz`"] if self.estargz else []) + (["`zstd`"] if self.nydus else [])
        join = lambda xs: ", ".join(xs[:-1]) + " and " + xs[-1] if len(xs) > 1 else xs[0]
        return f".tar.gz to {join(gz)}, the .tar to {join(tar)}"

    def compose(self):
        now, host, binary, notes = block_facts(self.root, self.accel, self.notes)
        mode = (f"quick (smoke run: {self.big_total // MiB} MiB big layer, {self.reps} repetition; "
                "not comparable with full runs)") if self.quick else f"full ({self.reps_text()})"
        paused = f", of which {STATS['paused_s']:.0f} s paused for other load" if STATS["paused_s"] >= 1 else ""
        big = self.info.get("big", {})
        md = [f"### convert, {now}", "",
              f"- command: `{self.cmd}` (mode: {mode}; {self.elapsed:.0f} s measuring{paused}, "
              f"{self.elapsed_total:.0f} s in all)",
              f"- host: {host}; load average at start {' '.join(f'{x:.2f}' for x in self.load_start)}, "
              f"at end {' '.join(f'{x:.2f}' for x in self.load_end)}",
              f"- accel-proxy: {binary}; `convert-layer --format {'|'.join(self.formats)} IN.tar.gz OUT`, "
              "default options",
              ]
        if self.estargz:
            md.append(f"- reference: `estargz-ref-build IN.tar.gz OUT` (Debian stargz-snapshotter 0.12 "
                      f"`estargz.Build`, gzip level 9, 4 MiB chunks, GOMAXPROCS {NPROC})")
        if self.nydus:
            md.append(f"- Nydus reference: `gzip -dc IN.tar.gz | zstd -q -3 -T{NPROC} -c > OUT` "
                      f"({tool_version(['zstd', '--version'])}, {tool_version(['gzip', '--version'])})")
        md += [
              f"- inputs: `tests/integration/layers.py --gzip` (debian_like, many_small, few_large) and a "
              f"generated layer of {self.big_total // MiB} MiB of file content ({big.get('files', '?')} files, "
              f"{big.get('text_share', 0) * 100:.0f}% text-like / {100 - big.get('text_share', 0) * 100:.0f}% "
              "random by bytes, PAX tar, `gzip -n -6`); " + self.inputs_text(),
              "- MB = 10^6 bytes; MB/s = uncompressed tar bytes / wall seconds of the whole subprocess "
              "(measured by the script); outputs to files in `$TMPDIR` (page cache), `gunzip -c` to /dev/null",
              ]
        if notes:
            md.append("- notes: " + "; ".join(notes))
        md += ["", self.body.rstrip(), "",
               f"{self.misses} of {self.ntargets} checks missed "
               f"({self.big_misses} of {self.big_targets} on the big layer)"
               + (": " + ", ".join(f"{k} {m} of {t}" for k, (m, t) in self.counts.items())
                  if len(self.counts) > 1 else "") + "."]
        return "\n".join(md)


def tool_version(argv):
    """The first line of a tool's --version, shortened (e.g. `zstd v1.5.4`, `gzip 1.12`)."""
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return f"{argv[0]} ?"
    line = (p.stdout.strip().splitlines() or ["?"])[0]
    for w in line.replace(",", " ").split():
        if w[:1].isdigit() or (w[:1] == "v" and w[1:2].isdigit()):
            return f"{argv[0]} {w}"
    return line


def block_facts(root, accel, notes):
    """For a results block's header: the time, the host, the binary under test (build time,
    commit), and the run's notes with the load guard's retaken and disturbed samples."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) / (1 << 20)
    host = f"kernel `{os.uname().release}`, `nproc` {NPROC}, CPU `{cpu}`, {mem:.0f} GiB RAM"
    rev = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout.strip()
    built = datetime.datetime.fromtimestamp(os.path.getmtime(accel), datetime.timezone.utc)
    binary = (f"`{accel}` built {built:%Y-%m-%d %H:%M} UTC, repo at {rev}"
              f"{' (with uncommitted changes)' if dirty else ''}")
    notes = list(notes)
    if STATS["retaken"]:
        notes.append(f"{STATS['retaken']} sample(s) taken again because other processes used CPU")
    if STATS["disturbed"]:
        d = STATS["disturbed"]
        notes.append(f"**{len(d)} sample(s) disturbed by other load (treat those numbers as void): "
                     + "; ".join(d[:8]) + (f"; and {len(d) - 8} more" if len(d) > 8 else "") + "**")
    return now, host, binary, notes


def kill_running():
    """Kills the sample commands still running (on an interrupt or an error)."""
    for p in list(RUNNING):
        if p.returncode is None:
            try:
                p.kill()
                p.wait()
            except OSError:
                pass


def finish(md, root, write_results, missed):
    """Prints the markdown block, appends it to bench/RESULTS.md if asked; the exit status
    (3 when `missed` is true: --strict and a target or check was missed)."""
    print(md)
    print()
    if write_results:
        res = os.path.join(root, "bench", "RESULTS.md")
        if not os.path.exists(res) or os.path.getsize(res) == 0:
            with open(res, "w") as f:
                f.write("# Benchmark results\n\nAppended by the `bench/` scripts with "
                        "`--write-results`; see bench/README.md.\n")
        with open(res, "a") as f:
            f.write("\n" + md + "\n")
        log(f"appended to {res}")
    return 3 if missed else 0


def run_bench(b, errors=(), cleanup=None):
    """Runs `b.run()` (SIGTERM and SIGHUP count as Ctrl-C), cleans up whatever happens (sample
    commands, `cleanup()`, the temp dir unless kept) and prints the block: the exit status
    (130 interrupted, 2 on a SetupError or one of `errors`, else as finish() says)."""
    def on_signal(signum, frame):
        raise KeyboardInterrupt
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        md = b.run()
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except (SetupError, *errors) as e:
        log(f"error: {e}")
        return 2
    finally:
        kill_running()
        if cleanup:
            cleanup()
        if b.tmp and os.path.isdir(b.tmp) and not b.keep_tmp:
            shutil.rmtree(b.tmp, ignore_errors=True)
    return finish(md, b.root, b.write_results, b.strict and b.misses)


def main(argv):
    if len(argv) >= 1 and argv[0] == "make-big-layer":
        facts = make_big_layer(argv[1], int(argv[2]))
        print(json.dumps(facts))
        return 0
    if not argv or argv[0] != "run":
        print(__doc__, file=sys.stderr)
        return 2

    try:
        b = Bench(argv[1:])
    except SetupError as e:
        log(f"error: {e}")
        return 2
    return run_bench(b)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
