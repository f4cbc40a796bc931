"""The oracle: OCI layers (uncompressed tar files) applied in order into an in-memory tree.

Rules (OCI image-spec, "Applying Changesets" and "Whiteouts"):
- `DIR/.wh.NAME` deletes DIR/NAME (recursively) from the LOWER layers; `DIR/.wh..wh..opq`
  hides every lower child of DIR. Whiteouts never hide entries of their own layer, so each
  layer's whiteouts are applied to the tree as it was before that layer, then its entries in
  tar order. Whiteout files never appear in the result, also not in the bottom layer.
- An entry replaces whatever is at its path; a directory entry over an existing directory only
  updates the directory's metadata (mode, owner, mtime, xattrs) and keeps its children; any
  other replacement of a directory removes it recursively first.
- A hardlink entry makes its path another name of the inode that its link target names in
  the tree at that point (earlier entries of the same layer, or lower layers). Its own header
  metadata is ignored. A later replacement of either name gives that name a new inode; the
  other keeps the old one (so nlink drops).
- Parent directories a layer does not list are created implicitly (metadata unknown: the
  comparison only checks their type, children and nlink).

The model, per path ('' is the root): an Inode (shared by all names of a hardlink group) with
kind, permission bits (incl. setuid/setgid/sticky), uid, gid, size, content sha256, symlink
target, device major/minor, xattrs (name -> bytes) and mtime in nanoseconds, plus whether the
tar carried a sub-second mtime (PAX `mtime` with a fraction).
"""
import base64
import hashlib
import os
import stat
import tarfile
import urllib.parse
from dataclasses import dataclass, field
from decimal import Decimal

KINDS = ("reg", "dir", "symlink", "char", "block", "fifo")

WH_PREFIX = ".wh."
WH_OPAQUE = ".wh..wh..opq"


class OracleError(Exception):
    """The layers cannot be applied (bad path, missing hardlink target, parent not a dir)."""


@dataclass(eq=False)
class Inode:
    kind: str
    mode: int = 0o755           # permission bits only (S_IMODE)
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    mtime_subsec: bool = False  # the tar gave a fractional mtime (PAX)
    size: int = 0
    sha256: str = hashlib.sha256(b"").hexdigest()
    data: bytes = None          # file content, only when the tree was built with keep_data
    target: str = None          # symlink target
    rdev: tuple = (0, 0)        # (major, minor) for char/block
    xattrs: dict = field(default_factory=dict)
    explicit: bool = True       # metadata comes from a tar entry (not an implicit parent dir)
    layer: int = -1             # index of the layer that created this inode (data owner)


