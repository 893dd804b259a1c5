"""NIH ChestX-ray14 (Kaggle layout or NIH Box layout): detection val/test lists and the
training list (docs/data.md#nih-chestx-ray14). Images are read from the raw PNGs at load time,
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

from chexcli.data.names import NIH_BOX_LABELS
from chexcli.data.prepare.nih_images import verify_images
from chexcli.data.prepare.raw_files import read_raw_csv, source_digests
from chexcli.data.prepare.result import PrepareResult, note_skipped_images
from chexcli.data.processed.layout import NIH
from chexcli.data.processed.manifest import require_kind, update_manifest
from chexcli.data.processed.tables import write_dataset
from chexcli.errors import ChexError

BOX_LIST = "BBox_List_2017.csv"


def find_root(raw: Path) -> Path:
    raw = Path(raw)
    for cand in [raw] + sorted(p.parent for p in raw.glob(f"*/{BOX_LIST}")):
        if (cand / BOX_LIST).is_file():
            return cand
    raise ChexError(f"{BOX_LIST} not found in {raw}; run `chex data fetch nih-cxr14` or point "
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


def prepare_nih(raw: Path, out: Path, workers: int = 1, progress: bool = True) -> PrepareResult:
    root = find_root(raw).resolve()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    require_kind(out, "nih", "NIH")
    update_manifest(out, "nih", "nih-cxr14", None)
    entry_file = _entry_file(root)
    entries = read_raw_csv(entry_file, ["Image Index", "Finding Labels"], dtype=str)
    box_names, boxes = _read_boxes(root)
    files = image_files(root)
    if not files:
        raise ChexError(f"no PNG images below {root} (expected images/*.png or images_0*/images/*.png)")
    rows = _rows(files, dict(zip(entries["Image Index"], entries["Finding Labels"])), box_names, boxes)
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
    result = PrepareResult(out)
    result.datasets = {NIH: write_dataset(out, NIH, df, box_col="clsbbox")}
    skipped = [(n, "", "image file missing") for n in missing] + [(n, str(files[n]), why) for n, why in bad]
    note_skipped_images(result, skipped)
    entry = {"raw": str(root), "images": int(len(df)), "skipped": len(skipped),
             "source_digests": source_digests(root, [entry_file, root / BOX_LIST])}
    update_manifest(out, "nih", "nih-cxr14", entry, datasets=result.datasets)
    return result


def _read_boxes(root: Path) -> tuple[list[str], dict[str, list]]:
    """(image name of every box row, image name -> ``[x1, y1, x2, y2, "nih/<label>"]`` boxes)."""
    xcol, ycol, wcol, hcol = "Bbox [x", "y", "w", "h]"
    bbox = read_raw_csv(root / BOX_LIST, ["Image Index", "Finding Label", xcol, ycol, wcol, hcol],
                        dtype={"Image Index": str, "Finding Label": str}, numeric=[xcol, ycol, wcol, hcol])
    boxes: dict[str, list] = {}
    for name, lab, x, y, w, h in zip(bbox["Image Index"], bbox["Finding Label"], bbox[xcol], bbox[ycol],
                                     bbox[wcol], bbox[hcol]):
        lab = "Infiltration" if lab == "Infiltrate" else lab
        boxes.setdefault(name, []).append([float(x), float(y), float(x) + float(w), float(y) + float(h),
                                           f"nih/{lab}"])
    return list(bbox["Image Index"]), boxes


def _rows(files: dict[str, Path], labels_of: dict[str, str], box_names: list[str],
          boxes: dict[str, list]) -> list[tuple[str, str, list, list]]:
    """(name, split, labels, boxes): the training list (images without boxes), then val and test."""
    val, test = split_boxes(box_names)
    keep = set(NIH_BOX_LABELS) | {"No Finding"}
    rows = []
    for name in files:
        if name in boxes:
            continue  # quirk 1 fixed: evaluation images are not in the training list
        labs = [lab for lab in str(labels_of.get(name, "")).split("|") if lab in keep]
        if labs:
            rows.append((name, "train", labs, []))
    for split, names in (("validate", val), ("test", test)):
        for name in names:
            labs = list(dict.fromkeys(b[4][4:] for b in boxes[name]))
            rows.append((name, split, labs, boxes[name]))
    return rows
