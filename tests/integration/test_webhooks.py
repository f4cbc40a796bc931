"""Pre-conversion on push: webhooks into accel-proxy (`webhooks:` in its config).

1. distribution notifications: a real docker-registry with a `notifications` endpoint pointing at
   the proxy's /hooks/registry (with the shared secret as its Authorization header). A push of
   `hooked/app:1` makes the registry POST the event; the proxy converts the image (seen through
   GET /api/conversions); the first pull of `hooked/app:1-estargz` is then a cache hit (no cache
   miss, no second conversion) and the copy passes the eStargz checks of the variant tests. A
   push to a repository no rule names converts nothing; a registry whose endpoint carries a
   wrong secret is refused (401) and converts nothing.
2. Harbor payloads (the shapes captured in tests/unit/data/webhooks/): the default PUSH_ARTIFACT
   payload and CloudEvents (structured, and binary mode with `Ce-Type`), POSTed to /hooks/harbor
   with digests of images pushed to a token-auth registry; the conversions run with the
   upstream's `robot` credentials (alice; anonymous may not read these repositories), and a
   later pull is a hit. Other Harbor events, and pushes no rule names, start nothing.
3. Rejections: no or wrong secret (401, OCI error body, nothing starts), GET (405), malformed
   JSON (400), webhooks off (404), /api/conversions without the secret (401).

Needs what test_convert.py needs (the Go reference checker, built by tests/estargz/build.sh).
"""
import copy
import json
import time
from pathlib import Path

import pytest
import requests

import checks
import estargz_tools as et
import images
import prom
import registry_auth
import skopeo
import variant_env
import yamlconf
from proxy import upstream
from registry import Registry

SECRET = "Bearer s3cret"
FORMAT = "estargz"
DATA = Path(__file__).resolve().parents[1] / "unit" / "data" / "webhooks"
CONVERT_TIMEOUT = 30  # seconds from a webhook (or a push) to a finished conversion


# ---- helpers -------------------------------------------------------------------------------

class NotifyingRegistry(Registry):
    """A docker-registry whose `notifications` endpoint is the proxy's /hooks/registry.

    registry.py writes the rest of the config; the `notifications` section is appended to it
    (a top-level key, so appending the YAML text is enough).
    """

    def __init__(self, workdir, **kwargs):
        super().__init__(workdir, **kwargs)
        self.notify_url = None
        self.notify_authorization = None

    def write_config(self):
        path = super().write_config()
        assert self.notify_url, "set notify_url before start()"
        endpoint = {"name": "accel", "url": self.notify_url,
                    "headers": {"Authorization": [self.notify_authorization]},
                    "timeout": "2s", "threshold": 3, "backoff": "1s"}
        with open(path, "a") as f:
            f.write(yamlconf.dump({"notifications": {"endpoints": [endpoint]}}))
        return path


def webhooks_config(rules, secret=SECRET):
    return {"webhooks": {"secret": secret, "rules": rules}}


def api_conversions(proxy, authorization=SECRET):
    headers = {"Authorization": authorization} if authorization else {}
    return requests.get(proxy.url + "/api/conversions", headers=headers, timeout=10)


def conversion_list(proxy):
    resp = api_conversions(proxy)
    assert resp.status_code == 200, (resp.status_code, resp.text[:300])
    assert resp.headers.get("Content-Type", "").startswith("application/json")
    return resp.json()["conversions"]


def wait_converted(proxy, repo, digest, timeout=CONVERT_TIMEOUT):
    """Poll GET /api/conversions until the conversion of repo@digest is done (fail fast when it
    failed); the listing entry."""
    deadline = time.monotonic() + timeout
    seen = None
    while True:
        entries = [c for c in conversion_list(proxy)
                   if c["repository"] == repo and c["source"] == digest and c["format"] == FORMAT]
        if entries:
            seen = entries[-1]
            if any(c["state"] == "done" for c in entries):
                return next(c for c in entries if c["state"] == "done")
            assert seen["state"] != "failed", f"conversion of {repo}@{digest} failed: {seen}"
        if time.monotonic() > deadline:
            raise AssertionError(f"conversion of {repo}@{digest} not done after {timeout}s "
                                 f"(last seen: {seen}; listing: {conversion_list(proxy)})")
        time.sleep(0.1)


def metrics(proxy):
    resp = requests.get(proxy.url + "/metrics", timeout=10)
    assert resp.status_code == 200
    samples = prom.parse(resp.text)
    return {
        "misses": prom.total(samples, "accel_proxy_cache_misses_total"),
        "hits": prom.total(samples, "accel_proxy_cache_hits_total"),
        "done": prom.total(samples, "accel_proxy_conversions_total", format=FORMAT, outcome="done"),
        "failed": prom.total(samples, "accel_proxy_conversions_total", format=FORMAT,
                             outcome="failed"),
        "joins": prom.total(samples, "accel_proxy_conversion_joins_total"),
    }


