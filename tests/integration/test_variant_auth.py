"""Safe sharing of converted content: the cache is shared by every client of the proxy, but a
client gets a variant (or any converted blob or child manifest, by digest) only if the upstream
lets it read the source in that repository, with its own credentials.

Token registry (token_server.py: alice may pull everything, bob and anonymous only public/),
private/app:1 and public/app:1 pushed by alice, proxy with token_proxy. For alice, bob and
anonymous, each with the token a client gets from the proxy's /auth/token/<upstream> after the
401, on private/ and public/, with a cold cache (fresh proxy) and a warm one (alice pulled both
variants first): the variant manifest by tag, then every converted object by digest (GET,
HEAD, Range), compared with what the upstream answers for the source. Never a 200 with
converted bytes of a source the client may not read; also not through another repository.
"""
import time

import pytest
import requests

import images
import registry_auth
from proxy import upstream
from registry_auth import fetch_token, parse_challenge
from token_server import ANONYMOUS, USERS, allowed_actions
import variant_env as ve
from variant_env import SUFFIX

UPSTREAM = "secure"
TAG = "1"
REPOS = {"private": "private/app", "public": "public/app"}
USER_IDS = {"alice": "alice", "bob": "bob", ANONYMOUS: "anonymous"}
DENIED = {401, 403, 404}
TTL = 1.0


def variants():
    return ve.variants_config(on_miss="wait", wait_limit="60s", authorization_ttl=f"{TTL}s")


@pytest.fixture(scope="module")
def sources(token_registry):
    """A 2-platform index in each repository, pushed by alice straight to the registry."""
    alice = registry_auth.session("alice", USERS["alice"])
    pusher = images.Pusher(token_registry.url, alice)
    out = {}
    for key, repo in REPOS.items():
        children = []
        for arch in ("amd64", "arm64"):
            body, blobs = images.build_oci_image(f"auth-{key}", arch)
            child = pusher.push_image(repo, images.sha256_digest(body), body, blobs,
                                      images.OCI_MANIFEST)
            child.tag = None
            children.append(child)
        out[key] = pusher.push_index(repo, TAG, children)
    return out


def start(tmp_path_factory, token_registry, name):
    return ve.running_variant_proxy(tmp_path_factory.mktemp(name),
                                    [upstream(UPSTREAM, token_registry.url, token_proxy=True)],
                                    variants())


def may_pull(user, repo):
    return "pull" in allowed_actions(user, "repository", repo)


def client_token(proxy, user, repo):
    """What a client does after the 401: the realm (the proxy's) with its credentials."""
    r = requests.get(f"{proxy.url}/v2/{repo}/manifests/{TAG}{SUFFIX}", timeout=30)
    assert r.status_code == 401, (r.status_code, r.text[:200])
    scheme, params = parse_challenge(r.headers.get("WWW-Authenticate", ""))
    assert scheme == "bearer"
    assert params["realm"] == f"{proxy.url}/auth/token/{UPSTREAM}"
    assert params.get("scope") == f"repository:{repo}:pull"
    creds = None if user == ANONYMOUS else (user, USERS[user])
    tok = fetch_token(params["realm"], params.get("service"), params.get("scope"), creds)
    assert tok.status_code == 200, tok.text
    body = tok.json()
    return "Bearer " + (body.get("token") or body.get("access_token"))


def upstream_status(registry, repo, reference, auth, method="GET"):
    r = requests.request(method, f"{registry.url}/v2/{repo}/manifests/{reference}",
                         headers={"Authorization": auth, "Accept": ve.MANIFEST_ACCEPT},
                         timeout=30)
    return r.status_code


def fetch_object(proxy, repo, kind, digest, auth, method="GET", headers=None):
    path = "manifests" if kind == "manifest" else "blobs"
    h = {"Accept": ve.MANIFEST_ACCEPT}
    if auth:
        h["Authorization"] = auth
    h.update(headers or {})
    return requests.request(method, f"{proxy.url}/v2/{repo}/{path}/{digest}", headers=h,
                            timeout=60, allow_redirects=False)


