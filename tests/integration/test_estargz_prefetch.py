"""eStargz with a prioritized file list: those files (and their parent directories) come first,
then `.prefetch.landmark`, then everything else; the reference library must accept the blob and
the checker must find the landmark after exactly the listed files."""
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

import layers

REPO = Path(__file__).resolve().parents[2]
GO_TOOLS = REPO / "build" / "go"


@pytest.fixture(scope="module")
def checker():
    subprocess.run([str(REPO / "tests" / "estargz" / "build.sh"), str(GO_TOOLS)], check=True)
    return GO_TOOLS / "estargz-check"


@pytest.fixture(scope="module")
def layer(tmp_path_factory):
    return Path(layers.debian_like(tmp_path_factory.mktemp("prefetch")))


def proxy_bin():
    import os
    return os.environ.get("ACCEL_PROXY_BIN", str(REPO / "build" / "accel-proxy"))


def test_prioritized_files_precede_the_prefetch_landmark(tmp_path, layer, checker):
    with tarfile.open(layer) as t:
        files = [m.name for m in t.getmembers() if m.isfile() and m.size > 0]
    # Pick files from the middle and the end of the archive, listed out of stream order.
    chosen = [files[-3], files[len(files) // 2], files[10]]
    prio = tmp_path / "prio.txt"
    prio.write_text("\n".join(chosen) + "\n")
    blob = tmp_path / "layer.estargz"
    out = subprocess.run([proxy_bin(), "convert-layer", "--format", "estargz", "--prioritize", str(prio),
                          str(layer), str(blob)], capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    toc = info["annotations"]["containerd.io/snapshot/stargz/toc.digest"]

    # The reference library accepts it, and the landmark sits right after the listed files.
    check = subprocess.run([str(checker), "--blob", str(blob), "--toc-digest", toc, "--source", str(layer),
                            "--prefetch-landmark", "--prioritized", str(prio), "--json"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads(check.stdout)["diff_id"] == info["diff_id"]

    # Our own reading of the stream order: listed files (stream order) and their parents, then
    # the landmark, then the rest; nothing lost or duplicated.
    names = subprocess.run(f"gzip -dc {blob} | tar -tf -", shell=True, capture_output=True, text=True,
                           check=True).stdout.split()
    landmark = names.index(".prefetch.landmark")
    head = [n for n in names[:landmark] if not n.endswith("/")]
    assert sorted(head) == sorted(chosen)
    assert ".no.prefetch.landmark" not in names
    with tarfile.open(layer) as t:
        original = [m.name + ("/" if m.isdir() and not m.name.endswith("/") else "") for m in t.getmembers()]
    rest = [n for n in names if n not in (".prefetch.landmark", "stargz.index.json")]
    assert sorted(rest) == sorted(original)


def test_without_a_list_the_no_prefetch_landmark_comes_first(tmp_path, layer):
    blob = tmp_path / "layer.estargz"
    subprocess.run([proxy_bin(), "convert-layer", "--format", "estargz", str(layer), str(blob)],
                   capture_output=True, check=True)
    names = subprocess.run(f"gzip -dc {blob} | tar -tf -", shell=True, capture_output=True, text=True,
                           check=True).stdout.split()
    assert names[0] == ".no.prefetch.landmark"
    assert names[-1] == "stargz.index.json"
