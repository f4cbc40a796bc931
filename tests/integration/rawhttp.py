"""HTTP requests sent exactly as written (no URL normalisation, as requests/urllib3 would do)."""
import http.client
from dataclasses import dataclass


@dataclass
class RawResponse:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def request(port, method, path, headers=None, body=None, timeout=15) -> RawResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        # skip_host/skip_accept_encoding off: a normal Host header, nothing else added.
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return RawResponse(resp.status, resp.headers, resp.read() if method != "HEAD" else b"")
    finally:
        conn.close()
