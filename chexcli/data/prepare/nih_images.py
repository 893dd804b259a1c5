"""NIH images are read from the raw PNGs at load time, so every one is decoded once here,
with the reader evaluation uses: an image that would fail there is skipped now.

``nih_images_verified.csv`` keeps the results, so a rerun decodes only new or changed files
(docs/data.md#nih-chestx-ray14).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pandas as pd

from chexcli.data.images.readers import check_image_size, read_image_uint8
from chexcli.data.processed.files import write_csv
from chexcli.data.processed.layout import NIH_VERIFIED
from chexcli.errors import ChexError
from chexcli.workers import worker_init

VERIFIED_COLUMNS = ["name", "path", "size", "mtime_ns", "H", "W", "reason"]


def verify_image(path: str) -> tuple[int, int, str]:
    """(H, W, "") of an image that decodes completely, else (0, 0, one-line reason).

    The size comes from the header and is checked against the pixel-count limit before
    anything is decoded; then the image is read with the reader evaluation uses, so an
    image that passes here is readable there.
    """
    try:
        check_image_size(path)  # header only: an image over the pixel limit is never decoded
        arr = read_image_uint8(path)  # the reader evaluation uses, a full decode
    except ChexError as err:
        return 0, 0, " ".join(str(err).split())
    except Exception as err:  # noqa: BLE001 - not an image, truncated header: reported, not fatal
        return 0, 0, f"{path}: not a readable image ({' '.join(str(err).split())[:200]})"
    return int(arr.shape[0]), int(arr.shape[1]), ""


def _verify_task(item: tuple[str, str]) -> tuple[str, tuple[int, int, str]]:
    return item[0], verify_image(item[1])


def verify_images(files: dict[str, Path], out: Path, workers: int = 1,
                  progress: bool = True) -> dict[str, tuple[int, int, str]]:
    """File name -> (H, W, reason) of every image; reason is "" for a readable image.

    Results are kept in ``nih_images_verified.csv`` (saved every 30 s and at the end), so a
    rerun decodes only the images that are new or changed (size or modification time).
    """
    from tqdm import tqdm

    record = Path(out) / NIH_VERIFIED
    known: dict[str, tuple] = {}
    if record.is_file():
        try:
            old = pd.read_csv(record, dtype={"name": str, "path": str, "reason": str}, keep_default_na=False)
            known = {r[0]: tuple(r[1:]) for r in old[VERIFIED_COLUMNS].itertuples(index=False, name=None)}
        except (ValueError, KeyError, OSError):
            known = {}
    stats = {name: (str(path), path.stat().st_size, path.stat().st_mtime_ns) for name, path in files.items()}
    results: dict[str, tuple[int, int, str]] = {}
    for name, stat in stats.items():
        k = known.get(name)
        if k is not None and tuple(k[:3]) == stat and not k[5]:  # failures are retried (limit may have changed)
            results[name] = (int(k[3]), int(k[4]), "")
    todo = [(name, str(files[name])) for name in files if name not in results]

    def save() -> None:
        rows = [(n, *stats[n], *results[n]) for n in files if n in results]
        write_csv(record, pd.DataFrame(rows, columns=VERIFIED_COLUMNS), index=False)

    bar = tqdm(total=len(todo), desc="NIH images (verify)", unit="img", disable=not progress or None, leave=False)
    last = time.monotonic()
    pool = (mp.get_context("fork").Pool(workers, initializer=worker_init())
            if workers > 1 and len(todo) > 1 else None)
    try:
        it = pool.imap_unordered(_verify_task, todo, chunksize=16) if pool else map(_verify_task, todo)
        for name, res in it:
            results[name] = res
            bar.update(1)
            if time.monotonic() - last > 30:
                save()
                last = time.monotonic()
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
        save()
    return results
