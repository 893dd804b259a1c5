"""Retries: network errors, 5xx, stalls and bad digests are tried again with exponential
backoff; every failure is told in a few plain words."""

from __future__ import annotations

import http.client
import socket
import urllib.error
from typing import Callable

from chexcli.data.fetch.errors import (AuthError, DigestMismatch, LocalWriteError, PermanentError, Stalled,
                                       Stopped)
from chexcli.data.fetch.options import FetchOptions

NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, OSError, ValueError, Stalled)


def why_failed(err: BaseException, opts: FetchOptions | None = None) -> str:
    """A network failure in a few plain words (no class names of ours)."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code}" + (f" {err.reason}" if err.reason else "")
    if isinstance(err, urllib.error.URLError):
        if isinstance(err.reason, BaseException):
            return why_failed(err.reason, opts)
        return f"network error: {err.reason}"
    if isinstance(err, (TimeoutError, socket.timeout)):
        return f"nothing from the server for {opts.timeout:g} s (--timeout)" if opts else "timed out"
    if isinstance(err, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(err, http.client.IncompleteRead):
        return "the connection closed in the middle of the data"
    if isinstance(err, (Stalled, PermanentError, DigestMismatch, LocalWriteError)):
        return str(err)
    if isinstance(err, http.client.HTTPException):
        return f"bad HTTP response from the server ({type(err).__name__})"
    if isinstance(err, ConnectionError) and str(err) and not err.errno:
        return str(err)
    if isinstance(err, OSError):
        return f"network error: {err.strerror or err}"
    return f"{type(err).__name__}: {err}"


def with_retries(what: str, opts: FetchOptions, once: Callable):
    """Call `once()` until it succeeds; network errors, 5xx and bad digests are retried with
    backoff. The same wrong digest twice means the server's file itself is wrong: stop."""
    failures = 0
    wrong = None
    while True:
        if opts.stop.is_set():
            raise Stopped()
        try:
            return once()
        except (AuthError, PermanentError, LocalWriteError, Stopped):
            raise
        except DigestMismatch as err:
            if err.got == wrong:
                raise PermanentError(
                    f"the server's file does not match its published checksum (downloaded twice, "
                    f"SHA-256 {err.got[:12]}... both times, SHA256SUMS.txt lists {err.expected[:12]}...); "
                    "rerunning will not help, tell the data provider", rerun_helps=False) from None
            wrong = err.got
            why = str(err)
        except NETWORK_ERRORS as err:
            why = why_failed(err, opts)
        failures += 1
        if failures > opts.retries:
            raise PermanentError(f"giving up after {failures} attempt{'s' if failures > 1 else ''}: {why}") from None
        delay = min(opts.backoff * 2 ** (failures - 1), 60.0)
        opts.log(f"{what}: {why}; retry {failures} of {opts.retries} in {delay:.3g} s")
        if opts.stop.wait(delay):
            raise Stopped()
