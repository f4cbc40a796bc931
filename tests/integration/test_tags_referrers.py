"""tags/list pagination done by the proxy, and the Referrers API built from the fallback tag.

distribution 2.8 ignores `n`/`last` on tags/list and has no Referrers API, so both answers
below are the proxy's own work.
"""
import json
import re
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

import images

TAGS = ["v2", "v10", "latest", "1.0", "alpha", "v1.9", "stable"]
SBOM = "application/vnd.example.sbom.v1"
SIGNATURE = "application/vnd.example.signature.v1"


@pytest.fixture(scope="module")
def tagged_repo(open_registry):
    """One image under seven tags in its own repository; returns (repo, tags sorted)."""
    pusher = images.Pusher(open_registry.url, requests.Session())
    body, blobs = images.build_oci_image("tags")
    for tag in TAGS:
        pusher.push_image("paging/app", tag, body, blobs, images.OCI_MANIFEST)
    return "paging/app", sorted(TAGS)


def next_link(resp):
    """The path of a `Link: <...>; rel="next"` header, or None."""
    link = resp.headers.get("Link")
    if link is None:
        return None
    m = re.fullmatch(r'\s*<([^>]+)>\s*;\s*rel="?next"?\s*', link)
    assert m, f"malformed Link header {link!r}"
    return m.group(1)


def test_upstream_ignores_n(open_registry, tagged_repo):
    """Precondition: without the proxy, ?n=3 returns every tag (so paging is the proxy's)."""
    repo, tags = tagged_repo
    resp = requests.get(f"{open_registry.url}/v2/{repo}/tags/list?n=3", timeout=10)
    assert sorted(resp.json()["tags"]) == tags


def test_tags_list_whole(proxy, tagged_repo):
    repo, tags = tagged_repo
    resp = requests.get(f"{proxy.url}/v2/{repo}/tags/list", timeout=10)
    assert resp.status_code == 200
    body = resp.json()
    # Unpaged, the upstream's own order may pass through; only pages need lexical order.
    assert body["name"] == repo and sorted(body["tags"]) == tags
    assert "Link" not in resp.headers


def test_tags_first_page_and_link(proxy, tagged_repo):
    repo, tags = tagged_repo
    resp = requests.get(f"{proxy.url}/v2/{repo}/tags/list?n=3", timeout=10)
    assert resp.status_code == 200
    assert resp.json()["tags"] == tags[:3]
    link = next_link(resp)
    assert link is not None, "first page of three must link to the next"
    parts = urlsplit(link)
    assert not parts.scheme and not parts.netloc, f"Link must be a path, got {link!r}"
    assert parts.path == f"/v2/{repo}/tags/list"
    assert parse_qs(parts.query) == {"n": ["3"], "last": [tags[2]]}


def test_tags_follow_links_to_the_end(proxy, tagged_repo):
    repo, tags = tagged_repo
    seen, pages = [], []
    path = f"/v2/{repo}/tags/list?n=3"
    while path is not None:
        assert len(pages) < 10, "pagination does not end"
        resp = requests.get(proxy.url + path, timeout=10)
        assert resp.status_code == 200
        pages.append(resp.json()["tags"])
        seen += resp.json()["tags"]
        path = next_link(resp)
    assert seen == tags, "every tag exactly once, in lexical order"
    assert [len(p) for p in pages] == [3, 3, 1]


def test_tags_last_without_n(proxy, tagged_repo):
    repo, tags = tagged_repo
    resp = requests.get(f"{proxy.url}/v2/{repo}/tags/list?last={tags[1]}", timeout=10)
    assert resp.status_code == 200
    assert resp.json()["tags"] == tags[2:]


# ---- referrers -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def referrers(open_registry, pushed_images):
    """Two artifacts referring to the OCI test image, and the fallback tag that lists them."""
    pusher = images.Pusher(open_registry.url, requests.Session())
    subject = pushed_images.oci
    sbom = pusher.push_artifact(subject.repo, subject, SBOM, b'{"sbom": "generated"}')
    sig = pusher.push_artifact(subject.repo, subject, SIGNATURE, b"signature bytes")
    index = {
        "schemaVersion": 2, "mediaType": images.OCI_INDEX,
        "manifests": [sbom.descriptor(artifactType=SBOM, annotations={"org.example.kind": SBOM}),
                      sig.descriptor(artifactType=SIGNATURE)],
    }
    tag = subject.digest.replace(":", "-")  # the referrers tag schema: sha256-<hex>
    pusher.push_manifest(subject.repo, tag, images.encode_json(index), images.OCI_INDEX)
    return subject, {SBOM: sbom, SIGNATURE: sig}


def get_referrers(proxy, repo, digest, query=""):
    resp = requests.get(f"{proxy.url}/v2/{repo}/referrers/{digest}{query}", timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers.get("Content-Type", "").split(";")[0] == images.OCI_INDEX
    body = json.loads(resp.content)
    assert body.get("schemaVersion") == 2 and body.get("mediaType") == images.OCI_INDEX
    return resp, body


def _check_descriptor(desc, artifact_type, artifact):
    assert desc["digest"] == artifact.digest
    assert desc["size"] == len(artifact.manifest)
    assert desc["mediaType"] == images.OCI_MANIFEST
    assert desc["artifactType"] == artifact_type


def test_referrers_from_fallback_tag(proxy, referrers):
    subject, artifacts = referrers
    resp, body = get_referrers(proxy, subject.repo, subject.digest)
    by_type = {d.get("artifactType"): d for d in body["manifests"]}
    assert len(body["manifests"]) == 2 and set(by_type) == set(artifacts)
    for artifact_type, artifact in artifacts.items():
        _check_descriptor(by_type[artifact_type], artifact_type, artifact)
    assert "OCI-Filters-Applied" not in resp.headers


def test_referrers_filtered_by_artifact_type(proxy, referrers):
    subject, artifacts = referrers
    resp, body = get_referrers(proxy, subject.repo, subject.digest, f"?artifactType={SBOM}")
    assert len(body["manifests"]) == 1
    _check_descriptor(body["manifests"][0], SBOM, artifacts[SBOM])
    assert resp.headers.get("OCI-Filters-Applied") == "artifactType"


def test_referrers_none(proxy, referrers, pushed_images):
    subject, _ = referrers
    other = pushed_images.index.children[0]  # exists, but nothing refers to it
    _, body = get_referrers(proxy, subject.repo, other.digest)
    assert body["manifests"] == []
    _, body = get_referrers(proxy, subject.repo, "sha256:" + "ab" * 32)
    assert body["manifests"] == []
