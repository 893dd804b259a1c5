"""Checkpoints that make a resume exact, written atomically and read without unpickling code.

RUN_DIR/checkpoints/last.pt holds tensors and plain containers only (loaded
with `torch.load(weights_only=True)`): model and optimizer state, grad
scaler, the update counter, the epoch and the update inside it (the sampler
position), the best validation value, and every RNG state (python, numpy,
torch, CUDA). Data-loader workers hold no RNG state of their own: each
sample's augmentation is drawn from (seed, epoch, index).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chexcli.errors import ChexError

CHECKPOINT = "last.pt"


def rng_state() -> dict[str, Any]:
    version, keys, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [version, list(keys), gauss],
        "numpy": [np_name, torch.from_numpy(np.asarray(np_keys, dtype=np.int64)), int(np_pos), int(np_has_gauss),
                  float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(folder: Path, state: dict[str, Any]) -> Path:
    """Write `state` to folder/last.pt: temporary file, fsync, rename. A full disk is a one-line error."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / CHECKPOINT
    tmp = folder / f".{CHECKPOINT}.tmp"
    try:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(folder)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ChexError(f"could not write the checkpoint {target} ({err.strerror or err}); free disk space and "
                        f"resume with `chex train --resume {folder.parent}`", exit_code=2) from None
    return target


def load_checkpoint(folder: Path, map_location="cpu") -> dict[str, Any] | None:
    path = folder / CHECKPOINT
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        raise ChexError(f"checkpoint {path} is unreadable ({str(err).splitlines()[0][:120]}); "
                        "it was not written by chex train or is damaged") from None