def assert_denied(resp, what, secret_objects):
    assert resp.status_code in DENIED, f"{what}: {resp.status_code} {resp.text[:200]}"
    for _kind, _digest, data in secret_objects:
        assert len(data) < 64 or data not in resp.content, f"{what}: converted bytes leaked"
    if resp.status_code == 401:
        _, params = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
        assert params.get("realm", "").endswith(f"/auth/token/{UPSTREAM}"), \
            "a 401 must send the client to the proxy's token endpoint"


@pytest.fixture(scope="module")
def warm(tmp_path_factory, token_registry, sources):
    """A proxy where alice pulled both variants: (proxy, {key: [(kind, digest, bytes)]})."""
    with start(tmp_path_factory, token_registry, "proxy-auth-warm") as proxy:
        objects = {}
        for key, repo in REPOS.items():
            auth = client_token(proxy, "alice", repo)
            objects[key] = ve.converted_objects(proxy, repo, TAG + SUFFIX, auth=auth)
            assert objects[key][0][1] != sources[key].digest
            assert len(objects[key]) == 1 + 2 + 2 + 4  # index, children, configs, layers
        assert ve.conversions(proxy, "done") == 2
        yield proxy, objects


def check_user_on_repo(proxy, registry, objects, user, key, cold):
    """The variant by tag, then every converted object by digest, as `user`."""
    repo = REPOS[key]
    auth = client_token(proxy, user, repo)
    allowed = may_pull(user, repo)
    # What the upstream answers this user for the source.
    source_status = upstream_status(registry, repo, TAG, auth)
    assert (source_status == 200) == allowed, source_status

    secret = objects[key]
    resp = ve.get_manifest(proxy, repo, TAG + SUFFIX, auth=auth)
    if allowed:
        assert resp.status_code == 200, resp.text[:300]
        assert ve.sha256(resp.content) == secret[0][1], "not the variant alice got"
    else:
        assert_denied(resp, f"{user} {repo}:{TAG}{SUFFIX}", secret)
        assert resp.status_code == source_status
    for kind, digest, data in secret:
        what = f"{user} {kind} {repo}@{digest} ({'cold' if cold else 'warm'})"
        get = fetch_object(proxy, repo, kind, digest, auth)
        head = fetch_object(proxy, repo, kind, digest, auth, method="HEAD")
        ranged = fetch_object(proxy, repo, kind, digest, auth, headers={"Range": "bytes=0-9"})
        if allowed:
            assert get.status_code == 200 and get.content == data, what
            assert head.status_code == 200, what
            assert int(head.headers["Content-Length"]) == len(data), what
            assert head.headers["Docker-Content-Digest"] == digest, what
            assert ranged.status_code == 206 and ranged.content == data[:10], what
        else:
            for r in (get, head, ranged):
                assert_denied(r, what, secret)


# ---- cold cache ----------------------------------------------------------------------------

@pytest.mark.parametrize("user", list(USER_IDS), ids=list(USER_IDS.values()))
def test_cold_cache(tmp_path_factory, token_registry, warm, user):
    _, objects = warm
    with start(tmp_path_factory, token_registry, "proxy-auth-cold") as proxy:
        for key, repo in REPOS.items():
            auth = client_token(proxy, user, repo)
            # Nothing is cached yet: converted digests are unknown here and upstream.
            for kind, digest, _data in objects[key]:
                r = fetch_object(proxy, repo, kind, digest, auth)
                assert r.status_code in DENIED, (user, kind, digest, r.status_code)
            check_user_on_repo(proxy, token_registry, objects, user, key, cold=True)
        log = proxy.service.log_text()
        for key, repo in REPOS.items():
            converted_here = f"conversion done upstream={UPSTREAM} repo={repo} " in log
            assert converted_here == may_pull(user, repo), \
                f"{user}: conversion of {repo} {'missing' if may_pull(user, repo) else 'started'}"
        if user != "alice":
            assert ve.metric(proxy, "accel_proxy_cache_misses_total") == 1  # public only


# ---- warm cache ----------------------------------------------------------------------------

