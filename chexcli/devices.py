"""The `--device` option of every command: one picker.

`auto` takes the GPU when there is one; `cpu`, `cuda` and `cuda:N` are taken as written
(`cuda` without a GPU is an input error, not a silent fallback).
"""

from __future__ import annotations

from chexcli.errors import ChexError


def resolve_device(name: str):
    """`--device NAME` -> torch.device (one-line ChexError for an unknown name or a missing GPU)."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ChexError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        return torch.device(name)
    raise ChexError(f"unknown --device {name!r}; use cpu, cuda, cuda:N or auto")


__all__ = ["resolve_device"]
