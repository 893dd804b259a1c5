"""`chex data fetch`: resumable, checksummed downloads from PhysioNet and Kaggle.

PhysioNet: the project's ``SHA256SUMS.txt`` lists every file; files are downloaded in
parallel to ``<name>.part`` (resumed with HTTP Range after an interruption), verified
against their SHA-256 and only then renamed to their final name. A rerun skips files
that were verified before (size and mtime recorded in ``.chex-fetch.json``) and
re-downloads any whose digest is wrong.

Every request (the checksum list included) is retried on network errors and 5xx with
exponential backoff. No attempt can hang: a read that waits longer than
``FetchOptions.timeout`` fails, and a watchdog thread abandons an attempt that received
fewer than ``stall_bytes`` in the last ``stall_timeout`` seconds (a server that accepts
and then trickles), and says what it is waiting for when a wait gets long.

Credentials go only into an ``Authorization`` header of requests made by this process:
never into a process argument, a log line, an error message or a file. Redirects to
another host drop the header.
"""

from __future__ import annotations

import base64
import errno
import fnmatch
import hashlib
import http.client
import json
import netrc
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from chexcli.data.common import atomic_write_text
from chexcli.data.sources import Source, get_source
from chexcli.errors import ChexError

STATE_FILE = ".chex-fetch.json"
CHUNK = 1 << 20


@dataclass
class Credentials:
    user: str
    password: str = field(repr=False)

    def header(self) -> str:
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return f"Basic {token}"

    def __repr__(self) -> str:  # never show the password
        return f"Credentials(user={self.user!r})"


# ----------------------------------------------------------------------------- errors
class AuthError(Exception):
    def __init__(self, status: int):
        super().__init__(f"HTTP {status}")
        self.status = status


class PermanentError(Exception):
    """A file that could not be fetched in this run; `rerun_helps` says whether a rerun may."""

    def __init__(self, message: str, rerun_helps: bool = True):
        super().__init__(message)
        self.rerun_helps = rerun_helps


class LocalWriteError(Exception):
    """Writing (or reading back) a local file failed: not retried, never a traceback."""

    def __init__(self, path: Path, err: OSError):
        super().__init__(f"cannot write {path}: {err.strerror or err}")
        self.errno = err.errno

    @property
    def fatal(self) -> bool:
        """No space or a read-only disk: every other download would fail the same way."""
        return self.errno in (errno.ENOSPC, errno.EROFS, getattr(errno, "EDQUOT", -1))


class _DigestMismatch(Exception):
    def __init__(self, got: str, expected: str):
        super().__init__("the downloaded data does not match its SHA-256")
        self.got, self.expected = got, expected


class _Stalled(Exception):
    """The watchdog abandoned an attempt (message: why); retried like a network error."""


class _Stopped(Exception):
    """The whole fetch is stopping (interrupt, refused credentials, full disk)."""


def _local(path: Path, fn: Callable, *args, **kwargs):
    """Run a local file operation; an OSError becomes a LocalWriteError naming `path`."""
    try:
        return fn(*args, **kwargs)
    except OSError as err:
        raise LocalWriteError(path, err) from None


# ----------------------------------------------------------------------------- credentials
def physionet_credentials(host: str, interactive: bool | None = None) -> Credentials:
    user = os.environ.get("PHYSIONET_USER")
    password = os.environ.get("PHYSIONET_PASSWORD") or os.environ.get("PHYSIONET_PW")
    if user and password:
        return Credentials(user, password)
    try:
        auth = netrc.netrc().authenticators(host)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        auth = None
    if auth and auth[2] and (not user or auth[0] == user):
        return Credentials(auth[0], auth[2])
    if interactive is None:
        interactive = sys.stdin.isatty()
    if interactive:
        import getpass

        if not user:
            user = input("PhysioNet user: ").strip()
        password = getpass.getpass(f"PhysioNet password for {user}: ")
        if user and password:
            return Credentials(user, password)
    raise ChexError("no PhysioNet credentials: set PHYSIONET_USER and PHYSIONET_PASSWORD, "
                    f"or add a netrc entry for {host}")


