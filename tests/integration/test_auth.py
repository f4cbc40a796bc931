"""Authentication through the proxy: htpasswd (Basic) and token (Bearer) upstreams."""
import jwt
import pytest
import requests

import images
import registry_auth
import skopeo
from proxy import running_proxy, upstream
from registry import HTPASSWD_USERS
from registry_auth import fetch_token, parse_challenge
from token_server import ANONYMOUS, USERS, TokenServer, allowed_actions

BASIC_USER, BASIC_PASSWORD = next(iter(HTPASSWD_USERS.items()))
UPSTREAM_NAME = "secure"


# ---- htpasswd ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def basic_proxy(tmp_path_factory, htpasswd_registry):
    with running_proxy(tmp_path_factory.mktemp("proxy-basic"),
                       [upstream("basic", htpasswd_registry.url)]) as p:
        yield p


@pytest.mark.parametrize("path", ["/v2/", "/v2/team/oci-app/manifests/v1"])
def test_basic_challenge_passes_through(basic_proxy, htpasswd_registry, path):
    via = requests.get(basic_proxy.url + path, timeout=10)
    direct = requests.get(htpasswd_registry.url + path, timeout=10)
    assert via.status_code == direct.status_code == 401
    assert via.headers.get("WWW-Authenticate") == direct.headers["WWW-Authenticate"]
    assert via.headers.get("Docker-Distribution-API-Version") == "registry/2.0"


def test_basic_wrong_password_gets_401(basic_proxy, htpasswd_registry):
    resp = requests.get(f"{basic_proxy.url}/v2/team/oci-app/manifests/v1",
                        auth=(BASIC_USER, "wrong"), timeout=10)
    assert resp.status_code == 401
    scheme, params = parse_challenge(resp.headers.get("WWW-Authenticate"))
    assert scheme == "basic" and params.get("realm") == f"{htpasswd_registry.name}-realm"


def test_basic_right_password_gets_manifest(basic_proxy, htpasswd_registry):
    image = htpasswd_registry.images[0]
    resp = requests.get(f"{basic_proxy.url}/v2/{image.repo}/manifests/{image.tag}",
                        auth=(BASIC_USER, BASIC_PASSWORD),
                        headers={"Accept": image.media_type}, timeout=10)
    assert resp.status_code == 200 and resp.content == image.manifest


def test_skopeo_with_basic_creds(basic_proxy, htpasswd_registry, tmp_path):
    index = htpasswd_registry.images[2]
    ref = f"127.0.0.1:{basic_proxy.port}/{index.repo}:{index.tag}"
    ok = skopeo.copy_to_dir(ref, tmp_path / "ok", creds=f"{BASIC_USER}:{BASIC_PASSWORD}")
    assert ok.returncode == 0, ok.stderr
    skopeo.check_dir_copy(tmp_path / "ok", index)
    bad = skopeo.copy_to_dir(ref, tmp_path / "bad", creds=f"{BASIC_USER}:wrong")
    assert bad.returncode != 0
    assert "unauthorized" in bad.stderr.lower() or "401" in bad.stderr, bad.stderr
    assert not (tmp_path / "bad" / "manifest.json").exists()


# ---- token ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def token_images(token_registry):
    """Pushed by alice straight to the registry: public/ and private/ repositories."""
    alice = registry_auth.session("alice", USERS["alice"])
    pushed = {}
    for prefix in ("public", "private"):
        pushed[prefix] = images.push_small_images(token_registry.url, alice, prefix)
    return pushed


@pytest.fixture(scope="module")
def token_proxy(tmp_path_factory, token_registry, token_images):
    ups = [upstream(UPSTREAM_NAME, token_registry.url, token_proxy=True)]
    with running_proxy(tmp_path_factory.mktemp("proxy-token"), ups) as p:
        yield p


def proxy_realm(proxy):
    return f"http://127.0.0.1:{proxy.port}/auth/token/{UPSTREAM_NAME}"


