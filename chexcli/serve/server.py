"""The web front of `chex serve`: a small HTTP server (standard library only) around a ServeSession.

Routes (JSON answers carry `{"error": "one line"}` with a 4xx status on bad input):

    GET  /                          the page (static/index.html, app.js, style.css: no CDN, works offline)
    GET  /api/info                  model name, examples, limits
    POST /api/upload                body: the file's bytes; header X-File-Name (URL-encoded) -> image info
    POST /api/example?name=NAME     open a packaged example image -> image info
    GET  /api/image/ID.png          preview of an image
    POST /api/ask                   {"image", "prompts": [...], "boxes": [[x1, y1, x2, y2], ...], "report"} -> answer
    GET  /api/answer/ID.png|.json   annotated image / the `chex predict --json` line (?download=1: as a file)

Requests are served by threads; the session runs one model call at a time. With
`auth` every request needs HTTP basic credentials. On a loopback address, requests
whose Host header names another machine are refused (DNS rebinding), and
cross-origin POSTs are refused everywhere.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import socket
import sys
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from chexcli.errors import ChexError
from chexcli.serve.examples import EXAMPLES
from chexcli.serve.session import MAX_BOXES, MAX_PROMPTS, ServeSession

STATIC = Path(__file__).with_name("static")
_STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                 "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
                 "/static/style.css": ("style.css", "text/css; charset=utf-8")}
MAX_JSON_BYTES = 1 * 2**20
MAX_DISCARD_BYTES = 1 * 2**30  # a refused upload up to this size is read (and dropped) to answer it properly
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
}


def is_loopback(host: str) -> bool:
    """True for 127.0.0.1, ::1, localhost and the rest of 127.0.0.0/8."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """'user:password' -> (user, password); None stays None."""
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ChexError("--auth: give user:password (both non-empty), or set CHEX_SERVE_AUTH=user:password")
    return user, password


class ChexHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that holds the session, the credentials and whether it is local only."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, session: ServeSession | None = None, auth: tuple[str, str] | None = None):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, Handler)
        self.session = session  # may be set after binding: requests wait until serve_forever runs
        self.auth = auth
        self.local_only = is_loopback(address[0])

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


class Handler(BaseHTTPRequestHandler):
    """One request. Errors become JSON `{"error": ...}` answers; the server keeps running."""

    server: ChexHTTPServer
    server_version = "chex-serve"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 120  # a stalled client frees its thread

    # ------------------------------------------------------------------ plumbing
    def log_message(self, format, *args):  # quiet: the terminal shows errors only
        pass

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in {**_SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", headers)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        if self.command == "POST":  # its body may be unread: do not reuse the connection
            self.close_connection = True
        self._json(status, {"error": message}, headers)

    def _file(self, path: Path, content_type: str, headers: dict[str, str] | None = None) -> None:
        try:
            body = path.read_bytes()
        except OSError:
            return self._error(HTTPStatus.NOT_FOUND, "this file is no longer available")
        self._send(HTTPStatus.OK, body, content_type, headers)

    def _allowed(self) -> bool:
        """Host, origin and credential checks; answers the request itself when refusing it."""
        host = self.headers.get("Host", "")
        if self.server.local_only and urlsplit(f"//{host}").hostname not in _LOOPBACK_NAMES:
            self._error(HTTPStatus.FORBIDDEN, "this app only answers requests addressed to localhost")
            return False
        origin = self.headers.get("Origin")
        if self.command == "POST" and origin and urlsplit(origin).netloc != host:
            self._error(HTTPStatus.FORBIDDEN, "cross-origin requests are not allowed")
            return False
        if self.server.auth is not None:
            user, password = self.server.auth
            expected = base64.b64encode(f"{user}:{password}".encode()).decode()
            given = self.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Basic {expected}".encode()):
                self.close_connection = True
                self._error(HTTPStatus.UNAUTHORIZED, "log in with the user and password given to chex serve --auth",
                            {"WWW-Authenticate": 'Basic realm="chex serve", charset="UTF-8"'})
                return False
        return True

    def _body(self, limit: int) -> bytes | None:
        """The request body, or None after answering 411/413 (too large bodies are not read)."""
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            self._error(HTTPStatus.LENGTH_REQUIRED, "the request has no Content-Length")
            return None
        if int(length) > limit:
            self._discard(int(length))  # so that the client reads our answer instead of a broken pipe
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        f"the upload is {int(length) / 2**20:.1f} MB; the limit is {limit / 2**20:.0f} MB")
            return None
        return self.rfile.read(int(length))

    def _discard(self, length: int) -> None:
        """Read and drop a refused body in chunks (up to MAX_DISCARD_BYTES; beyond that the connection just closes)."""
        self.close_connection = True
        if length <= MAX_DISCARD_BYTES:
            while length > 0:
                chunk = self.rfile.read(min(length, 2**20))
                if not chunk:
                    break
                length -= len(chunk)

    def _guarded(self, route) -> None:
        try:
            if self._allowed():
                route()
        except ChexError as err:
            self._error(HTTPStatus.BAD_REQUEST, str(err))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as err:  # a bug: say so on the page, log it, keep serving
            traceback.print_exc(file=sys.stderr)
            first = (str(err).splitlines() or [type(err).__name__])[0]
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {first}")

    # ------------------------------------------------------------------ routes
    def do_GET(self) -> None:
        self._guarded(self._get)

    def do_HEAD(self) -> None:
        self._guarded(self._get)

    def do_POST(self) -> None:
        self._guarded(self._post)

    def _get(self) -> None:
        url = urlsplit(self.path)
        route, query = url.path, parse_qs(url.query)
        session = self.server.session
        if route in _STATIC_FILES:
            name, content_type = _STATIC_FILES[route]
            return self._file(STATIC / name, content_type)
        if route == "/api/info":
            return self._json(HTTPStatus.OK, {
                "model": session.model_name,
                "examples": [{"name": k, "label": label, "title": title} for k, (_, label, title) in EXAMPLES.items()],
                "max_upload_bytes": session.max_upload_bytes, "max_prompts": MAX_PROMPTS, "max_boxes": MAX_BOXES})
        parts = route.strip("/").split("/")
        if len(parts) == 3 and parts[:2] == ["api", "image"] and parts[2].endswith(".png"):
            return self._file(session.image(parts[2][:-4]).preview, "image/png")
        if len(parts) == 3 and parts[:2] == ["api", "answer"] and parts[2].endswith((".png", ".json")):
            answer_id, _, ext = parts[2].partition(".")
            answer = session.answer(answer_id)
            name = f"{Path(answer.record['image']).stem}_chex.{ext}"
            download = "download" in query
            headers = {"Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}"} if download else {}
            if ext == "png":
                return self._file(answer.png, "image/png", headers)
            return self._send(HTTPStatus.OK, (answer.json_line + "\n").encode(), "application/json", headers)
        self._error(HTTPStatus.NOT_FOUND, f"no such page: {route}")

    def _post(self) -> None:
        url = urlsplit(self.path)
        session = self.server.session
        if url.path == "/api/upload":
            data = self._body(session.max_upload_bytes)
            if data is not None:
                entry = session.add_upload(data, unquote(self.headers.get("X-File-Name", "upload")))
                self._json(HTTPStatus.OK, {"image": entry.info()})
            return
        if url.path == "/api/example":
            if self.headers.get("Content-Length"):
                self._body(MAX_JSON_BYTES)  # nothing is expected; read what was sent
            name = (parse_qs(url.query).get("name") or [""])[0]
            return self._json(HTTPStatus.OK, {"image": session.add_example(name).info()})
        if url.path == "/api/ask":
            data = self._body(MAX_JSON_BYTES)
            if data is None:
                return
            try:
                req = json.loads(data or b"{}")
            except ValueError:
                raise ChexError("the question is not valid JSON") from None
            if not isinstance(req, dict):
                raise ChexError("the question must be a JSON object")
            prompts, boxes = req.get("prompts") or [], req.get("boxes") or []
            if not isinstance(prompts, list) or not isinstance(boxes, list):
                raise ChexError("prompts and boxes must be lists")
            answer = session.ask(str(req.get("image", "")), prompts, boxes, report=bool(req.get("report")))
            return self._json(HTTPStatus.OK, {
                **answer.to_dict(), "png_url": f"/api/answer/{answer.id}.png",
                "json_url": f"/api/answer/{answer.id}.json"})
        self._error(HTTPStatus.NOT_FOUND, f"no such action: {url.path}")


def make_server(session: ServeSession | None, host: str = "127.0.0.1", port: int = 7860,
                auth: tuple[str, str] | None = None) -> ChexHTTPServer:
    """Bind the server (port 0 picks a free port); `session` may be attached later, before serving.

    A port in use or a bad host raise a one-line ChexError.
    """
    try:
        return ChexHTTPServer((host, port), session, auth)
    except OSError as err:
        import errno

        if err.errno == errno.EADDRINUSE:
            raise ChexError(f"port {port} on {host} is already in use; choose another with --port") from None
        if err.errno == errno.EACCES:
            raise ChexError(f"no permission to listen on port {port}; use a port above 1023") from None
        reason = err.strerror or str(err)
        raise ChexError(f"cannot listen on {host}:{port} ({reason}); check --host and --port") from None