def kaggle_credentials() -> Credentials:
    user, key = os.environ.get("KAGGLE_USERNAME"), os.environ.get("KAGGLE_KEY")
    if user and key:
        return Credentials(user, key)
    cfg = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle")) / "kaggle.json"
    if cfg.is_file():
        try:
            d = json.loads(cfg.read_text())
            return Credentials(d["username"], d["key"])
        except (ValueError, KeyError, TypeError) as err:
            raise ChexError(f"{cfg} is not a valid kaggle.json (needs username and key)") from err
        except OSError as err:
            raise ChexError(f"cannot read {cfg}: {err.strerror or err}") from None
    raise ChexError("no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY, or create "
                    "~/.kaggle/kaggle.json (Kaggle > Settings > API > Create New Token)")


# ----------------------------------------------------------------------------- options
def _default_log(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)  # does not tear a progress bar


@dataclass
class FetchOptions:
    workers: int = 4
    retries: int = 5
    backoff: float = 1.0  # seconds, doubled per retry, capped at 60
    timeout: float = 30.0  # connect, and the longest wait for any single read
    stall_timeout: float = 60.0  # abandon an attempt with < stall_bytes in this many s (0: off)
    stall_bytes: int = 16384
    notice_after: float | None = None  # say what we wait for after this long (default: derived)
    progress: bool = True
    log: Callable[[str], None] = _default_log
    stop: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def notice_delay(self) -> float:
        if self.notice_after is not None:
            return self.notice_after
        limits = [10.0, self.timeout / 2] + ([self.stall_timeout / 2] if self.stall_timeout > 0 else [])
        return max(0.05, min(limits))


# ----------------------------------------------------------------------------- watchdog
_local_attempt = threading.local()


class _Attempt:
    """One HTTP request and its body: bytes received over time, its sockets, its phase."""

    def __init__(self, what: str, url: str, opts: FetchOptions):
        self.what, self.opts = what, opts
        p = urllib.parse.urlsplit(url)
        self.host = (p.hostname or "?") + (f":{p.port}" if p.port else "")
        now = time.monotonic()
        self.start = self.last_change = now
        self.nbytes = self.seen = 0
        self.phase = "connecting"
        self.samples: deque[tuple[float, int]] = deque([(now, 0)])
        self.socks: list[socket.socket] = []
        self.aborted: str | None = None  # why the watchdog cut it off
        self.stopped = False
        self.finished = False  # the body was read to its end: nothing left to cut off
        self.noticed = False
        self.last_notice = float("-inf")
        self.lock = threading.Lock()
        wait = [opts.notice_delay(), opts.timeout] + ([opts.stall_timeout] if opts.stall_timeout > 0 else [])
        self.tick = min(0.5, max(0.02, min(wait) / 10))

    def add_sock(self, sock: socket.socket) -> None:
        with self.lock:
            self.socks.append(sock)
            self.phase = "waiting for the server to answer"
            if self.aborted:
                _shutdown(sock)

    def close(self) -> None:
        with self.lock:
            self.finished = True
            for s in self.socks:
                s.close()
            self.socks.clear()

    def got(self, n: int) -> None:
        self.nbytes += n  # one writer (the download thread); the watchdog only reads

    def _bytes_at(self, t: float) -> int:
        for ts, n in reversed(self.samples):
            if ts <= t:
                return n
        return self.samples[0][1]

    def abort(self, why: str, stopped: bool = False) -> None:
        with self.lock:
            if self.aborted or self.finished:
                return
            self.aborted, self.stopped = why, stopped
            for s in self.socks:
                _shutdown(s)

    def check(self, now: float) -> None:
        """Called by the watchdog every tick."""
        o = self.opts
        if o.stop.is_set():
            self.abort("stopped", stopped=True)
            return
        if self.aborted or self.finished:
            return
        n = self.nbytes
        if n != self.seen:
            self.seen, self.last_change = n, now
        self.samples.append((now, n))
        notice = o.notice_delay()
        horizon = now - max(o.stall_timeout, notice)
        while len(self.samples) > 2 and self.samples[1][0] <= horizon:
            self.samples.popleft()
        if o.stall_timeout > 0 and now - self.start >= o.stall_timeout \
                and n - self._bytes_at(now - o.stall_timeout) < o.stall_bytes:
            self.abort(f"fewer than {o.stall_bytes} bytes arrived in {o.stall_timeout:g} s "
                       "(--stall-bytes/--stall-timeout)")
            return
        recent = n - self._bytes_at(now - notice)
        least = o.stall_bytes * notice / o.stall_timeout if o.stall_timeout > 0 else 0
        slow = now - self.start >= notice and recent < max(1, least)
        if slow and not self.noticed and now - self.last_notice >= 3 * notice:  # no flood
            self.noticed, self.last_notice = True, now
            quiet = now - self.last_change
            got = f"nothing received for {quiet:.{0 if quiet >= 10 else 1}f} s" if recent == 0 else \
                f"only {recent} bytes in the last {notice:g} s"
            limits = f"a read gives up after {o.timeout:g} s without data"
            if o.stall_timeout > 0:
                limits += f", an attempt after {o.stall_timeout:g} s with under {o.stall_bytes} bytes"
            o.log(f"still waiting for {self.what} from {self.host} ({self.phase}): {got}; {limits}")
        elif not slow:
            self.noticed = False

    def raise_if_aborted(self) -> None:
        if self.stopped:
            raise _Stopped()
        if self.aborted:
            raise _Stalled(self.aborted)