@pytest.mark.parametrize("path,scope", [
    ("/v2/", None),
    ("/v2/private/oci-app/manifests/v1", "repository:private/oci-app:pull"),
])
def test_bearer_challenge_realm_rewritten(token_proxy, token_registry, path, scope):
    resp = requests.get(token_proxy.url + path, timeout=10)
    direct = requests.get(token_registry.url + path, timeout=10)
    assert resp.status_code == direct.status_code == 401
    scheme, params = parse_challenge(resp.headers.get("WWW-Authenticate"))
    _, direct_params = parse_challenge(direct.headers["WWW-Authenticate"])
    assert scheme == "bearer"
    assert params["realm"] == proxy_realm(token_proxy)
    assert params.get("service") == direct_params["service"] == TokenServer.SERVICE
    assert params.get("scope") == direct_params.get("scope") == scope


def test_skopeo_with_token_creds(token_proxy, token_images, tmp_path):
    index = token_images["private"][2]
    ref = f"127.0.0.1:{token_proxy.port}/{index.repo}:{index.tag}"
    ok = skopeo.copy_to_dir(ref, tmp_path / "ok", creds=f"alice:{USERS['alice']}")
    assert ok.returncode == 0, ok.stderr
    skopeo.check_dir_copy(tmp_path / "ok", index)
    bad = skopeo.copy_to_dir(ref, tmp_path / "bad", creds="alice:wrong")
    assert bad.returncode != 0
    assert not (tmp_path / "bad" / "manifest.json").exists()


def _decode(token, token_server):
    return jwt.decode(token, token_server.public_key(), algorithms=["RS256"],
                      audience=TokenServer.SERVICE, issuer=TokenServer.ISSUER)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_token_endpoint_through_proxy(token_proxy, token_server, token_images, method):
    image = token_images["private"][0]
    scope = f"repository:{image.repo}:pull"
    resp = fetch_token(proxy_realm(token_proxy), TokenServer.SERVICE, scope,
                       ("alice", USERS["alice"]), method=method)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    token = body.get("token") or body.get("access_token")
    claims = _decode(token, token_server)
    assert claims["sub"] == "alice"
    assert claims["access"] == [{"type": "repository", "name": image.repo, "actions": ["pull"]}]
    # The token works for a pull through the proxy.
    pulled = requests.get(f"{token_proxy.url}/v2/{image.repo}/manifests/{image.tag}",
                          headers={"Authorization": f"Bearer {token}",
                                   "Accept": image.media_type}, timeout=10)
    assert pulled.status_code == 200 and pulled.content == image.manifest


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_token_endpoint_wrong_password(token_proxy, method):
    resp = fetch_token(proxy_realm(token_proxy), TokenServer.SERVICE,
                       "repository:private/oci-app:pull", ("alice", "wrong"), method=method)
    assert resp.status_code == 401


USERS_UNDER_TEST = ["alice", "bob", ANONYMOUS]


@pytest.mark.parametrize("user", USERS_UNDER_TEST, ids=["alice", "bob", "anonymous"])
@pytest.mark.parametrize("prefix", ["public", "private"])
def test_pull_authorization_matrix(token_proxy, token_images, user, prefix):
    """Pull through the proxy as each user; expected outcome comes from the POLICY table."""
    image = token_images[prefix][0]
    session = (registry_auth.session() if user == ANONYMOUS
               else registry_auth.session(user, USERS[user]))
    resp = session.get(f"{token_proxy.url}/v2/{image.repo}/manifests/{image.tag}",
                       headers={"Accept": image.media_type}, timeout=10)
    if "pull" in allowed_actions(user, "repository", image.repo):
        assert resp.status_code == 200 and resp.content == image.manifest
    else:
        assert resp.status_code in (401, 403)
    # Every challenge the client answered pointed at the proxy, never at the token server.
    for earlier in resp.history:
        _, params = parse_challenge(earlier.headers.get("WWW-Authenticate"))
        assert params["realm"] == proxy_realm(token_proxy)
