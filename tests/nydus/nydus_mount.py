"""Mount an EROFS image (a RAFS v6 bootstrap plus its blob devices) read-only, and run
fsck.erofs on it.

mounted(boot, devices, mountpoint) is a context manager:
1. mount(2) through ctypes, file-backed (Linux 6.12+): source = the bootstrap file,
   fstype "erofs", MS_RDONLY, data "device=/p/blob1,device=/p/blob2,..." (one `device=`
   per extra device, in device-table order; see Documentation/filesystems/erofs.rst).
2. If that fails with EPERM/ENODEV/ENOTSUP/ENOTBLK (no file-backed mounts here), every file
   is attached read-only to a loop device (`losetup -r -f --show`) and the loop devices are
   mounted the same way.
3. If both are impossible (not root, no erofs, no loop devices), pytest.skip with the reason.
Any other mount error (EINVAL, EUCLEAN, EIO...) means the image is bad: AssertionError with
errno and the kernel's recent erofs messages.
The mount is always unmounted (and the loop devices detached) on exit.
"""
import contextlib
import ctypes
import ctypes.util
import errno
import os
import subprocess

import pytest

MS_RDONLY = 1
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

# errors that mean "this way of mounting is not available here", not "the image is bad"
UNAVAILABLE = {errno.EPERM, errno.EACCES, errno.ENODEV, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOTBLK}


class MountError(OSError):
    pass


def sys_mount(source, target, fstype, flags, data):
    rc = _libc.mount(os.fsencode(source), os.fsencode(target), fstype.encode(), flags,
                     data.encode() if data is not None else None)
    if rc != 0:
        e = ctypes.get_errno()
        raise MountError(e, f"mount({source}, {target}, {fstype}, {flags:#x}, {data!r}): {os.strerror(e)}")


def sys_umount(target, flags=0):
    rc = _libc.umount2(os.fsencode(target), flags)
    if rc != 0:
        e = ctypes.get_errno()
        raise MountError(e, f"umount2({target}): {os.strerror(e)}")


def kernel_log(lines=15, grep="erofs"):
    """The kernel's last messages mentioning grep (best effort, for failure reports)."""
    try:
        out = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "(dmesg not available)"
    hits = [l for l in out.splitlines() if grep in l.lower()]
    return "\n".join(hits[-lines:]) or "(no erofs messages in dmesg)"


def device_option(devices):
    for d in devices:
        if "," in str(d):
            raise ValueError(f"device path with a comma cannot go into mount data: {d}")
    return ",".join(f"device={d}" for d in devices)


def _losetup(path):
    p = subprocess.run(["losetup", "-r", "-f", "--show", str(path)], capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise MountError(errno.ENODEV, f"losetup -r -f --show {path}: {p.stderr.strip()}")
    return p.stdout.strip()


def _lodetach(dev):
    subprocess.run(["losetup", "-d", dev], capture_output=True, timeout=30)


@contextlib.contextmanager
def mounted(boot, devices, mountpoint, method="auto"):
    """Mount boot (+ devices, in order) read-only at mountpoint; yields how ("file" or "loop").
    method="loop" skips the file-backed attempt (to test the fallback itself)."""
    boot, devices, mountpoint = str(boot), [str(d) for d in devices], str(mountpoint)
    os.makedirs(mountpoint, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting EROFS needs root (CAP_SYS_ADMIN)")
    loops = []
    how = None
    try:
        try:
            if method == "loop":
                raise MountError(errno.ENOTSUP, "file-backed mount not tried (method='loop')")
            sys_mount(boot, mountpoint, "erofs", MS_RDONLY, device_option(devices))
            how = "file"
        except MountError as e:
            if e.errno not in UNAVAILABLE:
                raise AssertionError(f"{e.strerror}\nkernel log:\n{kernel_log()}") from None
            first = e
            try:
                loops = [_losetup(f) for f in [boot] + devices]
            except MountError as e2:
                pytest.skip(f"cannot mount EROFS here: file-backed mount failed ({first.strerror}); "
                            f"loop devices unavailable ({e2.strerror})")
            try:
                sys_mount(loops[0], mountpoint, "erofs", MS_RDONLY, device_option(loops[1:]))
                how = "loop"
            except MountError as e2:
                if e2.errno in UNAVAILABLE:
                    pytest.skip(f"cannot mount EROFS here: file-backed: {first.strerror}; loop: {e2.strerror}")
                raise AssertionError(f"{e2.strerror} (loop devices for {[boot] + devices})\n"
                                     f"kernel log:\n{kernel_log()}") from None
        yield how
    finally:
        if how is not None:
            try:
                sys_umount(mountpoint)
            except MountError:
                sys_umount(mountpoint, MNT_DETACH)
        for dev in loops:
            _lodetach(dev)


def fsck(boot, devices, extract_dir=None, timeout=300):
    """fsck.erofs [--device=D ...] [--extract=DIR] boot -> CompletedProcess."""
    argv = ["fsck.erofs"] + [f"--device={d}" for d in devices]
    if extract_dir is not None:
        argv.append(f"--extract={extract_dir}")
    argv.append(str(boot))
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


# ---- the bootstrap's device table -------------------------------------------------------------

EROFS_MAGIC = 0xE0F5E1E2


def device_tags(boot) -> list:
    """The tags (blob ids) of the EROFS device table, in slot order (device 1, 2, ...)."""
    with open(boot, "rb") as f:
        sb = f.read(2048)
    if len(sb) < 1024 + 128 or int.from_bytes(sb[1024:1028], "little") != EROFS_MAGIC:
        raise AssertionError(f"{boot}: no EROFS superblock at 1024")
    extra = int.from_bytes(sb[1024 + 86:1024 + 88], "little")
    slotoff = int.from_bytes(sb[1024 + 88:1024 + 90], "little")
    tags = []
    with open(boot, "rb") as f:
        for i in range(extra):
            f.seek(slotoff * 128 + i * 128)
            slot = f.read(128)
            tags.append(slot[:64].rstrip(b"\0").decode("ascii", "replace"))
    return tags


@contextlib.contextmanager
def tmpfs(mountpoint, size="1g"):
    """A tmpfs at mountpoint (64-bit timestamps, xattrs, devices: the harness self-test
    materializes oracle trees here, since ext4 clamps pre-1901 mtimes)."""
    mountpoint = str(mountpoint)
    os.makedirs(mountpoint, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("the harness self-test needs root (tmpfs, mknod, chown)")
    try:
        sys_mount("tmpfs", mountpoint, "tmpfs", 0, f"size={size},mode=0755")
    except MountError as e:
        if e.errno in UNAVAILABLE:
            pytest.skip(f"cannot mount tmpfs: {e.strerror}")
        raise
    try:
        yield mountpoint
    finally:
        try:
            sys_umount(mountpoint)
        except MountError:
            sys_umount(mountpoint, MNT_DETACH)
