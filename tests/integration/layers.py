"""Deterministic test layers (uncompressed tar) for the converters.

Each generator writes one .tar into a given directory and returns its path; the same bytes
come out on every run and machine (fixed seeds, mtimes, owners, and no host user lookups).

    debian_like(outdir)            GNU tar (--format=gnu) of a small Debian-like rootfs
    many_small(outdir)             5,000 files of 0-4 KiB, PAX format (like Go/Docker writers)
    few_large(outdir)              3 files of 8-38 MiB, GNU format
    adversarial(outdir)            hardlinks, symlinks, whiteouts, xattrs, long and unicode
                                   names, devices, FIFO, odd modes/mtimes/ids, plus a sparse
                                   file written by `tar --sparse --format=posix`
    adversarial(outdir, sparse=False)   the same without the sparse file
    adversarial(outdir, sparse="dense") the same with the sparse file stored densely
    gzip_layer(path)               path + ".gz" made with `gzip -n` (deterministic)

As a script: python3 tests/integration/layers.py OUTDIR [--gzip] [NAME...]
writes every layer (or the named ones) and prints one path per line.

Needs GNU tar (1.30+: --sort, --owner=NAME:ID, --hole-detection) and gzip. Works as any user:
crafted entries (devices, FIFO, foreign owners, xattrs) are written with Python's tarfile;
only debian_like and the sparse member come from GNU tar, from a tree made in OUTDIR.
"""
import hashlib
import io
import os
import random
import shutil
import subprocess
import sys
import tarfile
import zlib

BASE_MTIME = 1_700_000_000          # 2023-11-14
MTIME_1901 = -2_177_452_800         # 1901-01-01T00:00:00Z
MTIME_2100 = 4_102_444_800          # 2100-01-01T00:00:00Z
MiB = 1 << 20

# VFS_CAP_REVISION_2, effective, permitted = CAP_NET_BIND_SERVICE (bit 10)
SECURITY_CAPABILITY = bytes([0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00]) + bytes(12)

_WORDS = ("the of and to in is for on with as by at from that this be are was it or an "
          "package install debian config service system user file data cache log error "
          "warning info debug kernel module library binary shared object version release "
          "update upgrade depends recommends suggests provides conflicts replaces").split()


# ---------------------------------------------------------------------------- content

def rand_bytes(seed: str, size: int) -> bytes:
    """Incompressible bytes, a pure function of (seed, size)."""
    return hashlib.shake_256(seed.encode()).digest(size)


def _line_pool():
    rng = random.Random("layers.py text pool")
    pool = []
    for i in range(1024):
        n = rng.randint(3, 14)
        pool.append((f"{i:04d} " + " ".join(rng.choice(_WORDS) for _ in range(n)) + "\n").encode())
    return pool


_LINES = _line_pool()