def push_image(registry_url, session, repo, tag, seed):
    body, blobs = images.build_oci_image(seed)
    image = images.Pusher(registry_url, session).push_image(repo, tag, body, blobs,
                                                            images.OCI_MANIFEST)
    return image


def pull_variant_checked(proxy, repo, tag, source, tools, tmp_path, creds=None):
    """skopeo copy of repo:tag-estargz through the proxy, checked against `source`."""
    dest = tmp_path / f"copy-{repo.replace('/', '_')}-{tag}"
    p = skopeo.copy_to_dir(f"127.0.0.1:{proxy.port}/{repo}:{tag}{variant_env.SUFFIX}", dest,
                           creds=creds)
    assert p.returncode == 0, f"skopeo copy failed: {p.stderr}"
    work = tmp_path / f"check-{repo.replace('/', '_')}-{tag}"
    work.mkdir()
    variant_env.verify_converted_copy(dest, source, tools, work)
    return dest


def post_hook(proxy, path, body, authorization=SECRET, headers=None):
    h = {"Content-Type": "application/json"}
    if authorization is not None:
        h["Authorization"] = authorization
    h.update(headers or {})
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(proxy.url + path, data=data, headers=h, timeout=10)


# Harbor payloads from the captured shapes, pointed at one pushed image.

def _harbor_data(data, repo, image, host):
    namespace, _, name = repo.partition("/")
    resource = data["resources"][0]
    resource.update(digest=image.digest, tag=image.tag, resource_url=f"{host}/{repo}:{image.tag}")
    data["resources"] = [resource]
    data["repository"].update(name=name, namespace=namespace, repo_full_name=repo)
    return data


def harbor_default_payload(repo, image, host):
    doc = json.loads((DATA / "harbor_push_artifact.json").read_text())
    _harbor_data(doc["event_data"], repo, image, host)
    return doc


def harbor_cloudevent(repo, image, host):
    doc = json.loads((DATA / "harbor_cloudevents.json").read_text())
    _harbor_data(doc["data"], repo, image, host)
    return doc


def accepted(resp, repo, image):
    """The 202 answer names the one conversion it started."""
    assert resp.status_code == 202, (resp.status_code, resp.text[:300])
    answer = resp.json()["conversions"]
    assert [(c["repository"], c["digest"], c["tag"], c["format"]) for c in answer] == \
        [(repo, image.digest, image.tag, FORMAT)], answer
    assert answer[0]["state"] in ("queued", "cached"), answer
    return answer[0]


@pytest.fixture(scope="module")
def tools():
    return et.build_tools()


# ---- 1. distribution notifications ---------------------------------------------------------

def test_registry_notification_preconverts_push(tmp_path_factory, tmp_path, proxy_factory,
                                                tools):
    reg = NotifyingRegistry(tmp_path_factory.mktemp("registry-notify"), name="registry-notify")
    proxy = proxy_factory([upstream("main", reg.url)], extra_config=webhooks_config(
        [{"repositories": ["hooked/**"], "formats": [FORMAT]}]))
    reg.notify_url = proxy.url + "/hooks/registry"
    reg.notify_authorization = SECRET
    reg.start()
    try:
        session = requests.Session()
        image = push_image(reg.url, session, "hooked/app", "1", "hooked-app-1")
        done = wait_converted(proxy, "hooked/app", image.digest)
        assert done["upstream"] == "main" and done["error"] == ""
        before = metrics(proxy)
        assert before["done"] == 1 and before["failed"] == 0, before
        assert before["misses"] == 0, before

        pull_variant_checked(proxy, "hooked/app", "1", image, tools, tmp_path)
        after = metrics(proxy)
        assert after["misses"] == before["misses"], "the first pull after the push was a miss"
        assert after["done"] == 1 and after["failed"] == 0, after
        assert after["joins"] == before["joins"], after
        assert after["hits"] >= before["hits"] + 4, after  # manifest, config, 2 layers

        # A repository no rule names: nothing. The registry sends its events in order, so once
        # the conversion of a later push to hooked/ shows, the event of other/app was handled.
        other = push_image(reg.url, session, "other/app", "1", "other-app-1")
        marker = push_image(reg.url, session, "hooked/app", "2", "hooked-app-2")
        wait_converted(proxy, "hooked/app", marker.digest)
        listing = conversion_list(proxy)
        assert not [c for c in listing if c["repository"] == "other/app"], listing
        assert not [c for c in listing if c["source"] == other.digest], listing
        assert metrics(proxy)["done"] == 2
        checks.assert_healthy(proxy)
    finally:
        reg.stop()


