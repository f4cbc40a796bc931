"""Simulated lazy pullers, for the learned-prefetch test and bench/lazy_start (standard library
only; the formats are read here, not by the proxy's code).

- `EstargzLayer`: what stargz-snapshotter does with an eStargz layer (research/formats.md 1.4):
  `bytes=0-1` (redirect and size check), the 51-byte footer, the TOC; with a
  `.prefetch.landmark` the whole prefetch region [0, landmark) in one request; then each file
  read fetches its chunks, every range widened to 50,000-byte windows (fs/remote/blob.go) and
  cached, so a window fetched once is never fetched again.
- `NydusImage`: what nydusd does (research/nydus.md 1.1, 2.x): the bootstrap layer whole (its
  blob meta files spare the blob-meta reads), then, with a prefetch table, the chunks of the
  listed files, adjacent chunks merged into one request per contiguous run; then each file
  read fetches its chunks not yet fetched (a file's adjacent chunks in one request).
- `background_scan`: stargz-snapshotter's background fetcher: the layer from its first byte on,
  window by window, skipping what is cached.
- `Client`: one keep-alive HTTP connection with its own Authorization; counts requests, and
  waits `rtt` seconds before each (the round trip a delaying relay would add).
"""
import gzip
import http.client
import io
import json
import struct
import tarfile
import threading
import time
import urllib.parse

WINDOW = 50_000  # stargz-snapshotter's fetch granularity
FOOTER = 51
MANIFEST_ACCEPT = ", ".join(["application/vnd.oci.image.manifest.v1+json",
                             "application/vnd.oci.image.index.v1+json",
                             "application/vnd.docker.distribution.manifest.v2+json",
                             "application/vnd.docker.distribution.manifest.list.v2+json"])


class Client:
    """One keep-alive connection to the proxy (or a relay before it) as one client."""

    def __init__(self, base_url, authorization=None, rtt=0.0):
        u = urllib.parse.urlsplit(base_url)
        self.host, self.port = u.hostname, u.port
        self.authorization = authorization
        self.rtt = rtt
        self.conn = None
        self.lock = threading.Lock()  # one request at a time on the connection
        self.log = []  # (repo path kind, digest or ref, Range header or None)
        self.received = 0  # body bytes

    def _connect(self):
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)

    def request(self, method, path, headers=None, record=None):
        headers = dict(headers or {})
        if self.authorization:
            headers["Authorization"] = self.authorization
        with self.lock:
            if self.rtt:
                time.sleep(self.rtt)
            for attempt in (0, 1):
                if self.conn is None:
                    self._connect()
                try:
                    self.conn.request(method, path, headers=headers)
                    resp = self.conn.getresponse()
                    body = resp.read()
                    break
                except (http.client.HTTPException, ConnectionError):
                    self.conn.close()
                    self.conn = None
                    if attempt:
                        raise
            if record is not None:
                self.log.append(record)
            self.received += len(body)
            return resp.status, dict((k.lower(), v) for k, v in resp.getheaders()), body

    def manifest(self, repo, reference, headers=None):
        h = {"Accept": MANIFEST_ACCEPT}
        h.update(headers or {})
        status, head, body = self.request("GET", f"/v2/{repo}/manifests/{reference}", h,
                                          ("manifest", reference, None))
        assert status == 200, f"GET manifest {repo}:{reference}: {status} {body[:200]!r}"
        return head.get("docker-content-digest"), body

    def blob(self, repo, digest, first=None, last=None, expect=None):
        """GET a blob, or bytes first..last (inclusive); returns the bytes."""
        headers, rng = {}, None
        if first is not None:
            rng = f"bytes={first}-{last}"
            headers["Range"] = rng
        status, head, body = self.request("GET", f"/v2/{repo}/blobs/{digest}", headers,
                                          ("blob", digest, rng))
        assert status in ((206,) if rng else (200,)), f"GET blob {digest} {rng}: {status} {body[:200]!r}"
        if rng:
            assert len(body) == last - first + 1, (rng, len(body))
        return body

    def close(self):
        if self.conn:
            self.conn.close()

    def ranged_requests(self, digest):
        return [r for kind, d, r in self.log if kind == "blob" and d == digest and r]


def image_manifest(client, repo, reference, headers=None):
    """(digest, manifest JSON) of the image manifest (the first platform of an index)."""
    digest, body = client.manifest(repo, reference, headers)
    manifest = json.loads(body)
    if "manifests" in manifest:
        digest, body = client.manifest(repo, manifest["manifests"][0]["digest"])
        manifest = json.loads(body)
    return digest, manifest


# ---- eStargz ------------------------------------------------------------------------------

def parse_footer(footer: bytes) -> int:
    assert len(footer) == FOOTER and footer[32:38] == b"STARGZ", footer
    return int(footer[16:32], 16)


def parse_toc(member: bytes):
    tar = gzip.decompress(member)
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        info = tf.next()
        assert info.name == "stargz.index.json", info.name
        return json.loads(tf.extractfile(info).read())


def clean(name):
    return "/" + "/".join(p for p in name.split("/") if p and p != ".")