def _normalize(name: str) -> str:
    """A tar member name as a path relative to the root: '' for the root itself."""
    parts = []
    for comp in name.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            raise OracleError(f"path with '..': {name!r}")
        parts.append(comp)
    return "/".join(parts)


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def _base(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _mtime_ns(ti: tarfile.TarInfo):
    """(mtime in ns, had a fraction). Uses the raw PAX string so no float rounding happens."""
    raw = ti.pax_headers.get("mtime")
    if raw is not None:
        d = Decimal(raw)
        ns = int((d * 1_000_000_000).to_integral_value(rounding="ROUND_FLOOR"))
        return ns, d != d.to_integral_value()
    return int(ti.mtime) * 1_000_000_000, False


def _xattrs(ti: tarfile.TarInfo) -> dict:
    out = {}
    for k, v in ti.pax_headers.items():
        if k.startswith("SCHILY.xattr."):
            out[k[len("SCHILY.xattr."):]] = v.encode("utf-8", "surrogateescape")
        elif k.startswith("LIBARCHIVE.xattr."):
            name = urllib.parse.unquote(k[len("LIBARCHIVE.xattr."):])
            out[name] = base64.b64decode(v + "=" * (-len(v) % 4))
    return out


class Tree:
    """path -> Inode; '' is the root directory (implicit until a './' entry names it)."""

    def __init__(self):
        self.nodes = {"": Inode("dir", explicit=False)}
        self.layers = 0

    # ---- queries -------------------------------------------------------------------------

    def paths(self):
        return sorted(self.nodes)

    def children(self, path):
        prefix = path + "/" if path else ""
        return [p for p in self.nodes if p != path and p.startswith(prefix) and "/" not in p[len(prefix):]]

    def nlinks(self) -> dict:
        """path -> expected st_nlink: 2 + subdirectories for a directory, else the number of
        names of its inode."""
        names, subdirs = {}, {}
        for p, n in self.nodes.items():
            if n.kind == "dir":
                if p:
                    subdirs[_parent(p)] = subdirs.get(_parent(p), 0) + 1
            else:
                names[id(n)] = names.get(id(n), 0) + 1
        return {p: (2 + subdirs.get(p, 0)) if n.kind == "dir" else names[id(n)]
                for p, n in self.nodes.items()}

    def hardlink_groups(self):
        """Lists of paths (sorted) that share one non-directory inode, for groups of 2+."""
        by_id = {}
        for p, n in self.nodes.items():
            if n.kind != "dir":
                by_id.setdefault(id(n), []).append(p)
        return sorted(sorted(g) for g in by_id.values() if len(g) > 1)

    def data_layers(self):
        """Indexes of the layers that own some regular-file data in the final tree."""
        return sorted({n.layer for n in self.nodes.values() if n.kind == "reg" and n.size > 0})

    # ---- edits ---------------------------------------------------------------------------

    def _remove(self, path):
        """Remove path and, for a directory, everything under it. The root is never removed."""
        if path == "" or path not in self.nodes:
            return
        node = self.nodes.pop(path)
        if node.kind == "dir":
            prefix = path + "/"
            for p in [p for p in self.nodes if p.startswith(prefix)]:
                del self.nodes[p]

    def _ensure_parents(self, path):
        parent = _parent(path)
        if parent == "" and path == "":
            return
        missing = []
        while parent not in self.nodes:
            missing.append(parent)
            parent = _parent(parent)
        if self.nodes[parent].kind != "dir":
            raise OracleError(f"parent {parent!r} of {path!r} is a {self.nodes[parent].kind}")
        for p in reversed(missing):
            self.nodes[p] = Inode("dir", explicit=False, layer=self.layers)

    def apply_layer(self, tar_path, keep_data=False):
        """Apply one uncompressed tar layer."""
        layer = self.layers
        with tarfile.open(tar_path, "r:", encoding="utf-8", errors="surrogateescape") as tf:
            members = tf.getmembers()
            # 1. whiteouts, against the lower tree only
            for ti in members:
                path = _normalize(ti.name)
                base = _base(path)
                if base == WH_OPAQUE:
                    d = _parent(path)
                    if d in self.nodes and self.nodes[d].kind == "dir":
                        prefix = d + "/" if d else ""
                        for p in [p for p in self.nodes if p != d and p.startswith(prefix)]:
                            del self.nodes[p]
                elif base.startswith(WH_PREFIX) and not base.startswith(WH_PREFIX + WH_PREFIX):
                    self._remove(_parent(path) + ("/" if _parent(path) else "") + base[len(WH_PREFIX):])
            # 2. entries, in tar order
            for ti in members:
                path = _normalize(ti.name)
                base = _base(path)
                if base.startswith(WH_PREFIX):
                    continue            # whiteouts (and reserved .wh..wh.* names) are not files
                self._apply_entry(tf, ti, path, layer, keep_data)
        self.layers += 1
        return self

    def _apply_entry(self, tf, ti, path, layer, keep_data):
        if ti.islnk():
            target = _normalize(ti.linkname)
            if target not in self.nodes:
                raise OracleError(f"hardlink {path!r} -> missing target {target!r}")
            node = self.nodes[target]
            if node.kind == "dir":
                raise OracleError(f"hardlink {path!r} -> directory {target!r}")
            if path == target:
                return
            self._ensure_parents(path)
            self._remove(path)
            self.nodes[path] = node
            return

        ns, subsec = _mtime_ns(ti)
        meta = dict(mode=stat.S_IMODE(ti.mode), uid=ti.uid, gid=ti.gid, mtime_ns=ns,
                    mtime_subsec=subsec, xattrs=_xattrs(ti))
        if ti.isdir():
            existing = self.nodes.get(path)
            if existing is not None and existing.kind == "dir":
                for k, v in meta.items():
                    setattr(existing, k, v)
                existing.explicit = True
                return
            if path == "":
                raise OracleError("root entry is not a directory")
            self._ensure_parents(path)
            self._remove(path)
            self.nodes[path] = Inode("dir", layer=layer, **meta)
            return

        if path == "":
            raise OracleError(f"non-directory entry for the root: {ti.name!r}")
        if ti.isreg():
            node = Inode("reg", layer=layer, size=ti.size, **meta)
            h = hashlib.sha256()
            buf = bytearray() if keep_data else None
            f = tf.extractfile(ti)
            total = 0
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                h.update(chunk)
                total += len(chunk)
                if keep_data:
                    buf += chunk
            if total != ti.size:
                raise OracleError(f"{path!r}: read {total} bytes, header says {ti.size}")
            node.sha256 = h.hexdigest()
            if keep_data:
                node.data = bytes(buf)
        elif ti.issym():
            node = Inode("symlink", layer=layer, target=ti.linkname,
                         size=len(ti.linkname.encode("utf-8", "surrogateescape")), **meta)
        elif ti.ischr():
            node = Inode("char", layer=layer, rdev=(ti.devmajor, ti.devminor), **meta)
        elif ti.isblk():
            node = Inode("block", layer=layer, rdev=(ti.devmajor, ti.devminor), **meta)
        elif ti.isfifo():
            node = Inode("fifo", layer=layer, **meta)
        else:
            raise OracleError(f"unsupported tar entry type {ti.type!r} for {path!r}")
        self._ensure_parents(path)
        self._remove(path)
        self.nodes[path] = node


def build(tar_paths, keep_data=False) -> Tree:
    """The merged tree of the given layers (bottom first)."""
    tree = Tree()
    for p in tar_paths:
        tree.apply_layer(p, keep_data=keep_data)
    return tree


# ---- materialize (harness self-test only) -----------------------------------------------------

def materialize(tree: Tree, root: str):
    """Write the tree into the empty directory root, as root: content, hardlinks, devices,
    owners, modes, xattrs and ns mtimes (directories last, bottom-up, so their mtimes stick).
    Needs a tree built with keep_data=True."""
    first_name = {}
    for path in tree.paths():
        node = tree.nodes[path]
        full = os.path.join(root, path) if path else root
        if path == "":
            continue
        if node.kind != "dir" and id(node) in first_name:
            os.link(os.path.join(root, first_name[id(node)]), full)
            continue
        first_name[id(node)] = path
        if node.kind == "dir":
            os.mkdir(full)
        elif node.kind == "reg":
            with open(full, "wb") as f:
                f.write(node.data)
        elif node.kind == "symlink":
            os.symlink(node.target, full)
        elif node.kind == "fifo":
            os.mkfifo(full)
        else:
            kind = stat.S_IFCHR if node.kind == "char" else stat.S_IFBLK
            os.mknod(full, kind | 0o600, os.makedev(*node.rdev))
    done = set()
    for path in sorted(tree.paths(), key=lambda p: (-p.count("/"), p), reverse=False):
        node = tree.nodes[path]
        if id(node) in done:
            continue
        done.add(id(node))
        full = os.path.join(root, path) if path else root
        os.chown(full, node.uid, node.gid, follow_symlinks=False)
        if node.kind != "symlink":
            os.chmod(full, node.mode)
        for k, v in node.xattrs.items():
            os.setxattr(full, k, v, follow_symlinks=False)
    # mtimes: deepest first, so writing a child never changes its parent's mtime afterwards
    for path in sorted(tree.paths(), key=lambda p: (-(p.count("/") + (1 if p else 0)), p)):
        node = tree.nodes[path]
        full = os.path.join(root, path) if path else root
        os.utime(full, ns=(node.mtime_ns, node.mtime_ns), follow_symlinks=False)