def test_registry_notification_with_wrong_secret_converts_nothing(tmp_path_factory,
                                                                  proxy_factory):
    reg = NotifyingRegistry(tmp_path_factory.mktemp("registry-notify"), name="registry-notify")
    proxy = proxy_factory([upstream("main", reg.url)], extra_config=webhooks_config(
        [{"repositories": ["hooked/**"], "formats": [FORMAT]}]))
    reg.notify_url = proxy.url + "/hooks/registry"
    reg.notify_authorization = "Bearer s3cre7"
    reg.start()
    try:
        image = push_image(reg.url, requests.Session(), "hooked/app", "1", "hooked-wrong-secret")
        refused = "route=webhook_registry repo=- status=401"
        variant_env.wait_until(lambda: refused in proxy.service.log_text(), CONVERT_TIMEOUT,
                               "the registry's notification (refused with 401)")
        assert conversion_list(proxy) == []
        assert "status=202" not in proxy.service.log_text()
        m = metrics(proxy)
        assert m["done"] == 0 and m["failed"] == 0, m
        assert image.digest not in proxy.service.log_text()
    finally:
        reg.stop()


# ---- 2. Harbor payloads --------------------------------------------------------------------

def test_harbor_payloads_start_conversions(token_registry, proxy_factory, tools, tmp_path):
    alice = registry_auth.session("alice", "wonderland")
    pushed = {kind: push_image(token_registry.url, alice, f"harbor/{kind}", "1", f"harbor-{kind}")
              for kind in ("default", "cloudevents", "binary")}
    robot = {"username": "alice", "password": "wonderland"}
    proxy = proxy_factory([upstream("harbor", token_registry.url, robot=robot)],
                          extra_config=webhooks_config(
                              [{"repositories": ["harbor/**"], "formats": [FORMAT]}]))
    host = "harbor.example.internal"

    repo, image = "harbor/default", pushed["default"]
    accepted(post_hook(proxy, "/hooks/harbor", harbor_default_payload(repo, image, host)),
             repo, image)

    repo, image = "harbor/cloudevents", pushed["cloudevents"]
    event = harbor_cloudevent(repo, image, host)
    accepted(post_hook(proxy, "/hooks/harbor", event,
                       headers={"Content-Type": "application/cloudevents+json"}), repo, image)

    repo, image = "harbor/binary", pushed["binary"]
    event = harbor_cloudevent(repo, image, host)
    binary_headers = {"Ce-Specversion": "1.0", "Ce-Id": event["id"], "Ce-Source": event["source"],
                      "Ce-Type": "harbor.artifact.pushed", "Ce-Time": event["time"]}
    accepted(post_hook(proxy, "/hooks/harbor", event["data"], headers=binary_headers),
             repo, image)

    for kind, image in pushed.items():
        done = wait_converted(proxy, f"harbor/{kind}", image.digest)
        assert done["upstream"] == "harbor"
    before = metrics(proxy)
    assert before["done"] == 3 and before["failed"] == 0 and before["misses"] == 0, before

    # A repeated event for a converted image starts nothing ("cached").
    repo, image = "harbor/default", pushed["default"]
    again = post_hook(proxy, "/hooks/harbor", harbor_default_payload(repo, image, host))
    assert accepted(again, repo, image)["state"] == "cached"

    for kind, image in pushed.items():
        pull_variant_checked(proxy, f"harbor/{kind}", "1", image, tools, tmp_path,
                             creds="alice:wonderland")
    after = metrics(proxy)
    assert after["misses"] == before["misses"], "a pull after the webhook was a miss"
    assert after["done"] == 3 and after["failed"] == 0, after
    assert after["hits"] >= before["hits"] + 3 * 4, after
    checks.assert_healthy(proxy)


