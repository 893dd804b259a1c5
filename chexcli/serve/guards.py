"""Who may talk to `chex serve`: the Host and Origin checks and HTTP basic auth, as one ASGI middleware.

* **Host.** Every request must name one of the server's names in its `Host` header
  (`allowed_hosts`: the loopback names, the address it listens on, the machine's
  names when it listens on every interface, and each `--allowed-host`). This stops
  DNS rebinding: a web page whose name resolves to 127.0.0.1 still sends its own
  name as Host.
* **Origin.** A request that carries an `Origin` header (browsers send it on
  cross-origin requests and on every POST) must come from a page of one of those
  names, so another web page open in the same browser cannot use the app. Behind a
  TLS proxy the page's origin is the proxy's public name: give it with
  `--allowed-host`.
* **Basic auth** (when credentials are set): the scheme name is matched without
  case (RFC 7617), the credentials in constant time, and every wrong guess waits
  `failure_delay` seconds before its answer, which makes guessing slow without
  holding a thread (the wait is asynchronous).

A request with both `Content-Length` and `Transfer-Encoding` is refused (400, connection
closed): a proxy in front could frame its body differently (request smuggling).

Refusals are JSON `{"error": "one line"}` answers that say what to do; the security
headers of the app are added to every answer (`security_headers`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import socket
from typing import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SECURITY_HEADERS = {
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


def is_wildcard(host: str) -> bool:
    """True for the every-interface addresses (0.0.0.0, ::)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def machine_names() -> set[str]:
    """This machine's host name, its fully qualified name and the addresses they resolve to."""
    names = {socket.gethostname(), socket.getfqdn()}
    for name in list(names):
        try:
            names.update(info[4][0] for info in socket.getaddrinfo(name, None))
        except OSError:
            pass
    return {n.lower() for n in names if n}


def allowed_host_names(bind_host: str, extra: Iterable[str] = ()) -> set[str]:
    """The names a request may give in Host (and Origin) for a server listening on `bind_host`."""
    names = set(LOOPBACK_NAMES)
    if is_wildcard(bind_host):
        names |= machine_names()
    else:
        names.add(bind_host.strip("[]").lower())
    names |= {h.strip().strip("[]").lower() for h in extra if h.strip()}
    return names


def host_name(value: str | None) -> str | None:
    """The host part of a Host header or of an Origin URL (no port, no brackets, lower case)."""
    if not value:
        return None
    text = value if "//" in value else f"//{value}"
    try:
        return urlsplit(text).hostname
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return None


def check_basic_auth(header: str | None, user: str, password: str) -> bool:
    """True when an Authorization header carries these basic credentials (scheme name in any case)."""
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(given, f"{user}:{password}".encode())


class Guard:
    """ASGI middleware: Host and Origin checks, basic auth, security headers on every answer."""

    def __init__(self, app, allowed_hosts: set[str], auth: tuple[str, str] | None = None,
                 failure_delay: float = 1.0):
        self.app = app
        self.allowed_hosts = allowed_hosts
        self.auth = auth
        self.failure_delay = failure_delay

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in SECURITY_HEADERS.items():
                    headers.setdefault(key, value)
            await send(message)

        refusal = await self.refusal(Headers(scope=scope))
        if refusal is None:
            return await self.app(scope, receive, send_with_headers)
        status, message, extra = refusal
        await JSONResponse({"error": message}, status_code=status, headers=extra)(scope, receive, send_with_headers)

    async def refusal(self, headers: Headers) -> tuple[int, str, dict[str, str]] | None:
        """None when the request may pass, else (status, one-line message, extra headers)."""
        if "transfer-encoding" in headers and "content-length" in headers:  # a request-smuggling pattern
            return 400, "a request cannot have both Content-Length and Transfer-Encoding", {"Connection": "close"}
        host = host_name(headers.get("host"))
        if host not in self.allowed_hosts:
            return (403, f"this app does not answer to the name {host or '(none)'!r}; open it as "
                         "http://localhost:PORT, or start chex serve with --allowed-host NAME", {})
        origin = headers.get("origin")
        if origin is not None and host_name(origin) not in self.allowed_hosts:  # "null" included
            return 403, "cross-origin requests are not allowed", {}
        given = headers.get("authorization")
        if self.auth is not None and not check_basic_auth(given, *self.auth):
            if given:  # a wrong guess (the browser's first request, without credentials, is answered at once)
                await asyncio.sleep(self.failure_delay)
            return (401, "log in with the user and password given to chex serve --auth",
                    {"WWW-Authenticate": 'Basic realm="chex serve", charset="UTF-8"'})
        return None
