"""Original blobs and manifests kept locally (`cache_originals: true` on an upstream).

What a client fetches by digest through the proxy is written to the cache while it streams,
committed only when its digest checks out, and served from disk afterwards (HEAD, Range,
multi-range), but only to clients the upstream lets read that repository. Tags still go
upstream every time.

- open registry: cold then warm (byte-identical, no request reaches the registry, also with the
  registry stopped), Range and multi-range from disk, tags always upstream, off by default and
  when turned off again, with variants off;
- an upstream that serves wrong bytes for a digest (hook_front's body filter): the client gets
  the upstream's bytes, the cache never commits them, the next request asks the upstream again;
- a client that hangs up mid-body, and a proxy killed with SIGKILL mid-body: nothing is committed,
  the cache stays consistent (`cache-crash-driver check` and an independent walk);
- token registry (token_server.py: alice may pull everything, bob and anonymous only public/):
  the authorization matrix for originals, cold and warm, by tag and by digest, GET, HEAD, Range,
  also through another repository's path: 0 leaks;
- htpasswd registry: a grant that expires after the client lost access upstream (its account
  removed), and an object deleted upstream: not served once authorization_ttl has passed.
"""
import hashlib
import json
import os
import signal
import time
from pathlib import Path

import pytest
import requests

import images
import prom
import registry_auth
import variant_env as ve
from hook_front import HookFront
from multipart import parse_byteranges, parse_content_range
from pki import make_pki
from proxy import Proxy, supervised, upstream
from registry import Registry
from registry_auth import fetch_token, parse_challenge
from token_server import ANONYMOUS, USERS, allowed_actions

BIG_SIZE = 3 * 1024 * 1024 + 17   # the splice/tee path (more than 64 KiB after the header)
ABORT_SIZE = 48 * 1024 * 1024     # more than loopback socket buffers hold: a hang-up is seen
DENIED = {401, 403, 404}


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def originals_upstream(name, url, **options):
    return upstream(name, url, cache_originals=True, **options)


def start_proxy(workdir, upstreams, variants=None, **options):
    return ve.running_variant_proxy(workdir, upstreams, variants, **options)


def metric(proxy, name, **labels):
    resp = requests.get(proxy.url + "/metrics", timeout=10, verify=proxy.verify)  # also over https
    assert resp.status_code == 200
    return prom.total(prom.parse(resp.text), name, **labels)


def committed(proxy):
    return metric(proxy, "accel_proxy_originals_stored_total", result="committed")


def wait_committed(proxy, count, timeout=30):
    """Commits run on their own thread after the client has its bytes: wait for them."""
    ve.wait_until(lambda: committed(proxy) >= count, timeout, f"{count} originals committed")


def get(proxy, repo, kind, ref, auth=None, method="GET", headers=None, **kwargs):
    path = "manifests" if kind == "manifest" else "blobs"
    h = {"Accept": ve.MANIFEST_ACCEPT}
    if auth:
        h["Authorization"] = auth
    h.update(headers or {})
    return requests.request(method, f"{proxy.url}/v2/{repo}/{path}/{ref}", headers=h, timeout=60,
                            allow_redirects=False, **kwargs)


def cache_index(proxy):
    """The cache's index, after checking every entry against its file (size and sha256); with
    the proxy stopped also the cache's own reconciliation and check."""
    problems, index = ve.cache_problems(ve.cache_dir(proxy), reconcile=not proxy.alive())
    assert problems == [], problems
    return index


def temp_files(proxy):
    return sorted(p.name for p in (ve.cache_dir(proxy) / "blobs" / "tmp").iterdir())


class Image:
    """A pushed OCI image and everything a pull of it reads: [(kind, digest, bytes, media type)]."""

    def __init__(self, pushed, extra_blobs=()):
        self.repo = pushed.repo
        self.tag = pushed.tag
        self.digest = pushed.digest
        self.objects = [("manifest", pushed.digest, pushed.manifest, pushed.media_type)]
        for d, data in list(pushed.blobs.items()) + list(extra_blobs):
            self.objects.append(("blob", d, data, None))

    def blobs(self):
        return [o for o in self.objects if o[0] == "blob"]