def test_harbor_other_events_start_nothing(open_registry, pushed_images, proxy_factory):
    """Events that are not pushes, and pushes no rule names, are accepted (2xx, so Harbor
    does not retry them) and start nothing."""
    proxy = proxy_factory([upstream("main", open_registry.url)], extra_config=webhooks_config(
        [{"repositories": ["nomatch/**"], "formats": [FORMAT]}]))
    image = pushed_images.oci
    host = "harbor.example.internal"
    payload = harbor_default_payload(image.repo, image, host)
    resp = post_hook(proxy, "/hooks/harbor", payload)
    assert resp.status_code == 202 and resp.json()["conversions"] == [], resp.text
    deleted = copy.deepcopy(payload)
    deleted["type"] = "DELETE_ARTIFACT"
    event = harbor_cloudevent(image.repo, image, host)
    event["type"] = "harbor.artifact.deleted"
    for body, headers in ((deleted, {}), (event, {}),
                          (event["data"], {"Ce-Type": "harbor.artifact.deleted"})):
        resp = post_hook(proxy, "/hooks/harbor", body, headers=headers)
        assert resp.status_code == 202 and resp.json()["conversions"] == [], resp.text
    assert conversion_list(proxy) == []
    assert metrics(proxy)["done"] == 0


# ---- 3. rejections -------------------------------------------------------------------------

def test_webhook_rejections(open_registry, pushed_images, proxy_factory):
    proxy = proxy_factory([upstream("main", open_registry.url)], extra_config=webhooks_config(
        [{"repositories": ["lib/**"], "formats": [FORMAT]}]))
    image = pushed_images.oci
    payload = harbor_default_payload(image.repo, image, "harbor.example.internal")
    notification = {"events": [{"id": "e1", "action": "push", "target": {
        "mediaType": images.OCI_MANIFEST, "digest": image.digest, "repository": image.repo,
        "tag": image.tag, "size": len(image.manifest)}}]}

    # No secret, or a wrong one (same length, longer, other case, the bare token): 401.
    for path, body in (("/hooks/harbor", payload), ("/hooks/registry", notification)):
        for authorization in (None, "", "Bearer s3cre7", "Bearer s3cret2", "bearer s3cret",
                              "s3cret", "Basic czNjcmV0"):
            resp = post_hook(proxy, path, body, authorization=authorization)
            checks.assert_oci_error(resp.status_code, resp.content, {401}, {"UNAUTHORIZED"})
            assert resp.headers.get("Content-Type", "").startswith("application/json")

    # Not a POST: 405, with or without the secret.
    for method in ("GET", "PUT", "DELETE"):
        for authorization in (None, SECRET):
            headers = {"Authorization": authorization} if authorization else {}
            resp = requests.request(method, proxy.url + "/hooks/harbor", headers=headers,
                                    timeout=10)
            checks.assert_oci_error(resp.status_code, resp.content, {405})

    # Malformed JSON (with the right secret): 400.
    for path in ("/hooks/harbor", "/hooks/registry"):
        for body in (b"{not json", b"", b"[1, 2]", b"\"a string\"", b"{\"type\": \"PUSH_ARTI"):
            resp = post_hook(proxy, path, body)
            checks.assert_oci_error(resp.status_code, resp.content, {400})
    resp = post_hook(proxy, "/hooks/harbor", b"{not json",
                     headers={"Ce-Type": "harbor.artifact.pushed"})
    checks.assert_oci_error(resp.status_code, resp.content, {400})

    # The conversions API wants the secret too.
    for authorization in (None, "Bearer s3cre7", "Bearer s3cret2"):
        resp = api_conversions(proxy, authorization)
        checks.assert_oci_error(resp.status_code, resp.content, {401}, {"UNAUTHORIZED"})
        assert b"conversions" not in resp.content

    # Nothing started, and nothing ever tried to read the upstream for it.
    assert conversion_list(proxy) == []
    m = metrics(proxy)
    assert m["done"] == 0 and m["failed"] == 0 and m["misses"] == 0, m

    # Control: the very same payloads with the secret are accepted.
    accepted(post_hook(proxy, "/hooks/harbor", payload), image.repo, image)
    wait_converted(proxy, image.repo, image.digest)
    resp = post_hook(proxy, "/hooks/registry", notification)
    assert accepted(resp, image.repo, image)["state"] == "cached"
    checks.assert_healthy(proxy)


def test_webhooks_off_without_secret(open_registry, pushed_images, proxy_factory):
    """No `webhooks` section, or an empty secret: the hooks answer 404, whatever they carry."""
    image = pushed_images.oci
    payload = harbor_default_payload(image.repo, image, "harbor.example.internal")
    for extra in (None, webhooks_config([{"repositories": ["**"], "formats": [FORMAT]}],
                                        secret="")):
        proxy = proxy_factory([upstream("main", open_registry.url)], extra_config=extra)
        for path in ("/hooks/harbor", "/hooks/registry"):
            for authorization in (SECRET, None, ""):
                resp = post_hook(proxy, path, payload, authorization=authorization)
                checks.assert_oci_error(resp.status_code, resp.content, {404})
        assert metrics(proxy)["done"] == 0
