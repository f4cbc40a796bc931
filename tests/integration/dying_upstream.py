"""A fake upstream registry that breaks downloads in the middle.

It answers /v2/ like a registry; a blob GET with `Content-Length: 1000000` followed by only
1000 bytes before closing the connection; and, for the blob SMALL_DIGEST and any manifest,
`Content-Length: 20000` and again 1000 bytes (small bodies take the proxy's copying path,
large ones its splice path). A proxy must pass the failure on (the client's read is
incomplete) and never end the response as if it were whole.

Under a repository named `stall/...` it does not close but goes quiet, holding the connection
open for up to STALL_SECONDS: after those 1000 bytes, or (`stall/silent/...`) before sending
anything at all. A proxy must give up after its upstream read timeout.
"""
import hashlib
import socketserver
import threading
import time

from ports import free_port

PROMISED = 1_000_000
SMALL_PROMISED = 20_000
SMALL_DIGEST = "sha256:" + "2" * 64
SENT = 1000
STALL_SECONDS = 20
DATA = bytes(i % 251 for i in range(PROMISED))
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()


class _Handler(socketserver.StreamRequestHandler):
    def handle(self):
        request_line = self.rfile.readline().decode("latin-1").strip()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # headers are not needed
        method, path = (request_line.split(" ") + ["", ""])[:2]
        stall = path.startswith("/v2/stall/")
        if path.startswith("/v2/stall/silent/"):
            self._go_quiet()
        elif path.split("?")[0] == "/v2/":
            self._send(200, b"{}", "application/json")
        elif "/blobs/" in path or "/manifests/" in path:
            small = path.endswith(SMALL_DIGEST) or "/manifests/" in path
            ctype = ("application/vnd.oci.image.manifest.v1+json" if "/manifests/" in path
                     else "application/octet-stream")
            head = (f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {SMALL_PROMISED if small else PROMISED}\r\n"
                    f"Docker-Content-Digest: {DIGEST}\r\n"
                    f"Docker-Distribution-API-Version: registry/2.0\r\n"
                    f"Connection: close\r\n\r\n").encode()
            self.wfile.write(head)
            if method == "GET":
                self.wfile.write(DATA[:SENT])
            self.wfile.flush()
            if stall:
                self._go_quiet()
            # Returning closes the connection: the body ends 999,000 bytes short.
        else:
            self._send(404, b'{"errors":[{"code":"NOT_FOUND","message":"fake upstream"}]}',
                       "application/json")

    def _go_quiet(self):
        """Keeps the connection open without sending, until the peer closes or time is up."""
        self.connection.settimeout(0.2)
        deadline = time.monotonic() + STALL_SECONDS
        while time.monotonic() < deadline:
            try:
                if not self.connection.recv(4096):
                    return  # the proxy gave up and closed
            except TimeoutError:
                pass
            except OSError:
                return

    def _send(self, status, body, ctype):
        self.wfile.write((f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\n"
                          f"Content-Length: {len(body)}\r\n"
                          f"Docker-Distribution-API-Version: registry/2.0\r\n"
                          f"Connection: close\r\n\r\n").encode() + body)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class DyingUpstream:
    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = _Server(("127.0.0.1", self.port), _Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