@pytest.mark.parametrize("key", list(REPOS))
@pytest.mark.parametrize("user", list(USER_IDS), ids=list(USER_IDS.values()))
def test_warm_cache(token_registry, warm, user, key):
    proxy, objects = warm
    denied_before = ve.metric(proxy, "accel_proxy_authorization_checks_total", result="denied")
    check_user_on_repo(proxy, token_registry, objects, user, key, cold=False)
    if not may_pull(user, REPOS[key]):
        denied = ve.metric(proxy, "accel_proxy_authorization_checks_total", result="denied")
        assert denied >= denied_before + len(objects[key]), "cached objects were not checked"
    assert ve.conversions(proxy) == 2, "a request converted again"


def test_warm_cache_without_credentials(warm):
    """No Authorization at all (a client's first try): 401 that points at the proxy."""
    proxy, objects = warm
    for key, repo in REPOS.items():
        for kind, digest, _data in objects[key]:
            r = fetch_object(proxy, repo, kind, digest, None)
            assert r.status_code == 401, (repo, kind, digest, r.status_code)
            assert_denied(r, f"anonymous without token {repo}@{digest}", objects[key])


@pytest.mark.parametrize("user", list(USER_IDS), ids=list(USER_IDS.values()))
def test_converted_digests_only_in_their_repository(warm, user):
    """private/app's converted objects asked for through public/app (which bob may read):
    they are not public/app's, so the proxy must not serve them there."""
    proxy, objects = warm
    auth = client_token(proxy, user, REPOS["public"])
    public_digests = {d for _k, d, _b in objects["public"]}
    for kind, digest, _data in objects["private"]:
        if digest in public_digests:
            continue
        r = fetch_object(proxy, REPOS["public"], kind, digest, auth)
        assert r.status_code in DENIED, (user, kind, digest, r.status_code)
        assert_denied(r, f"{user} private object via public/app", objects["private"])


def test_authorization_is_remembered_for_the_ttl_only(warm):
    proxy, objects = warm
    repo = REPOS["private"]
    auth = client_token(proxy, "alice", repo)
    kind, digest, _ = objects["private"][-1]

    def counts():
        return {r: ve.metric(proxy, "accel_proxy_authorization_checks_total", result=r)
                for r in ("allowed", "cached", "denied")}

    assert fetch_object(proxy, repo, kind, digest, auth).status_code == 200
    first = counts()
    assert fetch_object(proxy, repo, kind, digest, auth).status_code == 200
    second = counts()
    assert second["cached"] == first["cached"] + 1 and second["allowed"] == first["allowed"]
    time.sleep(TTL + 0.3)
    assert fetch_object(proxy, repo, kind, digest, auth).status_code == 200
    third = counts()
    assert third["allowed"] == second["allowed"] + 1, "the grant outlived authorization_ttl"


def test_deleted_source_is_no_longer_served(tmp_path_factory, token_registry):
    """Once the source manifest is gone upstream, its cached variant is not served (after the
    authorization TTL): the read check is against the source, not the cache."""
    alice = registry_auth.session("alice", USERS["alice"])
    body, blobs = images.build_oci_image("auth-gone")
    repo = "private/gone"
    source = images.Pusher(token_registry.url, alice).push_image(repo, TAG, body, blobs,
                                                                 images.OCI_MANIFEST)
    with start(tmp_path_factory, token_registry, "proxy-auth-gone") as proxy:
        auth = client_token(proxy, "alice", repo)
        objects = ve.converted_objects(proxy, repo, TAG + SUFFIX, auth=auth)
        r = alice.delete(f"{token_registry.url}/v2/{repo}/manifests/{source.digest}", timeout=30)
        assert r.status_code == 202, (r.status_code, r.text)
        time.sleep(TTL + 0.3)
        for kind, digest, _data in objects:
            r = fetch_object(proxy, repo, kind, digest, auth)
            assert r.status_code in DENIED, (kind, digest, r.status_code)
        assert ve.get_manifest(proxy, repo, TAG + SUFFIX, auth=auth).status_code == 404
