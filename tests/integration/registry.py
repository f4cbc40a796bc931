"""A docker-registry (distribution 2.8) instance with its own root directory and config.

Modes: "open" (no auth), "htpasswd" (Basic, any valid user may pull and push) and "token"
(Bearer tokens from token_server.py). Started with `env -i`: any REGISTRY_* variable in the
environment would override the config file.
"""
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import requests

import yamlconf
from ports import free_port
from process import Service, ServiceError, require_program

REGISTRY_BIN = "/usr/bin/docker-registry"

# The users of the htpasswd-mode registry the session fixture starts.
HTPASSWD_USERS = {"tester": "s3cret-pass"}


@dataclass
class TokenAuth:
    realm: str
    service: str
    issuer: str
    rootcertbundle: str


class Registry:
    def __init__(self, workdir, mode="open", htpasswd_users=None, token=None, name="registry",
                 tls=None):
        """tls: optional (certificate path, key path); the registry then serves https only."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.mode = mode
        self.name = name
        self.port = free_port()
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.rootdir = self.workdir / "storage"
        self.htpasswd_users = htpasswd_users or {}
        self.token = token
        self.service = None

    @property
    def blob_dir(self) -> Path:
        """Where the filesystem driver keeps blob data: <hh>/<hex>/data below it."""
        return self.rootdir / "docker" / "registry" / "v2" / "blobs"

    def _auth_section(self):
        if self.mode == "open":
            return None
        if self.mode == "htpasswd":
            path = self.workdir / "htpasswd"
            lines = []
            for user, password in self.htpasswd_users.items():
                # htpasswd -B: bcrypt, the only hash distribution accepts.
                out = subprocess.run(["htpasswd", "-Bbn", user, password], check=True,
                                     capture_output=True, text=True).stdout.strip()
                lines.append(out)
            path.write_text("\n".join(lines) + "\n")
            return {"htpasswd": {"realm": f"{self.name}-realm", "path": str(path)}}
        if self.mode == "token":
            t = self.token
            return {"token": {"realm": t.realm, "service": t.service, "issuer": t.issuer,
                              "rootcertbundle": t.rootcertbundle}}
        raise ValueError(f"unknown registry mode {self.mode}")

    def write_config(self) -> Path:
        config = {
            "version": "0.1",
            # warn: keeps the one-line access log, drops the verbose per-request info lines.
            "log": {"level": "warn", "formatter": "text"},
            "storage": {
                "filesystem": {"rootdirectory": str(self.rootdir)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": f"127.0.0.1:{self.port}", "secret": "integration-tests"},
            "auth": self._auth_section(),
        }
        if self.tls:
            cert, key = self.tls
            config["http"]["tls"] = {"certificate": str(cert), "key": str(key)}
        path = self.workdir / "config.yml"
        path.write_text(yamlconf.dump(config))
        return path

    def start(self):
        require_program(REGISTRY_BIN, "docker-registry")
        if self.mode == "htpasswd":
            require_program("/usr/bin/htpasswd", "apache2-utils")
        config = self.write_config()
        self.service = Service(self.name, ["env", "-i", REGISTRY_BIN, "serve", config],
                               self.workdir / "registry.log")
        self.service.start()
        try:
            # Any HTTP answer to /v2/ (200, or 401 with auth) means it is serving.
            if self.tls:
                self._wait_https()
            else:
                self.service.wait_http(self.url + "/v2/",
                                       ready=lambda r: r.status_code in (200, 401))
        except Exception:
            self.service.stop()
            raise
        return self

    def _wait_https(self, timeout=20.0):
        """Like Service.wait_http, but over TLS without verifying (the certificate may name
        another host on purpose); only "it answers HTTP" matters here."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if not self.service.alive():
                raise ServiceError(f"{self.name} exited with {self.service.proc.returncode} "
                                   "while starting:\n" + self.service.log_tail())
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # urllib3's InsecureRequestWarning
                    resp = requests.get(self.url + "/v2/", timeout=2, verify=False)
                if resp.status_code in (200, 401):
                    return
                last = f"HTTP {resp.status_code}"
            except requests.RequestException as exc:
                last = repr(exc)
            time.sleep(0.05)
        raise ServiceError(f"{self.name} not ready at {self.url} after {timeout}s ({last}):\n"
                           + self.service.log_tail())

    def stop(self):
        if self.service:
            return self.service.stop()
        return None

    def alive(self) -> bool:
        return self.service is not None and self.service.alive()
