"""MS-CXR 0.1: phrase-grounding boxes on MIMIC-CXR-JPG images (docs/data.md#ms-cxr).

Processed table ``ms_cxr.csv`` (index ``dicom_id``): ``clsbbox`` = JSON list of
``[x, y, x + w, y + h, "mscxr/<category_name>"]`` (original pixels, rows in file order),
``clsbboxphrases`` = JSON list of the ``label_text`` of each box (verbatim).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from chexcli.data.prepare.raw_files import read_raw_csv, source_digests
from chexcli.data.processed.files import write_csv
from chexcli.data.processed.layout import MSCXR_TABLE
from chexcli.errors import ChexError

CSV_NAME = "MS_CXR_Local_Alignment_v1.0.0.csv"


def find_csv(raw: Path) -> Path:
    raw = Path(raw)
    if (raw / CSV_NAME).is_file():
        return raw / CSV_NAME
    hits = sorted(raw.glob(f"**/{CSV_NAME}"))
    if not hits:
        raise ChexError(f"{CSV_NAME} not found below {raw}; run `chex data fetch ms-cxr` "
                        "or point --raw at the MS-CXR release folder")
    return hits[0]


def prepare_mscxr(raw: Path, out: Path) -> dict:
    path = find_csv(raw).resolve()
    df = read_raw_csv(path, ["dicom_id", "category_name", "label_text", "x", "y", "w", "h"],
                      dtype={"dicom_id": str, "category_name": str, "label_text": str}, numeric=["x", "y", "w", "h"])
    boxes: dict[str, list] = {}
    phrases: dict[str, list] = {}
    for r in df.itertuples(index=False):
        x, y, w, h = float(r.x), float(r.y), float(r.w), float(r.h)
        boxes.setdefault(r.dicom_id, []).append([x, y, x + w, y + h, f"mscxr/{r.category_name}"])
        phrases.setdefault(r.dicom_id, []).append(r.label_text)
    table = pd.DataFrame({
        "dicom_id": list(boxes),
        "clsbbox": [json.dumps(b) for b in boxes.values()],
        "clsbboxphrases": [json.dumps(p, ensure_ascii=False) for p in phrases.values()],
    }).set_index("dicom_id")
    write_csv(Path(out) / MSCXR_TABLE, table)
    return {"raw": str(path.parent), "source_digests": source_digests(path.parent, [path]),
            "boxes": int(len(df)), "images": int(len(table))}
