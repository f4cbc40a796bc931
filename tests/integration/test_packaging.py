"""docker/Dockerfile stays in step with what the binary links.

No container engine runs here, so the image cannot be built in CI; this checks the part that
breaks silently: every shared library build/accel-proxy needs (ldd) comes from a Debian package
the runtime stage installs (dpkg -S), and every -dev package the build needs for a library
that .ci/install-deps installs is in the build stage.
"""
import os
import re
import subprocess

import proxy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = {"libc6", "libgcc-s1", "libstdc++6"}  # in every Debian image


def stages():
    """Package lists of the Dockerfile's apt-get install lines: [build, runtime]."""
    with open(os.path.join(ROOT, "docker", "Dockerfile")) as f:
        text = f.read().replace("\\\n", " ")
    lists = []
    for line in text.splitlines():
        if "apt-get install" in line:
            words = line.split("--no-install-recommends", 1)[1].split("&&", 1)[0].split()
            lists.append(set(words))
    assert len(lists) == 2, lists
    return lists


def test_runtime_stage_has_every_linked_library():
    _, runtime = stages()
    ldd = subprocess.run(["ldd", str(proxy.require_binary())], capture_output=True, text=True, check=True).stdout
    paths = re.findall(r"=> (/\S+)", ldd)
    assert paths, ldd
    missing = {}
    for path in paths:
        owner = subprocess.run(["dpkg", "-S", os.path.realpath(path)], capture_output=True, text=True)
        if owner.returncode != 0:
            owner = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True)
        package = owner.stdout.split(":", 1)[0].strip()
        assert package, f"no Debian package owns {path}"
        if package not in BASE and package not in runtime:
            missing[path] = package
    assert not missing, f"docker/Dockerfile's runtime stage lacks {missing}"


def test_build_stage_has_the_libraries_install_deps_has():
    build, _ = stages()
    with open(os.path.join(ROOT, ".ci", "install-deps")) as f:
        deps = set(re.findall(r"\b(lib[a-z0-9.+-]+-dev|libtcmalloc-minimal4)\b", f.read()))
    missing = deps - build - {"libclang-rt-14-dev"}  # the sanitizer runtime: tests only
    assert not missing, f"docker/Dockerfile's build stage lacks {sorted(missing)}"
