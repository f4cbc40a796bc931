#!/usr/bin/python3
"""Load watcher for bench/passthrough (standard library only; not meant to be run by hand).

usage: passthrough.py watch PGID STATE_DIR CPU_PERCENT
       passthrough.py wait-idle MAX_SECONDS QUIET_SECONDS CPU_PERCENT

watch: every half second, looks at every process outside process group PGID (the benchmark)
and counts the interval as busy if those processes used CPU_PERCENT of one core or more, or
a compiler or linker ran. It exits when its parent (the benchmark script) is gone.
  reads   STATE_DIR/phase       the benchmark's current phase (one line)
          STATE_DIR/proxy.pid   the proxy's pid
  writes  STATE_DIR/busy_ticks  number of busy intervals so far
          STATE_DIR/busy_now    exists while the last interval was busy
          STATE_DIR/load        per phase: <phase>\\t<busy seconds>\\t<max foreign CPU %>\\t
                                <seconds a compile ran>\\t<processes that used the most CPU>
          STATE_DIR/proxy.hwm   the largest VmHWM (kB) of the proxy seen, should it die

wait-idle: returns 0 once the whole machine has used less than CPU_PERCENT of one core,
with no compiler or linker running, for QUIET_SECONDS in a row; 1 if that did not happen
within MAX_SECONDS. It says on stderr what keeps the machine busy.
"""

import os
import sys
import time

COMPILERS = {"cc1plus", "cc1", "lto1", "ld", "ld.bfd", "ld.gold", "ld.lld", "lld", "collect2",
             "clang", "clang++", "as", "rustc", "compile", "link"}  # compile, link: Go's toolchain
COMPILER_PREFIXES = ("clang-", "clang++-")
TICK = os.sysconf("SC_CLK_TCK")
INTERVAL = 0.5  # seconds between samples of the watcher
COMMS = {}  # pid -> comm of the processes seen


def sample(own_pgid):
    """({pid: cpu ticks} of user processes outside own_pgid, whether a compiler runs)."""
    ticks = {}
    compiling = False
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        lp, rp = data.find("("), data.rfind(")")
        comm = data[lp + 1:rp]
        rest = data[rp + 2:].split()
        # rest[0]=state [1]=ppid [2]=pgrp ... [11]=utime [12]=stime
        ppid, pgrp = int(rest[1]), int(rest[2])
        if name == "2" or ppid == 2:  # kernel threads: softirq work the benchmark causes
            continue
        if comm in COMPILERS or comm.startswith(COMPILER_PREFIXES):
            compiling = True
        if pgrp == own_pgid:
            continue
        pid = int(name)
        ticks[pid] = int(rest[11]) + int(rest[12])
        COMMS[pid] = comm
    return ticks, compiling


def read_hwm(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def read(path, default=""):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def write(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def watch(pgid, state, limit):
    parent = os.getppid()
    phases = {}  # phase -> [busy intervals, max cpu %, compile intervals, {comm: busy ticks}]
    order = []
    busy_ticks = 0
    hwm = 0
    prev, _ = sample(pgid)
    prev_t = time.monotonic()
    while os.getppid() == parent:
        time.sleep(INTERVAL)
        cur, compiling = sample(pgid)
        now = time.monotonic()
        deltas = {p: t - prev.get(p, 0) for p, t in cur.items() if t > prev.get(p, 0)}
        cpu = 100.0 * sum(deltas.values()) / TICK / max(now - prev_t, 1e-3)
        prev, prev_t = cur, now
        busy = compiling or cpu >= limit

        phase = read(f"{state}/phase") or "?"
        if phase not in phases:
            phases[phase] = [0, 0.0, 0, {}]
            order.append(phase)
        st = phases[phase]
        st[1] = max(st[1], cpu)
        if busy:
            busy_ticks += 1
            st[0] += 1
            st[2] += 1 if compiling else 0
            for p, d in deltas.items():
                c = COMMS.get(p, "?")
                st[3][c] = st[3].get(c, 0) + d
            write(f"{state}/busy_now", "1\n")
        else:
            try:
                os.unlink(f"{state}/busy_now")
            except FileNotFoundError:
                pass
        write(f"{state}/busy_ticks", f"{busy_ticks}\n")
        lines = []
        for p in order:
            b, m, c, users = phases[p]
            top = ", ".join(n for n, _ in sorted(users.items(), key=lambda kv: -kv[1])[:3])
            lines.append(f"{p}\t{b * INTERVAL:g}\t{m:.0f}\t{c * INTERVAL:g}\t{top}\n")
        write(f"{state}/load", "".join(lines))

        pid = read(f"{state}/proxy.pid", "0")
        if pid.isdigit() and int(pid):
            h = read_hwm(int(pid))
            if h > hwm:
                hwm = h
                write(f"{state}/proxy.hwm", f"{hwm}\n")


def cpu_busy_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return sum(v) - v[3] - v[4] - (v[7] if len(v) > 7 else 0)


def busiest(before, after, n=3):
    d = sorted(((after[p] - before.get(p, 0), p) for p in after), reverse=True)[:n]
    names = [f"{COMMS.get(p, '?')}[{p}]" for ticks, p in d if ticks > 0]
    return ", ".join(names) or "short-lived processes"


def wait_idle(max_s, quiet_s, limit):
    start = time.monotonic()
    quiet_since = start
    b0, t0 = cpu_busy_ticks(), start
    p0, _ = sample(-1)
    last_report = None
    while True:
        time.sleep(1)
        b1, t1 = cpu_busy_ticks(), time.monotonic()
        p1, compiling = sample(-1)
        cpu = 100.0 * (b1 - b0) / TICK / max(t1 - t0, 1e-3)
        if cpu >= limit or compiling:
            quiet_since = t1
            if last_report is None or t1 - last_report >= 60:
                what = "a compile" if compiling else busiest(p0, p1)
                print(f"  machine busy ({cpu:.0f}% CPU; {what}); waiting", file=sys.stderr)
                last_report = t1
        elif t1 - quiet_since >= quiet_s:
            return 0
        if t1 - start >= max_s:
            print(f"  still busy after {max_s:.0f} s ({cpu:.0f}% CPU; {busiest(p0, p1)})",
                  file=sys.stderr)
            return 1
        b0, t0, p0 = b1, t1, p1


def main(argv):
    try:
        if len(argv) == 5 and argv[1] == "watch":
            watch(int(argv[2]), argv[3], float(argv[4]))
            return 0
        if len(argv) == 5 and argv[1] == "wait-idle":
            return wait_idle(float(argv[2]), float(argv[3]), float(argv[4]))
    except KeyboardInterrupt:
        return 130
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
