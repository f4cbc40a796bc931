"""Assertions shared by the test files."""
import json
import signal

import requests


def error_codes(resp_or_body):
    """The `errors[].code` values of an OCI error body (AssertionError if it is not one)."""
    body = resp_or_body if isinstance(resp_or_body, (bytes, str)) else resp_or_body.content
    try:
        doc = json.loads(body)
    except ValueError:
        raise AssertionError(f"body is not JSON: {body[:200]!r}")
    errors = doc.get("errors") if isinstance(doc, dict) else None
    assert isinstance(errors, list) and errors, f"no errors[] in body: {body[:200]!r}"
    for e in errors:
        assert isinstance(e.get("code"), str) and "message" in e, f"bad error entry {e!r}"
    return [e["code"] for e in errors]


def assert_oci_error(status, body, statuses, codes=None):
    """status is one of statuses and body an OCI error whose first code is in codes (if given)."""
    assert status in statuses, f"status {status}, expected one of {sorted(statuses)}: {body[:300]!r}"
    found = error_codes(body)
    if codes is not None:
        assert found[0] in codes, f"errors[0].code {found[0]!r}, expected one of {sorted(codes)}"


def assert_healthy(proxy):
    """The proxy process is alive and answers /healthz."""
    if not proxy.alive():
        status = proxy.service.proc.returncode
        how = f"killed by {signal.Signals(-status).name}" if status < 0 else f"exit status {status}"
        raise AssertionError(f"accel-proxy is gone ({how}):\n" + proxy.log_tail())
    resp = requests.get(proxy.url + "/healthz", timeout=5, verify=getattr(proxy, "verify", True))
    assert resp.status_code == 200 and resp.text.strip() == "ok"


def no_redirect_get(url, **kwargs):
    """GET without following redirects: a proxy must never hand a 3xx to the client."""
    kwargs.setdefault("timeout", 60)
    resp = requests.get(url, allow_redirects=False, **kwargs)
    assert not 300 <= resp.status_code < 400, \
        f"client saw {resp.status_code} Location={resp.headers.get('Location')}"
    return resp
