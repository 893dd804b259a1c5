"""File and tensor digests."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a tensor comes in from the caller; fetching files needs no torch
    import torch


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 (hex) of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tensor_digest(t: torch.Tensor) -> bytes:
    """t (...) on the CPU -> 16-byte BLAKE2b digest of its dtype, shape and values."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.contiguous().numpy())
    return h.digest()
