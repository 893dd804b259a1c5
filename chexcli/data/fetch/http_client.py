"""HTTP for the downloads: connections the watchdog can cut off, redirects that keep the
``Authorization`` header only on the same host, streamed bodies, URLs safe to print."""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable

from chexcli.data.fetch.credentials import Credentials
from chexcli.data.fetch.errors import AuthError, PermanentError
from chexcli.data.fetch.options import CHUNK
from chexcli.data.fetch.watchdog import Attempt, current_attempt
from chexcli.errors import ChexError


class _Register:
    """Connection mixin: give the running attempt a duplicate of each new socket, so that
    the watchdog can cut off a read blocked anywhere (TLS handshake, headers, body)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        create = self._create_connection

        def create_and_register(*a, **k):
            sock = create(*a, **k)
            att = current_attempt()
            if att is not None:
                att.add_sock(sock.dup())  # a plain socket even when TLS wraps (and detaches) sock
            return sock

        self._create_connection = create_and_register


class _HTTPConnection(_Register, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_Register, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_HTTPConnection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_HTTPSConnection, req, context=self._context)


class _Redirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects; keep the Authorization header only on the same host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            auth = req.unredirected_hdrs.get("Authorization")
            if auth and urllib.parse.urlsplit(newurl).netloc == urllib.parse.urlsplit(req.full_url).netloc:
                new.add_unredirected_header("Authorization", auth)
        return new


_OPENER = urllib.request.build_opener(_Redirect, _HTTPHandler, _HTTPSHandler)


def request(url: str, creds: Credentials | None, start: int = 0, timeout: float = 30.0):
    req = urllib.request.Request(url, headers={"User-Agent": "chexcli-fetch/1"})
    if creds is not None:
        req.add_unredirected_header("Authorization", creds.header())
    if start:
        req.add_header("Range", f"bytes={start}-")
    try:
        return _OPENER.open(req, timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code in (401, 403):
            raise AuthError(err.code) from None
        if err.code == 416 and start:
            raise  # handled by the caller: the partial file is too long
        if err.code in (404, 410):
            raise PermanentError(f"not on the server (HTTP {err.code})", rerun_helps=False) from None
        raise


def safe_url(url: str) -> str:
    """A URL without any user-info part (never print credentials)."""
    p = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((p.scheme, (p.hostname or "") + (f":{p.port}" if p.port else ""), p.path, "", ""))


def server_root(base_url: str | None, env: str, default: str) -> str:
    base = (base_url or os.environ.get(env) or default).rstrip("/")
    p = urllib.parse.urlsplit(base)
    try:
        _ = p.port  # raises on a port that is not a number below 65536
    except ValueError:
        p = None
    if p is None or p.scheme not in ("http", "https") or not p.hostname:
        where = "--base-url" if base_url else env
        raise ChexError(f"{where} must be an http:// or https:// URL with a host, not {safe_text(base)!r}")
    return base


def safe_text(url: str) -> str:
    """`url` with anything before an '@' in its host part removed (it could be a password)."""
    head, sep, rest = url.partition("://")
    return head + sep + rest.split("@", 1)[-1] if sep else url.split("@", 1)[-1]


def read_body(resp, att: Attempt, sink: Callable[[bytes], None]) -> None:
    """Stream the body to `sink`; short bodies (fewer bytes than Content-Length) raise."""
    att.phase = "receiving data"
    try:
        expected = int(resp.headers.get("Content-Length"))
    except (TypeError, ValueError):
        expected = None
    read = getattr(resp, "read1", resp.read)  # read1: returns what arrived, never waits for a full chunk
    got = 0
    while True:
        b = read(CHUNK)
        if not b:
            break
        att.got(len(b))
        sink(b)
        got += len(b)
    with att.lock:
        att.finished = True
    if expected is None or got < expected:  # an end cut off by the watchdog says why
        att.raise_if_aborted()
    if expected is not None and got < expected:
        raise ConnectionError(f"the connection closed after {got} of {expected} bytes")