def push_image(base_url, session, repo, seed, big_size=BIG_SIZE, tag="1", docker=False):
    """An image with a config, two small gzip layers and one large random layer."""
    build = images.build_docker_image if docker else images.build_oci_image
    body, blobs = build(seed)
    manifest = json.loads(body)
    big = images.Blob(manifest["layers"][0]["mediaType"], images.deterministic_bytes(f"{seed}-big", big_size))
    manifest["layers"].append(big.descriptor())
    body = images.encode_json(manifest)
    media_type = images.DOCKER_MANIFEST if docker else images.OCI_MANIFEST
    pushed = images.Pusher(base_url, session).push_image(repo, tag, body, blobs + [big], media_type)
    return Image(pushed)


def check_object(resp, kind, digest, data, media_type):
    assert resp.status_code == 200, (kind, digest, resp.status_code, resp.text[:200])
    assert resp.content == data, f"{kind} {digest}: not the bytes pushed"
    assert int(resp.headers["Content-Length"]) == len(data)
    if kind == "manifest":
        assert resp.headers["Content-Type"] == media_type
        assert resp.headers["Docker-Content-Digest"] == digest


# ---- open registry: cold, warm, ranges, tags ------------------------------------------------

@pytest.fixture(scope="module")
def open_reg(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("registry-originals"), name="registry-originals").start()
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def open_images(open_reg):
    s = requests.Session()
    return {"oci": push_image(open_reg.url, s, "orig/oci", "orig-oci"),
            "docker": push_image(open_reg.url, s, "orig/docker", "orig-docker", docker=True)}


@pytest.fixture(scope="module")
def warm_proxy(tmp_path_factory, open_reg, open_images):
    """A proxy with cache_originals that pulled both images by digest once (all committed)."""
    with start_proxy(tmp_path_factory.mktemp("proxy-originals"),
                     [originals_upstream("main", open_reg.url)]) as proxy:
        count = 0
        for image in open_images.values():
            for kind, digest, data, media_type in image.objects:
                check_object(get(proxy, image.repo, kind, digest), kind, digest, data, media_type)
                count += 1
        wait_committed(proxy, count)
        yield proxy


def test_cold_pull_is_kept_and_warm_pull_never_reaches_the_registry(warm_proxy, open_reg, open_images):
    log = ve.RegistryLog(open_reg)
    mark = log.mark()
    hits = metric(warm_proxy, "accel_proxy_originals_hits_total")
    served = metric(warm_proxy, "accel_proxy_originals_served_bytes_total")
    total = 0
    for image in open_images.values():
        for kind, digest, data, media_type in image.objects:
            check_object(get(warm_proxy, image.repo, kind, digest), kind, digest, data, media_type)
            head = get(warm_proxy, image.repo, kind, digest, method="HEAD")
            assert head.status_code == 200 and head.content == b""
            assert int(head.headers["Content-Length"]) == len(data)
            assert head.headers["Docker-Content-Digest"] == digest
            total += len(data)
    assert log.requests(mark) == [], "a warm pull reached the registry"
    objects = sum(len(i.objects) for i in open_images.values())
    assert metric(warm_proxy, "accel_proxy_originals_hits_total") == hits + 2 * objects
    assert metric(warm_proxy, "accel_proxy_originals_served_bytes_total") == served + total
    index = cache_index(warm_proxy)
    for image in open_images.values():
        for kind, digest, data, media_type in image.objects:
            assert index["blobs"][digest]["s"] == len(data)
    assert temp_files(warm_proxy) == []


def test_warm_pull_with_the_registry_stopped(tmp_path_factory, open_reg, open_images):
    """While the client's read grant is fresh (authorization_ttl, 60 s by default), a warm pull
    needs no upstream at all: the bytes come from the cache's files."""
    image = open_images["oci"]
    with start_proxy(tmp_path_factory.mktemp("proxy-originals-stopped"),
                     [originals_upstream("main", open_reg.url)]) as proxy:
        for kind, digest, data, mt in image.objects:
            check_object(get(proxy, image.repo, kind, digest), kind, digest, data, mt)
        wait_committed(proxy, len(image.objects))
        open_reg.stop()
        try:
            for kind, digest, data, media_type in image.objects:
                check_object(get(proxy, image.repo, kind, digest), kind, digest, data, media_type)
            # A tag is never answered from the cache: with the registry gone it fails.
            r = get(proxy, image.repo, "manifest", image.tag)
            assert r.status_code == 502, r.status_code
        finally:
            open_reg.start()


