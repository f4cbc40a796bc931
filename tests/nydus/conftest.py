"""Fixtures for the Nydus kernel tests: the binary, test layers and source layouts (built once
per session), and conversions (run once per (image, options) and shared by the tests)."""
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.join(os.path.dirname(HERE), "integration"))

import nydus_images  # noqa: E402
import nydus_layout  # noqa: E402
import nydus_mount  # noqa: E402
import nydus_oracle  # noqa: E402

BIN = os.environ.get("ACCEL_PROXY_BIN", os.path.join(os.path.dirname(os.path.dirname(HERE)), "build", "accel-proxy"))


@pytest.fixture(scope="session")
def accel_bin():
    assert os.access(BIN, os.X_OK), f"accel-proxy binary not found at {BIN} (set ACCEL_PROXY_BIN)"
    return BIN


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """Where layers, layouts, conversions and per-test work go: a tmpfs mounted for the
    session (the suite writes a few GB of device images and extractions; on a disk, creating
    and deleting them costs more than the tests), or pytest's temp dir with
    NYDUS_TESTS_ON_DISK=1 (keeps everything for debugging) or when tmpfs cannot be mounted."""
    base = tmp_path_factory.mktemp("ws")
    if os.environ.get("NYDUS_TESTS_ON_DISK") or os.geteuid() != 0:
        yield {"dir": str(base), "tmpfs": False}
        return
    try:
        nydus_mount.sys_mount("tmpfs", str(base), "tmpfs", 0, "size=12g,mode=0755")
    except OSError:
        yield {"dir": str(base), "tmpfs": False}
        return
    try:
        yield {"dir": str(base), "tmpfs": True}
    finally:
        try:
            nydus_mount.sys_umount(str(base))
        except OSError:
            nydus_mount.sys_umount(str(base), nydus_mount.MNT_DETACH)


def _mkdtemp(ws, prefix):
    return tempfile.mkdtemp(prefix=prefix + "-", dir=ws["dir"])


@pytest.fixture
def work(workspace, request):
    """A fresh directory for one test (in the workspace); removed afterwards on tmpfs."""
    d = _mkdtemp(workspace, request.node.name[:60].replace("/", "_"))
    yield pathlib.Path(d)
    if workspace["tmpfs"]:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def image_layers(workspace):
    """name -> list of uncompressed tar paths (generated once; layers shared between images)."""
    outdir = _mkdtemp(workspace, "layers")
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = nydus_images.IMAGES[name](outdir)
        return cache[name]
    return get


@pytest.fixture(scope="session")
def source_image(workspace, image_layers):
    """(name, gzip_layers=True) -> LayoutImage of the source OCI image (tag v1)."""
    cache = {}

    def get(name, gzip_layers=True):
        key = (name, gzip_layers)
        if key not in cache:
            d = _mkdtemp(workspace, f"src-{name}{'' if gzip_layers else '-tar'}")
            cache[key] = nydus_layout.build_layout(d, image_layers(name), gzip_layers=gzip_layers)
        return cache[key]
    return get


@pytest.fixture(scope="session")
def oracle(image_layers):
    """name -> the merged oracle tree of the image's layers."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = nydus_oracle.build(image_layers(name))
        return cache[name]
    return get


class Converted:
    def __init__(self, src, dst_dir, args, proc):
        self.src, self.dst_dir, self.args, self.proc = src, dst_dir, args, proc
        self.ok = proc.returncode == 0

    @property
    def ref(self):
        return f"oci:{self.dst_dir}:nydus"

    def image(self):
        return nydus_layout.read_image(self.dst_dir, "nydus")

    def describe(self):
        return (f"accel-proxy {' '.join(self.args)} -> rc {self.proc.returncode}\n"
                f"stdout: {self.proc.stdout[-3000:]}\nstderr: {self.proc.stderr[-3000:]}")


def run(argv, timeout=600):
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def converted(workspace, accel_bin, source_image):
    """(image name, compressor, extra args tuple, gzip_layers=True) -> Converted (each
    conversion run once). An extra argument "PREFETCH" becomes a file listing
    nydus_images.PREFETCH[name], one path per line."""
    cache = {}
    files = pathlib.Path(_mkdtemp(workspace, "prefetch-lists"))

    def get(name, compressor, extra=(), gzip_layers=True):
        key = (name, compressor, tuple(extra), gzip_layers)
        if key not in cache:
            src = source_image(name, gzip_layers)
            dst = _mkdtemp(workspace, f"nydus-{name}-{compressor}")
            args = []
            for a in extra:
                if a == "PREFETCH":
                    a = str(files / f"{name}.txt")
                    with open(a, "w") as f:
                        f.write("".join(p + "\n" for p in nydus_images.PREFETCH[name]))
                args.append(a)
            args = ["convert", "--format", "nydus", "--compressor", compressor, *args,
                    src.ref, f"oci:{dst}:nydus"]
            cache[key] = Converted(src, str(dst), args, run([accel_bin, *args]))
        return cache[key]
    return get
