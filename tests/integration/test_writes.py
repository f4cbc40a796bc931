"""Pushes through the proxy (`writes: pass`, an upstream's default).

1. skopeo pushes a multi-layer image and a multi-platform index through the proxy to a
   docker-registry with token auth (the proxy's token_proxy: realm rewritten, the client's
   credentials and `push,pull` scopes passed through); a direct pull from the registry gives the
   same bytes and digests.
2. Every upload form of the distribution spec by hand, through the proxy with token auth:
   monolithic (POST, PUT with the blob), chunked (POST, PATCH with Content-Range, upload status
   with GET on the Location, PATCH, PUT), a cross-repository mount, and DELETE of a manifest.
   Each Location comes back pointing at the proxy.
3. A client the upstream refuses (pull-only user) gets the upstream's 401/403, and no tag or
   blob is left behind.
4. A 1 GiB blob in one PUT, and a 64 MiB PATCH sent chunked: the proxy's peak RSS stays under
   100 MB, and the registry holds the bytes intact.
5. A tag re-pushed through the proxy: its next -estargz variant is the new image's, at once
   (the tag resolution is cached for an hour here).
6. Convert on push: with a webhooks rule naming the repository, a manifest PUT through the proxy
   starts the conversion; the first pull of tag-estargz is a cache hit.
7. `Expect: 100-continue` goes upstream: the client is told to send its body when the upstream
   says so, also when that 100 comes late, and after a second when it never comes (an upstream
   that refuses is in test_conformance_writes.py).
"""
import hashlib
import json
import socketserver
import subprocess
import threading
import time

import pytest
import requests

import checks
import conformance
import images
import prom
import registry_auth
import skopeo
import variant_env
from ports import free_port
from proxy import running_proxy, upstream

ALICE = ("alice", "wonderland")   # token_server.py: pull, push, delete everywhere
BOB = ("bob", "builder")          # pull on public/* only
FORMAT = "estargz"


def metric(proxy, name, **labels):
    resp = requests.get(proxy.url + "/metrics", timeout=10)
    assert resp.status_code == 200
    return prom.total(prom.parse(resp.text), name, **labels)


def skopeo_push(source_ref, dest_ref, dest_creds, home, timeout=180):
    """`skopeo copy --all docker://SOURCE docker://DEST` over plain http; `home` a private dir."""
    argv = [skopeo.SKOPEO, "--insecure-policy", "copy", "--all", "--src-tls-verify=false",
            "--dest-tls-verify=false", "--dest-creds", dest_creds,
            f"docker://{source_ref}", f"docker://{dest_ref}"]
    # A private auth file, so credentials saved on this machine never leak in.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "REGISTRY_AUTH_FILE": str(home / "auth.json")}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


def sanitized(proxy):
    """Whether the proxy runs with AddressSanitizer (GCC links its runtime as libasan)."""
    return "libasan" in open(f"/proc/{proxy.service.pid}/maps").read()