def test_range_and_multirange_from_disk(warm_proxy, open_reg, open_images):
    image = open_images["oci"]
    _, digest, data, _ = max(image.blobs(), key=lambda o: len(o[2]))
    log = ve.RegistryLog(open_reg)
    mark = log.mark()
    r = get(warm_proxy, image.repo, "blob", digest, headers={"Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == data[100:200]
    assert parse_content_range(r.headers["Content-Range"]) == (100, 199, len(data))
    r = get(warm_proxy, image.repo, "blob", digest, headers={"Range": "bytes=-10"})
    assert r.status_code == 206 and r.content == data[-10:]
    r = get(warm_proxy, image.repo, "blob", digest, headers={"Range": f"bytes={len(data) - 5}-"})
    assert r.status_code == 206 and r.content == data[-5:]
    r = get(warm_proxy, image.repo, "blob", digest,
            headers={"Range": "bytes=0-9,1048576-1114111,-7"})
    assert r.status_code == 206
    parts = parse_byteranges(r.headers["Content-Type"], r.content)
    assert [p[1] for p in parts] == [data[0:10], data[1048576:1114112], data[-7:]]
    assert [parse_content_range(p[0]["content-range"]) for p in parts] == \
        [(0, 9, len(data)), (1048576, 1114111, len(data)), (len(data) - 7, len(data) - 1, len(data))]
    r = get(warm_proxy, image.repo, "blob", digest, headers={"Range": f"bytes={len(data)}-"})
    assert r.status_code == 416
    assert r.headers["Content-Range"] == f"bytes */{len(data)}"
    r = get(warm_proxy, image.repo, "blob", digest, headers={"Range": "bytes=oops"})
    assert r.status_code == 416 and json.loads(r.content)["errors"][0]["code"] == "RANGE_INVALID"
    assert log.requests(mark) == [], "ranges of a kept blob reached the registry"


def test_tags_always_go_upstream(warm_proxy, open_reg, open_images):
    image = open_images["oci"]
    log = ve.RegistryLog(open_reg)
    mark = log.mark()
    for _ in range(3):
        r = get(warm_proxy, image.repo, "manifest", image.tag)
        assert r.status_code == 200 and r.content == image.objects[0][2]
    gets = [p for m, p, _s in log.requests(mark) if m == "GET" and p.endswith(f"/manifests/{image.tag}")]
    assert len(gets) == 3, log.requests(mark)
    # A tag moved upstream is seen at once; the new manifest by digest is kept in turn.
    moved = push_image(open_reg.url, requests.Session(), image.repo, "orig-oci-moved", tag="moving")
    r = get(warm_proxy, image.repo, "manifest", "moving")
    assert r.status_code == 200 and r.content == moved.objects[0][2]
    pushed = images.Pusher(open_reg.url, requests.Session())
    pushed.push_manifest(image.repo, "moving", image.objects[0][2], images.OCI_MANIFEST)
    r = get(warm_proxy, image.repo, "manifest", "moving")
    assert r.status_code == 200 and r.content == image.objects[0][2]


def test_accept_that_excludes_the_kept_manifest_goes_upstream(warm_proxy, open_reg, open_images):
    image = open_images["docker"]
    kind, digest, data, media_type = image.objects[0]
    log = ve.RegistryLog(open_reg)
    mark = log.mark()
    r = get(warm_proxy, image.repo, kind, digest, headers={"Accept": images.OCI_INDEX})
    assert [(m, p) for m, p, _s in log.requests(mark)] == [("GET", f"/v2/{image.repo}/manifests/{digest}")]
    assert r.status_code == 200 and r.content == data  # distribution answers by digest anyway
    mark = log.mark()
    r = get(warm_proxy, image.repo, kind, digest, headers={"Accept": f"{media_type}, */*;q=0.1"})
    check_object(r, kind, digest, data, media_type)
    assert log.requests(mark) == []


def test_off_by_default_and_when_turned_off(tmp_path_factory, open_reg, open_images):
    """Opt-in per upstream: a proxy on the same cache directory without cache_originals serves
    nothing it holds from there, and keeps nothing."""
    image = open_images["oci"]
    workdir = tmp_path_factory.mktemp("proxy-originals-toggle")
    with start_proxy(workdir / "on", [originals_upstream("main", open_reg.url)]) as proxy:
        for kind, digest, data, mt in image.objects:
            check_object(get(proxy, image.repo, kind, digest), kind, digest, data, mt)
        wait_committed(proxy, len(image.objects))
        cache_dir = ve.cache_dir(proxy)
    off = Proxy(workdir / "off", [upstream("main", open_reg.url)])
    off.config["cache_dir"] = str(cache_dir)
    with supervised(off.start()) as off:
        log = ve.RegistryLog(open_reg)
        for _ in range(2):
            mark = log.mark()
            for kind, digest, data, mt in image.objects:
                check_object(get(off, image.repo, kind, digest), kind, digest, data, mt)
            gets = [p for m, p, _s in log.requests(mark) if m == "GET"]
            assert len(gets) == len(image.objects), "kept originals served with cache_originals off"
        assert "accel_proxy_originals" not in requests.get(off.url + "/metrics", timeout=10).text


def test_with_variants_off(tmp_path_factory, open_reg, open_images):
    image = open_images["docker"]
    with start_proxy(tmp_path_factory.mktemp("proxy-originals-novariants"),
                     [originals_upstream("main", open_reg.url)], {"enabled": False}) as proxy:
        for kind, digest, data, mt in image.objects:
            check_object(get(proxy, image.repo, kind, digest), kind, digest, data, mt)
        wait_committed(proxy, len(image.objects))
        log = ve.RegistryLog(open_reg)
        mark = log.mark()
        for kind, digest, data, mt in image.objects:
            check_object(get(proxy, image.repo, kind, digest), kind, digest, data, mt)
        assert log.requests(mark) == []
        # No variants: a suffix tag is just a tag the upstream does not have.
        assert get(proxy, image.repo, "manifest", image.tag + ve.SUFFIX).status_code == 404
        assert requests.get(proxy.url + "/api/conversions", timeout=10).status_code == 404


def test_over_tls(tmp_path_factory, open_reg, open_images):
    """An HTTPS listener: the body is copied through the connection's buffer (no splice, no
    sendfile), into the capture when cold and out of the cache file when warm."""
    pki = make_pki(tmp_path_factory.mktemp("pki-originals"))
    image = open_images["docker"]
    with start_proxy(tmp_path_factory.mktemp("proxy-originals-tls"), [originals_upstream("main", open_reg.url)],
                     tls=pki.server, ca=pki.ca) as proxy:
        for kind, digest, data, mt in image.objects:
            check_object(get(proxy, image.repo, kind, digest, verify=str(pki.ca)), kind, digest, data, mt)
        wait_committed(proxy, len(image.objects))
        log = ve.RegistryLog(open_reg)
        mark = log.mark()
        for kind, digest, data, mt in image.objects:
            check_object(get(proxy, image.repo, kind, digest, verify=str(pki.ca)), kind, digest, data, mt)
        _, digest, data, _ = max(image.blobs(), key=lambda o: len(o[2]))
        r = get(proxy, image.repo, "blob", digest, verify=str(pki.ca), headers={"Range": "bytes=5-9,-300000"})
        parts = parse_byteranges(r.headers["Content-Type"], r.content)
        assert r.status_code == 206 and [p[1] for p in parts] == [data[5:10], data[-300000:]]
        assert log.requests(mark) == []


def test_blobs_behind_a_storage_redirect(tmp_path_factory, redirect_front, pushed_images):
    """Blob reads answered with 307 to storage (followed by the proxy): the storage's 200 is
    kept, and the read check of a warm request follows the redirect too."""
    repo, digest, data = pushed_images.big_repo, pushed_images.big_digest, pushed_images.big_data
    with start_proxy(tmp_path_factory.mktemp("proxy-originals-redirect"),
                     [originals_upstream("main", redirect_front.url)], ve.variants_config(authorization_ttl="1s")) as proxy:
        r = get(proxy, repo, "blob", digest)
        assert r.status_code == 200 and r.content == data
        wait_committed(proxy, 1)
        time.sleep(1.2)  # the cold answer's grant has expired: the warm GET checks upstream first
        allowed = metric(proxy, "accel_proxy_authorization_checks_total", result="allowed")
        r = get(proxy, repo, "blob", digest, headers={"Range": "bytes=1000-1999"})
        assert r.status_code == 206 and r.content == data[1000:2000]
        assert metric(proxy, "accel_proxy_authorization_checks_total", result="allowed") == allowed + 1
        assert metric(proxy, "accel_proxy_originals_hits_total", kind="blob") == 1


# ---- an upstream that lies, a client that leaves, a proxy that dies -----------------------

def flip_for(digests):
    """A body filter that flips one bit of each body of the given digests (same length)."""
    def flip(method, path, body):
        if method == "GET" and path.rsplit("/", 1)[-1] in digests:
            mid = len(body) // 2
            return body[:mid] + bytes([body[mid] ^ 1]) + body[mid + 1:]
        return body
    return flip


def test_wrong_bytes_from_the_upstream_are_never_committed(tmp_path_factory, open_reg, open_images):
    image = open_images["oci"]
    manifest = image.objects[0]
    small = min(image.blobs(), key=lambda o: len(o[2]))   # copied through the buffer
    big = max(image.blobs(), key=lambda o: len(o[2]))     # the splice/tee path
    lying = [manifest, small, big]
    front = HookFront(open_reg.url).start()
    front.body_filter = flip_for({o[1] for o in lying})
    try:
        with start_proxy(tmp_path_factory.mktemp("proxy-originals-lying"),
                         [originals_upstream("main", front.url)]) as proxy:
            for kind, digest, data, _mt in lying:
                r = get(proxy, image.repo, kind, digest)
                # The client gets what the upstream sent (as without the proxy); it can check it.
                assert r.status_code == 200 and len(r.content) == len(data) and r.content != data
            ve.wait_until(lambda: metric(proxy, "accel_proxy_originals_digest_mismatches_total") == 3, 30,
                          "3 digest mismatches counted")
            assert metric(proxy, "accel_proxy_originals_digest_mismatches_total", kind="blob") == 2
            assert committed(proxy) == 0
            index = cache_index(proxy)
            for _kind, digest, _data, _mt in lying:
                assert digest not in index["blobs"], f"{digest} committed with wrong bytes"
            assert temp_files(proxy) == []
            # Nothing was kept: the next request asks the upstream again.
            seen = len(front.seen)
            for kind, digest, _data, _mt in lying:
                assert get(proxy, image.repo, kind, digest).content != _data
            assert len(front.seen) == seen + 3
            # Honest again: kept, and then served without the upstream.
            front.body_filter = None
            for kind, digest, data, mt in lying:
                check_object(get(proxy, image.repo, kind, digest), kind, digest, data, mt)
            wait_committed(proxy, 3)
            front.body_filter = flip_for({o[1] for o in lying})
            seen = len(front.seen)
            for kind, digest, data, mt in lying:
                check_object(get(proxy, image.repo, kind, digest), kind, digest, data, mt)
            assert len(front.seen) == seen
    finally:
        front.stop()


def test_longer_body_than_the_digest_is_never_committed(tmp_path_factory, open_reg, open_images):
    image = open_images["oci"]
    _, digest, data, _ = max(image.blobs(), key=lambda o: len(o[2]))
    front = HookFront(open_reg.url).start()
    front.body_filter = lambda m, p, body: body + b"trailing" if p.endswith(digest) else body
    try:
        with start_proxy(tmp_path_factory.mktemp("proxy-originals-long"),
                         [originals_upstream("main", front.url)]) as proxy:
            r = get(proxy, image.repo, "blob", digest)
            assert r.status_code == 200 and r.content == data + b"trailing"
            ve.wait_until(lambda: metric(proxy, "accel_proxy_originals_digest_mismatches_total") == 1, 30,
                          "a digest mismatch counted")
            assert digest not in cache_index(proxy)["blobs"]
    finally:
        front.stop()


@pytest.fixture(scope="module")
def abort_blob(open_reg):
    data = images.deterministic_bytes("orig-abort", ABORT_SIZE)
    digest = images.Pusher(open_reg.url, requests.Session()).push_blob("orig/abort", data)
    return "orig/abort", digest, data


def test_client_hanging_up_mid_body_commits_nothing(tmp_path_factory, open_reg, abort_blob):
    repo, digest, data = abort_blob
    with start_proxy(tmp_path_factory.mktemp("proxy-originals-hangup"),
                     [originals_upstream("main", open_reg.url)]) as proxy:
        r = get(proxy, repo, "blob", digest, stream=True)
        assert r.status_code == 200
        first = r.raw.read(1024 * 1024)
        assert first == data[:len(first)]
        r.close()  # the client is gone
        ve.wait_until(lambda: metric(proxy, "accel_proxy_originals_stored_total", result="aborted") == 1, 30,
                      "the capture abandoned")
        assert committed(proxy) == 0
        assert digest not in cache_index(proxy)["blobs"]
        assert temp_files(proxy) == []
        # The next whole GET keeps it.
        r = get(proxy, repo, "blob", digest)
        assert r.status_code == 200 and r.content == data
        wait_committed(proxy, 1)
        assert cache_index(proxy)["blobs"][digest]["s"] == len(data)


def test_proxy_killed_mid_body_leaves_nothing_half_written(tmp_path_factory, open_reg, abort_blob):
    repo, digest, data = abort_blob
    with start_proxy(tmp_path_factory.mktemp("proxy-originals-kill"),
                     [originals_upstream("main", open_reg.url)]) as proxy:
        r = get(proxy, repo, "blob", digest, stream=True)
        assert r.status_code == 200
        r.raw.read(4 * 1024 * 1024)
        ve.wait_until(lambda: temp_files(proxy), 10, "the capture's file in blobs/tmp")
        ve.kill(proxy)
        r.close()
        assert temp_files(proxy), "the partial file should still be there before the restart"
        ve.restart(proxy)
        assert temp_files(proxy) == [], "a partial file survived the restart"
        assert digest not in cache_index(proxy)["blobs"]
        r = get(proxy, repo, "blob", digest)
        assert r.status_code == 200 and r.content == data
        wait_committed(proxy, 1)
        # Committed and durable: still there, whole, after another SIGKILL.
        ve.kill(proxy)
        ve.restart(proxy)
        assert cache_index(proxy)["blobs"][digest]["s"] == len(data)
        log = ve.RegistryLog(open_reg)
        mark = log.mark()
        r = get(proxy, repo, "blob", digest)
        assert r.status_code == 200 and r.content == data
        assert log.blob_gets(mark)[digest] == 0


# ---- the authorization matrix ----------------------------------------------------------------

UPSTREAM = "secure"
TAG = "1"
REPOS = {"private": "private/orig-app", "public": "public/orig-app"}
USER_IDS = {"alice": "alice", "bob": "bob", ANONYMOUS: "anonymous"}


def may_pull(user, repo):
    return "pull" in allowed_actions(user, "repository", repo)


def client_token(proxy, user, repo):
    """What a client does after the 401: the proxy's realm, with its credentials."""
    r = get(proxy, repo, "manifest", TAG)
    assert r.status_code == 401, (r.status_code, r.text[:200])
    scheme, params = parse_challenge(r.headers.get("WWW-Authenticate", ""))
    assert scheme == "bearer" and params["realm"] == f"{proxy.url}/auth/token/{UPSTREAM}"
    creds = None if user == ANONYMOUS else (user, USERS[user])
    tok = fetch_token(params["realm"], params.get("service"), params.get("scope"), creds)
    assert tok.status_code == 200, tok.text
    return "Bearer " + (tok.json().get("token") or tok.json().get("access_token"))


@pytest.fixture(scope="module")
def secure_images(token_registry):
    alice = registry_auth.session("alice", USERS["alice"])
    return {key: push_image(token_registry.url, alice, repo, f"orig-auth-{key}")
            for key, repo in REPOS.items()}


def start_secure(tmp_path_factory, token_registry, name, ttl="60s"):
    return start_proxy(tmp_path_factory.mktemp(name),
                       [originals_upstream(UPSTREAM, token_registry.url, token_proxy=True)],
                       ve.variants_config(authorization_ttl=ttl))


class Leaks:
    """Every answer that gave a client bytes of an object it may not read (and, with a token
    upstream, every 401 that does not send the client to the proxy's token endpoint)."""

    def __init__(self, secret_objects, realm_suffix=f"/auth/token/{UPSTREAM}"):
        self.secrets = [o[2] for o in secret_objects]
        self.realm_suffix = realm_suffix
        self.found = []

    def denied(self, resp, what):
        if resp.status_code not in DENIED:
            self.found.append(f"{what}: status {resp.status_code}")
        for data in self.secrets:
            if len(data) >= 64 and data[:64] in resp.content:
                self.found.append(f"{what}: secret bytes in the body")
        if resp.status_code == 401 and self.realm_suffix:
            _, params = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
            if not params.get("realm", "").endswith(self.realm_suffix):
                self.found.append(f"{what}: a 401 that does not send the client to the proxy's realm")


def check_user(proxy, registry, image, user, leaks, cold):
    """By tag, then every object by digest (GET, HEAD, Range), as `user`."""
    auth = client_token(proxy, user, image.repo)
    allowed = may_pull(user, image.repo)
    upstream_says = requests.get(f"{registry.url}/v2/{image.repo}/manifests/{image.digest}",
                                 headers={"Authorization": auth, "Accept": ve.MANIFEST_ACCEPT}, timeout=30)
    assert (upstream_says.status_code == 200) == allowed
    label = f"{user} {image.repo} ({'cold' if cold else 'warm'})"
    r = get(proxy, image.repo, "manifest", TAG, auth)
    if allowed:
        assert r.status_code == 200 and r.content == image.objects[0][2], label
    else:
        leaks.denied(r, f"{label} by tag")
    for kind, digest, data, media_type in image.objects:
        what = f"{label} {kind} {digest[:19]}"
        g = get(proxy, image.repo, kind, digest, auth)
        h = get(proxy, image.repo, kind, digest, auth, method="HEAD")
        rg = get(proxy, image.repo, kind, digest, auth, headers={"Range": "bytes=0-9"})
        if allowed:
            check_object(g, kind, digest, data, media_type)
            assert h.status_code == 200 and int(h.headers["Content-Length"]) == len(data), what
            if rg.status_code == 200 and kind == "manifest" and cold:
                assert rg.content == data, what  # distribution ignores Range on manifests
            else:
                assert rg.status_code == 206 and rg.content == data[:10], what
        else:
            for resp, how in ((g, "GET"), (h, "HEAD"), (rg, "Range")):
                leaks.denied(resp, f"{what} {how}")


@pytest.fixture(scope="module")
def secure_warm(tmp_path_factory, token_registry, secure_images):
    """A proxy where alice pulled both repositories by digest: everything kept."""
    with start_secure(tmp_path_factory, token_registry, "proxy-originals-auth-warm") as proxy:
        count = 0
        for image in secure_images.values():
            auth = client_token(proxy, "alice", image.repo)
            for kind, digest, data, mt in image.objects:
                check_object(get(proxy, image.repo, kind, digest, auth), kind, digest, data, mt)
                count += 1
        wait_committed(proxy, count)
        yield proxy


@pytest.mark.parametrize("user", list(USER_IDS), ids=list(USER_IDS.values()))
def test_authorization_cold(tmp_path_factory, token_registry, secure_images, user):
    with start_secure(tmp_path_factory, token_registry, "proxy-originals-auth-cold") as proxy:
        leaks = Leaks(secure_images["private"].objects)
        for image in secure_images.values():
            check_user(proxy, token_registry, image, user, leaks, cold=True)
        assert leaks.found == []
        # What was refused upstream was not kept; what was read was.
        readable = [i for i in secure_images.values() if may_pull(user, i.repo)]
        wait_committed(proxy, sum(len(i.objects) for i in readable))
        index = cache_index(proxy)
        for image in secure_images.values():
            for _kind, digest, _data, _mt in image.objects:
                assert (digest in index["blobs"]) == may_pull(user, image.repo), (user, image.repo, digest)


@pytest.mark.parametrize("key", list(REPOS))
@pytest.mark.parametrize("user", list(USER_IDS), ids=list(USER_IDS.values()))
def test_authorization_warm(token_registry, secure_warm, secure_images, user, key):
    image = secure_images[key]
    denied_before = metric(secure_warm, "accel_proxy_authorization_checks_total", result="denied")
    hits_before = metric(secure_warm, "accel_proxy_originals_hits_total")
    leaks = Leaks(secure_images["private"].objects)
    check_user(secure_warm, token_registry, image, user, leaks, cold=False)
    assert leaks.found == []
    if may_pull(user, image.repo):
        assert metric(secure_warm, "accel_proxy_originals_hits_total") >= hits_before + 3 * len(image.objects)
    else:
        denied = metric(secure_warm, "accel_proxy_authorization_checks_total", result="denied")
        assert denied >= denied_before + 3 * len(image.objects), "kept objects were not checked upstream"
        assert metric(secure_warm, "accel_proxy_originals_hits_total") == hits_before


def test_authorization_warm_without_credentials(secure_warm, secure_images):
    leaks = Leaks(secure_images["private"].objects)
    for image in secure_images.values():
        for kind, digest, _data, _mt in image.objects:
            r = get(secure_warm, image.repo, kind, digest)
            assert r.status_code == 401, (image.repo, kind, r.status_code)
            leaks.denied(r, f"no credentials {image.repo} {kind}")
    assert leaks.found == []


@pytest.mark.parametrize("user", list(USER_IDS), ids=list(USER_IDS.values()))
def test_kept_digests_only_in_their_repository(secure_warm, secure_images, user):
    """private/'s kept objects asked for through public/ (which everyone may read): they are not
    public/'s, so they are not served there, from the cache or otherwise."""
    public = secure_images["public"]
    auth = client_token(secure_warm, user, public.repo)
    leaks = Leaks(secure_images["private"].objects)
    for kind, digest, _data, _mt in secure_images["private"].objects:
        for method in ("GET", "HEAD"):
            r = get(secure_warm, public.repo, kind, digest, auth, method=method)
            leaks.denied(r, f"{user} private {kind} via {public.repo} {method}")
    assert leaks.found == []


def test_the_read_grant_is_remembered_for_the_ttl_only(tmp_path_factory, token_registry, secure_images):
    image = secure_images["private"]
    with start_secure(tmp_path_factory, token_registry, "proxy-originals-auth-ttl", ttl="1s") as proxy:
        auth = client_token(proxy, "alice", image.repo)
        for kind, digest, data, mt in image.objects:
            check_object(get(proxy, image.repo, kind, digest, auth), kind, digest, data, mt)
        wait_committed(proxy, len(image.objects))

        def counts():
            return {r: metric(proxy, "accel_proxy_authorization_checks_total", result=r)
                    for r in ("allowed", "cached")}

        time.sleep(1.3)
        kind, digest, _data, _mt = image.objects[-1]
        assert get(proxy, image.repo, kind, digest, auth).status_code == 200
        first = counts()
        assert get(proxy, image.repo, kind, digest, auth).status_code == 200
        second = counts()
        assert second["cached"] == first["cached"] + 1 and second["allowed"] == first["allowed"]
        time.sleep(1.3)
        assert get(proxy, image.repo, kind, digest, auth).status_code == 200
        assert counts()["allowed"] == second["allowed"] + 1, "the grant outlived authorization_ttl"


# ---- access lost upstream ----------------------------------------------------------------------

TTL_SECONDS = 2.0


def test_grant_expires_after_the_client_lost_access_upstream(tmp_path_factory):
    """alice's account is removed upstream after she pulled. Within authorization_ttl her grant
    may still be honoured (that is what the TTL means); after it, nothing kept is served to her,
    while bob, who still has access, is served from the cache after his own check."""
    reg = Registry(tmp_path_factory.mktemp("registry-originals-htpasswd"), mode="htpasswd",
                   htpasswd_users={"alice": "wonderland", "bob": "builder"},
                   name="registry-originals-htpasswd").start()
    try:
        alice_s = registry_auth.session("alice", "wonderland")
        image = push_image(reg.url, alice_s, "team/app", "orig-revoked")
        alice = requests.auth._basic_auth_str("alice", "wonderland")
        bob = requests.auth._basic_auth_str("bob", "builder")
        with start_proxy(tmp_path_factory.mktemp("proxy-originals-revoked"),
                         [originals_upstream("basic", reg.url)],
                         ve.variants_config(authorization_ttl=f"{TTL_SECONDS}s")) as proxy:
            for kind, digest, data, mt in image.objects:
                check_object(get(proxy, image.repo, kind, digest, alice), kind, digest, data, mt)
            wait_committed(proxy, len(image.objects))
            granted_at = time.monotonic()
            for kind, digest, data, mt in image.objects:  # warm, on alice's fresh grant
                check_object(get(proxy, image.repo, kind, digest, alice), kind, digest, data, mt)

            reg.stop()
            reg.htpasswd_users = {"bob": "builder"}  # alice's account is gone
            reg.start()
            assert requests.get(f"{reg.url}/v2/", headers={"Authorization": alice}, timeout=10).status_code == 401
            left = TTL_SECONDS - (time.monotonic() - granted_at)
            time.sleep(max(0, left) + 0.5)

            leaks = Leaks(image.objects, realm_suffix=None)
            for kind, digest, data, mt in image.objects:
                for method, headers in (("GET", None), ("HEAD", None), ("GET", {"Range": "bytes=0-9"})):
                    r = get(proxy, image.repo, kind, digest, alice, method=method, headers=headers)
                    leaks.denied(r, f"alice after revocation {kind} {method} {headers}")
                    assert r.status_code == 401, r.status_code
            assert leaks.found == []
            log = ve.RegistryLog(reg)
            mark = log.mark()
            for kind, digest, data, mt in image.objects:
                check_object(get(proxy, image.repo, kind, digest, bob), kind, digest, data, mt)
            assert not [p for m, p, _s in log.requests(mark) if m == "GET"], "bob's pull was not from the cache"

            # The object deleted upstream: once the grant is old, it is not served to anyone.
            kind, digest, data, mt = image.blobs()[0]
            r = requests.delete(f"{reg.url}/v2/{image.repo}/blobs/{digest}", headers={"Authorization": bob},
                                timeout=30)
            assert r.status_code == 202, (r.status_code, r.text)
            time.sleep(TTL_SECONDS + 0.5)
            r = get(proxy, image.repo, kind, digest, bob)
            assert r.status_code == 404 and data[:64] not in r.content
    finally:
        reg.stop()
