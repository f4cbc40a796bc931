"""The test image set: name -> list of uncompressed tar layers (bottom first).

Single-layer images come from tests/integration/layers.py (debian_like, many_small,
few_large, adversarial with its PAX sparse member, adversarial_nosparse). Multi-layer images
are written here:

multilayer (3 layers)
  L1 base: explicit root './', dirs, files, two symlinks, hardlink pairs (one to be replaced,
     one to lose a name, one kept), a dir to be made opaque, a file and two dirs to delete,
     xattrs (user.*, security.capability, on a file and a dir), setuid/setgid/sticky,
     char/block devices (incl. minor > 255) and a FIFO, uid/gid > 65535 and > 2^21, PAX
     nanosecond mtimes on a file, a dir and a symlink, a 1.5 MiB multi-chunk file, two files
     with the same content (separate inodes), a 3 MiB file of zeros (identical chunks).
  L2 changes: whiteouts of a file, of a whole dir, of a dir to be re-created as a symlink and of
     one name of a hardlink pair; an opaque dir with new content (incl. a new subdir of the
     same name as a hidden one); a new hardlink group of three; a file replaced by a bigger one
     with another mode; one name of a hardlink pair replaced; a dir whose mode and owner change;
     a file with the content of L1's bin/busybox, which L2 replaces (cross-layer duplicate).
  L3 re-creations: a deleted file path as a dir (file->dir), a deleted dir path as a symlink
     (dir->symlink), whiteouts of an L2 file and L2 dir (the dir re-created as a file in the same
     layer), type changes without whiteouts (file->symlink, symlink->file, dir->symlink,
     file->dir).
stacked (3 layers): debian_like + many_small + adversarial_nosparse.
lower_hardlink (2 layers): L2 has hardlinks whose targets exist only in L1. Kept apart: a
  converter may refuse such layers (see test_lower_layer_hardlink).
"""
import io
import os
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))

import layers  # noqa: E402
from layers import BASE_MTIME, SECURITY_CAPABILITY, MiB, rand_bytes, text_bytes  # noqa: E402

T1, T2, T3 = BASE_MTIME, BASE_MTIME + 86_400, BASE_MTIME + 2 * 86_400


def _add(tf, name, kind="reg", data=b"", mode=0o644, uid=0, gid=0, mtime=T1, linkname="",
         dev=(0, 0), xattrs=None, pax_mtime=None):
    ti = tarfile.TarInfo(name)
    ti.type = {"reg": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
               "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
               "fifo": tarfile.FIFOTYPE}[kind]
    ti.mode, ti.uid, ti.gid = mode, uid, gid
    ti.uname = ti.gname = ""
    ti.mtime = mtime
    ti.linkname = linkname
    ti.devmajor, ti.devminor = dev
    pax = {}
    if pax_mtime is not None:
        pax["mtime"] = pax_mtime            # the exact string; tarfile keeps an existing pax value
    for k, v in (xattrs or {}).items():
        pax["SCHILY.xattr." + k] = v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v
    ti.pax_headers = pax
    if kind == "reg":
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    else:
        tf.addfile(ti)