def _shutdown(sock: socket.socket) -> None:
    """Wake a thread blocked reading the connection (`sock` is a duplicate of its socket)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Watchdog:
    """One daemon thread, alive while any attempt runs, that checks every attempt."""

    def __init__(self):
        self.lock = threading.Lock()
        self.attempts: set[_Attempt] = set()
        self.thread: threading.Thread | None = None

    def add(self, att: _Attempt) -> None:
        with self.lock:
            self.attempts.add(att)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="chex-fetch-watchdog", daemon=True)
                self.thread.start()

    def remove(self, att: _Attempt) -> None:
        with self.lock:
            self.attempts.discard(att)

    def _run(self) -> None:
        while True:
            with self.lock:
                atts = list(self.attempts)
                if not atts:
                    self.thread = None
                    return
            now = time.monotonic()
            for att in atts:
                try:
                    att.check(now)
                except Exception:  # a failing log callback must not kill the watchdog
                    pass
            time.sleep(min(a.tick for a in atts))


_WATCHDOG = _Watchdog()


@contextmanager
def _attempt(what: str, url: str, opts: FetchOptions):
    att = _Attempt(what, url, opts)
    _local_attempt.value = att
    _WATCHDOG.add(att)
    try:
        yield att
    except (AuthError, PermanentError, LocalWriteError, _Stalled, _Stopped):
        raise
    except Exception:
        att.raise_if_aborted()  # a read cut off by the watchdog says why, not "connection reset"
        raise
    finally:
        _WATCHDOG.remove(att)
        att.close()
        _local_attempt.value = None


# ----------------------------------------------------------------------------- HTTP
class _Register:
    """Connection mixin: give the running attempt a duplicate of each new socket, so that
    the watchdog can cut off a read blocked anywhere (TLS handshake, headers, body)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        create = self._create_connection

        def create_and_register(*a, **k):
            sock = create(*a, **k)
            att = getattr(_local_attempt, "value", None)
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


def _request(url: str, creds: Credentials | None, start: int = 0, timeout: float = 30.0):
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


def _safe(url: str) -> str:
    """A URL without any user-info part (never print credentials)."""
    p = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((p.scheme, (p.hostname or "") + (f":{p.port}" if p.port else ""), p.path, "", ""))


def _server_root(base_url: str | None, env: str, default: str) -> str:
    base = (base_url or os.environ.get(env) or default).rstrip("/")
    p = urllib.parse.urlsplit(base)
    try:
        _ = p.port  # raises on a port that is not a number below 65536
    except ValueError:
        p = None
    if p is None or p.scheme not in ("http", "https") or not p.hostname:
        where = "--base-url" if base_url else env
        raise ChexError(f"{where} must be an http:// or https:// URL with a host, not {_safe_text(base)!r}")
    return base


def _safe_text(url: str) -> str:
    """`url` with anything before an '@' in its host part removed (it could be a password)."""
    head, sep, rest = url.partition("://")
    return head + sep + rest.split("@", 1)[-1] if sep else url.split("@", 1)[-1]


def _read_body(resp, att: _Attempt, sink: Callable[[bytes], None]) -> None:
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


