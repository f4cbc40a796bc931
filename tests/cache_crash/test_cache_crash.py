"""Crash consistency of the variant cache.

`cache-crash-driver work` writes, maps, serves and evicts blobs without pause; this test kills
it with SIGKILL at random moments, and after every kill checks what it left on disk twice:
`cache-crash-driver check` (the cache's own reconciliation, then check()) and an independent
walk here (every index entry names a file whose size and SHA-256 match, every file has an
entry, every mapping names indexed blobs). Then the driver is restarted on the same directory.

Bounded: at most KILLS kills or DEADLINE seconds, and the directory stays under MAX_DISK bytes.
Run with ACCEL_CACHE_DRIVER=<path to cache-crash-driver> (ctest sets it).
"""

import hashlib
import json
import os
import random
import signal
import subprocess
import time

import pytest

# A longer soak: ACCEL_CACHE_CRASH_KILLS=500 ACCEL_CACHE_CRASH_SECONDS=600
KILLS = int(os.environ.get("ACCEL_CACHE_CRASH_KILLS", "30"))
DEADLINE = float(os.environ.get("ACCEL_CACHE_CRASH_SECONDS", "30"))  # for the kill loop
MAX_DISK = 200 * 1024 * 1024
DRIVER = os.environ.get("ACCEL_CACHE_DRIVER", "")


def run_driver(*args, timeout=60):
    return subprocess.run([DRIVER, *args], capture_output=True, text=True, timeout=timeout)


def disk_usage(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def independent_problems(cache_dir):
    """What is wrong with the store, judged from the raw index dump and the files."""
    dump = run_driver("dump", cache_dir)
    assert dump.returncode == 0, dump.stderr
    index = json.loads(dump.stdout)
    blob_dir = os.path.join(cache_dir, "blobs", "sha256")
    problems = []
    entries = index["blobs"]
    for digest, entry in entries.items():
        path = os.path.join(blob_dir, digest.removeprefix("sha256:"))
        if not os.path.isfile(path):
            problems.append(f"entry without file: {digest}")
        elif os.path.getsize(path) != entry["s"]:
            problems.append(f"size mismatch: {digest}")
        elif sha256_of(path) != digest:
            problems.append(f"content does not match its digest: {digest}")
    for name in os.listdir(blob_dir):
        if "sha256:" + name not in entries:
            problems.append(f"file without entry: {name}")
    for table in ("manifest_variants", "layer_variants"):
        for key, record in index[table].items():
            problems += [f"{table} {key} needs missing {d}" for d in record["b"] if d not in entries]
    expected_refs = {(d, kind + key) for table, kind in (("manifest_variants", "m"), ("layer_variants", "l"))
                     for key, record in index[table].items() for d in record["b"]}
    if expected_refs != {tuple(ref) for ref in index["blob_refs"]}:
        problems.append("blob_refs does not match the mappings")
    leftovers = os.listdir(os.path.join(cache_dir, "blobs", "tmp"))
    if leftovers:
        problems.append(f"temporary files left after open: {leftovers}")
    return problems, index


@pytest.mark.skipif(not os.access(DRIVER, os.X_OK), reason="set ACCEL_CACHE_DRIVER to cache-crash-driver")
def test_kill_at_random_moments_leaves_a_consistent_cache(tmp_path):
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    print(f"seed {seed}")
    cache_dir = str(tmp_path / "cache")
    logs = []
    started = time.monotonic()
    kills = 0
    while kills < KILLS and time.monotonic() - started < DEADLINE:
        log_path = tmp_path / f"run-{kills}.log"
        with open(log_path, "wb") as log:
            driver = subprocess.Popen([DRIVER, "work", cache_dir, str(rng.randrange(1 << 32))],
                                      stdout=log, stderr=subprocess.STDOUT)
            time.sleep(rng.uniform(0.05, 0.4))
            exited_early = driver.poll()
            driver.send_signal(signal.SIGKILL)
            driver.wait(timeout=10)
        kills += 1
        output = log_path.read_text(errors="replace")
        logs.append(output)
        assert exited_early is None, f"the driver stopped by itself ({exited_early}) (seed {seed}):\n{output[-2000:]}"

        check = run_driver("check", cache_dir)
        assert check.returncode == 0, f"after kill {kills} (seed {seed}):\n{check.stdout}{check.stderr}"
        problems, _index = independent_problems(cache_dir)
        assert problems == [], f"after kill {kills} (seed {seed})"
        usage = disk_usage(cache_dir)
        assert usage < MAX_DISK, f"the cache directory holds {usage} bytes"

    everything = "".join(logs)
    assert kills >= 10, "too few kills in the time allowed"
    # The runs did what they are for: blobs were committed, mapped and evicted.
    assert everything.count("commit sha256:") > 10
    assert "map manifest" in everything
    assert "evict " in everything
