"""Archive safety: refuse unsafe zip members and oversized extraction; load checkpoints without running pickled code."""

from __future__ import annotations

import pickle
import re
import stat
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from chexcli.errors import ChexError

#: extraction cap for a zip SOURCE (the released stage-3 zip holds one ~4.2 GB checkpoint)
MAX_EXTRACT_BYTES = 8 * 1024**3


def is_torch_zip(names: list[str]) -> bool:
    return any(n.endswith("/data.pkl") or n == "data.pkl" for n in names)


def is_torchscript_zip(names: list[str]) -> bool:
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def unsafe_member(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "has an absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "would be written outside the extraction folder (path traversal)"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "is a symbolic link"
    if info.flag_bits & 0x1:
        return "is encrypted"
    return None


def extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int, archive: Path) -> int:
    """Stream one member to `target`; returns bytes written; refuses more than `budget` bytes."""
    written = 0
    with zf.open(info) as src, open(target, "wb") as dst:
        while True:
            block = src.read(1 << 22)
            if not block:
                break
            written += len(block)
            if written > budget or written > info.file_size:
                raise ChexError(f"{archive}: {info.filename} unpacks to more than its declared or allowed size; "
                                "refusing the archive")
            dst.write(block)
    return written


# A legacy (pre-1.6, non-zip) torch.save file starts with the pickled magic number 0x1950a86a20f9469cfc6c.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def _is_legacy_torch_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(_LEGACY_MAGIC)) == _LEGACY_MAGIC
    except OSError:
        return True  # let torch.load report the read error


def safe_torch_load(path: str | Path, what: str | None = None) -> Any:
    """`torch.load(weights_only=True, mmap=True)` with one-line errors (falls back to no mmap for old files)."""
    path = Path(path)
    what = what or str(path)
    try:
        with zipfile.ZipFile(path) as zf:
            if is_torchscript_zip(zf.namelist()):
                raise ChexError(f"{what} is a TorchScript archive, not a checkpoint; convert it to a state dict in "
                                "a trusted environment: torch.save(torch.jit.load(f).state_dict(), 'weights.pt')")
        mmap = True
    except (zipfile.BadZipFile, OSError):
        mmap = False  # legacy (non-zip) torch.save format or not a checkpoint at all
        if not _is_legacy_torch_file(path):
            raise ChexError(f"{what} is not a readable PyTorch checkpoint (neither a torch.save zip archive nor a "
                            "legacy torch.save file: corrupt or another kind of file); download it again") from None
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the refusal below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        text = str(err)
        opcode = re.search(r"Unsupported operand (\d+)", text)
        if opcode and opcode.group(1) == "149":  # FRAME: pickle protocol >= 4, which the safe loader cannot read
            raise ChexError(f"{what} was saved with pickle protocol 4 or newer, which the weights-only loader cannot "
                            "read; re-save it with torch.save's default protocol in a trusted environment") from None
        if opcode:
            raise ChexError(f"{what} is not a readable PyTorch checkpoint (corrupt pickle data); "
                            "download it again") from None
        if "Weights only load failed" in text or "weights_only" in text:
            m = re.search(r"(?:GLOBAL|global)\s+([\w.]+)", text)
            culprit = f" ({m.group(1)})" if m else ""
            raise ChexError(f"{what} contains pickled code or objects{culprit} that are refused for safety "
                            "(only tensors and plain containers are loaded); use the official checkpoint file") from None
        raise ChexError(f"{what} is not a PyTorch checkpoint ({text.splitlines()[0] if text else 'unpickling failed'})") from None
    except ChexError:
        raise
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, AttributeError, IndexError, TypeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ChexError(f"{what} is not a readable PyTorch checkpoint ({first[:200]}); download it again") from None
