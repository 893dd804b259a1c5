"""Image files before decoding: the allowed formats, checks that a file can be read, DICOM
detection, and the one-line error text every reader uses (it starts with the path)."""

from __future__ import annotations

import os
from pathlib import Path

from chexcli.errors import ChexError

# The allow-list every reader shares: Pillow opens only these, DICOM goes to pydicom.
PIL_FORMATS = ("PNG", "JPEG")
IMAGE_FORMATS = ("PNG", "JPEG", "DICOM")

DICOM_SUFFIXES = {".dcm", ".dicom"}


def is_dicom(path: str | os.PathLike) -> bool:
    """True when ``path`` has a DICOM suffix or starts with the DICOM preamble + ``DICM``."""
    p = Path(path)
    return p.suffix.lower() in DICOM_SUFFIXES or has_dicm_magic(p)


def has_dicm_magic(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def one_line(exc: BaseException) -> str:
    """An exception as one short line (no newlines, bounded length)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def check_file(path: Path) -> None:
    """Refuse a missing, unreadable or empty file, or a folder (one-line ChexError)."""
    if not path.exists():
        raise ChexError(f"{path}: file not found")
    if path.is_dir():
        raise ChexError(f"{path}: is a directory, not an image file")
    try:
        with open(path, "rb") as f:
            first = f.read(1)
    except PermissionError:
        raise ChexError(f"{path}: cannot read the file (permission denied)") from None
    except OSError as e:
        raise ChexError(f"{path}: cannot read the file ({one_line(e)})") from None
    if not first:
        raise ChexError(f"{path}: the file is empty")
