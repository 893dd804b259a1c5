"""PhysioNet projects: the project's ``SHA256SUMS.txt`` is the file list; every file is
downloaded in parallel, verified against its SHA-256 and recorded, so a rerun skips it.

A refused login (401/403), a full or read-only disk or Ctrl-C stops every download at
once; any other failure is one line for its file and the other files are still fetched.
"""

from __future__ import annotations

import fnmatch
import threading
import urllib.parse
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path

from chexcli.data.fetch.checksums import STATE_FILE, VerifiedFiles, listing_problems, parse_sha256sums
from chexcli.data.fetch.credentials import Credentials
from chexcli.data.fetch.download import download_file, fetch_bytes
from chexcli.data.fetch.errors import AuthError, LocalWriteError, PermanentError, Stopped, auth_refused, local_io
from chexcli.data.fetch.http_client import safe_url, server_root
from chexcli.data.fetch.options import FetchOptions
from chexcli.data.fetch.report import FetchReport, make_dest_folder
from chexcli.data.fetch.retries import why_failed
from chexcli.data.processed.files import atomic_write_text
from chexcli.data.sources import PHYSIONET, Source
from chexcli.errors import ChexError
from chexcli.hashing import sha256_file


def fetch_physionet(source: Source, dest: Path, creds: Credentials, base_url: str | None = None,
                    include: list[str] | None = None, opts: FetchOptions | None = None) -> FetchReport:
    """Fetch the files of ``source`` (those matching ``include``, default the source's own
    list) into ``dest``; failed files are in the report, a fatal problem raises ChexError."""
    opts = opts or FetchOptions()
    base = server_root(base_url, "CHEX_PHYSIONET_URL", PHYSIONET)
    root_url = f"{base}/files/{source.project}/{source.version}/"
    dest = make_dest_folder(dest)
    sums_text = _read_listing(source, root_url + "SHA256SUMS.txt", creds, opts)
    entries, unwritable = _wanted(source, *listing_problems(parse_sha256sums(sums_text)), include)
    try:
        atomic_write_text(dest / "SHA256SUMS.txt", sums_text)
    except OSError as err:
        raise ChexError(f"cannot write {dest / 'SHA256SUMS.txt'}: {err.strerror or err}", exit_code=1) from None
    state = VerifiedFiles(dest)
    report = FetchReport()
    for rel, why in unwritable:
        report.failed.append((rel, why))
        report.final.append(rel)
    todo = _not_yet_verified(entries, dest, state, report)
    if report.skipped:
        opts.log(f"{len(report.skipped)} file(s) already verified, skipped")
    if todo:
        _download_all(source, root_url, todo, dest, creds, opts, state, report)
    return report


def _read_listing(source: Source, sums_url: str, creds: Credentials, opts: FetchOptions) -> str:
    """The text of the project's SHA256SUMS.txt (retried like a data file)."""
    try:
        raw = fetch_bytes(sums_url, creds, opts, "SHA256SUMS.txt")
    except AuthError as err:
        raise auth_refused(source, creds.user, err.status) from None
    except PermanentError as err:
        raise ChexError(f"cannot read {safe_url(sums_url)}: {err}; check the network or --base-url",
                        exit_code=1) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ChexError(f"{safe_url(sums_url)} is not a checksum list (not text); check --base-url",
                        exit_code=1) from None


def _wanted(source: Source, entries: list[tuple[str, str]], unwritable: list[tuple[str, str]],
            include: list[str] | None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The listing entries (and unwritable entries) that match the ``--include`` globs."""
    patterns = include if include else list(source.default_include)
    if not patterns:
        return entries, unwritable

    def wanted(r: str) -> bool:
        return any(fnmatch.fnmatch(r, p) for p in patterns)

    entries = [(r, d) for r, d in entries if wanted(r)]
    unwritable = [(r, why) for r, why in unwritable if wanted(r)]
    if not entries and not unwritable:
        raise ChexError(f"no file of {source.title} matches --include {' '.join(patterns)}")
    return entries, unwritable


def _not_yet_verified(entries: list[tuple[str, str]], dest: Path, state: VerifiedFiles,
                      report: FetchReport) -> list[tuple[str, str]]:
    """The entries to download; files verified before (or whose digest is right) are skipped."""
    todo = []
    for rel, digest in entries:
        path = dest / rel
        try:
            if state.verified(rel, digest, path):
                report.skipped.append(rel)
                continue
            if path.is_file() and sha256_file(path) == digest:
                state.mark(rel, digest, path)
                report.skipped.append(rel)
                continue
        except OSError:
            pass  # unreadable: download it (a write error then explains what is wrong)
        todo.append((rel, digest))
    return todo


def _download_all(source: Source, root_url: str, todo: list[tuple[str, str]], dest: Path, creds: Credentials,
                  opts: FetchOptions, state: VerifiedFiles, report: FetchReport) -> None:
    """Download ``todo`` in ``opts.workers`` threads; raise the first fatal problem at the end."""
    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="file", desc=source.name, disable=not opts.progress or None)
    on_bytes = _megabytes_on(bar)

    def job(rel: str, digest: str) -> None:
        if opts.stop.is_set():
            raise Stopped()
        url = root_url + urllib.parse.quote(rel)
        download_file(url, dest / rel, digest, creds, opts, on_bytes, what=rel)
        local_io(dest / STATE_FILE, state.mark, rel, digest, dest / rel)

    fatal: ChexError | None = None
    ex = ThreadPoolExecutor(max_workers=max(1, opts.workers))
    try:
        futs = {ex.submit(job, rel, d): rel for rel, d in todo}
        for fut in as_completed(futs):
            problem = _outcome(fut, futs[fut], source, creds, opts, report)
            fatal = fatal or problem
            bar.update(1)
    except BaseException:  # Ctrl-C: cut every running download off, keep the .part files
        opts.stop.set()
        raise
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
        bar.close()
    if fatal is not None:
        raise fatal


def _megabytes_on(bar):
    """A byte counter shown as megabytes after the progress bar (called from every thread)."""
    lock = threading.Lock()
    total = [0]

    def on_bytes(n: int) -> None:
        with lock:
            total[0] += n
        bar.set_postfix_str(f"{total[0] / 1e6:.1f} MB", refresh=False)

    return on_bytes


def _outcome(fut: Future, rel: str, source: Source, creds: Credentials, opts: FetchOptions,
             report: FetchReport) -> ChexError | None:
    """Record how the download of ``rel`` ended; a ChexError when every download must stop."""
    try:
        fut.result()
        report.downloaded.append(rel)
    except Stopped:
        pass
    except AuthError as err:
        opts.stop.set()  # no retry storm: every other job returns at once
        return auth_refused(source, creds.user, err.status)
    except LocalWriteError as err:
        if err.fatal:
            opts.stop.set()
            return ChexError(f"{err}; the files finished so far are kept - free space and run the same "
                             "command again", exit_code=1)
        report.failed.append((rel, str(err)))
        report.final.append(rel)
    except PermanentError as err:
        report.failed.append((rel, str(err)))
        if not err.rerun_helps:
            report.final.append(rel)
    except Exception as err:  # whatever else: one line for this file, never a traceback
        report.failed.append((rel, f"unexpected error: {why_failed(err, opts)}"))
    return None
