#!/usr/bin/python3
"""A minimal registry client for timing pulls: GET the manifest (following an index to its
first manifest), then every blob at once, one connection each, the way containerd does;
bodies are read at wire speed and dropped. Prints one JSON line: seconds from the start to the
manifest and to the last byte of the last blob, and the bytes received. Exits 1 if a blob's
length differs from its descriptor's size.

usage: pull.py http://HOST:PORT REPO REFERENCE
"""
import http.client
import json
import sys
import threading
import time
import urllib.parse

ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


def get(host, port, path, headers=None, sink=None):
    conn = http.client.HTTPConnection(host, port, timeout=600)
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError(f"GET {path}: {r.status} {r.read(300)!r}")
    if sink is None:
        body = r.read()
        conn.close()
        return body
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    total = 0
    while True:
        n = r.readinto(view)
        if not n:
            break
        total += n
    conn.close()
    return total


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    t0 = time.monotonic()
    u = urllib.parse.urlsplit(argv[0])
    host, port, repo, ref = u.hostname, u.port or 80, argv[1], argv[2]
    manifest = json.loads(get(host, port, f"/v2/{repo}/manifests/{ref}", {"Accept": ACCEPT}))
    if "manifests" in manifest:  # an index: its first image
        digest = manifest["manifests"][0]["digest"]
        manifest = json.loads(get(host, port, f"/v2/{repo}/manifests/{digest}", {"Accept": ACCEPT}))
    t_manifest = time.monotonic() - t0
    blobs = [manifest["config"]] + manifest["layers"]
    got, errors = {}, []

    def fetch(d):
        try:
            got[d["digest"]] = get(host, port, f"/v2/{repo}/blobs/{d['digest']}", sink=True)
        except Exception as e:  # reported below
            errors.append(f"{d['digest']}: {e}")

    threads = [threading.Thread(target=fetch, args=(d,)) for d in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t_last = time.monotonic() - t0
    bad = [f"{d['digest']}: {got.get(d['digest'])} of {d['size']} bytes" for d in blobs
           if got.get(d["digest"]) != d["size"]]
    print(json.dumps({"manifest_s": t_manifest, "last_byte_s": t_last,
                      "bytes": sum(v for v in got.values() if v), "errors": errors + bad}))
    return 1 if errors or bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
