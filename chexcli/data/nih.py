"""NIH ChestX-ray14 (Kaggle layout or NIH Box layout): detection val/test lists and the
training list (DATASETS.md section 10). Images are read from the raw PNGs at load time,
as in the reference; nothing is moved or modified in the raw folder.

Processed table ``nih_cxr.{all,train,val,test}.csv`` (index ``file_name``): ``path``
(relative to the raw folder recorded in the manifest), ``H``, ``W`` (read from the PNG
header; the reference assumes 1024), ``labels`` (JSON list), ``clsbbox`` (JSON list of
``[x, y, x + w, y + h, "nih/<label>"]``; empty for the training list).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
from PIL import Image

from chexcli.data.common import dataset_summary, source_digests, update_manifest, write_split_tables
from chexcli.data.names import NIH_BOX_LABELS
from chexcli.errors import ChexError

NAME = "nih_cxr"


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


def prepare_nih(raw: Path, out: Path, workers: int = 1, progress: bool = True):
    from tqdm import tqdm

    from chexcli.data.common import read_manifest
    from chexcli.data.prepare import PrepareResult

    root = find_root(raw)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    man = read_manifest(out)
    if man and man.get("kind") not in (None, "nih"):
        raise ChexError(f"{out} holds a prepared {man['kind']} dataset; use another --out for NIH")
    update_manifest(out, "nih", "nih-cxr14", None)
    entry_file = _entry_file(root)
    entries = pd.read_csv(entry_file, usecols=["Image Index", "Finding Labels"], dtype=str)
    labels_of = dict(zip(entries["Image Index"], entries["Finding Labels"]))
    bbox = pd.read_csv(root / "BBox_List_2017.csv", dtype={"Image Index": str, "Finding Label": str})
    bbox.columns = [c.strip() for c in bbox.columns]
    xcol, ycol, wcol, hcol = "Bbox [x", "y", "w", "h]"
    if not {xcol, ycol, wcol, hcol} <= set(bbox.columns):
        raise ChexError(f"{root / 'BBox_List_2017.csv'} lacks the columns 'Bbox [x', y, w, 'h]'")
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
    sizes = []
    for name, *_ in tqdm(present, desc="NIH image sizes", disable=not progress or None, leave=False):
        try:
            with Image.open(files[name]) as im:
                sizes.append(im.size)
        except OSError:
            sizes.append((0, 0))
    bad = [r[0] for r, s in zip(present, sizes) if s == (0, 0)]
    df = pd.DataFrame({
        "file_name": [r[0] for r in present],
        "path": [str(files[r[0]].relative_to(root)) for r in present],
        "H": [float(s[1]) for s in sizes], "W": [float(s[0]) for s in sizes],
        "labels": [json.dumps(r[2]) for r in present],
        "clsbbox": [json.dumps(r[3]) for r in present],
        "split": [r[1] for r in present],
    }).set_index("file_name")
    df = df[~df.index.isin(bad)]
    counts = write_split_tables(out, NAME, df)
    result = PrepareResult(out)
    skipped = [(n, "", "image file missing") for n in missing] + [(n, str(files[n]), "unreadable PNG") for n in bad]
    if skipped:
        from chexcli.data.cache import write_skipped

        result.skipped_file = write_skipped(out, skipped)
        result.skipped = len(skipped)
    summary = dataset_summary(df, box_col="clsbbox")
    summary["files"] = {k: f"{NAME}.{k}.csv" for k, v in counts.items() if v} | {"all": f"{NAME}.all.csv"}
    result.datasets = {NAME: summary}
    entry = {"raw": str(root.resolve()), "images": int(len(df)), "skipped": len(skipped),
             "source_digests": source_digests(root, [entry_file, root / "BBox_List_2017.csv"])}
    update_manifest(out, "nih", "nih-cxr14", entry, datasets=result.datasets)
    return result
