"""A local HTTP server for fetch tests: basic auth, Range requests and injected faults.

Faults are queued per file in ``faults[rel]``; each GET of that file takes the next one:

* ``"500"``, ``"503"``, ... - answer with that status;
* ``"close"`` - close the connection without answering;
* ``"silence"`` - accept the request and send nothing until the client gives up;
* ``"trickle"`` - send the headers, then one byte every ``trickle_interval`` seconds;
* ``"slow-headers"`` - send the status line, then one header byte per ``trickle_interval``;
* ``"drop:N"`` - send N bytes of the body, then close the connection.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeServer:
    def __init__(self, files: dict[str, bytes], user="alice", password="s3cret-pw", prefix="/files/mimic-cxr/2.0.0/",
                 tls: tuple[str, str] | None = None):
        self.files = dict(files)  # path below prefix -> content
        self.user, self.password, self.prefix = user, password, prefix
        self.drop_after: dict[str, int] = {}  # path -> bytes sent before dropping (once)
        self.corrupt_once: set[str] = set()  # path -> serve corrupted content once
        self.faults: dict[str, list[str]] = {}  # path -> faults, one per request (see above)
        self.trickle_interval = 0.05
        self.delay = 0.0
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, headers)
        self.status_override: dict[str, int] = {}
        self.closing = threading.Event()  # set on exit: silent and trickling handlers return
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def empty(self, status):
                self.send_response(status)
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="test"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            def hold(self, chunks):
                """Write each chunk after trickle_interval until the client or the server goes."""
                try:
                    for c in chunks:
                        if srv.closing.wait(srv.trickle_interval):
                            break
                        self.wfile.write(c)
                        self.wfile.flush()
                except OSError:
                    pass
                self.close_connection = True

            def do_GET(self):
                srv.requests.append(("GET", self.path, dict(self.headers)))
                expected = "Basic " + base64.b64encode(f"{srv.user}:{srv.password}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    return self.empty(401)
                if self.path in srv.status_override:
                    return self.empty(srv.status_override[self.path])
                if not self.path.startswith(srv.prefix) or self.path[len(srv.prefix):] not in srv.files:
                    return self.empty(404)
                rel = self.path[len(srv.prefix):]
                fault = srv.faults[rel].pop(0) if srv.faults.get(rel) else None
                if fault and fault.isdigit():
                    return self.empty(int(fault))
                if fault == "close":
                    self.close_connection = True
                    return
                if fault == "silence":
                    srv.closing.wait(60)
                    self.close_connection = True
                    return
                if fault == "slow-headers":
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Pad: ")
                    self.wfile.flush()
                    return self.hold(b"x" for _ in range(100_000))
                data = srv.files[rel]
                if rel in srv.corrupt_once:
                    srv.corrupt_once.discard(rel)
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(data):
                        return self.empty(416)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if srv.delay:
                    time.sleep(srv.delay)
                if fault == "trickle":
                    self.wfile.flush()
                    return self.hold(body[i:i + 1] for i in range(len(body)))
                drop = int(fault[5:]) if fault and fault.startswith("drop:") else srv.drop_after.pop(rel, None)
                if drop is not None:
                    self.wfile.write(body[:drop])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls:  # (certificate file, key file): serve HTTPS
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.closing.set()
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
