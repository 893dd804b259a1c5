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
``skipped_images.csv``
    images that could not be read (sample_id, path, reason).

The resize follows DATASETS.md 3.2: shorter side to ``side`` with area averaging (the
longer side becomes round-half-even(longer * side / shorter)), then a centre crop with
offset floor((size - side) / 2). JPEGs are decoded with libjpeg's DCT scaling ("draft
mode") at the smallest scale that is still at least the target size, which is what
makes the cache fast (see docs/data.md).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageFile

from chexcli.data.common import atomic_write_bytes, write_csv
from chexcli.data.image_io import check_pixel_count, open_pil_image
from chexcli.errors import ChexError
from chexcli.workers import worker_init


TODO, DONE, FAILED = 0, 1, 2


def cache_side(input_size: int = 224) -> int:
    """Cache side for a model input size (DATASETS.md 3.2): 256 up to 256, else 512."""
    return 256 if input_size <= 256 else 512


def cache_paths(out_dir: Path, side: int) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {
        "array": out_dir / f"images_{side}.npy",
        "index": out_dir / f"images_{side}_index.csv",
        "state": out_dir / f"images_{side}_state.npy",
        "skipped": out_dir / "skipped_images.csv",
    }


# --------------------------------------------------------------------------- decoding
def _target_size(w: int, h: int, side: int) -> tuple[int, int]:
    if w <= h:
        return side, int(np.round(h * side / w))
    return int(np.round(w * side / h)), side


def resize_crop(img: Image.Image, side: int, orig_size: tuple[int, int] | None = None) -> np.ndarray:
    """Shorter side -> ``side`` (area averaging), centre crop; ``img`` is a PIL "L" image.

    ``orig_size`` (w, h) is the size of the full-resolution image when ``img`` was decoded
    at a reduced DCT scale; the output size is computed from the original size so that
    draft decoding does not change the geometry.
    """
    w0, h0 = orig_size or img.size
    tw, th = _target_size(w0, h0, side)
    if img.size != (tw, th):
        img = img.resize((tw, th), Image.Resampling.BOX, reducing_gap=None)
    left, top = (tw - side) // 2, (th - side) // 2
    arr = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(arr[top:top + side, left:left + side])


def to_gray_pil(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit grayscale; 16-bit and float images are min-max scaled."""
    if img.mode == "L":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if img.mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGB" if img.mode != "LA" else "L")
    return img.convert("L")


@contextlib.contextmanager
def _tolerant_decoding():
    """Decode truncated files (as the reference's caching does) and turn PIL's size check off
    (the pixel-count limit of image_io replaces it), only for the duration of the block: the
    PIL settings are process-wide."""
    saved = ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS
    ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = True, None
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = saved


def load_cached_image(path: str, side: int) -> tuple[np.ndarray, int, int]:
    """Decode one image file for the cache; returns (uint8 side x side, H, W) of the original.

    PIL's own size check is off here, so the pixel-count limit is checked from the header
    before anything is decoded (an image over it is skipped and listed).
    """
    with _tolerant_decoding(), open_pil_image(path) as img:
        w0, h0 = img.size
        check_pixel_count(path, w0, h0)
        if img.format == "JPEG":
            tw, th = _target_size(w0, h0, side)
            img.draft("L", (tw, th))  # DCT scaling: decoded size stays >= (tw, th)
        img.load()
        gray = to_gray_pil(img)
        return resize_crop(gray, side, (w0, h0)), h0, w0


def array_for_cache(arr: np.ndarray, side: int) -> np.ndarray:
    """Resize an already decoded uint8 (H, W) array for the cache."""
    return resize_crop(Image.fromarray(arr, "L"), side)


# --------------------------------------------------------------------------- building
@dataclass
class CacheResult:
    n: int
    done: int
    skipped: list[tuple[str, str, str]]  # (sample_id, path, reason)
    sizes: np.ndarray  # (N, 2) original H, W (0 where skipped)


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
    import re

    msg = re.sub(r"<[^<>]* object at 0x[0-9a-f]+>", "data", msg)
    return " ".join(msg.split())


def build_cache(out_dir: Path, sample_ids: Sequence[str], paths: Sequence[str], side: int = 256,
                workers: int = 1, loader: Callable | None = None, progress: bool = True,
                desc: str = "images") -> CacheResult:
    """Build (or resume) the image cache for ``sample_ids`` read from ``paths``.

    ``loader(path, side) -> (uint8 (side, side), H, W)`` must be a picklable top-level
    function; the default handles JPEG (draft mode), PNG and other PIL formats.
    """
    loader = loader or load_cached_image
    p = cache_paths(out_dir, side)
    n = len(sample_ids)
    index_df = pd.DataFrame({"sample_id": list(sample_ids), "index": np.arange(n)})

    resume = False
    if p["array"].exists() and p["index"].exists() and p["state"].exists():
        try:
            old = pd.read_csv(p["index"], dtype={"sample_id": str})
            arr = np.load(p["array"], mmap_mode="r")
            state = np.load(p["state"])
            resume = (list(old["sample_id"]) == list(index_df["sample_id"])
                      and arr.shape == (n, side, side) and arr.dtype == np.uint8
                      and state.shape == (n, 3))
            del arr
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt
            resume = False
    if not resume:
        for key in ("array", "state"):
            if p[key].exists():
                p[key].unlink()
        tmp = p["array"].with_suffix(".npy.tmp")
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(max(n, 0), side, side))
        del mm
        os.replace(tmp, p["array"])
        state = np.zeros((n, 3), dtype=np.int32)
        _save_state(p["state"], state)
        write_csv(p["index"], index_df, index=False)
    # failed images are retried on every run (the file may have been re-downloaded)
    todo = [int(i) for i in np.flatnonzero(state[:, 0] != DONE)]
    tasks = [(i, str(paths[i])) for i in todo]

    bar = _progress(len(tasks), desc, progress)
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
            _save_state(p["state"], state)
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
        _save_state(p["state"], state)

    skipped = [(str(sample_ids[i]), str(paths[i]), errors.get(i, "failed"))
               for i in np.flatnonzero(state[:, 0] == FAILED)]
    return CacheResult(n=n, done=int((state[:, 0] == DONE).sum()), skipped=skipped,
                       sizes=state[:, 1:3].copy())


def _save_state(path: Path, state: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, state)
    atomic_write_bytes(path, buf.getvalue())


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled or None, leave=False,
                dynamic_ncols=True)


def write_skipped(out_dir: Path, skipped: list[tuple[str, str, str]]) -> Path:
    path = Path(out_dir) / "skipped_images.csv"
    write_csv(path, pd.DataFrame(skipped, columns=["sample_id", "path", "reason"]), index=False)
    return path


def open_cache(out_dir: Path, side: int = 256) -> tuple[np.ndarray, dict[str, int]]:
    """Open a finished cache read-only: (memmap (N, side, side) uint8, sample_id -> row)."""
    p = cache_paths(out_dir, side)
    if not p["array"].exists() or not p["index"].exists():
        raise ChexError(f"no image cache images_{side}.npy in {out_dir}; run `chex data prepare` first")
    arr = np.load(p["array"], mmap_mode="r")
    idx = pd.read_csv(p["index"], dtype={"sample_id": str})
    return arr, dict(zip(idx["sample_id"], idx["index"].astype(int)))
