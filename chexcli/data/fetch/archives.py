"""Zip archives (the Kaggle download): every member checked against its CRC while it is
written to ``<member>.part`` and renamed; unsafe member names are refused."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path, PurePosixPath

from chexcli.data.fetch.options import CHUNK


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
