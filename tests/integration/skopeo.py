"""Run skopeo as a client and check what it wrote."""
import hashlib
import json
import subprocess
from pathlib import Path

from process import require_program

SKOPEO = "/usr/bin/skopeo"


def copy_to_dir(source_ref, dest_dir, creds=None, all_images=True, timeout=180, cert_dir=None,
                tls_verify=False):
    """`skopeo copy docker://SOURCE dir:DEST`; returns the CompletedProcess.

    By default the source is read over plain http (tls-verify off). tls_verify: https only,
    certificate checked against the system store, or against the CA certificates (*.crt) in
    cert_dir."""
    require_program(SKOPEO, "skopeo")
    argv = [SKOPEO, "--insecure-policy", "copy",
            "--src-tls-verify=true" if tls_verify or cert_dir else "--src-tls-verify=false"]
    if cert_dir:
        argv.append(f"--src-cert-dir={cert_dir}")
    if all_images:
        argv.append("--all")
    if creds:
        argv += ["--src-creds", creds]
    argv += [f"docker://{source_ref}", f"dir:{dest_dir}"]
    # A private auth file, so credentials saved on this machine never leak in.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(dest_dir) + ".home",
           "REGISTRY_AUTH_FILE": str(dest_dir) + ".auth.json"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def check_dir_copy(dest_dir, image):
    """Assert the dir: copy holds image's manifests byte for byte and intact blobs.

    image is an images.PushedImage (with children for an index).
    """
    dest = Path(dest_dir)
    top = (dest / "manifest.json").read_bytes()
    assert top == image.manifest, "top manifest differs from the pushed bytes"
    assert sha256_file(dest / "manifest.json") == image.digest
    expected_blobs = dict(image.blobs)
    for child in image.children:
        path = dest / (child.digest.split(":")[1] + ".manifest.json")
        assert path.exists(), f"child manifest {child.digest} missing"
        assert path.read_bytes() == child.manifest
        expected_blobs.update(child.blobs)
    blob_files = {f"sha256:{p.name}": p for p in dest.iterdir() if len(p.name) == 64}
    assert set(blob_files) == set(expected_blobs), "blob set differs from the pushed image"
    for digest, path in blob_files.items():
        assert sha256_file(path) == digest, f"blob {digest} corrupted"
    # The manifests name exactly these blobs, so a digest check covers config and layers.
    for m in [image] + image.children:
        body = json.loads(m.manifest)
        for d in [body.get("config")] + body.get("layers", []):
            if d:
                assert d["digest"] in blob_files
