"""Fixtures for the Nydus kernel tests: the binary, test layers and source layouts (built once
per session), and conversions (run once per (image, options) and shared by the tests)."""
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.join(os.path.dirname(HERE), "integration"))

import nydus_images  # noqa: E402
import nydus_layout  # noqa: E402
import nydus_oracle  # noqa: E402

BIN = os.environ.get("ACCEL_PROXY_BIN", os.path.join(os.path.dirname(os.path.dirname(HERE)), "build", "accel-proxy"))


@pytest.fixture(scope="session")
def accel_bin():
    assert os.access(BIN, os.X_OK), f"accel-proxy binary not found at {BIN} (set ACCEL_PROXY_BIN)"
    return BIN


@pytest.fixture(scope="session")
def image_layers(tmp_path_factory):
    """name -> list of uncompressed tar paths (generated once; layers shared between images)."""
    outdir = str(tmp_path_factory.mktemp("layers"))
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = nydus_images.IMAGES[name](outdir)
        return cache[name]
    return get


@pytest.fixture(scope="session")
def source_image(tmp_path_factory, image_layers):
    """name -> LayoutImage of the source OCI image (tag v1)."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = nydus_layout.build_layout(tmp_path_factory.mktemp(f"src-{name}"), image_layers(name))
        return cache[name]
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
def converted(tmp_path_factory, accel_bin, source_image):
    """(image name, compressor, extra args tuple) -> Converted (conversion run once)."""
    cache = {}

    def get(name, compressor, extra=()):
        key = (name, compressor, tuple(extra))
        if key not in cache:
            src = source_image(name)
            dst = tmp_path_factory.mktemp(f"nydus-{name}-{compressor}")
            args = ["convert", "--format", "nydus", "--compressor", compressor, *extra,
                    src.ref, f"oci:{dst}:nydus"]
            cache[key] = Converted(src, str(dst), args, run([accel_bin, *args]))
        return cache[key]
    return get
