"""One file through ``<file>.part``: resumed with HTTP Range, checked against its SHA-256, then
renamed; small files into memory. Both under the watchdog and with retries."""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path
from typing import Callable

from chexcli.data.fetch.credentials import Credentials
from chexcli.data.fetch.errors import DigestMismatch, local_io
from chexcli.data.fetch.http_client import read_body, request
from chexcli.data.fetch.options import FetchOptions
from chexcli.data.fetch.retries import with_retries
from chexcli.data.fetch.watchdog import Attempt, attempt
from chexcli.hashing import sha256_file


def download_file(url: str, dest: Path, digest: str | None, creds: Credentials | None,
                  opts: FetchOptions, on_bytes: Callable[[int], None] = lambda n: None,
                  what: str | None = None) -> None:
    """Download ``url`` to ``dest`` through ``dest.part`` with resume, retries and digest check.

    Raises AuthError (401/403), PermanentError (gave up; its message is one line and does
    not repeat the file name), LocalWriteError (a local write failed) or Stopped.
    """
    dest = Path(dest)
    what = what or dest.name
    part = dest.with_name(dest.name + ".part")
    local_io(dest.parent, dest.parent.mkdir, parents=True, exist_ok=True)

    def once() -> None:
        with attempt(what, url, opts) as att:
            _download_once(url, part, creds, opts, on_bytes, att)
        if digest is not None:
            got = local_io(part, sha256_file, part)
            if got != digest:
                local_io(part, part.unlink)
                raise DigestMismatch(got, digest)
        local_io(dest, os.replace, part, dest)

    with_retries(what, opts, once)


def _download_once(url: str, part: Path, creds: Credentials | None, opts: FetchOptions, on_bytes,
                   att: Attempt) -> None:
    start = local_io(part, lambda: part.stat().st_size if part.exists() else 0)
    try:
        resp = request(url, creds, start, opts.timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416:
            raise
        # the partial file is as long as (or longer than) the file: start over
        local_io(part, part.unlink)
        on_bytes(-start)
        start = 0
        resp = request(url, creds, 0, opts.timeout)
    with resp:
        mode = "ab" if (start and resp.status == 206) else "wb"
        if mode == "wb" and start:  # the server ignored Range: start over
            on_bytes(-start)
        f = local_io(part, open, part, mode)
        with f:
            def sink(b: bytes) -> None:
                local_io(part, f.write, b)
                on_bytes(len(b))

            read_body(resp, att, sink)


def fetch_bytes(url: str, creds: Credentials | None, opts: FetchOptions, what: str) -> bytes:
    """A small file into memory, with the retries and stall rules of a data file."""

    def once() -> bytes:
        buf = bytearray()
        with attempt(what, url, opts) as att:
            with request(url, creds, 0, opts.timeout) as resp:
                read_body(resp, att, buf.extend)
        return bytes(buf)

    return with_retries(what, opts, once)