def text_bytes(seed: str, size: int) -> bytes:
    """Compressible ASCII text, a pure function of (seed, size)."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += b"".join(rng.choices(_LINES, k=min(8192, size // 40 + 1)))
    return bytes(out[:size])


def elf_like(seed: str, size: int) -> bytes:
    """An ELF magic, then a mix of text-ish and random bytes (shared-library-like)."""
    head = b"\x7fELF\x02\x01\x01" + bytes(9)
    body = bytearray()
    i = 0
    while len(head) + len(body) < size:
        part = 4096
        body += rand_bytes(f"{seed}/{i}", part) if i % 3 == 0 else text_bytes(f"{seed}/{i}", part)
        i += 1
    return (head + bytes(body))[:size]


def _atomic_path(outdir, name):
    os.makedirs(outdir, exist_ok=True)
    return os.path.join(outdir, name), os.path.join(outdir, "." + name + ".tmp")


# ---------------------------------------------------------------------------- tarfile helpers

def _add(tf, name, kind="reg", data=b"", mode=0o644, uid=0, gid=0, uname="root", gname="root",
         mtime=BASE_MTIME, linkname="", devmajor=0, devminor=0, pax=None):
    ti = tarfile.TarInfo(name)
    ti.type = {
        "reg": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
        "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
        "fifo": tarfile.FIFOTYPE,
    }[kind]
    ti.mode = mode
    ti.uid, ti.gid, ti.uname, ti.gname = uid, gid, uname, gname
    ti.mtime = mtime
    ti.linkname = linkname
    ti.devmajor, ti.devminor = devmajor, devminor
    if pax:
        ti.pax_headers = dict(pax)
    if kind == "reg":
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    else:
        tf.addfile(ti)


def _xattr(value: bytes) -> str:
    # tarfile writes str PAX values; bytes that are not UTF-8 survive via surrogateescape
    # (tarfile then adds "hdrcharset=BINARY" and writes the raw bytes).
    return value.decode("utf-8", "surrogateescape")


def _write_tar(path, fmt, build):
    """Run build(tf) on a new tarfile; returns the offset where end-of-archive starts."""
    with open(path, "wb") as f:
        tf = tarfile.open(fileobj=f, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape")
        build(tf)
        end = tf.offset
        tf.close()
    return end


def _gnu_tar(*args):
    subprocess.run(["tar", *args], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "LC_ALL": "C", "TZ": "UTC"})


# ---------------------------------------------------------------------------- layers

def debian_like(outdir) -> str:
    """A small Debian-like rootfs (~400 files, 0-200 KiB), usrmerge symlinks, setuid
    binaries, a hardlink, long names; archived by GNU tar --format=gnu with "./" prefixes."""
    out, tmp = _atomic_path(outdir, "debian_like.tar")
    tree = os.path.join(outdir, ".debian_like.tree")
    shutil.rmtree(tree, ignore_errors=True)
    rng = random.Random("debian_like")
    files = {}    # relpath -> (data, mode)
    dirs = ["etc/apt/sources.list.d", "etc/default", "etc/systemd/system",
            "usr/bin", "usr/sbin", "usr/lib/x86_64-linux-gnu", "usr/lib64", "usr/lib/os-release.d",
            "usr/share/doc", "usr/share/man/man1", "usr/share/locale/ja/LC_MESSAGES",
            "var/log/apt", "var/lib/dpkg/info", "var/cache/apt", "tmp", "root", "home",
            "dev", "proc", "sys", "run", "opt", "srv", "mnt", "media"]

    def f(rel, data, mode=0o644):
        files[rel] = (data, mode)

    f("etc/os-release", b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
      b'VERSION_ID="12"\nID=debian\n')
    f("etc/debian_version", b"12.7\n")
    f("etc/hostname", b"")
    f("etc/passwd", b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n")
    f("etc/shadow", b"root:*:19000:0:99999:7:::\n", 0o640)
    f("etc/apt/sources.list.d/debian.sources", text_bytes("sources", 300))
    for i in range(12):
        f(f"etc/default/conf{i:02d}", text_bytes(f"etc/default/{i}", rng.randint(0, 3000)))
    for i in range(6):
        f(f"etc/systemd/system/unit{i}.service", text_bytes(f"unit{i}", rng.randint(100, 900)))
    for i in range(120):
        size = rng.choice([0, rng.randint(1, 4096), rng.randint(4096, 65536), rng.randint(65536, 200 * 1024)])
        f(f"usr/bin/tool{i:03d}", elf_like(f"usr/bin/{i}", size), 0o755)
    f("usr/bin/passwd", elf_like("passwd", 68_248), 0o4755)
    f("usr/bin/su", elf_like("su", 72_000), 0o4755)
    f("usr/bin/wall", elf_like("wall", 35_000), 0o2755)
    f("usr/bin/perl5.36.0", elf_like("perl", 199_999), 0o755)
    for i in range(15):
        f(f"usr/sbin/daemon{i:02d}", elf_like(f"sbin/{i}", rng.randint(1000, 150_000)), 0o755)
    for i in range(60):
        size = rng.randint(0, 200 * 1024)
        f(f"usr/lib/x86_64-linux-gnu/libfoo{i:02d}.so.{i % 5}.{i % 7}.0", elf_like(f"lib/{i}", size))
    for i in range(80):
        pkg = f"package-{i:03d}"
        dirs.append(f"usr/share/doc/{pkg}")
        f(f"usr/share/doc/{pkg}/copyright", text_bytes(f"copyright/{i}", rng.randint(200, 20_000)))
        if i % 4 == 0:
            f(f"usr/share/doc/{pkg}/changelog.Debian.gz", rand_bytes(f"changelog/{i}", rng.randint(100, 30_000)))
    for i in range(40):
        f(f"usr/share/man/man1/tool{i:03d}.1.gz", rand_bytes(f"man/{i}", rng.randint(300, 8000)))
    f("usr/share/locale/ja/LC_MESSAGES/apt.mo", rand_bytes("mo", 12_345))
    long_dir = "usr/lib/python3/dist-packages/very_long_package_name_for_testing_gnu_longlink/submodule"
    dirs += ["usr/lib/python3", "usr/lib/python3/dist-packages",
             "usr/lib/python3/dist-packages/very_long_package_name_for_testing_gnu_longlink", long_dir]
    f(long_dir + "/an_extremely_long_module_file_name_to_exceed_one_hundred_bytes.py", text_bytes("py", 5000))
    f("var/lib/dpkg/status", text_bytes("status", 150_000))
    for i in range(30):
        f(f"var/lib/dpkg/info/package-{i:03d}.list", text_bytes(f"list/{i}", rng.randint(0, 5000)))
        f(f"var/lib/dpkg/info/package-{i:03d}.md5sums", text_bytes(f"md5/{i}", rng.randint(0, 3000)))
    f("var/log/apt/history.log", text_bytes("history", 7777))
    f("var/log/dpkg.log", text_bytes("dpkg.log", 40_000))
    f("var/log/lastlog", b"")
    f("var/log/faillog", bytes(3200))
    f("var/cache/apt/pkgcache.bin", rand_bytes("pkgcache", 180_000))

    os.makedirs(tree)
    for d in dirs:
        os.makedirs(os.path.join(tree, d), exist_ok=True)
    for rel, (data, mode) in files.items():
        p = os.path.join(tree, rel)
        with open(p, "wb") as fh:
            fh.write(data)
        os.chmod(p, mode)
    os.link(os.path.join(tree, "usr/bin/perl5.36.0"), os.path.join(tree, "usr/bin/perl"))
    for name, target in [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"),
                         ("lib64", "usr/lib64"), ("usr/bin/vi", "/etc/alternatives/vi"),
                         ("usr/lib/os-release.d/os-release", "../../../etc/os-release"),
                         ("var/run", "/run")]:
        os.symlink(target, os.path.join(tree, name))
    # modes and mtimes: deterministic, bottom-up so directory mtimes stick
    special = {"tmp": 0o1777, "root": 0o700}
    entries = []
    for top, dnames, fnames in os.walk(tree):
        for n in dnames + fnames:
            entries.append(os.path.relpath(os.path.join(top, n), tree))
    for i, rel in enumerate(sorted(entries, reverse=True)):
        p = os.path.join(tree, rel)
        if os.path.isdir(p) and not os.path.islink(p):
            os.chmod(p, special.get(rel, 0o755))
        t = BASE_MTIME - 86400 * 30 + (zlib.crc32(rel.encode()) % 86400) * 7
        os.utime(p, (t, t), follow_symlinks=False)
    os.chmod(tree, 0o755)
    os.utime(tree, (BASE_MTIME, BASE_MTIME))
    _gnu_tar("--format=gnu", "--sort=name", "--owner=root:0", "--group=root:0",
             "-C", tree, "-cf", tmp, ".")
    shutil.rmtree(tree)
    os.replace(tmp, out)
    return out


def many_small(outdir, count=5000) -> str:
    """count files of 0-4 KiB in 50 directories (PAX format, no "./" prefix, uid 1000)."""
    out, tmp = _atomic_path(outdir, "many_small.tar")
    rng = random.Random("many_small")

    def build(tf):
        own = dict(uid=1000, gid=1000, uname="node", gname="node")
        _add(tf, "app/", "dir", mode=0o755, **own)
        _add(tf, "app/node_modules/", "dir", mode=0o755, **own)
        ndirs = 50
        per = count // ndirs
        n = 0
        for d in range(ndirs):
            dname = f"app/node_modules/pkg{d:02d}"
            _add(tf, dname + "/", "dir", mode=0o755, mtime=BASE_MTIME + d, **own)
            for j in range(per if d < ndirs - 1 else count - n):
                size = rng.randint(0, 4096)
                seed = f"small/{d}/{j}"
                data = rand_bytes(seed, size) if j % 5 == 0 else text_bytes(seed, size)
                ext = "bin" if j % 5 == 0 else "js"
                _add(tf, f"{dname}/file_{j:04d}.{ext}", data=data, mode=0o644,
                     mtime=BASE_MTIME + 1000 + n, **own)
                n += 1

    _write_tar(tmp, tarfile.PAX_FORMAT, build)
    os.replace(tmp, out)
    return out


def few_large(outdir) -> str:
    """Three large files: 37 MiB+12345 of text, exactly 8 MiB random, 13 MiB+4321 mixed
    (64 KiB blocks of random, text and zeros). GNU format."""
    out, tmp = _atomic_path(outdir, "few_large.tar")

    def mixed(seed, size):
        parts, i, total = [], 0, 0
        while total < size:
            kind = i % 3
            blk = rand_bytes(f"{seed}/{i}", 65536) if kind == 0 else (
                text_bytes(f"{seed}/{i}", 65536) if kind == 1 else bytes(65536))
            parts.append(blk)
            total += len(blk)
            i += 1
        return b"".join(parts)[:size]

    def build(tf):
        _add(tf, "data/", "dir", mode=0o755)
        _add(tf, "data/big-text.log", data=text_bytes("big-text", 37 * MiB + 12345), mtime=BASE_MTIME + 1)
        _add(tf, "data/exact-8MiB.bin", data=rand_bytes("exact-8MiB", 8 * MiB), mtime=BASE_MTIME + 2)
        _add(tf, "data/mixed.db", data=mixed("mixed", 13 * MiB + 4321), mode=0o600, mtime=BASE_MTIME + 3)

    _write_tar(tmp, tarfile.GNU_FORMAT, build)
    os.replace(tmp, out)
    return out


SPARSE_SIZE = 64 * MiB
SPARSE_MTIME = BASE_MTIME + 42


def _sparse_extents():
    for i, (off, n) in enumerate([(0, 1000), (10 * MiB + 123, 5000), (40 * MiB, MiB), (SPARSE_SIZE - 17, 17)]):
        yield off, rand_bytes(f"sparse/{i}", n).replace(b"\0", b"\x01")


def _dense_sparse_member() -> bytes:
    """The same file as _sparse_member, stored as an ordinary PAX-format regular file
    (what a converter that densifies sparse files produces)."""
    content = bytearray(SPARSE_SIZE)
    for off, data in _sparse_extents():
        content[off:off + len(data)] = data
    buf = io.BytesIO()
    tf = tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT)
    _add(tf, "adv/sparse.img", data=bytes(content), mode=0o640, gid=6, gname="disk", mtime=SPARSE_MTIME)
    end = tf.offset
    tf.close()
    return buf.getvalue()[:end]


def _sparse_member(outdir) -> bytes:
    """A 64 MiB (apparent) file with four data extents, archived by GNU tar
    --sparse --format=posix (PAX sparse 1.0), end-of-archive blocks removed."""
    tree = os.path.join(outdir, ".sparse.tree")
    shutil.rmtree(tree, ignore_errors=True)
    os.makedirs(os.path.join(tree, "adv"))
    p = os.path.join(tree, "adv", "sparse.img")
    with open(p, "wb") as fh:
        fh.truncate(SPARSE_SIZE)
        for off, data in _sparse_extents():
            fh.seek(off)
            fh.write(data)
    os.chmod(p, 0o640)
    os.utime(p, (SPARSE_MTIME, SPARSE_MTIME))
    tarpath = os.path.join(tree, "sparse.tar")
    _gnu_tar("--sparse", "--hole-detection=raw", "--format=posix",
             "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
             "--owner=root:0", "--group=disk:6", "-C", tree, "-cf", tarpath, "adv/sparse.img")
    with open(tarpath, "rb") as fh:
        data = bytearray(fh.read())
    shutil.rmtree(tree)
    # GNU tar names the ustar header "%d/GNUSparseFile.%p/%f" with its pid: pin it to 0.
    hdr_off = None
    for off in range(0, len(data), 512):
        blk = data[off:off + 512]
        if blk[257:262] == b"ustar" and b"GNUSparseFile." in blk[:100]:
            hdr_off = off
            break
    if hdr_off is None:
        raise RuntimeError("GNU tar did not write a PAX sparse 1.0 member (is the filesystem sparse-capable?)")
    blk = data[hdr_off:hdr_off + 512]
    blk[0:100] = b"adv/GNUSparseFile.0/sparse.img".ljust(100, b"\0")
    blk[148:156] = b" " * 8
    blk[148:156] = b"%06o\0 " % sum(blk)
    data[hdr_off:hdr_off + 512] = blk
    # end of the member: the last data extent ends with non-zero bytes, so the member ends
    # at the last block holding a non-zero byte; drop the end-of-archive blocks after it.
    end = len(data.rstrip(b"\0"))
    end = (end + 511) // 512 * 512
    return bytes(data[:end])


def adversarial(outdir, sparse=True) -> str:
    """Every awkward tar feature a converter must carry over (see the module docstring).
    sparse=True: with adv/sparse.img as a GNU PAX sparse 1.0 member (adversarial.tar);
    False: without it (adversarial_nosparse.tar); "dense": the same file stored as a plain
    64 MiB regular file (adversarial_dense.tar; same logical content as adversarial.tar)."""
    name = {True: "adversarial.tar", False: "adversarial_nosparse.tar", "dense": "adversarial_dense.tar"}[sparse]
    out, tmp = _atomic_path(outdir, name)
    A = "adv"
    long_component = "n" * 150
    deep1, deep2 = A + "/" + "d" * 100, A + "/" + "d" * 100 + "/" + "e" * 100
    deep_file = deep2 + "/" + "f" * 60           # 269 bytes
    long_target = "../" + "t" * 147               # symlink target over 100 bytes
    xattrs = {
        "SCHILY.xattr.user.comment": "hello world",
        "SCHILY.xattr.user.binary": _xattr(b"\x00\xff\xfe\x80bin\x00"),
        "SCHILY.xattr.security.capability": _xattr(SECURITY_CAPABILITY),
        "SCHILY.xattr.security.selinux": _xattr(b"system_u:object_r:bin_t:s0\x00"),
    }

    def part_a(tf):
        _add(tf, A + "/", "dir", mode=0o755)
        _add(tf, A + "/private/", "dir", mode=0o700, mtime=MTIME_2100)
        _add(tf, A + "/private/secret", data=b"top secret\n", mode=0o600, uid=1000, gid=1000,
             uname="alice", gname="alice")
        _add(tf, A + "/sticky/", "dir", mode=0o1777)
        _add(tf, A + "/zero", data=b"")
        _add(tf, A + "/mode0000", data=b"x", mode=0)
        _add(tf, A + "/setuid", data=rand_bytes("setuid", 3000), mode=0o4755)
        _add(tf, A + "/setgid", data=text_bytes("setgid", 2000), mode=0o2755, gid=42, gname="shadow")
        _add(tf, A + "/allbits", data=b"all mode bits\n", mode=0o7777)
        _add(tf, A + "/hardlink-to-setuid", "hardlink", linkname=A + "/setuid", mode=0o4755)
        _add(tf, A + "/hardlink-chain", "hardlink", linkname=A + "/hardlink-to-setuid", mode=0o4755)
        _add(tf, A + "/sub/", "dir", mode=0o755, pax={"SCHILY.xattr.user.dir": "on a directory"})
        _add(tf, A + "/sub/hardlink-cross", "hardlink", linkname=A + "/private/secret", mode=0o600,
             uid=1000, gid=1000, uname="alice", gname="alice")
        _add(tf, A + "/rel-link", "symlink", linkname="setuid", mode=0o777)
        _add(tf, A + "/dangling", "symlink", linkname="no/such/file", mode=0o777)
        _add(tf, A + "/abs-link", "symlink", linkname="/etc/passwd", mode=0o777)
        _add(tf, A + "/dir-link", "symlink", linkname="sub", mode=0o777)
        _add(tf, A + "/escape-link", "symlink", linkname="../../../../etc/shadow", mode=0o777)
        _add(tf, A + "/long-target-link", "symlink", linkname=long_target, mode=0o777)
        _add(tf, A + "/.wh.foo", data=b"")
        _add(tf, A + "/opq/", "dir", mode=0o755)
        _add(tf, A + "/opq/.wh..wh..opq", data=b"")
        _add(tf, A + "/opq/kept", data=b"kept\n")
        _add(tf, A + "/xattrs", data=b"file with xattrs\n", pax=xattrs)
        _add(tf, A + "/ping", data=rand_bytes("ping", 70_000), mode=0o755,
             pax={"SCHILY.xattr.security.capability": _xattr(SECURITY_CAPABILITY)})
        _add(tf, A + "/" + long_component, data=b"150-byte name\n")
        _add(tf, deep1 + "/", "dir", mode=0o755)
        _add(tf, deep2 + "/", "dir", mode=0o755)
        _add(tf, deep_file, data=text_bytes("deep", 10_000))
        _add(tf, A + "/hardlink-to-long", "hardlink", linkname=deep_file)
        _add(tf, A + "/fifo", "fifo", mode=0o644)
        _add(tf, A + "/null", "char", mode=0o666, devmajor=1, devminor=3)
        _add(tf, A + "/sda", "block", mode=0o660, gid=6, gname="disk", devmajor=8, devminor=0)
        _add(tf, A + "/bigdev", "char", mode=0o600, devmajor=4095, devminor=1048575)
        _add(tf, A + "/日本語のファイル名.txt", data="こんにちは世界\n".encode())
        _add(tf, A + "/ディレクトリ/", "dir", mode=0o755)
        _add(tf, A + "/ディレクトリ/中身", data=b"inside\n")
        _add(tf, A + "/emoji-🐳🚀.txt", data="🐳\n".encode())
        _add(tf, A + "/cafe\u0301.txt", data=b"NFD\n")           # e + combining acute
        _add(tf, A + "/caf\u00e9.txt", data=b"NFC\n")            # precomposed, a different name
        _add(tf, A + "/space name ", data=b"trailing space\n")
        _add(tf, A + "/old-1901", data=b"1901\n", mtime=MTIME_1901)
        _add(tf, A + "/pre-epoch", data=b"1969\n", mtime=-1)
        _add(tf, A + "/epoch-zero", data=b"1970\n", mtime=0)
        _add(tf, A + "/future-2100", data=b"2100\n", mtime=MTIME_2100)
        _add(tf, A + "/subsecond", data=b"x.75\n", mtime=BASE_MTIME + 0.75)
        _add(tf, A + "/bigids", data=b"ids over 2097151\n", uid=3_000_000, gid=4_000_000,
             uname="bigid-user", gname="bigid-group")
        _add(tf, A + "/maxoctal-ids", data=b"2097151\n", uid=2_097_151, gid=2_097_151,
             uname="maxoctal", gname="maxoctal")
        _add(tf, A + "/long-names", data=b"owner names\n", uid=5000, gid=5000,
             uname="a-very-long-user-name-that-exceeds-32-bytes", gname="グループ")
        _add(tf, A + "/no-names", data=b"no owner names\n", uid=1234, gid=4321, uname="", gname="")
        _add(tf, A + "/exact-4MiB", data=rand_bytes("exact-4MiB", 4 * MiB))
        _add(tf, A + "/4MiB-plus-1", data=text_bytes("4MiB+1", 4 * MiB + 1), pax={
            "SCHILY.xattr.user.big": "chunked file with an xattr"})
        _add(tf, A + "/hardlink-to-chunked", "hardlink", linkname=A + "/4MiB-plus-1")

    def part_b(tf):
        _add(tf, A + "/after-sparse", data=text_bytes("after", 3333))
        _add(tf, A + "/zzz/", "dir", mode=0o755)
        _add(tf, A + "/zzz/last", data=b"last entry\n")

    a_path, b_path = tmp + ".a", tmp + ".b"
    end_a = _write_tar(a_path, tarfile.PAX_FORMAT, part_a)
    _write_tar(b_path, tarfile.PAX_FORMAT, part_b)
    with open(a_path, "rb") as fa, open(b_path, "rb") as fb, open(tmp, "wb") as fo:
        fo.write(fa.read()[:end_a])
        if sparse == "dense":
            fo.write(_dense_sparse_member())
        elif sparse:
            fo.write(_sparse_member(outdir))
        fo.write(fb.read())
    os.remove(a_path)
    os.remove(b_path)
    os.replace(tmp, out)
    return out


def adversarial_nosparse(outdir) -> str:
    return adversarial(outdir, sparse=False)


def adversarial_dense(outdir) -> str:
    return adversarial(outdir, sparse="dense")


def gzip_layer(path, level=6) -> str:
    """path.gz via `gzip -n` (no name, no mtime: same bytes every time). Keeps path."""
    out = path + ".gz"
    with open(out + ".tmp", "wb") as fo:
        subprocess.run(["gzip", "-n", f"-{level}", "-c", path], check=True, stdout=fo)
    os.replace(out + ".tmp", out)
    return out


LAYERS = {
    "debian_like": debian_like,
    "many_small": many_small,
    "few_large": few_large,
    "adversarial": adversarial,
    "adversarial_nosparse": adversarial_nosparse,
    "adversarial_dense": adversarial_dense,
}


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    if not args or any(a not in ("--gzip",) for a in argv if a.startswith("--")):
        print(f"usage: {sys.argv[0]} OUTDIR [--gzip] [{'|'.join(LAYERS)} ...]", file=sys.stderr)
        return 2
    outdir, names = args[0], args[1:] or list(LAYERS)
    for n in names:
        if n not in LAYERS:
            print(f"unknown layer {n!r}; known: {', '.join(LAYERS)}", file=sys.stderr)
            return 2
    for n in names:
        p = LAYERS[n](outdir)
        print(p)
        if "--gzip" in argv:
            print(gzip_layer(p))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
