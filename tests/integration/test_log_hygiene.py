"""Credentials never reach the proxy's log, even at the most verbose log levels.

Each test starts its own proxy (log level debug, and trace as well), sends requests that carry
secrets in every place a client puts them (Basic header, token GET with Basic, OAuth2 POST body,
Bearer header), stops the proxy so its log is complete, and then searches the whole log
(stdout and stderr both go to it) for each secret and its encodings.
"""
import base64
import json
import urllib.parse

import pytest
import requests

import images
import registry_auth
from proxy import running_proxy, upstream
from registry import HTPASSWD_USERS
from registry_auth import fetch_token
from token_server import USERS, TokenServer

BASIC_USER, BASIC_PASSWORD = next(iter(HTPASSWD_USERS.items()))
TOKEN_USER = "alice"
TOKEN_PASSWORD = USERS[TOKEN_USER]
# A wrong password is a secret too (often a typo of the right one), and it takes other paths.
WRONG_PASSWORD = "Wr0ng-but-s3cret-7c1e9a"

LOG_LEVELS = ["debug", "trace"]


def _basic_value(user, password):
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def secret_forms(secret):
    """The spellings of a secret that could land in a log."""
    return {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}


def assert_log_clean(log, secrets, needed_lines):
    """No secret in any form appears in log; each of needed_lines does (so this is not vacuous)."""
    for label, secret in secrets.items():
        for form in secret_forms(secret):
            assert form not in log, f"{label} ({form[:12]}...) appears in the proxy log"
    for line in needed_lines:
        assert line in log, f"log lacks {line!r}: the request lines were not logged?\n{log[-3000:]}"


def run_and_collect(workdir, upstreams, log_level, exercise):
    """Start a proxy, run exercise(proxy) -> secrets, stop the proxy; return (log, secrets)."""
    with running_proxy(workdir, upstreams, log_level=log_level) as proxy:
        secrets = exercise(proxy)
    # Stopped: every line is flushed and the file is complete.
    return proxy.service.log_text(), secrets


# ---- htpasswd (Basic) ----------------------------------------------------------------------

@pytest.mark.parametrize("log_level", LOG_LEVELS)
def test_basic_credentials_not_logged(tmp_path, htpasswd_registry, log_level):
    image = htpasswd_registry.images[0]
    digest = json.loads(image.manifest)["layers"][0]["digest"]

    def exercise(proxy):
        # A client's pull: ping, manifest, blob, all with the Basic answer to the challenge.
        session = registry_auth.session(BASIC_USER, BASIC_PASSWORD)
        assert session.get(proxy.url + "/v2/", timeout=10).status_code == 200
        resp = session.get(f"{proxy.url}/v2/{image.repo}/manifests/{image.tag}",
                           headers={"Accept": image.media_type}, timeout=10)
        assert resp.status_code == 200 and resp.content == image.manifest
        blob = session.get(f"{proxy.url}/v2/{image.repo}/blobs/{digest}", timeout=10)
        assert blob.status_code == 200 and blob.content == image.blobs[digest]
        # Preemptive Basic (no challenge round), and a wrong password.
        pre = requests.get(f"{proxy.url}/v2/{image.repo}/manifests/{image.tag}",
                           auth=(BASIC_USER, BASIC_PASSWORD),
                           headers={"Accept": image.media_type}, timeout=10)
        assert pre.status_code == 200
        bad = requests.get(f"{proxy.url}/v2/{image.repo}/manifests/{image.tag}",
                           auth=(BASIC_USER, WRONG_PASSWORD), timeout=10)
        assert bad.status_code == 401
        return {
            "password": BASIC_PASSWORD,
            "base64(user:password)": _basic_value(BASIC_USER, BASIC_PASSWORD),
            "wrong password": WRONG_PASSWORD,
            "base64(user:wrong password)": _basic_value(BASIC_USER, WRONG_PASSWORD),
        }

    log, secrets = run_and_collect(tmp_path / "proxy", [upstream("basic", htpasswd_registry.url)],
                                   log_level, exercise)
    assert_log_clean(log, secrets, ["request method=GET route=manifest",
                                    "request method=GET route=blob"])


# ---- token (Bearer, through the proxy's token endpoint) -------------------------------------

@pytest.fixture(scope="module")
def token_image(token_registry):
    """A private image, pushed by alice straight to the registry."""
    alice = registry_auth.session(TOKEN_USER, TOKEN_PASSWORD)
    body, blobs = images.build_oci_image("log-hygiene")
    return images.Pusher(token_registry.url, alice).push_image(
        "private/log-hygiene", "v1", body, blobs, images.OCI_MANIFEST)


def _token_of(resp):
    assert resp.status_code == 200, resp.text
    body = resp.json()
    token = body.get("token") or body.get("access_token")
    assert token and token.count(".") == 2, body
    return token


@pytest.mark.parametrize("log_level", LOG_LEVELS)
def test_token_credentials_not_logged(tmp_path, token_registry, token_image, log_level):
    image = token_image
    name = "secure"
    scope = f"repository:{image.repo}:pull"

    def exercise(proxy):
        realm = f"{proxy.url}/auth/token/{name}"
        tokens = []
        # GET with Basic credentials, and the OAuth2 password grant (POST body).
        for method in ("GET", "POST"):
            tokens.append(_token_of(fetch_token(realm, TokenServer.SERVICE, scope,
                                                (TOKEN_USER, TOKEN_PASSWORD), method=method)))
        for method in ("GET", "POST"):
            bad = fetch_token(realm, TokenServer.SERVICE, scope, (TOKEN_USER, WRONG_PASSWORD),
                              method=method)
            assert bad.status_code == 401
        # The tokens work for a pull through the proxy.
        for token in tokens:
            resp = requests.get(f"{proxy.url}/v2/{image.repo}/manifests/{image.tag}",
                                headers={"Authorization": f"Bearer {token}",
                                         "Accept": image.media_type}, timeout=10)
            assert resp.status_code == 200 and resp.content == image.manifest
        # And a client's own challenge dance (401, token GET, retry with Bearer).
        session = registry_auth.session(TOKEN_USER, TOKEN_PASSWORD)
        resp = session.get(f"{proxy.url}/v2/{image.repo}/manifests/{image.tag}",
                           headers={"Accept": image.media_type}, timeout=10)
        assert resp.status_code == 200
        tokens += session.auth.tokens.values()

        secrets = {
            "password": TOKEN_PASSWORD,
            "base64(user:password)": _basic_value(TOKEN_USER, TOKEN_PASSWORD),
            "wrong password": WRONG_PASSWORD,
            "base64(user:wrong password)": _basic_value(TOKEN_USER, WRONG_PASSWORD),
        }
        for i, token in enumerate(tokens):
            secrets[f"token {i}"] = token
            # A log that cut the token short would still leak its signature.
            secrets[f"token {i} signature"] = token.rsplit(".", 1)[1]
        return secrets

    ups = [upstream(name, token_registry.url, token_proxy=True)]
    log, secrets = run_and_collect(tmp_path / "proxy", ups, log_level, exercise)
    assert_log_clean(log, secrets, ["request method=GET route=manifest",
                                    "request method=GET route=token",
                                    "request method=POST route=token"])
