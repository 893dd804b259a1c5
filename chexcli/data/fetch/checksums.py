"""``SHA256SUMS.txt``: the file list of a PhysioNet project, and the record of verified files.

A listing entry with an absolute path or a ``..`` component stops the whole fetch before
anything is downloaded. Verified files are recorded (digest, size, mtime) in
``.chex-fetch.json``, so that a rerun skips them without rehashing.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path, PurePosixPath

from chexcli.data.processed.files import atomic_write_text
from chexcli.errors import ChexError

STATE_FILE = ".chex-fetch.json"


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


def listing_problems(entries: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
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


class VerifiedFiles:
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
