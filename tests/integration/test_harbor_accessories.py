"""Harbor webhooks into conversions and write-backs, and the accessories Harbor would see.

Harbor's PUSH_ARTIFACT payloads (the captured shapes in tests/unit/data/webhooks/, default and
CloudEvents) are replayed against the proxy, pointed at images pushed to a real docker-registry
standing in for Harbor's registry. The proxy converts per its rules (Nydus and eStargz) and
writes the variants back. Each pushed variant is then classified with Harbor's accessory rules
(goharbor/harbor src/server/middleware/subject, summarised in shared research harbor.md §1):
the Nydus variant must come out as `accelerator.nydus` (subject in the same repository, an image
config type, no artifactType, the bootstrap annotation on the last layer), the eStargz one as
`subject.accessory`. Harbor then sends events for the proxy's own pushes (one per manifest PUT):
replaying those starts nothing.
"""
import copy
import json
from pathlib import Path

import pytest
import requests

import variant_env as ve
from proxy import upstream
from registry import Registry

SECRET = "Bearer harbor-hook-secret"
DATA = Path(__file__).resolve().parents[1] / "unit" / "data" / "webhooks"
NYDUS_BOOTSTRAP = "containerd.io/snapshot/nydus-bootstrap"
IMAGE_CONFIGS = {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
HARBOR_HOST = "harbor.example.internal"


def harbor_accessory_type(manifest: dict):
    """Harbor's classification of a pushed manifest (harbor.md §1, rule A); None: not an accessory."""
    if "subject" not in manifest:
        return None
    from_type = manifest.get("artifactType") or manifest.get("config", {}).get("mediaType")
    if from_type in IMAGE_CONFIGS:
        layers = manifest.get("layers") or []
        if layers and NYDUS_BOOTSTRAP in (layers[-1].get("annotations") or {}):
            return "accelerator.nydus"
    if from_type == "application/vnd.cncf.notary.signature":
        return "signature.notation"
    return "subject.accessory"


def payload(kind, repo, digest, tag):
    """A captured Harbor payload pointed at repo@digest pushed as `tag` (Harbor puts the digest
    there for a push without a tag)."""
    doc = json.loads((DATA / ("harbor_push_artifact.json" if kind == "default" else "harbor_cloudevents.json")).read_text())
    data = doc["event_data"] if kind == "default" else doc["data"]
    namespace, _, name = repo.partition("/")
    url = f"{HARBOR_HOST}/{repo}@{digest}" if tag == digest else f"{HARBOR_HOST}/{repo}:{tag}"
    data["resources"] = [{"digest": digest, "tag": tag, "resource_url": url}]
    data["repository"].update(name=name, namespace=namespace, repo_full_name=repo)
    return doc


def post(proxy, doc):
    resp = requests.post(proxy.url + "/hooks/harbor", data=json.dumps(doc), timeout=10,
                         headers={"Content-Type": "application/json", "Authorization": SECRET})
    assert resp.status_code == 202, resp.text[:300]
    return resp.json()["conversions"]


def registry_manifest(registry, repo, reference):
    resp = requests.get(f"{registry.url}/v2/{repo}/manifests/{reference}", headers={"Accept": ve.MANIFEST_ACCEPT}, timeout=30)
    assert resp.status_code == 200, (reference, resp.status_code)
    return resp.json(), ve.sha256(resp.content)


@pytest.fixture
def harbor_like(tmp_path, tmp_path_factory):
    reg = Registry(tmp_path / "registry", name="registry-harbor-like").start()
    layers = [ve.layer_files(tmp_path_factory, "small-harbor-a"), ve.layer_files(tmp_path_factory, "small-harbor-b")]
    app = ve.push_layers_image(reg.url, requests.Session(), "proj/app", "1", layers, seed="harbor-app")
    web = ve.push_layers_image(reg.url, requests.Session(), "proj/web/frontend", "2.1", layers[:1], seed="harbor-web")
    hooks = {"webhooks": {"secret": SECRET, "rules": [{"repositories": ["proj/**"], "formats": ["nydus", "estargz"]}]}}
    up = upstream("harbor", reg.url, writeback={"enabled": True, "tag": True}, robot={"username": "", "password": ""})
    with ve.running_variant_proxy(tmp_path / "proxy", [up], ve.variants_config(), extra_config=hooks) as proxy:
        yield reg, proxy, app, web
    reg.stop()


def test_webhooks_convert_and_write_back_harbor_accessories(harbor_like):
    reg, proxy, app, web = harbor_like
    started = post(proxy, payload("default", "proj/app", app.digest, "1"))
    assert sorted((c["format"], c["state"]) for c in started) == [("estargz", "queued"), ("nydus", "queued")]
    started = post(proxy, payload("cloudevents", "proj/web/frontend", web.digest, "2.1"))
    assert sorted(c["format"] for c in started) == ["estargz", "nydus"]
    ve.wait_until(lambda: ve.metric(proxy, "accel_proxy_writebacks_total", outcome="done") >= 4
                  or ve.metric(proxy, "accel_proxy_writebacks_total", outcome="failed") > 0, 120, "four write-backs")
    assert ve.metric(proxy, "accel_proxy_writebacks_total", outcome="failed") == 0, proxy.log_tail()

    for repo, source, tag in (("proj/app", app, "1"), ("proj/web/frontend", web, "2.1")):
        nydus, nydus_digest = registry_manifest(reg, repo, f"{tag}-nydus")
        estargz, estargz_digest = registry_manifest(reg, repo, f"{tag}-estargz")
        # What Harbor requires of an accelerator.nydus accessory, one by one.
        assert nydus["subject"]["digest"] == source.digest  # pushed to the source's own repository
        assert nydus["config"]["mediaType"] in IMAGE_CONFIGS
        assert "artifactType" not in nydus
        assert NYDUS_BOOTSTRAP in nydus["layers"][-1]["annotations"]
        assert harbor_accessory_type(nydus) == "accelerator.nydus"
        assert harbor_accessory_type(estargz) == "subject.accessory"
        assert estargz["subject"]["digest"] == source.digest
        # Every blob is in the repository (Harbor would refuse a manifest naming a missing one).
        for variant in (nydus, estargz):
            for blob in [variant["config"]] + variant["layers"]:
                assert requests.head(f"{reg.url}/v2/{repo}/blobs/{blob['digest']}", timeout=30).status_code == 200
        # Both listed as referrers of the source (fallback tag on this registry).
        index, _ = registry_manifest(reg, repo, source.digest.replace(":", "-"))
        assert sorted(d["digest"] for d in index["manifests"]) == sorted([nydus_digest, estargz_digest])

    # Harbor's events for the proxy's own pushes: the variants by digest, the suffix tags, the
    # referrers index. None of them is a source; nothing starts.
    done = ve.metric(proxy, "accel_proxy_conversions_total", outcome="done")
    nydus, nydus_digest = registry_manifest(reg, "proj/app", "1-nydus")
    _, estargz_digest = registry_manifest(reg, "proj/app", "1-estargz")
    _, index_digest = registry_manifest(reg, "proj/app", app.digest.replace(":", "-"))
    echoes = [payload("default", "proj/app", nydus_digest, nydus_digest),
              payload("default", "proj/app", nydus_digest, "1-nydus"),
              payload("cloudevents", "proj/app", estargz_digest, "1-estargz"),
              payload("default", "proj/app", index_digest, app.digest.replace(":", "-"))]
    for doc in echoes:
        for c in post(proxy, doc):
            assert c["state"].startswith("ignored"), c
    # A variant another replica pushed (not in this cache) is told by its tag.
    other = copy.deepcopy(payload("default", "proj/app", "sha256:" + "ab" * 32, "7-nydus"))
    assert all(c["state"].startswith("ignored") for c in post(proxy, other))
    listing = requests.get(proxy.url + "/api/conversions", headers={"Authorization": SECRET}, timeout=10).json()
    assert len(listing["conversions"]) == 4, listing
    assert ve.metric(proxy, "accel_proxy_conversions_total", outcome="done") == done
