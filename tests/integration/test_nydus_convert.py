"""`accel-proxy convert --format nydus` registry to registry, and `accel-proxy check` on it.

The image-level step of Nydus reads the blobs it wrote back from the destination (each blob's
own bootstrap, through the TOC at its end): against a registry that is a Range GET, so this
checks the registry target's ranged reads as well as the result. The converted image must
pass `check` read from the registry, skopeo must copy it, and converting it again is a no-op.
"""
import json
import subprocess
import tarfile

import estargz_tools as et
import images

FILES_1 = [("etc/", {"type": tarfile.DIRTYPE, "mode": 0o755}, b""),
           ("etc/os-release", b'NAME="Test"\nID=test\n'),
           ("usr/bin/tool", {"mode": 0o755}, images.deterministic_bytes("nydus-tool", 3_000_000))]
FILES_2 = [("etc/.wh.os-release", b""),
           ("opt/app/data.txt", b"some data\n" * 50_000),
           ("opt/app/tool-link", {"type": tarfile.LNKTYPE, "linkname": "usr/bin/tool"}, b"")]


def run(*args):
    return subprocess.run([str(et.require_binary()), *args], capture_output=True, text=True, timeout=300)


def test_registry_to_registry_then_check(open_registry, tmp_path):
    host = open_registry.url.split("://", 1)[1]
    repo = "nydus/convert"
    layers = [(et.gzip_bytes(et.tar_bytes(FILES_1)), et.tar_bytes(FILES_1)),
              (et.gzip_bytes(et.tar_bytes(FILES_2)), et.tar_bytes(FILES_2))]
    source = et.push_layers_image(open_registry.url, repo, "v1", layers, seed="nydus-convert")
    p = et.convert(f"docker://{host}/{repo}:v1", f"docker://{host}/{repo}:v1-nydus", "--format", "nydus",
                   "--src-tls-verify=false", "--dest-tls-verify=false", "--json", workdir=tmp_path)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["format"] == "nydus" and summary["layers_converted"] == 2

    body, _ = et.get_manifest(open_registry.url, repo, "v1-nydus")
    manifest = json.loads(body)
    assert [l["mediaType"] for l in manifest["layers"]] == [
        "application/vnd.oci.image.layer.nydus.blob.v1"] * 2 + ["application/vnd.oci.image.layer.v1.tar+gzip"]
    assert manifest["subject"]["digest"] == source.digest

    c = run("check", f"docker://{host}/{repo}:v1-nydus", "--tls-verify=false")
    assert c.returncode == 0, c.stdout + c.stderr
    assert "0 faults" in c.stdout

    # skopeo copies it out; the copy checks too.
    out = tmp_path / "copy"
    cp = subprocess.run(["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false",
                         f"docker://{host}/{repo}:v1-nydus", f"oci:{out}:x"],
                        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert cp.returncode == 0, cp.stderr
    c = run("check", f"oci:{out}:x")
    assert c.returncode == 0, c.stdout + c.stderr

    # Converting the Nydus image again changes nothing.
    p = et.convert(f"docker://{host}/{repo}:v1-nydus", f"oci:{tmp_path / 'again'}:x", "--format", "nydus",
                   "--src-tls-verify=false", "--json", workdir=tmp_path)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["already_converted"] is True


def test_check_reports_a_plain_image(open_registry, tmp_path):
    """An ordinary image is neither format: check says so and exits 1."""
    host = open_registry.url.split("://", 1)[1]
    layers = [(et.gzip_bytes(et.tar_bytes(FILES_1)), et.tar_bytes(FILES_1))]
    et.push_layers_image(open_registry.url, "nydus/plain", "v1", layers, seed="nydus-plain")
    c = run("check", f"docker://{host}/nydus/plain:v1", "--tls-verify=false")
    assert c.returncode == 1
    assert "neither Nydus" in c.stdout
