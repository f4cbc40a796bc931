"""Start, watch and stop the server processes a test needs.

Every process started here is listed in LIVE until stopped, so conftest can attach the logs
of the servers that were running when a test failed.
"""
import os
import signal
import subprocess
import time

import pytest
import requests

LIVE = []


class ServiceError(RuntimeError):
    pass


class Service:
    """One server process whose stdout and stderr go to a log file."""

    def __init__(self, name, argv, log_path, report_chars=3000):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = str(log_path)
        self.report_chars = report_chars  # how much of the log a failure report shows
        self.proc = None
        self.returncode = None

    def start(self):
        log = open(self.log_path, "ab")
        try:
            # A new session, so a signal meant for the test runner does not reach it.
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        finally:
            log.close()
        LIVE.append(self)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_http(self, url, timeout=20.0, ready=lambda r: True, verify=True):
        """Poll url until ready(response) holds; fail early if the process exits.

        verify: as requests takes it (a CA bundle path for an https server of a test CA)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if not self.alive():
                raise ServiceError(
                    f"{self.name} exited with {self.proc.returncode} while starting:\n"
                    + self.log_tail())
            try:
                resp = requests.get(url, timeout=2, allow_redirects=False, verify=verify)
                if ready(resp):
                    return resp
                last = f"HTTP {resp.status_code}"
            except requests.RequestException as exc:
                last = repr(exc)
            time.sleep(0.05)
        raise ServiceError(f"{self.name} not ready at {url} after {timeout}s ({last}):\n"
                           + self.log_tail())

    def send_signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout):
        self.returncode = self.proc.wait(timeout=timeout)
        return self.returncode

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        """Signal the process and wait; kill it if it does not exit in time.

        Returns the exit status (negative for death by signal, as subprocess reports it).
        """
        if self.proc is None:
            return None
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
                    self.returncode = "killed after timeout"
                    return self.returncode
            self.returncode = self.proc.returncode
            return self.returncode
        finally:
            if self in LIVE:
                LIVE.remove(self)

    def log_text(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, limit=None) -> str:
        limit = limit or self.report_chars
        text = self.log_text()
        return text if len(text) <= limit else "...\n" + text[-limit:]


def require_program(path, package):
    """Fail (not skip) with the package to install when a peer program is missing."""
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} not found: apt-get install {package}", pytrace=False)