_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, OSError, ValueError, _Stalled)


def _why(err: BaseException, opts: FetchOptions | None = None) -> str:
    """A network failure in a few plain words (no class names of ours)."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code}" + (f" {err.reason}" if err.reason else "")
    if isinstance(err, urllib.error.URLError):
        if isinstance(err.reason, BaseException):
            return _why(err.reason, opts)
        return f"network error: {err.reason}"
    if isinstance(err, (TimeoutError, socket.timeout)):
        return f"nothing from the server for {opts.timeout:g} s (--timeout)" if opts else "timed out"
    if isinstance(err, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(err, http.client.IncompleteRead):
        return "the connection closed in the middle of the data"
    if isinstance(err, (_Stalled, PermanentError, _DigestMismatch, LocalWriteError)):
        return str(err)
    if isinstance(err, http.client.HTTPException):
        return f"bad HTTP response from the server ({type(err).__name__})"
    if isinstance(err, ConnectionError) and str(err) and not err.errno:
        return str(err)
    if isinstance(err, OSError):
        return f"network error: {err.strerror or err}"
    return f"{type(err).__name__}: {err}"


def _with_retries(what: str, opts: FetchOptions, once: Callable):
    """Call `once()` until it succeeds; network errors, 5xx and bad digests are retried with
    backoff. The same wrong digest twice means the server's file itself is wrong: stop."""
    failures = 0
    wrong = None
    while True:
        if opts.stop.is_set():
            raise _Stopped()
        try:
            return once()
        except (AuthError, PermanentError, LocalWriteError, _Stopped):
            raise
        except _DigestMismatch as err:
            if err.got == wrong:
                raise PermanentError(
                    f"the server's file does not match its published checksum (downloaded twice, "
                    f"SHA-256 {err.got[:12]}... both times, SHA256SUMS.txt lists {err.expected[:12]}...); "
                    "rerunning will not help, tell the data provider", rerun_helps=False) from None
            wrong = err.got
            why = str(err)
        except _NETWORK_ERRORS as err:
            why = _why(err, opts)
        failures += 1
        if failures > opts.retries:
            raise PermanentError(f"giving up after {failures} attempt{'s' if failures > 1 else ''}: {why}") from None
        delay = min(opts.backoff * 2 ** (failures - 1), 60.0)
        opts.log(f"{what}: {why}; retry {failures} of {opts.retries} in {delay:.3g} s")
        if opts.stop.wait(delay):
            raise _Stopped()


def fetch_bytes(url: str, creds: Credentials | None, opts: FetchOptions, what: str) -> bytes:
    """A small file into memory, with the retries and stall rules of a data file."""

    def once() -> bytes:
        buf = bytearray()
        with _attempt(what, url, opts) as att:
            with _request(url, creds, 0, opts.timeout) as resp:
                _read_body(resp, att, buf.extend)
        return bytes(buf)

    return _with_retries(what, opts, once)


# ----------------------------------------------------------------------------- checksums
def parse_sha256sums(text: str) -> list[tuple[str, str]]:
    """(relative path, digest) pairs; refuses absolute paths and ``..`` components."""
    entries = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64 or any(c not in "0123456789abcdefABCDEF" for c in parts[0]):
            raise ChexError(f"SHA256SUMS.txt line {n} is not '<sha256> <path>': {line[:80]!r}")
        digest, rel = parts[0].lower(), parts[1].lstrip("*")
        p = PurePosixPath(rel)
        if rel.startswith(("/", "\\")) or p.is_absolute() or not p.parts or ".." in p.parts \
                or ":" in p.parts[0] or "\\" in rel or any(ord(c) < 32 for c in rel):
            raise ChexError(f"SHA256SUMS.txt lists an unsafe path {rel!r} (absolute, with '..' or "
                            "control characters); refusing to fetch anything")
        entries.append((rel, digest))
    return entries