def _write(path, fmt, build):
    with open(path + ".tmp", "wb") as f:
        tf = tarfile.open(fileobj=f, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape")
        build(tf)
        tf.close()
    os.replace(path + ".tmp", path)
    return path


def multilayer(outdir):
    os.makedirs(outdir, exist_ok=True)
    cap = SECURITY_CAPABILITY

    def l1(tf):
        _add(tf, "./", "dir", mode=0o755, mtime=T1)
        _add(tf, "etc/", "dir", mode=0o755)
        _add(tf, "etc/config", data=b"config v1\n")
        _add(tf, "etc/replaced", data=text_bytes("replaced/v1", 100), mode=0o644)
        _add(tf, "etc/gone", data=b"deleted in L2, a dir again in L3\n")
        _add(tf, "etc/hl-a", data=rand_bytes("hl-a", 3000), mode=0o640, uid=1001, gid=1001)
        _add(tf, "etc/hl-b", "hardlink", linkname="etc/hl-a")
        _add(tf, "etc/hl-keep-a", data=text_bytes("hl-keep/v1", 5000))
        _add(tf, "etc/hl-keep-b", "hardlink", linkname="etc/hl-keep-a")
        _add(tf, "etc/hl-del-a", data=b"pair losing one name\n")
        _add(tf, "etc/hl-del-b", "hardlink", linkname="etc/hl-del-a")
        _add(tf, "bin/", "dir", mode=0o755)
        _add(tf, "bin/busybox", data=rand_bytes("busybox/v1", MiB // 2) + text_bytes("busybox/v1t", MiB),
             mode=0o755)
        _add(tf, "bin/sh", "symlink", linkname="busybox", mode=0o777)
        _add(tf, "bin/setuid-tool", data=rand_bytes("setuid", 20_000), mode=0o4755)
        _add(tf, "bin/setgid-tool", data=rand_bytes("setgid", 7_000), mode=0o2711, gid=42)
        _add(tf, "usr/", "dir", mode=0o755)
        _add(tf, "usr/lib/", "dir", mode=0o755)
        _add(tf, "usr/lib/libx.so.1", data=rand_bytes("libx", 70_000))
        _add(tf, "usr/lib/abs-link", "symlink", linkname="/etc/config", mode=0o777)
        _add(tf, "lib", "symlink", linkname="usr/lib", mode=0o777)
        _add(tf, "opaque/", "dir", mode=0o755)
        _add(tf, "opaque/old1", data=b"hidden by the opaque marker of L2\n")
        _add(tf, "opaque/old2", data=rand_bytes("old2", 10_000))
        _add(tf, "opaque/sub/", "dir", mode=0o750)
        _add(tf, "opaque/sub/deep", data=b"also hidden\n")
        _add(tf, "deldir/", "dir", mode=0o755)
        _add(tf, "deldir/a", data=b"a\n")
        _add(tf, "deldir/sub/", "dir", mode=0o755)
        _add(tf, "deldir/sub/b", data=rand_bytes("deldir/b", 9000))
        _add(tf, "olddir/", "dir", mode=0o755)
        _add(tf, "olddir/x", data=b"x\n")
        _add(tf, "modedir/", "dir", mode=0o755)
        _add(tf, "modedir/file", data=b"in a dir whose mode changes\n")
        _add(tf, "xattr-file", data=b"xattrs\n", xattrs={
            "user.comment": "hello", "user.bin": b"\x00\xff\x01bin", "security.capability": cap})
        _add(tf, "xattr-dir/", "dir", mode=0o755, xattrs={"user.dirattr": "on a dir"})
        _add(tf, "xattr-dir/f", data=b"f\n")
        _add(tf, "dev/", "dir", mode=0o755)
        _add(tf, "dev/null", "char", mode=0o666, dev=(1, 3))
        _add(tf, "dev/sda", "block", mode=0o660, gid=6, dev=(8, 0))
        _add(tf, "dev/wide", "char", mode=0o600, dev=(240, 70_000))
        _add(tf, "dev/fifo", "fifo", mode=0o644)
        _add(tf, "ids/", "dir", mode=0o755)
        _add(tf, "ids/big", data=b"uid/gid over 65535\n", uid=70_000, gid=70_001)
        _add(tf, "ids/huge", data=b"uid/gid over 2^21\n", uid=3_000_000, gid=4_000_000)
        _add(tf, "time/", "dir", mode=0o755)
        _add(tf, "time/subsec", data=b"ns mtime\n", mtime=T1 + 0.123456789, pax_mtime=f"{T1}.123456789")
        _add(tf, "time/subsec-dir/", "dir", mode=0o755, mtime=T1 + 0.5, pax_mtime=f"{T1}.5")
        _add(tf, "time/subsec-link", "symlink", linkname="subsec", mode=0o777,
             mtime=T1 + 0.000000001, pax_mtime=f"{T1}.000000001")
        _add(tf, "time/whole", data=b"whole seconds\n", mtime=T1 - 12345)
        _add(tf, "sticky/", "dir", mode=0o1777)
        _add(tf, "empty", data=b"")
        _add(tf, "dup/", "dir", mode=0o755)                  # same content, separate inodes
        _add(tf, "dup/a", data=rand_bytes("dup", 70_000))
        _add(tf, "dup/b", data=rand_bytes("dup", 70_000), mode=0o600)
        _add(tf, "dup/zeros", data=bytes(3 * MiB + 100))    # identical chunks inside one file

    def l2(tf):
        _add(tf, "etc/", "dir", mode=0o755, mtime=T2)
        _add(tf, "etc/.wh.gone")
        _add(tf, "etc/replaced", data=text_bytes("replaced/v2", 5000), mode=0o600, mtime=T2)
        _add(tf, "etc/hl-keep-a", data=b"new content for one name of the pair\n", mtime=T2)
        _add(tf, "etc/.wh.hl-del-a")
        _add(tf, "etc/new-hl-1", data=rand_bytes("new-hl", 12_345), mode=0o700, uid=5, gid=6, mtime=T2)
        _add(tf, "etc/new-hl-2", "hardlink", linkname="etc/new-hl-1")
        _add(tf, "etc/new-hl-3", "hardlink", linkname="etc/new-hl-2")
        _add(tf, ".wh.deldir")
        _add(tf, ".wh.olddir")
        _add(tf, "opaque/", "dir", mode=0o755, mtime=T2)
        _add(tf, "opaque/.wh..wh..opq")
        _add(tf, "opaque/new", data=b"new in the opaque dir\n", mtime=T2)
        _add(tf, "opaque/sub/", "dir", mode=0o755, mtime=T2)
        _add(tf, "opaque/sub/fresh", data=b"fresh\n", mtime=T2)
        _add(tf, "modedir/", "dir", mode=0o700, uid=1000, gid=1000, mtime=T2)
        _add(tf, "l2dir/", "dir", mode=0o755, mtime=T2)
        _add(tf, "l2dir/tobedeleted", data=b"deleted by L3\n", mtime=T2)
        _add(tf, "l2dir/l2file", data=text_bytes("l2file", 2000), mtime=T2)
        _add(tf, "l2dir/l2sub/", "dir", mode=0o755, mtime=T2)
        _add(tf, "l2dir/l2sub/f", data=b"gone with l2sub\n", mtime=T2)
        _add(tf, "bin/", "dir", mode=0o755, mtime=T2)
        _add(tf, "bin/busybox", data=text_bytes("busybox/v2", 2 * MiB + 77) + rand_bytes("bb2", 3000),
             mode=0o755, mtime=T2)
        _add(tf, "dup/", "dir", mode=0o755, mtime=T2)
        _add(tf, "dup/old-busybox", data=rand_bytes("busybox/v1", MiB // 2) + text_bytes("busybox/v1t", MiB),
             mtime=T2)                                      # the content of L1's bin/busybox

    def l3(tf):
        _add(tf, "./", "dir", mode=0o751, mtime=T3)          # the root's metadata changes
        _add(tf, "etc/", "dir", mode=0o755, mtime=T3)
        _add(tf, "etc/gone/", "dir", mode=0o711, mtime=T3)
        _add(tf, "etc/gone/inside", data=b"file path re-created as a dir\n", mtime=T3)
        _add(tf, "etc/config", "symlink", linkname="replaced", mode=0o777, mtime=T3)
        _add(tf, "olddir", "symlink", linkname="etc/gone", mode=0o777, mtime=T3)
        _add(tf, "l2dir/", "dir", mode=0o755, mtime=T3)
        _add(tf, "l2dir/.wh.tobedeleted")
        _add(tf, "l2dir/.wh.l2sub")
        _add(tf, "l2dir/l2sub", data=b"the L2 dir re-created as a file\n", mtime=T3)
        _add(tf, "bin/", "dir", mode=0o755, mtime=T3)
        _add(tf, "bin/sh", data=b"#!/bin/busybox\n", mode=0o755, mtime=T3)
        _add(tf, "sticky", "symlink", linkname="/tmp", mode=0o777, mtime=T3)
        _add(tf, "time/", "dir", mode=0o755, mtime=T3)
        _add(tf, "time/whole/", "dir", mode=0o755, mtime=T3)
        _add(tf, "time/whole/child", data=b"file->dir without whiteout\n", mtime=T3)

    return [_write(os.path.join(outdir, "ml-1.tar"), tarfile.PAX_FORMAT, l1),
            _write(os.path.join(outdir, "ml-2.tar"), tarfile.PAX_FORMAT, l2),
            _write(os.path.join(outdir, "ml-3.tar"), tarfile.GNU_FORMAT, l3)]


def lower_hardlink(outdir):
    """L2 hardlinks to files that exist only in L1 (one plain, one multi-chunk)."""
    os.makedirs(outdir, exist_ok=True)

    def l1(tf):
        _add(tf, "data/", "dir", mode=0o755)
        _add(tf, "data/orig", data=b"lower file\n", mode=0o640, uid=7, gid=8)
        _add(tf, "data/big", data=rand_bytes("lower-big", 2 * MiB + 5))

    def l2(tf):
        _add(tf, "data/", "dir", mode=0o755, mtime=T2)
        _add(tf, "data/link-to-lower", "hardlink", linkname="data/orig")
        _add(tf, "other/", "dir", mode=0o755, mtime=T2)
        _add(tf, "other/big-link", "hardlink", linkname="data/big")

    return [_write(os.path.join(outdir, "lh-1.tar"), tarfile.PAX_FORMAT, l1),
            _write(os.path.join(outdir, "lh-2.tar"), tarfile.PAX_FORMAT, l2)]


def bigdirs(outdir):
    """Directories whose dirents span many 4 KiB blocks: 2,500 names of 6-205 bytes, some
    starting with bytes that sort before '.' ('!', '#', '+', ',', '-'), multi-byte UTF-8,
    and the awkward names '...', '.a', '..a'; plus 300 subdirectories (nlink 302)."""
    os.makedirs(outdir, exist_ok=True)
    prefixes = ["!", "#", "+", ",", "-", "0", "A", "_", "a", "z", "~", "\u00e9", "\u65e5"]

    def build(tf):
        _add(tf, "big/", "dir", mode=0o755)
        for i in range(2500):
            name = f"{prefixes[i % len(prefixes)]}{i:05d}" + "n" * ((i * 37) % 200)
            _add(tf, f"big/{name}", data=b"%d\n" % i if i % 3 else b"", mtime=T1 + i)
        for n in ("...", ".a", "..a", ".wh-not-a-whiteout"):
            _add(tf, f"big/{n}", data=n.encode())
        _add(tf, "subdirs/", "dir", mode=0o755)
        for i in range(300):
            _add(tf, f"subdirs/d{i:03d}/", "dir", mode=0o700 + (i % 8))
        _add(tf, "subdirs/d007/leaf", data=b"leaf\n")

    return [_write(os.path.join(outdir, "bigdirs.tar"), tarfile.PAX_FORMAT, build)]


def nodata_layers(outdir):
    """A layer with file data, then one with only dirs and a symlink, then an empty layer."""
    os.makedirs(outdir, exist_ok=True)

    def l1(tf):
        _add(tf, "d/", "dir", mode=0o755)
        _add(tf, "d/file", data=rand_bytes("nodata/file", 5000))

    def l2(tf):
        _add(tf, "d/", "dir", mode=0o755, mtime=T2)
        _add(tf, "d/sub/", "dir", mode=0o700, mtime=T2)
        _add(tf, "d/link", "symlink", linkname="file", mode=0o777, mtime=T2)
        _add(tf, "d/fifo", "fifo", mode=0o600, mtime=T2)

    return [_write(os.path.join(outdir, "nd-1.tar"), tarfile.PAX_FORMAT, l1),
            _write(os.path.join(outdir, "nd-2.tar"), tarfile.PAX_FORMAT, l2),
            _write(os.path.join(outdir, "nd-3.tar"), tarfile.PAX_FORMAT, lambda tf: None)]


MANY_CHUNKS = 65_600     # > 65,535 chunks: a chunk index needs the high byte of c_blob_addr_hi


def many_chunks(outdir):
    """One file of 65,600 distinct 4 KiB blocks (each: its index, then zeros; compresses well),
    for --chunk-size 4096: chunk indexes past 65535 in one blob."""
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, "many_chunks.tar")
    if os.path.exists(path):
        return [path]

    class Blocks(io.RawIOBase):
        def __init__(self):
            self.i, self.buf = 0, b""

        def readable(self):
            return True

        def readinto(self, b):
            while len(self.buf) < len(b) and self.i < MANY_CHUNKS:
                self.buf += self.i.to_bytes(8, "little") + b"chunk" + bytes(4096 - 13)
                self.i += 1
            n = min(len(b), len(self.buf))
            b[:n] = self.buf[:n]
            self.buf = self.buf[n:]
            return n

    def build(tf):
        _add(tf, "data/", "dir", mode=0o755)
        ti = tarfile.TarInfo("data/chunky")
        ti.size, ti.mode, ti.mtime = MANY_CHUNKS * 4096, 0o644, T1
        tf.addfile(ti, io.BufferedReader(Blocks(), 1 << 20))

    return [_write(path, tarfile.PAX_FORMAT, build)]


def _single(fn):
    return lambda outdir: [fn(outdir)]


IMAGES = {
    "debian_like": _single(layers.debian_like),
    "many_small": _single(layers.many_small),
    "few_large": _single(layers.few_large),
    "adversarial": _single(layers.adversarial),                 # with the PAX sparse member
    "adversarial_nosparse": _single(layers.adversarial_nosparse),
    "multilayer": multilayer,
    "stacked": lambda outdir: [layers.debian_like(outdir), layers.many_small(outdir),
                               layers.adversarial_nosparse(outdir)],
    "lower_hardlink": lower_hardlink,
    "bigdirs": bigdirs,
    "nodata_layers": nodata_layers,
    "many_chunks": many_chunks,
}


# --prefetch lists (absolute paths, in priority order; a hardlink name and a dir included)
PREFETCH = {
    "multilayer": ["/bin/busybox", "/etc", "/etc/new-hl-2", "/usr/lib/libx.so.1", "/etc/new-hl-1"],
}
