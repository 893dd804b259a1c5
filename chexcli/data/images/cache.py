"""The uint8 image cache: every image resized once (shorter side -> ``side``, centre crop).

File layout in a processed folder (``side`` is 256 or 512):

``images_<side>.npy``
    uint8 array (N, side, side) in NumPy's .npy format; DataLoader workers open it with
    ``numpy.load(path, mmap_mode="r")`` and read single rows by random access.
``images_<side>_index.csv``
    ``sample_id,index`` for every row, written before the first image is decoded.
``images_<side>_state.npy``
    int32 (N, 3): status (0 to do, 1 done, 2 failed), original height, original width.
    Saved every few seconds, so an interrupted run resumes where it stopped.

Images that could not be read are returned as skipped (the preparer lists them in
``skipped_images.csv``). How one image is decoded and resized: :mod:`.cache_loaders`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from chexcli.data.images.cache_loaders import load_cached_image
from chexcli.data.processed.files import write_csv, write_npy
from chexcli.data.processed.layout import image_cache_files
from chexcli.errors import ChexError
from chexcli.workers import worker_init

TODO, DONE, FAILED = 0, 1, 2


def cache_side(input_size: int = 224) -> int:
    """Cache side for a model input size (docs/data.md#image-cache): 256 up to 256, else 512."""
    return 256 if input_size <= 256 else 512


def cache_paths(out_dir: Path, side: int) -> dict[str, Path]:
    return {key: Path(out_dir) / name for key, name in image_cache_files(side).items()}


@dataclass
class CacheResult:
    n: int
    done: int
    skipped: list[tuple[str, str, str]]  # (sample_id, path, reason)
    sizes: np.ndarray  # (N, 2) original H, W (0 where skipped)


def build_cache(out_dir: Path, sample_ids: Sequence[str], paths: Sequence[str], side: int = 256,
                workers: int = 1, loader: Callable | None = None, progress: bool = True,
                desc: str = "images") -> CacheResult:
    """Build (or resume) the image cache for ``sample_ids`` read from ``paths``.

    ``loader(path, side) -> (uint8 (side, side), H, W)`` must be a picklable top-level
    function; the default handles JPEG (draft mode), PNG and other PIL formats.
    """
    loader = loader or load_cached_image
    p = cache_paths(out_dir, side)
    state = _resumable_state(p, list(sample_ids), side)
    if state is None:
        state = _new_cache(p, list(sample_ids), side)
    # failed images are retried on every run (the file may have been re-downloaded)
    tasks = [(int(i), str(paths[i])) for i in np.flatnonzero(state[:, 0] != DONE)]
    errors = _fill(p, state, tasks, side, workers, loader, _progress(len(tasks), desc, progress))
    skipped = [(str(sample_ids[i]), str(paths[i]), errors.get(i, "failed"))
               for i in np.flatnonzero(state[:, 0] == FAILED)]
    return CacheResult(n=len(sample_ids), done=int((state[:, 0] == DONE).sum()), skipped=skipped,
                       sizes=state[:, 1:3].copy())


def _resumable_state(p: dict[str, Path], sample_ids: list[str], side: int) -> np.ndarray | None:
    """The saved state of a cache of exactly these images and side, else None."""
    if not (p["array"].exists() and p["index"].exists() and p["state"].exists()):
        return None
    n = len(sample_ids)
    try:
        old = pd.read_csv(p["index"], dtype={"sample_id": str})
        arr = np.load(p["array"], mmap_mode="r")
        state = np.load(p["state"])
        same = (list(old["sample_id"]) == sample_ids and arr.shape == (n, side, side)
                and arr.dtype == np.uint8 and state.shape == (n, 3))
        del arr
    except Exception:  # noqa: BLE001 - a damaged cache is rebuilt
        return None
    return state if same else None


def _new_cache(p: dict[str, Path], sample_ids: list[str], side: int) -> np.ndarray:
    """An empty cache (array, all-to-do state, index); returns the state."""
    n = len(sample_ids)
    for key in ("array", "state"):
        if p[key].exists():
            p[key].unlink()
    tmp = p["array"].with_suffix(".npy.tmp")
    mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(max(n, 0), side, side))
    del mm
    os.replace(tmp, p["array"])
    state = np.zeros((n, 3), dtype=np.int32)
    write_npy(p["state"], state)
    write_csv(p["index"], pd.DataFrame({"sample_id": sample_ids, "index": np.arange(n)}), index=False)
    return state


def _fill(p: dict[str, Path], state: np.ndarray, tasks: list[tuple[int, str]], side: int, workers: int,
          loader: Callable, bar) -> dict[int, str]:
    """Decode ``tasks`` into the cache (in ``workers`` processes), recording each row's state
    (saved every 2 s and at the end); returns the reason of every failed row."""
    errors: dict[int, str] = {}
    last_save = time.monotonic()

    def record(res: tuple[int, int, int, str]) -> None:
        nonlocal last_save
        i, h, w, err = res
        if err:
            state[i] = (FAILED, 0, 0)
            errors[i] = err
        else:
            state[i] = (DONE, h, w)
        bar.update(1)
        if time.monotonic() - last_save > 2.0:
            write_npy(p["state"], state)
            last_save = time.monotonic()

    try:
        if workers <= 1 or len(tasks) < 2:
            _worker_init(str(p["array"]), side, loader)
            for t in tasks:
                record(_worker_task(t))
            _W.clear()
        else:
            ctx = mp.get_context("fork") if hasattr(os, "fork") else mp.get_context()
            with ctx.Pool(workers, initializer=worker_init(_worker_init),
                          initargs=(str(p["array"]), side, loader)) as pool:
                for res in pool.imap_unordered(_worker_task, tasks, chunksize=4):
                    record(res)
    finally:
        bar.close()
        write_npy(p["state"], state)
    return errors


_W: dict = {}


def _worker_init(array_path: str, side: int, loader: Callable) -> None:
    _W["arr"] = np.load(array_path, mmap_mode="r+")
    _W["side"] = side
    _W["loader"] = loader


def _worker_task(task: tuple[int, str]) -> tuple[int, int, int, str]:
    i, path = task
    try:
        img, h, w = _W["loader"](path, _W["side"])
        _W["arr"][i] = img
        return i, h, w, ""
    except ChexError as err:
        return i, -1, -1, _one_line(str(err))
    except Exception as err:  # noqa: BLE001 - an unreadable image is reported, not fatal
        return i, -1, -1, _one_line(f"{type(err).__name__}: {err}")[:300]


def _one_line(msg: str) -> str:
    msg = re.sub(r"<[^<>]* object at 0x[0-9a-f]+>", "data", msg)
    return " ".join(msg.split())


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled or None, leave=False,
                dynamic_ncols=True)


def open_cache(out_dir: Path, side: int = 256) -> tuple[np.ndarray, dict[str, int]]:
    """Open a finished cache read-only: (memmap (N, side, side) uint8, sample_id -> row)."""
    p = cache_paths(out_dir, side)
    if not p["array"].exists() or not p["index"].exists():
        raise ChexError(f"no image cache {p['array'].name} in {out_dir}; run `chex data prepare` first")
    arr = np.load(p["array"], mmap_mode="r")
    idx = pd.read_csv(p["index"], dtype={"sample_id": str})
    return arr, dict(zip(idx["sample_id"], idx["index"].astype(int)))