class EstargzLayer:
    """One eStargz layer as stargz-snapshotter reads it."""

    def __init__(self, client, repo, descriptor):
        self.client, self.repo = client, repo
        self.digest, self.size = descriptor["digest"], descriptor["size"]
        self.fetched = []  # (begin, end) ranges fetched
        self.toc = None

    def _covered(self, begin, end):
        for b, e in self.fetched:
            if b <= begin and end <= e:
                return True
        return False

    def fetch(self, begin, end, widen=True):
        """Fetch [begin, end), widened to windows and clamped; returns True if a request was made."""
        if widen:
            begin, end = begin // WINDOW * WINDOW, min(-(-end // WINDOW) * WINDOW, self.size)
        if self._covered(begin, end):
            return False
        self.client.blob(self.repo, self.digest, begin, end - 1)
        self.fetched.append((begin, end))
        return True

    def open(self, probe=True):
        """The mount: probe, footer, TOC; parses the chunk extents of every file."""
        if probe:
            self.client.blob(self.repo, self.digest, 0, 1)
        footer = self.client.blob(self.repo, self.digest, self.size - FOOTER, self.size - 1)
        self.toc_offset = parse_footer(footer)
        member = self.client.blob(self.repo, self.digest, self.toc_offset, self.size - FOOTER - 1)
        self.toc = parse_toc(member)
        starts, owner, current = [], {}, None
        self.order = []  # TOC order of regular entries (landmarks included)
        for e in self.toc["entries"]:
            if e["type"] == "reg":
                current = clean(e["name"])
                self.order.append(current)
            elif e["type"] != "chunk":
                continue
            if "offset" in e and (e["type"] == "chunk" or e.get("size", 0) > 0):
                starts.append(e["offset"])
                owner[e["offset"]] = current
        starts.sort()
        self.chunks = {}  # path -> [(begin, end)]
        for i, off in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else self.toc_offset
            self.chunks.setdefault(owner[off], []).append((off, end))
        landmark = self.chunks.get("/.prefetch.landmark")
        self.landmark = landmark[0][0] if landmark else None
        return self

    def prefetched_files(self):
        """Regular files before `.prefetch.landmark` in TOC order (none without it)."""
        if "/.prefetch.landmark" not in self.order:
            return []
        head = self.order[:self.order.index("/.prefetch.landmark")]
        return [p for p in head if p in self.chunks]

    def prefetch(self):
        """stargz-snapshotter's prefetch: [0, landmark) in one request."""
        if self.landmark:
            self.fetch(0, self.landmark)

    def read_file(self, path):
        """Reads a file whole: each chunk fetched unless cached. Returns the requests made."""
        made = 0
        for begin, end in self.chunks.get(path, []):
            made += self.fetch(begin, end)
        return made

    def has(self, path):
        return path in self.chunks


def background_scan(layer, stop, pace=0.02, steps=None):
    """The background fetcher: window after window from the first byte, skipping cached ones."""
    at, done = 0, 0
    data_end = layer.toc_offset
    while at < data_end and not stop.is_set() and (steps is None or done < steps):
        end = min(at + WINDOW, layer.size)
        if layer.fetch(at, end, widen=False):
            done += 1
            time.sleep(pace)
        at = end
    return done


# ---- Nydus --------------------------------------------------------------------------------

