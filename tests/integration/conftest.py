"""Fixtures for the accel-proxy integration tests.

Servers (registries, nginx, the token service, the proxy) each bind 127.0.0.1 on a free port,
live in their own temp dir, and are stopped in the fixture's teardown, also when a test fails.
When a test fails, the logs of every server still running are attached to its report.
"""
import os
import sys

import pytest
import requests

sys.path.insert(0, os.path.dirname(__file__))

import images  # noqa: E402
import registry_auth  # noqa: E402
from nginx_storage import NginxRedirect  # noqa: E402
from process import LIVE  # noqa: E402
from proxy import running_proxy, upstream  # noqa: E402
from registry import HTPASSWD_USERS, Registry, TokenAuth  # noqa: E402
from token_server import TokenServer  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for service in list(LIVE):
            report.sections.append((f"log of {service.name} (pid {service.pid})",
                                    service.log_tail()))


# ---- registries and their contents ---------------------------------------------------------

@pytest.fixture(scope="session")
def open_registry(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("registry-open"), name="registry-open").start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def pushed_images(open_registry) -> images.ImageSet:
    """The standard images, pushed once per session to the open registry."""
    return images.push_test_images(open_registry.url, requests.Session())


@pytest.fixture(scope="session")
def redirect_front(tmp_path_factory, open_registry, pushed_images):
    """nginx: blob reads answered with 307 to a storage server that ignores Range."""
    ngx = NginxRedirect(tmp_path_factory.mktemp("nginx"), open_registry).start()
    yield ngx
    ngx.stop()


@pytest.fixture(scope="session")
def htpasswd_registry(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("registry-htpasswd"), mode="htpasswd",
                   htpasswd_users=HTPASSWD_USERS, name="registry-htpasswd").start()
    try:
        user, password = next(iter(HTPASSWD_USERS.items()))
        session = registry_auth.session(user, password)
        reg.images = images.push_small_images(reg.url, session, "team")
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def token_server(tmp_path_factory):
    ts = TokenServer(tmp_path_factory.mktemp("token-server")).start()
    yield ts
    ts.stop()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory, token_server):
    auth = TokenAuth(token_server.realm, token_server.SERVICE, token_server.ISSUER,
                     token_server.cert_path)
    reg = Registry(tmp_path_factory.mktemp("registry-token"), mode="token", token=auth,
                   name="registry-token").start()
    yield reg
    reg.stop()


# ---- the proxy -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def proxy(tmp_path_factory, open_registry, pushed_images):
    """accel-proxy with the open registry as its only upstream."""
    with running_proxy(tmp_path_factory.mktemp("proxy"),
                       [upstream("main", open_registry.url)]) as p:
        yield p


@pytest.fixture
def proxy_factory(tmp_path_factory):
    """Start extra proxies with custom config inside one test; all stopped at its end."""
    stack = []

    def start(upstreams, **options):
        cm = running_proxy(tmp_path_factory.mktemp("proxy"), upstreams, **options)
        stack.append(cm)
        return cm.__enter__()

    yield start
    errors = []
    for cm in reversed(stack):
        try:
            cm.__exit__(None, None, None)
        except BaseException as exc:  # pytest.fail raises an exception of its own kind
            errors.append(exc)
    if errors:
        raise errors[0]