def _listing_problems(entries: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Split the listing into fetchable entries and (path, why) for entries that cannot be
    written: a path listed twice with different digests, or both as a file and a folder."""
    first: dict[str, tuple[str, str]] = {}
    twice = set()
    for rel, digest in entries:
        key = PurePosixPath(rel).as_posix()
        if key in first and first[key][1] != digest:
            twice.add(key)
        first.setdefault(key, (rel, digest))
    folders = {p.as_posix() for key in first for p in PurePosixPath(key).parents}
    ok, bad = [], []
    for key, (rel, digest) in first.items():
        if key in twice:
            bad.append((rel, "SHA256SUMS.txt lists it twice with different checksums"))
        elif key in folders:
            bad.append((rel, "SHA256SUMS.txt lists it both as a file and as a folder of other files"))
        else:
            ok.append((rel, digest))
    return ok, bad


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(CHUNK), b""):
            h.update(b)
    return h.hexdigest()


class _State:
    """Verified files: rel -> [digest, size, mtime_ns]; saved atomically."""

    def __init__(self, root: Path):
        self.path = root / STATE_FILE
        self.lock = threading.Lock()
        try:
            self.data = json.loads(self.path.read_text())
            if not isinstance(self.data, dict):
                self.data = {}
        except (OSError, ValueError):
            self.data = {}

    def verified(self, rel: str, digest: str, path: Path) -> bool:
        rec = self.data.get(rel)
        if not isinstance(rec, list) or len(rec) != 3 or rec[0] != digest or not path.is_file():
            return False
        st = path.stat()
        return rec[1] == st.st_size and rec[2] == st.st_mtime_ns

    def mark(self, rel: str, digest: str, path: Path) -> None:
        st = path.stat()
        with self.lock:
            self.data[rel] = [digest, st.st_size, st.st_mtime_ns]
            atomic_write_text(self.path, json.dumps(self.data))


# ----------------------------------------------------------------------------- download
def download_file(url: str, dest: Path, digest: str | None, creds: Credentials | None,
                  opts: FetchOptions, on_bytes: Callable[[int], None] = lambda n: None,
                  what: str | None = None) -> None:
    """Download ``url`` to ``dest`` through ``dest.part`` with resume, retries and digest check.

    Raises AuthError (401/403), PermanentError (gave up; its message is one line and does
    not repeat the file name), LocalWriteError (a local write failed) or _Stopped.
    """
    dest = Path(dest)
    what = what or dest.name
    part = dest.with_name(dest.name + ".part")
    _local(dest.parent, dest.parent.mkdir, parents=True, exist_ok=True)

    def once() -> None:
        with _attempt(what, url, opts) as att:
            _download_once(url, part, creds, opts, on_bytes, att)
        if digest is not None:
            got = _local(part, _sha256, part)
            if got != digest:
                _local(part, part.unlink)
                raise _DigestMismatch(got, digest)
        _local(dest, os.replace, part, dest)

    _with_retries(what, opts, once)


def _download_once(url, part: Path, creds, opts: FetchOptions, on_bytes, att: _Attempt) -> None:
    start = _local(part, lambda: part.stat().st_size if part.exists() else 0)
    try:
        resp = _request(url, creds, start, opts.timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416:
            raise
        # the partial file is as long as (or longer than) the file: start over
        _local(part, part.unlink)
        on_bytes(-start)
        start = 0
        resp = _request(url, creds, 0, opts.timeout)
    with resp:
        mode = "ab" if (start and resp.status == 206) else "wb"
        if mode == "wb" and start:  # the server ignored Range: start over
            on_bytes(-start)
        f = _local(part, open, part, mode)
        with f:
            def sink(b: bytes) -> None:
                _local(part, f.write, b)
                on_bytes(len(b))

            _read_body(resp, att, sink)


@dataclass
class FetchReport:
    downloaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, one-line reason)
    final: list[str] = field(default_factory=list)  # failed paths that a rerun cannot fix

    @property
    def rerun_helps(self) -> bool:
        return len(self.final) < len(self.failed)


def fetch_physionet(source: Source, dest: Path, creds: Credentials, base_url: str | None = None,
                    include: list[str] | None = None, opts: FetchOptions | None = None) -> FetchReport:
    opts = opts or FetchOptions()
    base = _server_root(base_url, "CHEX_PHYSIONET_URL", "https://physionet.org")
    root_url = f"{base}/files/{source.project}/{source.version}/"
    sums_url = root_url + "SHA256SUMS.txt"
    dest = Path(dest)
    try:
        _local(dest, dest.mkdir, parents=True, exist_ok=True)
    except LocalWriteError as err:
        raise ChexError(f"{err}; choose another folder with --to") from None
    try:
        raw = fetch_bytes(sums_url, creds, opts, "SHA256SUMS.txt")
    except AuthError as err:
        raise _auth_message(source, creds, err.status) from None
    except PermanentError as err:
        raise ChexError(f"cannot read {_safe(sums_url)}: {err}; check the network or --base-url",
                        exit_code=1) from None
    try:
        sums_text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ChexError(f"{_safe(sums_url)} is not a checksum list (not text); check --base-url",
                        exit_code=1) from None
    entries, unwritable = _listing_problems(parse_sha256sums(sums_text))
    patterns = include if include else list(source.default_include)
    if patterns:
        def wanted(r: str) -> bool:
            return any(fnmatch.fnmatch(r, p) for p in patterns)

        entries = [(r, d) for r, d in entries if wanted(r)]
        unwritable = [(r, why) for r, why in unwritable if wanted(r)]
        if not entries and not unwritable:
            raise ChexError(f"no file of {source.title} matches --include {' '.join(patterns)}")
    try:
        atomic_write_text(dest / "SHA256SUMS.txt", sums_text)
    except OSError as err:
        raise ChexError(f"cannot write {dest / 'SHA256SUMS.txt'}: {err.strerror or err}", exit_code=1) from None
    state = _State(dest)
    report = FetchReport()
    for rel, why in unwritable:
        report.failed.append((rel, why))
        report.final.append(rel)

    todo = []
    for rel, digest in entries:
        path = dest / rel
        try:
            if state.verified(rel, digest, path):
                report.skipped.append(rel)
                continue
            if path.is_file() and _sha256(path) == digest:
                state.mark(rel, digest, path)
                report.skipped.append(rel)
                continue
        except OSError:
            pass  # unreadable: download it (a write error then explains what is wrong)
        todo.append((rel, digest))
    if report.skipped:
        opts.log(f"{len(report.skipped)} file(s) already verified, skipped")
    if not todo:
        return report

    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="file", desc=source.name, disable=not opts.progress or None)
    bytes_lock = threading.Lock()
    nbytes = [0]

    def on_bytes(n):
        with bytes_lock:
            nbytes[0] += n
        bar.set_postfix_str(f"{nbytes[0] / 1e6:.1f} MB", refresh=False)

    def job(rel, digest):
        if opts.stop.is_set():
            raise _Stopped()
        url = root_url + urllib.parse.quote(rel)
        download_file(url, dest / rel, digest, creds, opts, on_bytes, what=rel)
        _local(dest / STATE_FILE, state.mark, rel, digest, dest / rel)

    fatal: ChexError | None = None
    ex = ThreadPoolExecutor(max_workers=max(1, opts.workers))
    try:
        futs = {ex.submit(job, rel, d): rel for rel, d in todo}
        for fut in as_completed(futs):
            rel = futs[fut]
            try:
                fut.result()
                report.downloaded.append(rel)
            except _Stopped:
                pass
            except AuthError as err:
                fatal = fatal or _auth_message(source, creds, err.status)
                opts.stop.set()  # no retry storm: every other job returns at once
            except LocalWriteError as err:
                if err.fatal:
                    fatal = fatal or ChexError(f"{err}; the files finished so far are kept - free "
                                               "space and run the same command again", exit_code=1)
                    opts.stop.set()
                else:
                    report.failed.append((rel, str(err)))
                    report.final.append(rel)
            except PermanentError as err:
                report.failed.append((rel, str(err)))
                if not err.rerun_helps:
                    report.final.append(rel)
            except Exception as err:  # whatever else: one line for this file, never a traceback
                report.failed.append((rel, f"unexpected error: {_why(err, opts)}"))
            bar.update(1)
    except BaseException:  # Ctrl-C: cut every running download off, keep the .part files
        opts.stop.set()
        raise
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
        bar.close()
    if fatal is not None:
        raise fatal
    return report


def _auth_message(source: Source, creds: Credentials, status: int) -> ChexError:
    return ChexError(
        f"{source.title}: access refused for user {creds.user!r} (HTTP {status}): the credentials "
        f"are wrong, or the data use agreement is not signed yet - sign it at {source.agreement_page}",
        exit_code=2)


# ----------------------------------------------------------------------------- Kaggle
def fetch_kaggle(source: Source, dest: Path, creds: Credentials, base_url: str | None = None,
                 opts: FetchOptions | None = None) -> FetchReport:
    """Download the Kaggle archive (resumable), check every member's CRC while extracting."""
    opts = opts or FetchOptions()
    base = _server_root(base_url, "CHEX_KAGGLE_URL", "https://www.kaggle.com")
    url = f"{base}/api/v1/datasets/download/{source.project}"
    dest = Path(dest)
    try:
        _local(dest, dest.mkdir, parents=True, exist_ok=True)
    except LocalWriteError as err:
        raise ChexError(f"{err}; choose another folder with --to") from None
    marker = dest / ".chex-kaggle-extracted"
    report = FetchReport()
    if marker.is_file():
        report.skipped.append(source.project)
        return report
    archive = dest / (source.project.replace("/", "_") + ".zip")
    from tqdm import tqdm

    bar = tqdm(unit="B", unit_scale=True, desc=source.name, disable=not opts.progress or None)
    try:
        if not archive.is_file():
            download_file(url, archive, None, creds, opts, lambda n: bar.update(n), what=archive.name)
    except AuthError as err:
        raise _auth_message(source, creds, err.status) from None
    except PermanentError as err:
        hint = "; run the same command again to resume" if err.rerun_helps else ""
        raise ChexError(f"{source.title}: {err}{hint}", exit_code=1) from None
    except LocalWriteError as err:
        raise ChexError(f"{err}; the partial download is kept, run the same command again",
                        exit_code=1) from None
    except _Stopped:
        raise KeyboardInterrupt from None
    finally:
        bar.close()
    try:
        extract_zip(archive, dest)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError) as err:
        archive.unlink(missing_ok=True)
        raise ChexError(f"{archive.name} is damaged ({err}); it was removed, run fetch again",
                        exit_code=1) from None
    except OSError as err:  # a local problem (disk full...): keep the archive
        raise ChexError(f"cannot extract {archive.name}: {err.strerror or err}; the archive is kept, "
                        "run the same command again", exit_code=1) from None
    atomic_write_text(marker, "ok\n")
    archive.unlink()
    report.downloaded.append(source.project)
    return report


