"""Start accel-proxy with a generated YAML config, and stop it gracefully."""
import os
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest

import yamlconf
from ports import free_port
from process import Service

REPO_ROOT = Path(__file__).resolve().parents[2]


def proxy_binary() -> Path:
    return Path(os.environ.get("ACCEL_PROXY_BIN", REPO_ROOT / "build" / "accel-proxy"))


def require_binary() -> Path:
    """The proxy binary, or a test failure (never a skip) that says how to get it."""
    path = proxy_binary()
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"accel-proxy binary not found at {path}: build it "
                    f"(cmake -S {REPO_ROOT} -B {REPO_ROOT}/build && cmake --build "
                    f"{REPO_ROOT}/build) or set ACCEL_PROXY_BIN", pytrace=False)
    return path


def upstream(name, url, **options):
    """One `upstreams:` entry; options are hosts, token_proxy, ca_file, ..."""
    entry = {"name": name, "url": url}
    entry.update(options)
    return entry


class Proxy:
    def __init__(self, workdir, upstreams, default_upstream=None, timeouts=None, limits=None,
                 log_level="info", threads=2, extra_config=None, tls=None, ca=None):
        """extra_config: more top-level config sections as given (e.g. `variants`, `webhooks`).
        tls: (cert, key) paths: the listener serves https; ca: the CA that signed cert, which
        the readiness check (and `verify`, for a test's own requests) trusts."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.verify = str(ca) if ca else True
        self.config = {
            "listen": f"127.0.0.1:{self.port}",
            "threads": threads,
            "cache_dir": str(self.workdir / "cache"),
            "log_level": log_level,
            "timeouts": timeouts,
            "limits": limits,
            "default_upstream": default_upstream,
            "upstreams": upstreams,
        }
        if tls:
            self.config["tls"] = {"cert_file": str(tls[0]), "key_file": str(tls[1])}
        self.config.update(extra_config or {})
        self.service = None
        self.stopped_on_purpose = False

    def start(self):
        binary = require_binary()
        config_path = self.workdir / "accel-proxy.yaml"
        config_path.write_text(yamlconf.dump(self.config))
        self.service = Service("accel-proxy", [binary, "serve", "--config", config_path],
                               self.workdir / "accel-proxy.log", report_chars=15000)
        self.service.start()
        try:
            self.service.wait_http(self.url + "/healthz",
                                   ready=lambda r: r.status_code == 200 and r.text.strip() == "ok",
                                   verify=self.verify)
        except Exception:
            self.service.stop(signal.SIGKILL)
            raise
        return self

    def alive(self):
        return self.service.alive()

    def reload(self):
        """SIGHUP: the proxy re-reads its TLS certificate and key."""
        self.service.send_signal(signal.SIGHUP)

    def terminate(self):
        """SIGTERM, as a test that checks shutdown does it; the fixture then expects the exit."""
        self.stopped_on_purpose = True
        self.service.send_signal(signal.SIGTERM)

    def stop(self, timeout=20):
        self.stopped_on_purpose = True
        return self.service.stop(signal.SIGTERM, timeout=timeout)

    def log_tail(self):
        return self.service.log_tail()


@contextmanager
def supervised(proxy, stop_ok=lambda proxy, status: status == 0):
    """Yields a started proxy and stops it with SIGTERM on exit.

    Fails the test if the proxy died while the test ran, or if `stop_ok(proxy, status)` rejects
    its exit status (a graceful stop is part of its contract: exit 0).
    """
    try:
        yield proxy
    finally:
        died = not proxy.stopped_on_purpose and not proxy.alive()
        status = proxy.stop()
    if died:
        pytest.fail(f"accel-proxy exited by itself while tests used it (status {status}):\n"
                    + proxy.log_tail(), pytrace=False)
    if not stop_ok(proxy, status):
        pytest.fail(f"accel-proxy did not exit 0 on SIGTERM (status {status}):\n"
                    + proxy.log_tail(), pytrace=False)


@contextmanager
def running_proxy(workdir, upstreams, **options):
    """A started proxy, supervised (see supervised())."""
    with supervised(Proxy(workdir, upstreams, **options).start()) as proxy:
        yield proxy
