"""NIH ChestX-ray14 (Kaggle layout or NIH Box layout): detection val/test lists and the
training list (DATASETS.md section 10). Images are read from the raw PNGs at load time,
as in the reference; nothing is moved or modified in the raw folder.

Processed table ``nih_cxr.{all,train,val,test}.csv`` (index ``file_name``): ``path``
(relative to the raw folder recorded in the manifest), ``H``, ``W`` (of the decoded PNG;
the reference assumes 1024), ``labels`` (JSON list), ``clsbbox`` (JSON list of
``[x, y, x + w, y + h, "nih/<label>"]``; empty for the training list).

Every image is decoded once at prepare time (after its header size passed the pixel-count
limit), so an image that evaluation could not read is skipped and listed here instead;
``nih_images_verified.csv`` remembers the results, so a rerun decodes only changed files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd

from chexcli.data.cache import write_skipped
from chexcli.data.common import (PrepareResult, dataset_summary, read_manifest, read_raw_csv, source_digests,
                                 update_manifest, write_csv, write_split_tables)
from chexcli.data.image_io import check_image_size, read_image_uint8
from chexcli.data.names import NIH_BOX_LABELS
from chexcli.errors import ChexError
from chexcli.workers import worker_init

NAME = "nih_cxr"
VERIFIED = "nih_images_verified.csv"
VERIFIED_COLUMNS = ["name", "path", "size", "mtime_ns", "H", "W", "reason"]


def find_root(raw: Path) -> Path:
    raw = Path(raw)
    for cand in [raw] + sorted(p.parent for p in raw.glob("*/BBox_List_2017.csv")):
        if (cand / "BBox_List_2017.csv").is_file():
            return cand
    raise ChexError(f"BBox_List_2017.csv not found in {raw}; run `chex data fetch nih-cxr14` or point "
                    "--raw at the ChestX-ray14 folder")


def _entry_file(root: Path) -> Path:
    for n in ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv"):
        if (root / n).is_file():
            return root / n
    raise ChexError(f"Data_Entry_2017.csv (or Data_Entry_2017_v2020.csv) not found in {root}")


def image_files(root: Path) -> dict[str, Path]:
    """File name -> path, for ``images/*.png`` and the Kaggle ``images_0*/images/*.png``."""
    found = {}
    for p in sorted(root.glob("images/*.png")) + sorted(root.glob("images_0*/images/*.png")):
        found.setdefault(p.name, p)
    return found


def split_boxes(box_images: list[str], seed: int = 0) -> tuple[list[str], list[str]]:
    """Patient-disjoint val/test lists from the box rows (one entry per box row).

    Shuffled with ``random.Random(seed)``; patients are visited in order of first
    appearance in the shuffled list (the reference iterates a set: quirk 2 fixed).
    """
    shuffled = list(box_images)
    random.Random(seed).shuffle(shuffled)
    half = len(shuffled) // 2
    by_patient: dict[str, list[str]] = {}
    for name in shuffled:
        by_patient.setdefault(name[:-8], []).append(name)
    val, test = [], []
    for pid, rows in by_patient.items():
        (val if len(val) < half else test).extend(rows)
    return list(dict.fromkeys(val)), list(dict.fromkeys(test))


# ----------------------------------------------------------------------------- image check
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
    import multiprocessing as mp
    import time

    from tqdm import tqdm

    record = Path(out) / VERIFIED
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


# ----------------------------------------------------------------------------- prepare
def prepare_nih(raw: Path, out: Path, workers: int = 1, progress: bool = True) -> PrepareResult:
    root = find_root(raw).resolve()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    man = read_manifest(out)
    if man and man.get("kind") not in (None, "nih"):
        raise ChexError(f"{out} holds a prepared {man['kind']} dataset; use another --out for NIH")
    update_manifest(out, "nih", "nih-cxr14", None)
    entry_file = _entry_file(root)
    entries = read_raw_csv(entry_file, ["Image Index", "Finding Labels"], dtype=str)
    labels_of = dict(zip(entries["Image Index"], entries["Finding Labels"]))
    xcol, ycol, wcol, hcol = "Bbox [x", "y", "w", "h]"
    bbox = read_raw_csv(root / "BBox_List_2017.csv", ["Image Index", "Finding Label", xcol, ycol, wcol, hcol],
                        dtype={"Image Index": str, "Finding Label": str}, numeric=[xcol, ycol, wcol, hcol])
    files = image_files(root)
    if not files:
        raise ChexError(f"no PNG images below {root} (expected images/*.png or images_0*/images/*.png)")

    box_names = list(bbox["Image Index"])
    boxes: dict[str, list] = {}
    for name, lab, x, y, w, h in zip(bbox["Image Index"], bbox["Finding Label"], bbox[xcol], bbox[ycol],
                                     bbox[wcol], bbox[hcol]):
        lab = "Infiltration" if lab == "Infiltrate" else lab
        boxes.setdefault(name, []).append([float(x), float(y), float(x) + float(w), float(y) + float(h),
                                           f"nih/{lab}"])
    val, test = split_boxes(box_names)
    keep = set(NIH_BOX_LABELS) | {"No Finding"}
    rows = []
    box_set = set(boxes)
    for name, path in files.items():
        if name in box_set:
            continue  # quirk 1 fixed: evaluation images are not in the training list
        labs = [lab for lab in str(labels_of.get(name, "")).split("|") if lab in keep]
        if labs:
            rows.append((name, "train", labs, []))
    for split, names in (("validate", val), ("test", test)):
        for name in names:
            labs = list(dict.fromkeys(b[4][4:] for b in boxes[name]))
            rows.append((name, split, labs, boxes[name]))
    missing = [n for n, s, _, _ in rows if s != "train" and n not in files]
    present = [r for r in rows if r[0] in files]
    checked = verify_images({r[0]: files[r[0]] for r in present}, out, workers=workers, progress=progress)
    bad = [(r[0], checked[r[0]][2]) for r in present if checked[r[0]][2]]
    good = [r for r in present if not checked[r[0]][2]]
    df = pd.DataFrame({
        "file_name": [r[0] for r in good],
        "path": [str(files[r[0]].relative_to(root)) for r in good],
        "H": [float(checked[r[0]][0]) for r in good], "W": [float(checked[r[0]][1]) for r in good],
        "labels": [json.dumps(r[2]) for r in good],
        "clsbbox": [json.dumps(r[3]) for r in good],
        "split": [r[1] for r in good],
    }).set_index("file_name")
    counts = write_split_tables(out, NAME, df)
    result = PrepareResult(out)
    skipped = [(n, "", "image file missing") for n in missing] + [(n, str(files[n]), why) for n, why in bad]
    if skipped:
        result.skipped_file = write_skipped(out, skipped)
        result.skipped = len(skipped)
        result.messages.append(f"first unreadable image: {skipped[0][0]}: {skipped[0][2]}")
    elif (out / "skipped_images.csv").exists():
        (out / "skipped_images.csv").unlink()
    summary = dataset_summary(df, box_col="clsbbox")
    summary["files"] = {k: f"{NAME}.{k}.csv" for k, v in counts.items() if v} | {"all": f"{NAME}.all.csv"}
    result.datasets = {NAME: summary}
    entry = {"raw": str(root), "images": int(len(df)), "skipped": len(skipped),
             "source_digests": source_digests(root, [entry_file, root / "BBox_List_2017.csv"])}
    update_manifest(out, "nih", "nih-cxr14", entry, datasets=result.datasets)
    return result
