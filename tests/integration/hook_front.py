"""An HTTP relay in front of a real registry that runs a test's hook before chosen requests.

`hooks` maps (method, path regex) to a callable run once, before the first matching request
is forwarded (e.g. moving a tag just before the proxy writes another one); `delay` holds every
GET of a blob back that long (so a conversion stays in flight while a test acts);
`body_filter(method, path, body) -> body`, when set, rewrites answer bodies (an upstream that
serves wrong bytes for a digest). Requests are recorded as (method, path). Bodies are small in these tests and are read whole. Binds
127.0.0.1 only; stop() shuts the server down.
"""
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from ports import free_port

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate", "host", "content-length"}


class HookFront:
    def __init__(self, target_url, delay=0.0):
        self.target = target_url.rstrip("/")
        self.delay = delay
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.hooks = []  # [(method, compiled regex, callable, fired flag list)]
        self.body_filter = None
        self.seen = []
        self._lock = threading.Lock()
        self._server = None

    def hook(self, method, path_regex, action):
        self.hooks.append((method, re.compile(path_regex), action, [False]))

    def fired(self):
        return [h[3][0] for h in self.hooks]

    def start(self):
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def relay(self):
                path = self.path
                with front._lock:
                    front.seen.append((self.command, path.split("?")[0]))
                    todo = [h for h in front.hooks
                            if h[0] == self.command and h[1].search(path.split("?")[0]) and not h[3][0]]
                    for h in todo:
                        h[3][0] = True
                for _, _, action, _ in todo:
                    action()
                if front.delay and self.command == "GET" and "/blobs/sha256:" in path:
                    time.sleep(front.delay)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                resp = requests.request(self.command, front.target + path, headers=headers, data=body,
                                        allow_redirects=False, timeout=60, stream=False)
                data = b"" if self.command == "HEAD" else resp.content
                if front.body_filter and data:
                    data = front.body_filter(self.command, path.split("?")[0], data)
                self.send_response(resp.status_code)
                for k, v in resp.headers.items():
                    if k.lower() in HOP_BY_HOP:
                        continue
                    if k.lower() == "location" and v.startswith(front.target):
                        v = front.url + v[len(front.target):]
                    self.send_header(k, v)
                length = resp.headers.get("Content-Length") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if data:
                    self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = relay

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self._server:
            self._server.shutdown()
            self._server.server_close()
