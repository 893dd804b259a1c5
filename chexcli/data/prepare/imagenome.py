"""Chest ImaGenome 1.0.0 silver scene graphs -> anatomy boxes, region labels, region sentences.

docs/data.md#chest-imagenome. Scene graphs are read from ``silver_dataset/scene_graph/*.json``
or directly from ``silver_dataset/scene_graph.zip`` (nothing is extracted). The tables are
built against the frontal MIMIC-CXR-JPG table (quirk 8 fixed: independent of the order in
which datasets are prepared).

Processed table ``chest_imagenome.csv`` (index ``dicom_id``), JSON cells:

* ``anat_boxes``: {bbox_name: [x1, y1, x2, y2]} in original pixels, clipped;
* ``anat_has_duplicate_box``: bool;
* ``anat_labels``: {region: [positive labels]} with ``abnormal`` or ``normal`` and
  ``disease/<name>`` / ``af/<name>`` (the reference's wide ``anatcls/cig/...`` columns,
  stored sparsely: a label not listed is 0);
* ``anat_sentences``: {region: [cleaned sentences]};
* ``labels``: image-level positive labels (union over regions).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import zipfile
import zlib
from pathlib import Path

import pandas as pd

from chexcli.data.prepare.raw_files import source_digests
from chexcli.data.prepare.report_text import clean_phrases
from chexcli.data.processed.files import write_csv
from chexcli.data.processed.layout import IMAGENOME_INVALID_BOXES, IMAGENOME_TABLE
from chexcli.errors import ChexError
from chexcli.workers import worker_init

MIN_BOXES = 5


def find_silver(raw: Path) -> Path:
    raw = Path(raw)
    for cand in (raw / "silver_dataset", raw / "chest-imagenome-dataset-1.0.0" / "silver_dataset",
                 raw / "chest-imagenome" / "1.0.0" / "silver_dataset"):
        if cand.is_dir():
            return cand
    hits = sorted(raw.glob("**/silver_dataset"))
    if hits:
        return hits[0]
    raise ChexError(f"no Chest ImaGenome silver_dataset folder below {raw}; run "
                    "`chex data fetch chest-imagenome` or point --raw at the release folder")


def list_scene_graphs(silver: Path) -> tuple[str, list[str]]:
    """('dir', sorted file paths) or ('zip', sorted member names)."""
    d = silver / "scene_graph"
    if d.is_dir():
        files = sorted(str(p) for p in d.glob("*_SceneGraph.json"))
        if files:
            return "dir", files
    z = silver / "scene_graph.zip"
    if z.is_file():
        try:
            with zipfile.ZipFile(z) as zf:
                return "zip", sorted(n for n in zf.namelist() if n.endswith("_SceneGraph.json"))
        except (zipfile.BadZipFile, OSError) as err:
            raise ChexError(f"{z} is not a readable zip archive ({err}); download it again") from None
    raise ChexError(f"no scene graphs in {silver} (expected scene_graph/ or scene_graph.zip)")


def parse_scene_graph(sg: dict, sizes: dict[str, tuple[int, int]]):
    """One scene graph -> (row dict | None, skip reason | None, invalid-box records)."""
    if sg.get("viewpoint") not in ("PA", "AP"):
        return None, "view", []
    dicom_id = sg.get("image_id")
    if dicom_id not in sizes:
        return None, "not_in_mimic", []
    boxes, duplicate, invalid = _anatomy_boxes(sg, dicom_id, *(float(v) for v in sizes[dicom_id]))
    if len(boxes) < MIN_BOXES:
        return None, "few_boxes", invalid
    labels, image_labels, sentences = _region_findings(sg)
    row = {
        "dicom_id": dicom_id,
        "anat_boxes": json.dumps(boxes),
        "anat_has_duplicate_box": duplicate,
        "anat_labels": json.dumps(labels),
        "anat_sentences": json.dumps(sentences, ensure_ascii=False),
        "labels": json.dumps(image_labels),
    }
    return row, None, invalid


def _anatomy_boxes(sg: dict, dicom_id: str, H: float, W: float):
    """(name -> box clipped to the image, whether a name had several boxes (merged), invalid boxes)."""
    boxes: dict[str, list[float]] = {}
    duplicate = False
    invalid = []
    for obj in sg.get("objects", []):
        name = obj["bbox_name"]
        x1 = min(max(float(obj["original_x1"]), 0.0), W)
        x2 = min(max(float(obj["original_x2"]), 0.0), W)
        y1 = min(max(float(obj["original_y1"]), 0.0), H)
        y2 = min(max(float(obj["original_y2"]), 0.0), H)
        if float(obj.get("width", 0)) <= 0 or float(obj.get("height", 0)) <= 0 or x2 <= x1 or y2 <= y1:
            invalid.append((dicom_id, name))
            continue
        if name in boxes:
            duplicate = True
            b = boxes[name]
            boxes[name] = [min(b[0], x1), min(b[1], y1), max(b[2], x2), max(b[3], y2)]
        else:
            boxes[name] = [x1, y1, x2, y2]
    return boxes, duplicate, invalid


def _region_findings(sg: dict):
    """(region -> positive labels, image-level labels, region -> cleaned sentences)."""
    abnormal: dict[str, bool] = {}
    positives: dict[str, list[str]] = {}
    phrases: dict[str, list[str]] = {}
    for entry in sg.get("attributes", []):
        region = entry["bbox_name"]
        abnormal.setdefault(region, False)
        pos = positives.setdefault(region, [])
        for attrs in entry.get("attributes", []):
            for a in attrs:
                parts = a.split("|")
                if len(parts) != 3:
                    continue
                cat, rel, name = parts
                if cat == "nlp" and rel == "yes" and name == "abnormal":
                    abnormal[region] = True
                elif rel == "yes" and cat in ("disease", "anatomicalfinding"):
                    lab = ("disease/" if cat == "disease" else "af/") + name
                    if lab not in pos:
                        pos.append(lab)
        phrases.setdefault(region, []).extend(entry.get("phrases", []))
    labels = {r: (["abnormal"] if abnormal[r] else ["normal"]) + positives[r] for r in abnormal}
    image_labels = sorted({lab for r in labels for lab in positives[r]})
    image_labels = (["abnormal"] if any(abnormal.values()) else ["normal"]) + image_labels
    sentences = {r: clean_phrases(p) for r, p in phrases.items()}
    return labels, image_labels, sentences


_G: dict = {}


def _init(mode: str, zpath: str | None, sizes: dict) -> None:
    _G["mode"], _G["sizes"] = mode, sizes
    _G["zip"] = zipfile.ZipFile(zpath) if zpath else None


def _task(name: str):
    try:
        if _G["mode"] == "zip":
            sg = json.loads(_G["zip"].read(name))
        else:
            with open(name, "rb") as f:
                sg = json.load(f)
        return parse_scene_graph(sg, _G["sizes"])
    except (ValueError, KeyError, TypeError, AttributeError, OSError, zipfile.BadZipFile, zlib.error) as err:
        return None, f"unreadable: {name}: {err}", []


def prepare_imagenome(raw: Path, out: Path, frontal: pd.DataFrame, workers: int = 1,
                      progress: bool = True) -> dict:
    from tqdm import tqdm

    silver = find_silver(raw).resolve()
    mode, names = list_scene_graphs(silver)
    sizes = {d: (int(h), int(w)) for d, h, w in zip(frontal.index, frontal["H"], frontal["W"])}
    zpath = str(silver / "scene_graph.zip") if mode == "zip" else None
    rows, invalid, reasons = [], [], {}
    bar = tqdm(total=len(names), desc="scene graphs", unit="file", disable=not progress or None, leave=False)
    if workers <= 1:
        _init(mode, zpath, sizes)
        it = map(_task, names)
        pool = None
    else:
        pool = mp.get_context("fork").Pool(workers, initializer=worker_init(_init), initargs=(mode, zpath, sizes))
        it = pool.imap(_task, names, chunksize=64)
    try:
        for row, reason, inv in it:
            bar.update(1)
            invalid.extend(inv)
            if row is not None:
                rows.append(row)
            else:
                key = reason.split(":")[0]
                reasons[key] = reasons.get(key, 0) + 1
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    cols = ["dicom_id", "anat_boxes", "anat_has_duplicate_box", "anat_labels", "anat_sentences", "labels"]
    table = pd.DataFrame(rows, columns=cols).set_index("dicom_id")
    write_csv(Path(out) / IMAGENOME_TABLE, table)
    write_csv(Path(out) / IMAGENOME_INVALID_BOXES, pd.DataFrame(invalid, columns=["dicom_id", "bbox_name"]),
              index=False)
    return {
        "raw": str(silver.parent),
        "source_digests": source_digests(silver.parent, [silver / "scene_graph.zip"]),
        "scene_graphs": len(names),
        "images": int(len(table)),
        "with_duplicate_box": int(table["anat_has_duplicate_box"].sum()) if len(table) else 0,
        "invalid_boxes": len(invalid),
        "skipped": reasons,
    }
