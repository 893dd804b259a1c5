"""The HTTP server of `chex serve`: the Starlette app (app.py) behind the guards (guards.py), run by uvicorn.

    server = ChexServer("127.0.0.1", 7860, auth=None)   # binds now: a port in use fails before the model loads
    server.attach(ServeSession.load("bundles/chex"))
    server.run()                                          # until Ctrl+C / SIGTERM; or start_in_thread() + stop()

uvicorn serves every connection on one asyncio event loop (no thread per connection)
with a cap on open connections and running requests (`max_connections`, 503
beyond it), idle keep-alive connections closed after `keep_alive` seconds, a
deadline for each request head and no reuse of a connection whose body was refused
(protocol.py). Malformed requests (bad Content-Length, broken request lines, headers
over 16 KB) get 400 from the HTTP parser (h11).
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from typing import Iterable

from chexcli.errors import ChexError
from chexcli.serve.app import ServeApp, ServeLimits, create_app
from chexcli.serve.guards import Guard, allowed_host_names, is_loopback
from chexcli.serve.session import ServeSession

__all__ = ["ChexServer", "ServeLimits", "bind_socket", "is_loopback", "parse_auth"]


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """'user:password' -> (user, password); None stays None."""
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ChexError("--auth: give user:password (both non-empty), or set CHEX_SERVE_AUTH=user:password")
    return user, password


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (0: any free port), or a one-line ChexError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # proto set: asyncio then turns Nagle off
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ChexError(f"port {port} on {host} is already in use; choose another with --port") from None
        if err.errno == errno.EACCES:
            raise ChexError(f"no permission to listen on port {port}; use a port above 1023") from None
        reason = err.strerror or str(err)
        raise ChexError(f"cannot listen on {host}:{port} ({reason}); check --host and --port") from None
    sock.set_inheritable(True)
    return sock


class ChexServer:
    """A bound socket, then (once a session is attached) the app served by uvicorn on it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 7860, auth: tuple[str, str] | None = None,
                 allowed_hosts: Iterable[str] = (), limits: ServeLimits = ServeLimits()):
        self.host = host
        self.auth = auth
        self.limits = limits
        self.allowed_hosts = allowed_host_names(host, allowed_hosts)
        self.socket = bind_socket(host, port)
        self.app: ServeApp | None = None
        self._uvicorn = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{'[' + self.host + ']' if ':' in self.host else self.host}:{self.port}/"

    def attach(self, session: ServeSession) -> None:
        """Build the app around a loaded session (before `run`)."""
        self.app = ServeApp(session, self.limits)

    def _build_uvicorn(self):
        import uvicorn

        from chexcli.serve.protocol import LimitedH11Protocol

        if self.app is None:
            raise RuntimeError("attach a session before serving")
        asgi = Guard(create_app(self.app), self.allowed_hosts, self.auth, self.limits.auth_failure_delay)
        config = uvicorn.Config(
            asgi, log_level="warning", access_log=False, lifespan="off", ws="none", proxy_headers=False,
            server_header=False, http=LimitedH11Protocol.configured(self.limits.head_timeout),
            limit_concurrency=self.limits.max_connections, timeout_keep_alive=self.limits.keep_alive,
            timeout_graceful_shutdown=3, h11_max_incomplete_event_size=16 * 1024)
        return uvicorn.Server(config)

    def run(self) -> None:
        """Serve until stopped (Ctrl+C or SIGTERM in the main thread, or `stop()`)."""
        self._uvicorn = self._build_uvicorn()
        try:
            self._uvicorn.run(sockets=[self.socket])
        finally:
            self.close()

    def start_in_thread(self, timeout: float = 30.0) -> "ChexServer":
        """Serve from a background thread (for tests and embedding); returns once it accepts requests."""
        self._uvicorn = self._build_uvicorn()
        self._thread = threading.Thread(target=self._uvicorn.run, kwargs={"sockets": [self.socket]},
                                        name="chex-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._uvicorn.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("chex serve did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop a server started with `start_in_thread` and release everything."""
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.close()

    def close(self) -> None:
        if self.app is not None:
            self.app.close()
        self.socket.close()
