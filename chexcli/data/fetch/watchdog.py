"""The stall watchdog: no wait of a download is unbounded.

Every HTTP request and its body is an :class:`Attempt`. One daemon thread checks every running
attempt a few times a second: an attempt that received fewer than ``stall_bytes`` in the last
``stall_timeout`` seconds (a server that accepts and then trickles) is cut off by shutting
its sockets down, and a wait that gets long is announced (which file, which host, which phase).
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.parse
from collections import deque
from contextlib import contextmanager

from chexcli.data.fetch.errors import AuthError, LocalWriteError, PermanentError, Stalled, Stopped
from chexcli.data.fetch.options import FetchOptions

_local_attempt = threading.local()


def current_attempt() -> Attempt | None:
    """The attempt running in this thread, if any (its new sockets are registered with it)."""
    return getattr(_local_attempt, "value", None)


class Attempt:
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
            raise Stopped()
        if self.aborted:
            raise Stalled(self.aborted)


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
        self.attempts: set[Attempt] = set()
        self.thread: threading.Thread | None = None

    def add(self, att: Attempt) -> None:
        with self.lock:
            self.attempts.add(att)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="chex-fetch-watchdog", daemon=True)
                self.thread.start()

    def remove(self, att: Attempt) -> None:
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
def attempt(what: str, url: str, opts: FetchOptions):
    att = Attempt(what, url, opts)
    _local_attempt.value = att
    _WATCHDOG.add(att)
    try:
        yield att
    except (AuthError, PermanentError, LocalWriteError, Stalled, Stopped):
        raise
    except Exception:
        att.raise_if_aborted()  # a read cut off by the watchdog says why, not "connection reset"
        raise
    finally:
        _WATCHDOG.remove(att)
        att.close()
        _local_attempt.value = None
