"""A local HTTP server for fetch tests: basic auth, Range requests, dropped connections."""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeServer:
    def __init__(self, files: dict[str, bytes], user="alice", password="s3cret-pw", prefix="/files/mimic-cxr/2.0.0/"):
        self.files = dict(files)  # path below prefix -> content
        self.user, self.password, self.prefix = user, password, prefix
        self.drop_after: dict[str, int] = {}  # path -> bytes sent before dropping (once)
        self.corrupt_once: set[str] = set()  # path -> serve corrupted content once
        self.delay = 0.0
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, headers)
        self.status_override: dict[str, int] = {}
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                srv.requests.append(("GET", self.path, dict(self.headers)))
                expected = "Basic " + base64.b64encode(f"{srv.user}:{srv.password}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="test"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path in srv.status_override:
                    self.send_response(srv.status_override[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if not self.path.startswith(srv.prefix) or self.path[len(srv.prefix):] not in srv.files:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                rel = self.path[len(srv.prefix):]
                data = srv.files[rel]
                if rel in srv.corrupt_once:
                    srv.corrupt_once.discard(rel)
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if srv.delay:
                    time.sleep(srv.delay)
                if rel in srv.drop_after:
                    n = srv.drop_after.pop(rel)
                    self.wfile.write(body[:n])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.httpd.shutdown()
        self.httpd.server_close()

    def sums(self, extra: str = "") -> bytes:
        lines = [f"{hashlib.sha256(v).hexdigest()} {k}" for k, v in self.files.items() if k != "SHA256SUMS.txt"]
        return ("\n".join(lines) + "\n" + extra).encode()

    def publish_sums(self, extra: str = "") -> None:
        self.files.pop("SHA256SUMS.txt", None)
        self.files["SHA256SUMS.txt"] = self.sums(extra)

    def gets(self, rel: str) -> list[dict]:
        return [h for m, p, h in self.requests if p == self.prefix + rel]