def peak_rss_kib(proxy):
    for line in open(f"/proc/{proxy.service.pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


@pytest.fixture(scope="module")
def token_proxy(tmp_path_factory, token_registry):
    with running_proxy(tmp_path_factory.mktemp("proxy-writes"),
                       [upstream("main", token_registry.url, token_proxy=True)]) as p:
        yield p


def registry_pull_checked(registry, ref, image, tmp_path, name):
    """A direct pull from the registry (not through the proxy) holds `image` byte for byte."""
    dest = tmp_path / name
    done = skopeo.copy_to_dir(f"127.0.0.1:{registry.port}/{ref}", dest, creds=":".join(ALICE))
    assert done.returncode == 0, done.stderr
    skopeo.check_dir_copy(dest, image)


# ---- 1. skopeo --------------------------------------------------------------------------------

def test_skopeo_pushes_image_and_index_through_proxy(token_proxy, token_registry, open_registry,
                                                     pushed_images, tmp_path):
    manifests_before = metric(token_proxy, "accel_proxy_push_manifests_total", upstream="main")
    for image, repo in ((pushed_images.oci, "pushed/oci-app"), (pushed_images.index, "pushed/multi")):
        done = skopeo_push(f"127.0.0.1:{open_registry.port}/{image.repo}:{image.tag}",
                           f"127.0.0.1:{token_proxy.port}/{repo}:{image.tag}", ":".join(ALICE), tmp_path)
        assert done.returncode == 0, f"skopeo push through the proxy failed: {done.stderr}"
        registry_pull_checked(token_registry, f"{repo}:{image.tag}", image, tmp_path,
                              repo.replace("/", "_"))
    # oci-app: 1 manifest; multi: 2 children and the index.
    assert metric(token_proxy, "accel_proxy_push_manifests_total", upstream="main") == manifests_before + 4
    assert metric(token_proxy, "accel_proxy_push_blobs_total", upstream="main") >= 3
    assert metric(token_proxy, "accel_proxy_push_bytes_total", upstream="main") > 0
    log = token_proxy.log_tail()
    assert "method=PATCH route=blob_upload repo=pushed/" in log and " received=" in log, log[-3000:]
    checks.assert_healthy(token_proxy)


# ---- 2. every upload form by hand -------------------------------------------------------------

def _location(resp, proxy):
    location = resp.headers["Location"]
    assert location.startswith(proxy.url + "/v2/"), f"Location not through the proxy: {location}"
    return location


def test_upload_forms_by_hand(token_proxy, token_registry):
    s = registry_auth.session(*ALICE)
    base = f"{token_proxy.url}/v2"
    repo, other = "byhand/app", "byhand/other"
    blob_a = images.deterministic_bytes("writes-a", 3 * 1024 * 1024 + 11)
    blob_b = images.deterministic_bytes("writes-b", 1024 * 1024 + 5)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()

    # Monolithic: POST, then PUT with the whole blob and its digest.
    start = s.post(f"{base}/{repo}/blobs/uploads/", timeout=30)
    assert start.status_code == 202, (start.status_code, start.text)
    put = s.put(f"{_location(start, token_proxy)}&digest={images.sha256_digest(config)}",
                data=config, headers={"Content-Type": "application/octet-stream"}, timeout=60)
    assert put.status_code == 201, (put.status_code, put.text)
    assert put.headers["Docker-Content-Digest"] == images.sha256_digest(config)
    _location(put, token_proxy)

    # Chunked: PATCH with Content-Range, the upload's status, PATCH, PUT without a body.
    start = s.post(f"{base}/{repo}/blobs/uploads/", timeout=30)
    assert start.status_code == 202
    half = len(blob_a) // 2
    first = s.patch(_location(start, token_proxy), data=blob_a[:half], timeout=60, headers={
        "Content-Type": "application/octet-stream", "Content-Range": f"0-{half - 1}"})
    assert first.status_code == 202, (first.status_code, first.text)
    status = s.get(_location(first, token_proxy), timeout=30)
    assert status.status_code == 204, (status.status_code, status.text)
    assert status.headers["Range"] == f"0-{half - 1}"
    second = s.patch(_location(status, token_proxy), data=blob_a[half:], timeout=60, headers={
        "Content-Type": "application/octet-stream",
        "Content-Range": f"{half}-{len(blob_a) - 1}"})
    assert second.status_code == 202, (second.status_code, second.text)
    done = s.put(f"{_location(second, token_proxy)}&digest={images.sha256_digest(blob_a)}",
                 timeout=60)
    assert done.status_code == 201, (done.status_code, done.text)

    # blob_b into the other repository, then mounted from there.
    images.Pusher(token_proxy.url, s).push_blob(other, blob_b)
    mounted = s.post(f"{base}/{repo}/blobs/uploads/",
                     params={"mount": images.sha256_digest(blob_b), "from": other}, timeout=30)
    assert mounted.status_code == 201, (mounted.status_code, mounted.text)
    assert metric(token_proxy, "accel_proxy_push_blobs_total", upstream="main", how="mount") >= 1

    layers = [images.Blob(images.OCI_LAYER_GZIP, blob_a), images.Blob(images.OCI_LAYER_GZIP, blob_b)]
    manifest = images.encode_json({
        "schemaVersion": 2, "mediaType": images.OCI_MANIFEST,
        "config": images.Blob(images.OCI_CONFIG, config).descriptor(),
        "layers": [layer.descriptor() for layer in layers]})
    images.Pusher(token_proxy.url, s).push_manifest(repo, "v1", manifest, images.OCI_MANIFEST)

    # What the registry holds, asked directly.
    direct = registry_auth.session(*ALICE)
    reg = f"{token_registry.url}/v2/{repo}"
    got = direct.get(f"{reg}/manifests/v1", headers={"Accept": images.OCI_MANIFEST}, timeout=30)
    assert got.status_code == 200 and got.content == manifest
    for data in (config, blob_a, blob_b):
        blob = direct.get(f"{reg}/blobs/{images.sha256_digest(data)}", timeout=60)
        assert blob.status_code == 200 and blob.content == data

    # DELETE of the manifest through the proxy.
    gone = s.delete(f"{base}/{repo}/manifests/{images.sha256_digest(manifest)}", timeout=30)
    assert gone.status_code == 202, (gone.status_code, gone.text)
    assert direct.get(f"{reg}/manifests/v1", headers={"Accept": images.OCI_MANIFEST},
                      timeout=30).status_code == 404


# ---- 3. refused ---------------------------------------------------------------------------------

def test_refused_push_gets_upstream_answer_and_leaves_nothing(token_proxy, token_registry):
    s = registry_auth.session(*BOB)  # may pull public/*, push nothing
    repo = "public/refused"
    data = images.deterministic_bytes("refused", 512 * 1024)
    digest = images.sha256_digest(data)
    start = s.post(f"{token_proxy.url}/v2/{repo}/blobs/uploads/", timeout=30)
    checks.assert_oci_error(start.status_code, start.content, {401, 403})
    # A monolithic POST with the blob: refused before the body is taken, the connection closed.
    post = s.post(f"{token_proxy.url}/v2/{repo}/blobs/uploads/", params={"digest": digest},
                  data=data, headers={"Content-Type": "application/octet-stream"}, timeout=30)
    assert post.status_code in (401, 403), (post.status_code, post.text)
    manifest = images.encode_json({"schemaVersion": 2, "mediaType": images.OCI_MANIFEST,
                                   "config": images.Blob(images.OCI_CONFIG, b"{}").descriptor(),
                                   "layers": []})
    put = s.put(f"{token_proxy.url}/v2/{repo}/manifests/v1", data=manifest,
                headers={"Content-Type": images.OCI_MANIFEST}, timeout=30)
    checks.assert_oci_error(put.status_code, put.content, {401, 403})

    direct = registry_auth.session(*ALICE)
    reg = f"{token_registry.url}/v2/{repo}"
    assert direct.head(f"{reg}/blobs/{digest}", timeout=30).status_code == 404
    assert direct.get(f"{reg}/manifests/v1", timeout=30).status_code == 404
    checks.assert_healthy(token_proxy)


# ---- 4. large bodies, bounded memory ------------------------------------------------------------

class GeneratedBody:
    """`size` deterministic bytes made on the fly, 1 MiB at a time. Without a length requests
    sends them chunked; SizedBody has one (Content-Length)."""

    def __init__(self, seed, size):
        self.block = images.deterministic_bytes(seed, 1024 * 1024)
        self.size = size

    def __iter__(self):
        sent = 0
        while sent < self.size:
            n = min(len(self.block), self.size - sent)
            yield self.block[:n]
            sent += n

    def digest(self):
        h = hashlib.sha256()
        for piece in self:
            h.update(piece)
        return "sha256:" + h.hexdigest()


class SizedBody(GeneratedBody):
    def __len__(self):
        return self.size


def test_large_pushes_stream_with_bounded_memory(tmp_path_factory, open_registry):
    with running_proxy(tmp_path_factory.mktemp("proxy-big-push"),
                       [upstream("main", open_registry.url)]) as proxy:
        before = peak_rss_kib(proxy)
        s = requests.Session()
        base = f"{proxy.url}/v2/bigpush/blob/blobs/uploads/"

        big = SizedBody("big-push", 1024 * 1024 * 1024)  # the 1 GiB layer
        digest = big.digest()
        start = s.post(base, timeout=30)
        assert start.status_code == 202
        put = s.put(f"{_location(start, proxy)}&digest={digest}", data=big, timeout=600,
                    headers={"Content-Type": "application/octet-stream"})
        assert put.status_code == 201, (put.status_code, put.text)
        assert put.headers["Docker-Content-Digest"] == digest

        chunked = GeneratedBody("chunked-push", 64 * 1024 * 1024)  # no length: sent chunked
        chunked_digest = chunked.digest()
        start = s.post(base, timeout=30)
        patch = s.patch(_location(start, proxy), data=iter(chunked), timeout=600,
                        headers={"Content-Type": "application/octet-stream"})
        assert patch.status_code == 202, (patch.status_code, patch.text)
        assert patch.headers["Range"] == f"0-{64 * 1024 * 1024 - 1}"
        done = s.put(f"{_location(patch, proxy)}&digest={chunked_digest}", timeout=60)
        assert done.status_code == 201, (done.status_code, done.text)

        after = peak_rss_kib(proxy)
        assert after - before < 64 * 1024, f"peak RSS grew {after - before} KiB pushing 1088 MiB"
        # AddressSanitizer's shadow memory alone is larger than the bound: there only the growth counts.
        if not sanitized(proxy):
            assert after < 100 * 1024, f"peak RSS {after} KiB after pushing 1088 MiB (before: {before} KiB)"
        # The registry holds the bytes: it checked each digest; its stored sizes agree.
        for d, size in ((digest, 1024 * 1024 * 1024), (chunked_digest, 64 * 1024 * 1024)):
            head = requests.head(f"{open_registry.url}/v2/bigpush/blob/blobs/{d}", timeout=30)
            assert head.status_code == 200 and int(head.headers["Content-Length"]) == size
        assert metric(proxy, "accel_proxy_push_bytes_total", upstream="main") >= 320 * 1024 * 1024
        checks.assert_healthy(proxy)


# ---- 5. a re-pushed tag's variant --------------------------------------------------------------

def variant_source(proxy, repo, tag):
    resp = variant_env.get_manifest(proxy, repo, tag + variant_env.SUFFIX)
    assert resp.status_code == 200, (resp.status_code, resp.text[:300])
    return json.loads(resp.content)["annotations"]["io.accel-proxy.variant.source"]


def test_repushed_tag_serves_the_new_images_variant(tmp_path_factory, open_registry):
    # The tag's resolution is kept for an hour: only the push can make the proxy forget it.
    variants = variant_env.variants_config(on_miss="wait", tag_ttl="1h", authorization_ttl="1h")
    with variant_env.running_variant_proxy(tmp_path_factory.mktemp("proxy-repush"),
                                           [upstream("main", open_registry.url)], variants) as proxy:
        repo = "repush/app"
        through_proxy = images.Pusher(proxy.url, requests.Session())
        first = through_proxy.push_image(repo, "1", *_image("repush-first"))
        assert variant_source(proxy, repo, "1") == first.digest

        second = through_proxy.push_image(repo, "1", *_image("repush-second"))
        assert second.digest != first.digest
        assert variant_source(proxy, repo, "1") == second.digest

        # The control: a push that does not pass the proxy leaves its resolution as it was.
        direct = images.Pusher(open_registry.url, requests.Session())
        third = direct.push_image(repo, "1", *_image("repush-third"))
        assert variant_source(proxy, repo, "1") == second.digest

        # A DELETE by digest through the proxy forgets every cached tag that named it.
        gone = requests.delete(f"{proxy.url}/v2/{repo}/manifests/{second.digest}", timeout=30)
        assert gone.status_code == 202, (gone.status_code, gone.text)
        assert variant_source(proxy, repo, "1") == third.digest
        checks.assert_healthy(proxy)


def _image(seed):
    body, blobs = images.build_oci_image(seed)
    return body, blobs, images.OCI_MANIFEST


# ---- 6. convert on push --------------------------------------------------------------------------

def test_push_through_proxy_converts_selected_repositories(tmp_path_factory, open_registry):
    from test_webhooks import conversion_list, metrics, wait_converted, webhooks_config
    config = webhooks_config([{"repositories": ["onpush/**"], "formats": [FORMAT]}])
    with running_proxy(tmp_path_factory.mktemp("proxy-onpush"), [upstream("main", open_registry.url)],
                       extra_config=config) as proxy:
        through_proxy = images.Pusher(proxy.url, requests.Session())
        other = through_proxy.push_image("elsewhere/app", "1", *_image("onpush-other"))
        image = through_proxy.push_image("onpush/app", "1", *_image("onpush-app"))
        done = wait_converted(proxy, "onpush/app", image.digest)
        assert done["upstream"] == "main" and done["error"] == ""
        assert not [c for c in conversion_list(proxy) if c["source"] == other.digest]
        before = metrics(proxy)
        assert before["misses"] == 0 and before["done"] == 1, before

        resp = variant_env.get_manifest(proxy, "onpush/app", "1" + variant_env.SUFFIX)
        assert resp.status_code == 200, (resp.status_code, resp.text[:300])
        assert json.loads(resp.content)["annotations"]["io.accel-proxy.variant.source"] == image.digest
        after = metrics(proxy)
        assert after["misses"] == before["misses"], "the first pull after the push was a miss"
        assert after["hits"] > before["hits"], after
        assert after["done"] == 1, after
        assert "route=webhook" not in proxy.log_tail()  # the push started it, not a hook


# ---- 7. Expect: 100-continue ---------------------------------------------------------------------

class _ExpectHandler(socketserver.StreamRequestHandler):
    """An upload endpoint whose way with `Expect: 100-continue` is the repository's name:
    `eager/...` says 100 Continue at once, `late/...` after LATE seconds, `silent/...` never (as
    an HTTP/1.0 server). Each then reads the body and answers 201 with its digest, and with
    X-Saw-Expect: whether the expectation reached it."""
    LATE = 1.5

    def handle(self):
        path = self.rfile.readline().decode("latin-1").split(" ")[1]
        fields = {}
        while (line := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            fields[name.strip().lower()] = value.strip()
        expects = fields.get("expect", "").lower() == "100-continue"
        mode = path.split("/")[2]
        if expects and mode != "silent":
            if mode == "late":
                time.sleep(self.LATE)
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.wfile.flush()
        body = self.rfile.read(int(fields.get("content-length", "0")))
        self.wfile.write((f"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n"
                          f"Docker-Content-Digest: {images.sha256_digest(body)}\r\n"
                          f"X-Saw-Expect: {'yes' if expects else 'no'}\r\n"
                          f"Connection: close\r\n\r\n").encode())


class _ExpectServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def expect_upstream():
    port = free_port()
    server = _ExpectServer(("127.0.0.1", port), _ExpectHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.mark.parametrize("mode", ["eager", "late", "silent"])
def test_expect_continue_is_the_upstreams_to_answer(proxy_factory, expect_upstream, mode):
    proxy = proxy_factory([upstream("main", expect_upstream)])
    data = images.deterministic_bytes("expect-" + mode, 1024 * 1024 + 7)
    started = time.monotonic()
    got_continue, status, fields, body = conformance.expect_continue(
        "PUT", f"{proxy.url}/v2/{mode}/app/blobs/uploads/u1?digest={images.sha256_digest(data)}",
        {"Content-Type": "application/octet-stream"}, data)
    took = time.monotonic() - started
    assert got_continue and status == 201, (got_continue, status, body)
    assert fields["x-saw-expect"] == "yes"
    assert fields["docker-content-digest"] == images.sha256_digest(data)  # the whole body, once
    if mode == "eager":
        assert took < 1, f"the upstream said 100 at once, the client was held {took:.1f}s"
    else:
        # late: its 100 came during the body and was dropped, not taken for the answer;
        # silent: the body went after a second without one.
        assert took >= 1, took
    checks.assert_healthy(proxy)
