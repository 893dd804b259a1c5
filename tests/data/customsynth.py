"""A custom table (docs/custom-data.md) made from a synthetic processed folder: PNG files, report
sentences, anatomy boxes linked to their phrases and finding boxes with finding names, one of
them new to the model ("Round lesion" for the synthetic nodules)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from chexcli.data.processed.layout import MIMIC_REPORTS_CIG, SYNTHETIC_TRUTH

NEW_FINDING = "Round lesion"
FINDING_NAMES = {"nodule": NEW_FINDING, "opacity": "Lung opacity", "consolidation": "Consolidation",
                 "effusion": "Pleural effusion", "pneumothorax": "Pneumothorax", "cardiomegaly": "Cardiomegaly"}
COLUMNS = ["image", "split", "sentences", "finding", "anatomy", "x1", "y1", "x2", "y2", "sentence"]


def custom_rows(synth: Path, images_dir: Path, n: int | None = None) -> list[dict]:
    """Rows of the table (one image row, then one row per box) for the first ``n`` images;
    their PNG files are written to ``images_dir``."""
    images_dir.mkdir(parents=True, exist_ok=True)
    tables = pd.read_csv(synth / f"{MIMIC_REPORTS_CIG}.all.csv", dtype={"dicom_id": str}, keep_default_na=False)
    truth = pd.read_csv(synth / SYNTHETIC_TRUTH, dtype={"dicom_id": str}, keep_default_na=False)
    findings = dict(zip(truth["dicom_id"], truth["findings"]))
    pixels = np.load(synth / "images_256.npy", mmap_mode="r")
    rows = []
    for i, r in enumerate(tables.head(n).itertuples()):
        name = f"cases/{r.dicom_id}.png"
        (images_dir / "cases").mkdir(exist_ok=True)
        Image.fromarray(np.asarray(pixels[i])).save(images_dir / name)
        sentences = json.loads(r.report_sentences)
        rows.append({"image": name, "split": r.split, "sentences": sentences})
        phrases = json.loads(r.anat_sentences)
        for anatomy, box in json.loads(r.anat_boxes).items():
            link = phrases.get(anatomy, [None])[0]
            rows.append({"image": name, "anatomy": anatomy, **_box(box), "sentence": link})
        for f in json.loads(findings[r.dicom_id]):
            link = sentences.index(f["sentence"]) if f["sentence"] in sentences else None
            rows.append({"image": name, "finding": FINDING_NAMES[f["kind"]], **_box(f["box"]), "sentence": link})
    return rows


def _box(box) -> dict:
    return dict(zip(("x1", "y1", "x2", "y2"), box))


def write_csv_table(rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else ("" if v is None else v)
                             for k, v in row.items()})
    return path


def write_jsonl_table(rows: list[dict], path: Path) -> Path:
    """One line per image with its boxes under ``boxes``."""
    lines: dict[str, dict] = {}
    for row in rows:
        image = lines.setdefault(row["image"], {"image": row["image"], "boxes": []})
        if "split" in row:
            image.update(split=row["split"], sentences=row["sentences"])
        else:
            image["boxes"].append({k: v for k, v in row.items() if k != "image" and v is not None})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines.values()), encoding="utf-8")
    return path