class Bootstrap:
    """A RAFS v6 bootstrap read for what a lazy reader needs (research/nydus.md 2.x): every
    regular file's chunks (blob, compressed offset and size) and the prefetch table's paths."""

    def __init__(self, data: bytes):
        self.data = data
        sb = 1024
        root_nid, = struct.unpack_from("<H", data, sb + 14)
        self.meta, = struct.unpack_from("<I", data, sb + 40)
        self.chunk_size, = struct.unpack_from("<I", data, 1172)
        blob_off, blob_size = struct.unpack_from("<QI", data, 1160)
        self.blobs = [data[blob_off + 256 * i:blob_off + 256 * i + 64].decode()
                      for i in range(blob_size // 256)]
        ct_off, ct_size = struct.unpack_from("<QQ", data, 1176)
        self.chunk_table = {}
        for i in range(ct_size // 80):
            at = ct_off + 80 * i
            blob_index, _flags, csize, _usize, coff = struct.unpack_from("<IIIIQ", data, at + 32)
            ci_index, = struct.unpack_from("<I", data, at + 72)
            self.chunk_table[(blob_index, ci_index)] = (coff, csize)
        pf_off, pf_size = struct.unpack_from("<QI", data, 1192)
        pf_nids = [struct.unpack_from("<I", data, pf_off + 4 * i)[0] for i in range(pf_size // 4)] \
            if pf_off else []
        self.files = {}  # path -> [(blob id, coff, csize)]
        self.path_of = {}
        self._walk(root_nid, "")
        self.prefetch = [self.path_of[n] for n in pf_nids]

    def _inode(self, nid):
        at = self.meta * 4096 + nid * 32
        fmt, xcount, mode = struct.unpack_from("<HHH", self.data, at)
        extended = fmt & 1
        layout = (fmt >> 1) & 7
        if extended:
            size, = struct.unpack_from("<Q", self.data, at + 8)
            ibody = 64
        else:
            size, = struct.unpack_from("<I", self.data, at + 8)
            ibody = 32
        i_u, = struct.unpack_from("<I", self.data, at + 16)
        xsize = 0 if xcount == 0 else 12 + (xcount - 1) * 4
        return at, mode, size, layout, i_u, ibody + xsize

    def _dir_entries(self, nid):
        at, mode, size, layout, i_u, head = self._inode(nid)
        blocks = []
        full = size // 4096 if layout == 2 else -(-size // 4096)
        for b in range(full):
            blocks.append(self.data[(i_u + b) * 4096:(i_u + b + 1) * 4096][:min(4096, size - b * 4096)])
        if layout == 2 and size % 4096:
            tail = at + head
            blocks.append(self.data[tail:tail + size % 4096])
        out = []
        for blk in blocks:
            if len(blk) < 12:
                continue
            first_nameoff, = struct.unpack_from("<H", blk, 8)
            count = first_nameoff // 12
            for i in range(count):
                nid_i, nameoff, _t = struct.unpack_from("<QHB", blk, 12 * i)
                end = struct.unpack_from("<H", blk, 12 * (i + 1) + 8)[0] if i + 1 < count else len(blk)
                name = blk[nameoff:end].split(b"\0")[0].decode()
                out.append((name, nid_i))
        return out

    def _walk(self, nid, path):
        at, mode, size, layout, i_u, head = self._inode(nid)
        kind = mode & 0o170000
        if nid not in self.path_of:
            self.path_of[nid] = path or "/"
        if kind == 0o040000:
            for name, child in self._dir_entries(nid):
                if name in (".", ".."):
                    continue
                self._walk(child, f"{path}/{name}")
        elif kind == 0o100000 and layout == 4 and size > 0:
            if self.path_of[nid] != (path or "/"):
                self.files[path] = self.files[self.path_of[nid]]  # a hardlink
                return
            start = at + ((head + 7) // 8) * 8
            chunks = []
            for i in range(-(-size // self.chunk_size)):
                lo, hi, _blk = struct.unpack_from("<HHI", self.data, start + 8 * i)
                blob_index = (hi & 0xff) - 1
                ci_index = lo | ((hi >> 8) << 16)
                coff, csize = self.chunk_table[(blob_index, ci_index)]
                chunks.append(("sha256:" + self.blobs[blob_index], coff, csize))
            self.files[path] = chunks


def merged_runs(chunks):
    """Chunks (blob, offset, size) -> per blob, contiguous runs [(blob, begin, end)]."""
    runs = []
    for blob, off, size in sorted(set(chunks)):
        if runs and runs[-1][0] == blob and runs[-1][2] == off:
            runs[-1] = (blob, runs[-1][1], off + size)
        else:
            runs.append((blob, off, off + size))
    return runs


class NydusImage:
    """A Nydus image as nydusd reads it."""

    def __init__(self, client, repo, manifest):
        self.client, self.repo = client, repo
        self.manifest = manifest
        self.fetched = set()  # (blob, offset) of chunks fetched

    def open(self):
        layers = self.manifest["layers"]
        boot_layer = layers[-1]
        assert boot_layer["annotations"]["containerd.io/snapshot/nydus-bootstrap"] == "true"
        gz = self.client.blob(self.repo, boot_layer["digest"])
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(gz)), mode="r:") as tf:
            self.bootstrap = Bootstrap(tf.extractfile("image/image.boot").read())
        return self

    def _fetch(self, chunks):
        made = 0
        todo = [c for c in chunks if (c[0], c[1]) not in self.fetched]
        for blob, begin, end in merged_runs(todo):
            self.client.blob(self.repo, blob, begin, end - 1)
            made += 1
        for c in todo:
            self.fetched.add((c[0], c[1]))
        return made

    def prefetch(self):
        chunks = [c for p in self.bootstrap.prefetch for c in self.bootstrap.files.get(p, [])]
        return self._fetch(chunks)

    def read_file(self, path):
        return self._fetch(self.bootstrap.files.get(path, []))

    def has(self, path):
        return path in self.bootstrap.files


def background_prefetch_all(image, stop, run=256 * 1024, pace=0.02, steps=None):
    """nydusd's prefetch_all: every data blob from its first byte, `run` bytes per request."""
    done = 0
    for layer in image.manifest["layers"][:-1]:
        chunks = sorted((c for cs in image.bootstrap.files.values() for c in cs if c[0] == layer["digest"]),
                        key=lambda c: c[1])
        batch = []
        for c in chunks:
            if stop.is_set() or (steps is not None and done >= steps):
                return done
            if (c[0], c[1]) in image.fetched:
                continue
            batch.append(c)
            if c[1] + c[2] - batch[0][1] >= run:
                done += image._fetch(batch)
                batch = []
                time.sleep(pace)
        if batch and not stop.is_set():
            done += image._fetch(batch)
    return done
