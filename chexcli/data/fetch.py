"""`chex data fetch`: resumable, checksummed downloads from PhysioNet and Kaggle.

PhysioNet: the project's ``SHA256SUMS.txt`` lists every file; files are downloaded in
parallel to ``<name>.part`` (resumed with HTTP Range after an interruption), verified
against their SHA-256 and only then renamed to their final name. A rerun skips files
that were verified before (size and mtime recorded in ``.chex-fetch.json``) and
re-downloads any whose digest is wrong.

Credentials go only into an ``Authorization`` header of requests made by this process:
never into a process argument, a log line, an error message or a file. Redirects to
another host drop the header.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import http.client
import json
import netrc
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
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


class AuthError(Exception):
    def __init__(self, status: int):
        super().__init__(f"HTTP {status}")
        self.status = status


class PermanentError(Exception):
    pass


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
        except (ValueError, KeyError) as err:
            raise ChexError(f"{cfg} is not a valid kaggle.json (needs username and key)") from err
    raise ChexError("no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY, or create "
                    "~/.kaggle/kaggle.json (Kaggle > Settings > API > Create New Token)")


# ----------------------------------------------------------------------------- HTTP
class _Redirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects; keep the Authorization header only on the same host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            auth = req.unredirected_hdrs.get("Authorization")
            if auth and urllib.parse.urlsplit(newurl).netloc == urllib.parse.urlsplit(req.full_url).netloc:
                new.add_unredirected_header("Authorization", auth)
        return new


_OPENER = urllib.request.build_opener(_Redirect)


def _request(url: str, creds: Credentials | None, start: int = 0, timeout: float = 60.0):
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
            raise PermanentError(f"HTTP {err.code} for {_safe(url)}") from None
        raise


def _safe(url: str) -> str:
    """A URL without any user-info part (never print credentials)."""
    p = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((p.scheme, p.hostname + (f":{p.port}" if p.port else ""), p.path, "", ""))


# ----------------------------------------------------------------------------- checksums
def parse_sha256sums(text: str) -> list[tuple[str, str]]:
    """(relative path, digest) pairs; refuses absolute paths and ``..`` components."""
    entries = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise ChexError(f"SHA256SUMS.txt line {n} is not '<sha256> <path>': {line[:80]!r}")
        digest, rel = parts[0].lower(), parts[1].lstrip("*")
        p = PurePosixPath(rel)
        if rel.startswith(("/", "\\")) or p.is_absolute() or ".." in p.parts or ":" in p.parts[0] \
                or "\\" in rel:
            raise ChexError(f"SHA256SUMS.txt lists an unsafe path {rel!r} (absolute or with '..'); "
                            "refusing to fetch anything")
        entries.append((rel, digest))
    return entries


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
        except (OSError, ValueError):
            self.data = {}

    def verified(self, rel: str, digest: str, path: Path) -> bool:
        rec = self.data.get(rel)
        if not rec or rec[0] != digest or not path.is_file():
            return False
        st = path.stat()
        return rec[1] == st.st_size and rec[2] == st.st_mtime_ns

    def mark(self, rel: str, digest: str, path: Path) -> None:
        st = path.stat()
        with self.lock:
            self.data[rel] = [digest, st.st_size, st.st_mtime_ns]
            atomic_write_text(self.path, json.dumps(self.data))


# ----------------------------------------------------------------------------- download
@dataclass
class FetchOptions:
    workers: int = 4
    retries: int = 5
    backoff: float = 1.0  # seconds, doubled per retry, capped at 60
    timeout: float = 60.0
    progress: bool = True
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr)


def download_file(url: str, dest: Path, digest: str | None, creds: Credentials | None,
                  opts: FetchOptions, on_bytes: Callable[[int], None] = lambda n: None) -> None:
    """Download ``url`` to ``dest`` through ``dest.part`` with resume, retries and digest check."""
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    attempt = 0
    while True:
        try:
            _download_once(url, part, creds, opts, on_bytes)
            if digest is not None:
                got = _sha256(part)
                if got != digest:
                    part.unlink()
                    raise _DigestMismatch(f"SHA-256 mismatch for {dest.name}")
            os.replace(part, dest)
            return
        except (AuthError, PermanentError):
            raise
        except (_DigestMismatch, urllib.error.URLError, OSError, http.client.HTTPException,
                TimeoutError, ValueError) as err:
            attempt += 1
            if attempt > opts.retries:
                raise PermanentError(f"{dest.name}: giving up after {opts.retries} retries ({_why(err)})") from None
            time.sleep(min(opts.backoff * 2 ** (attempt - 1), 60.0))


class _DigestMismatch(Exception):
    pass


def _why(err: Exception) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code}"
    if isinstance(err, urllib.error.URLError):
        return f"network error: {err.reason}"
    return f"{type(err).__name__}: {err}"


def _download_once(url, part: Path, creds, opts: FetchOptions, on_bytes) -> None:
    start = part.stat().st_size if part.exists() else 0
    try:
        resp = _request(url, creds, start, opts.timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416:  # partial file is as long as (or longer than) the file: restart
            part.unlink()
            resp = _request(url, creds, 0, opts.timeout)
        else:
            raise
    with resp:
        status = resp.status
        mode = "ab" if (start and status == 206) else "wb"
        if mode == "wb" and start:
            on_bytes(-start)
        expected = resp.headers.get("Content-Length")
        expected = int(expected) if expected is not None else None
        got = 0
        with open(part, mode) as f:
            while True:
                b = resp.read(CHUNK)
                if not b:
                    break
                f.write(b)
                got += len(b)
                on_bytes(len(b))
        if expected is not None and got < expected:
            raise ConnectionError(f"connection closed after {got} of {expected} bytes")


@dataclass
class FetchReport:
    downloaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def fetch_physionet(source: Source, dest: Path, creds: Credentials, base_url: str | None = None,
                    include: list[str] | None = None, opts: FetchOptions | None = None) -> FetchReport:
    opts = opts or FetchOptions()
    base = (base_url or os.environ.get("CHEX_PHYSIONET_URL") or "https://physionet.org").rstrip("/")
    root_url = f"{base}/files/{source.project}/{source.version}/"
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with _request(root_url + "SHA256SUMS.txt", creds, timeout=opts.timeout) as resp:
            sums_text = resp.read().decode("utf-8")
    except AuthError as err:
        raise _auth_message(source, creds, err.status) from None
    except (PermanentError, urllib.error.URLError, OSError) as err:
        raise ChexError(f"cannot read {_safe(root_url)}SHA256SUMS.txt ({_why(err)}); check the "
                        "network or --base-url", exit_code=1) from None
    entries = parse_sha256sums(sums_text)
    patterns = include if include else list(source.default_include)
    if patterns:
        entries = [(r, d) for r, d in entries if any(fnmatch.fnmatch(r, p) for p in patterns)]
        if not entries:
            raise ChexError(f"no file of {source.title} matches --include {' '.join(patterns)}")
    atomic_write_text(dest / "SHA256SUMS.txt", sums_text)
    state = _State(dest)
    report = FetchReport()

    todo = []
    for rel, digest in entries:
        path = dest / rel
        if state.verified(rel, digest, path):
            report.skipped.append(rel)
        elif path.is_file() and _sha256(path) == digest:
            state.mark(rel, digest, path)
            report.skipped.append(rel)
        else:
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

    stop = threading.Event()

    def job(rel, digest):
        if stop.is_set():
            return
        url = root_url + urllib.parse.quote(rel)
        download_file(url, dest / rel, digest, creds, opts, on_bytes)
        state.mark(rel, digest, dest / rel)

    auth_failure = None
    with ThreadPoolExecutor(max_workers=max(1, opts.workers)) as ex:
        futs = {ex.submit(job, rel, d): rel for rel, d in todo}
        for fut in as_completed(futs):
            rel = futs[fut]
            try:
                fut.result()
                if not stop.is_set():
                    report.downloaded.append(rel)
            except AuthError as err:
                auth_failure = err
                stop.set()  # no retry storm: every other job returns at once
            except PermanentError as err:
                report.failed.append((rel, str(err)))
            bar.update(1)
    bar.close()
    if auth_failure is not None:
        raise _auth_message(source, creds, auth_failure.status)
    return report


def _auth_message(source: Source, creds: Credentials, status: int) -> ChexError:
    return ChexError(
        f"{source.title}: access refused for user {creds.user!r} (HTTP {status}): the credentials "
        f"are wrong, or the data use agreement is not signed yet - sign it at {source.agreement_page}",
        exit_code=1)


# ----------------------------------------------------------------------------- Kaggle
def fetch_kaggle(source: Source, dest: Path, creds: Credentials, base_url: str | None = None,
                 opts: FetchOptions | None = None) -> FetchReport:
    """Download the Kaggle archive (resumable), check every member's CRC while extracting."""
    opts = opts or FetchOptions()
    base = (base_url or os.environ.get("CHEX_KAGGLE_URL") or "https://www.kaggle.com").rstrip("/")
    url = f"{base}/api/v1/datasets/download/{source.project}"
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
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
            download_file(url, archive, None, creds, opts, lambda n: bar.update(n))
    except AuthError as err:
        raise _auth_message(source, creds, err.status) from None
    except PermanentError as err:
        raise ChexError(f"{source.title}: {err}", exit_code=1) from None
    finally:
        bar.close()
    try:
        extract_zip(archive, dest)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as err:
        archive.unlink(missing_ok=True)
        raise ChexError(f"{archive.name} is damaged ({err}); it was removed, run fetch again",
                        exit_code=1) from None
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
          backoff: float = 1.0) -> FetchReport:
    source = get_source(name)
    opts = FetchOptions(workers=workers, progress=progress, retries=retries, backoff=backoff)
    if source.host == "kaggle":
        return fetch_kaggle(source, dest, kaggle_credentials(), base_url, opts)
    host = urllib.parse.urlsplit(base_url or os.environ.get("CHEX_PHYSIONET_URL")
                                 or "https://physionet.org").hostname or "physionet.org"
    creds = physionet_credentials(host)
    return fetch_physionet(source, dest, creds, base_url, include, opts)