def extract_zip(archive: Path, dest: Path) -> None:
    """Extract with CRC checks; members are written to ``.part`` then renamed; unsafe names refused."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            p = PurePosixPath(info.filename)
            if p.is_absolute() or ".." in p.parts or info.filename.startswith(("/", "\\")):
                raise zipfile.BadZipFile(f"unsafe member name {info.filename!r}")
            if info.is_dir():
                continue
            out = dest / info.filename
            if out.is_file() and out.stat().st_size == info.file_size:
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".part")
            with zf.open(info) as src, open(tmp, "wb") as dst:  # reading checks the CRC
                for b in iter(lambda: src.read(CHUNK), b""):
                    dst.write(b)
            os.replace(tmp, out)


# ----------------------------------------------------------------------------- entry
def fetch(name: str, dest: Path, workers: int = 4, include: list[str] | None = None,
          base_url: str | None = None, progress: bool = True, retries: int = 5,
          backoff: float = 1.0, timeout: float = 30.0, stall_timeout: float = 60.0,
          stall_bytes: int = 16384) -> FetchReport:
    if not timeout > 0:
        raise ChexError("--timeout must be more than 0 seconds")
    if stall_timeout < 0 or stall_bytes < 1:
        raise ChexError("--stall-timeout must be 0 (off) or more, --stall-bytes at least 1")
    source = get_source(name)
    opts = FetchOptions(workers=workers, progress=progress, retries=retries, backoff=backoff,
                        timeout=timeout, stall_timeout=stall_timeout, stall_bytes=stall_bytes)
    if source.host == "kaggle":
        _server_root(base_url, "CHEX_KAGGLE_URL", "https://www.kaggle.com")  # check before credentials
        return fetch_kaggle(source, dest, kaggle_credentials(), base_url, opts)
    host = urllib.parse.urlsplit(_server_root(base_url, "CHEX_PHYSIONET_URL", "https://physionet.org")).hostname
    creds = physionet_credentials(host)
    return fetch_physionet(source, dest, creds, base_url, include, opts)
