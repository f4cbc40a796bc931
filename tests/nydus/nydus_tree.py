"""Walk a mounted (or extracted) tree and compare it with the oracle (nydus_oracle.Tree).

walk(root) reads every path with lstat/readlink/listxattr/getxattr (never following
symlinks) and hashes regular files. compare(tree, walked) returns a list of readable
differences, one per (path, field): "path: field: expected X, got Y".
"""
import hashlib
import os
import stat
from dataclasses import dataclass, field

from nydus_oracle import Tree

_KIND = {stat.S_IFREG: "reg", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFCHR: "char",
         stat.S_IFBLK: "block", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}


@dataclass
class Rec:
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    nlink: int
    ino: int
    dev: int
    sha256: str = None
    target: str = None
    rdev: tuple = (0, 0)
    xattrs: dict = field(default_factory=dict)
    error: str = None


def _hash_file(path):
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def read_rec(full, xattrs=True) -> Rec:
    st = os.lstat(full)
    kind = _KIND.get(stat.S_IFMT(st.st_mode), f"unknown-{stat.S_IFMT(st.st_mode):o}")
    rec = Rec(kind=kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
              size=st.st_size, mtime_ns=st.st_mtime_ns, nlink=st.st_nlink, ino=st.st_ino,
              dev=st.st_dev)
    try:
        if kind == "reg":
            rec.sha256 = _hash_file(full)
        elif kind == "symlink":
            rec.target = os.readlink(full)
        elif kind in ("char", "block"):
            rec.rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
        if xattrs:
            rec.xattrs = {k: os.getxattr(full, k, follow_symlinks=False)
                          for k in os.listxattr(full, follow_symlinks=False)}
    except OSError as e:
        rec.error = f"{type(e).__name__}: {e}"
    return rec


def walk(root, xattrs=True) -> dict:
    """Relative path ('' = root) -> Rec for everything under root (root's own mount included)."""
    out = {"": read_rec(root, xattrs)}
    stack = [""]
    while stack:
        rel = stack.pop()
        full = os.path.join(root, rel) if rel else root
        with os.scandir(full) as it:
            names = sorted(e.name for e in it)
        for name in names:
            crel = f"{rel}/{name}" if rel else name
            rec = read_rec(os.path.join(root, crel), xattrs)
            out[crel] = rec
            if rec.kind == "dir":
                stack.append(crel)
    return out


def _fmt(v):
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return repr(v)


def _fmt_mode(m):
    return f"0o{m:04o}"


def _fmt_mtime(ns):
    s, n = divmod(ns, 1_000_000_000)
    return f"{s}.{n:09d}"


def compare(tree: Tree, walked: dict, fields=None, limit=200) -> list:
    """Differences between the oracle tree and a walked tree.

    fields: which fields to compare (default all): kind, mode, uid, gid, size, content,
    target, rdev, xattrs, mtime, nlink, hardlinks. The root directory and implicit parent
    directories are compared only in kind, nlink and children."""
    all_fields = {"kind", "mode", "uid", "gid", "size", "content", "target", "rdev", "xattrs",
                  "mtime", "nlink", "hardlinks"}
    fields = all_fields if fields is None else set(fields)
    diffs = []
    exp_paths, got_paths = set(tree.nodes), set(walked)
    for p in sorted(exp_paths - got_paths):
        diffs.append(f"/{p}: missing (expected a {tree.nodes[p].kind})")
    for p in sorted(got_paths - exp_paths):
        diffs.append(f"/{p}: unexpected {walked[p].kind} in the mounted tree")
    nlinks = tree.nlinks()
    for p in sorted(exp_paths & got_paths):
        e, g = tree.nodes[p], walked[p]
        name = "/" + p
        if g.error:
            diffs.append(f"{name}: read error: {g.error}")
        if e.kind != g.kind:
            diffs.append(f"{name}: kind: expected {e.kind}, got {g.kind}")
            continue

        def cmp(fld, ev, gv, fmt=_fmt):
            if fld in fields and ev != gv:
                diffs.append(f"{name}: {fld}: expected {fmt(ev)}, got {fmt(gv)}")

        if e.explicit:
            cmp("mode", e.mode, g.mode, _fmt_mode)
            cmp("uid", e.uid, g.uid)
            cmp("gid", e.gid, g.gid)
            cmp("xattrs", dict(sorted(e.xattrs.items())), dict(sorted(g.xattrs.items())))
            if "mtime" in fields and e.mtime_ns != g.mtime_ns:
                what = "mtime" if e.mtime_ns // 10**9 != g.mtime_ns // 10**9 else (
                    "mtime (nanoseconds)" if e.mtime_subsec else "mtime (nanoseconds, tar had whole seconds)")
                diffs.append(f"{name}: {what}: expected {_fmt_mtime(e.mtime_ns)}, got {_fmt_mtime(g.mtime_ns)}")
        cmp("nlink", nlinks[p], g.nlink)
        if e.kind == "reg":
            cmp("size", e.size, g.size)
            if g.sha256 is not None:
                cmp("content", e.sha256, g.sha256)
        elif e.kind == "symlink":
            cmp("target", e.target, g.target)
            cmp("size", e.size, g.size)
        elif e.kind in ("char", "block"):
            cmp("rdev", e.rdev, g.rdev)
        elif e.kind == "fifo":
            cmp("size", 0, g.size)
    if "hardlinks" in fields:
        diffs += compare_hardlinks(tree, walked)
    if len(diffs) > limit:
        diffs = diffs[:limit] + [f"... and {len(diffs) - limit} more differences"]
    return diffs


def compare_hardlinks(tree: Tree, walked: dict) -> list:
    """Every non-directory path must share its inode number with exactly the paths the oracle
    puts in its hardlink group."""
    exp_group = {}
    for n_paths in _groups_by(lambda p: id(tree.nodes[p]), [p for p, n in tree.nodes.items() if n.kind != "dir"]):
        for p in n_paths:
            exp_group[p] = n_paths
    common = [p for p in exp_group if p in walked and walked[p].kind != "dir"]
    got_group = {}
    for g_paths in _groups_by(lambda p: (walked[p].dev, walked[p].ino), common):
        for p in g_paths:
            got_group[p] = g_paths
    diffs, seen = [], set()
    for p in sorted(common):
        e = tuple(sorted(q for q in exp_group[p] if q in walked))
        g = tuple(sorted(got_group[p]))
        if e != g and (e, g) not in seen:
            seen.add((e, g))
            diffs.append(f"/{p}: hardlinks: expected same inode as {['/' + q for q in e]}, "
                         f"got same inode as {['/' + q for q in g]} (ino {walked[p].ino})")
    return diffs


def _groups_by(key, paths):
    groups = {}
    for p in paths:
        groups.setdefault(key(p), []).append(p)
    return [tuple(sorted(g)) for g in groups.values()]
