"""A TCP relay in front of a real registry that holds every answer back for a while.

Each chunk the registry sends is forwarded `delay` seconds late, so requests sent through the
relay stay in flight long enough for a test to pile identical ones on top of them. It counts
the requests that pass (by request line), so a test can tell how many reached the registry.
Binds 127.0.0.1 only; stop() closes the listener and every relayed connection.
"""
import socket
import threading
import time
from collections import Counter

from ports import free_port


class SlowFront:
    def __init__(self, target_port, delay=0.5):
        self.target_port = target_port
        self.delay = delay
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests = Counter()  # "METHOD /path?query" -> count
        self._lock = threading.Lock()
        self._sockets = []
        self._stopping = False
        self._listener = None

    def start(self):
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self):
        self._stopping = True
        for s in [self._listener] + self._sockets:
            try:
                s.close()
            except OSError:
                pass

    def count(self, method, path):
        with self._lock:
            return self.requests[f"{method} {path}"]

    def _accept(self):
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [client, upstream]
            threading.Thread(target=self._to_registry, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._to_client, args=(upstream, client), daemon=True).start()

    def _to_registry(self, src, dst):
        # Requests here are header-only GETs and HEADs: each recv starts with a request line.
        try:
            while data := src.recv(65536):
                for line in data.split(b"\r\n"):
                    parts = line.split(b" ")
                    if len(parts) == 3 and parts[2].startswith(b"HTTP/1."):
                        with self._lock:
                            self.requests[f"{parts[0].decode()} {parts[1].decode()}"] += 1
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close_both(src, dst)

    def _to_client(self, src, dst):
        try:
            while data := src.recv(65536):
                time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close_both(src, dst)


def _close_both(a, b):
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
