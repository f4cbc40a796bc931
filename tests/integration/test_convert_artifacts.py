"""Artifacts (SBOMs, signatures: manifests whose config is not an image config) are not images:
converting one keeps it as it is instead of failing, so webhook rules over a repository that
also receives signatures do not produce failed conversions."""
import requests

import images
from estargz_tools import convert_json


def test_an_artifact_is_kept_as_it_is(tmp_path, open_registry, pushed_images):
    pusher = images.Pusher(open_registry.url, requests.Session())
    artifact = pusher.push_artifact("lib/oci-app", pushed_images.oci, "application/vnd.example.sbom.v1",
                                    b'{"sbom": true}', tag="sbom-1")
    host = open_registry.url.split("://", 1)[1]
    result = convert_json(f"docker://{host}/lib/oci-app:sbom-1", f"docker://{host}/lib/oci-app:sbom-1-estargz",
                          "--src-tls-verify=false", "--dest-tls-verify=false", workdir=tmp_path)
    assert result["already_converted"] is True
    assert result["layers_converted"] == 0
    assert result["manifest_digest"] == artifact.digest
    # The target tag names exactly the same bytes.
    got = requests.get(f"{open_registry.url}/v2/lib/oci-app/manifests/sbom-1-estargz",
                       headers={"Accept": images.OCI_MANIFEST}, timeout=10)
    assert got.status_code == 200
    assert got.content == artifact.manifest
