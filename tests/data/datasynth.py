"""Builders of small synthetic raw trees in the real layouts of the six sources."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

REPORT_A = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)
 
 INDICATION:  ___F with cough.
 
 COMPARISON:  None.
 
 FINDINGS: 
 
 There is no focal consolidation, pleural effusion or
 pneumothorax.  Heart size is normal. Seen by Dr. Smith.
 
 IMPRESSION: 
 
 No acute cardiopulmonary process.
"""
REPORT_A_SENTENCES = [
    "There is no focal consolidation, pleural effusion or pneumothorax.",
    "Heart size is normal.",
    "Seen by Dr.Smith.",
    "No acute cardiopulmonary process.",
]
REPORT_B = """                                 FINAL REPORT
 INDICATION:  pain
 
 IMPRESSION:  Left lower lobe opacity, 12 mm nodule.  Stable.  Left lower lobe opacity, 12 mm nodule.
"""
REPORT_B_SENTENCES = ["Left lower lobe opacity, mm nodule."]
REPORT_NONE = """                                 FINAL REPORT
 INDICATION:  pain
 
 TECHNIQUE:  portable
"""

# dicom_id, subject, study, view, split, (W, H)
MIMIC_IMAGES = [
    ("d0000001-aaaaaaaa-bbbbbbbb-cccccccc-dddddddd", 10000001, 50000001, "PA", "train", (300, 400)),
    ("d0000002-aaaaaaaa-bbbbbbbb-cccccccc-dddddddd", 10000001, 50000001, "LATERAL", "train", (300, 400)),
    ("d0000003-aaaaaaaa-bbbbbbbb-cccccccc-dddddddd", 10000002, 50000002, "AP", "validate", (400, 300)),
    ("d0000004-aaaaaaaa-bbbbbbbb-cccccccc-dddddddd", 10000003, 50000003, "AP", "test", (320, 320)),
    ("d0000005-aaaaaaaa-bbbbbbbb-cccccccc-dddddddd", 10000004, 50000004, "PA", "train", (300, 360)),
    ("d0000006-aaaaaaaa-bbbbbbbb-cccccccc-dddddddd", 10000005, 50000005, "PA", "train", (300, 300)),
]
CORRUPT_DICOM = "d0000005-aaaaaaaa-bbbbbbbb-cccccccc-dddddddd"
REPORTS = {50000001: REPORT_A, 50000002: REPORT_B, 50000003: REPORT_NONE, 50000005: REPORT_A}


def gradient(w: int, h: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return ((x * 255 // max(w - 1, 1) + y * 3) % 256).astype(np.uint8)


def _gz_csv(path: Path, df: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        df.to_csv(f, index=False)


def make_mimic_jpg(root: Path, images=MIMIC_IMAGES, corrupt=CORRUPT_DICOM, quality=95) -> Path:
    rows, split = [], []
    for dicom, subj, study, view, sp, (w, h) in images:
        rows.append({"dicom_id": dicom, "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
                     "ViewPosition": view, "Rows": h, "Columns": w, "StudyDate": 21800506,
                     "StudyTime": 213014.531, "ProcedureCodeSequence_CodeMeaning": "CHEST",
                     "ViewCodeSequence_CodeMeaning": "postero-anterior",
                     "PatientOrientationCodeSequence_CodeMeaning": "Erect"})
        split.append({"dicom_id": dicom, "study_id": study, "subject_id": subj, "split": sp})
        p = root / "files" / f"p{str(subj)[:2]}" / f"p{subj}" / f"s{study}" / f"{dicom}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        if dicom == corrupt:
            p.write_bytes(b"this is not a jpeg")
        else:
            Image.fromarray(gradient(w, h), "L").save(p, quality=quality)
    _gz_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", pd.DataFrame(rows))
    _gz_csv(root / "mimic-cxr-2.0.0-split.csv.gz", pd.DataFrame(split))
    return root


def make_mimic_reports(root: Path, reports=REPORTS, as_zip: bool = False) -> Path:
    import zipfile

    files = {}
    for study, text in reports.items():
        subj = next(s for _, s, st, *_ in MIMIC_IMAGES if st == study)
        files[f"files/p{str(subj)[:2]}/p{subj}/s{study}.txt"] = text
    root.mkdir(parents=True, exist_ok=True)
    if as_zip:
        with zipfile.ZipFile(root / "mimic-cxr-reports.zip", "w") as zf:
            for name, text in files.items():
                zf.writestr(name, text)
    else:
        for name, text in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
    return root


def _obj(name, x1, y1, x2, y2, w=10, h=10):
    return {"object_id": f"x_{name}", "bbox_name": name, "name": name, "synsets": [],
            "x1": 0, "y1": 0, "x2": 1, "y2": 1, "width": w, "height": h,
            "original_x1": x1, "original_y1": y1, "original_x2": x2, "original_y2": y2,
            "original_width": 1, "original_height": 1}


SG_NAMES = ["right lung", "left lung", "trachea", "spine", "cardiac silhouette", "right upper lung zone",
            "left upper lung zone"]


def scene_graph(dicom: str, view: str = "PA", objects=None, attributes=None) -> dict:
    if objects is None:
        objects = [_obj(n, 10 + i, 20 + i, 110 + i, 220 + i) for i, n in enumerate(SG_NAMES)]
    return {"image_id": dicom, "patient_id": 1, "study_id": 2, "viewpoint": view,
            "objects": objects, "attributes": attributes or [], "relationships": []}


def make_imagenome(root: Path, as_zip: bool = True) -> tuple[Path, dict]:
    """Scene graphs for the MIMIC_IMAGES; returns (root, expectations)."""
    import zipfile

    d1, d3, d4, d6 = (MIMIC_IMAGES[i][0] for i in (0, 2, 3, 5))
    graphs = {}
    # image 1: W=300, H=400; a box beyond the border is clipped, an invalid one dropped
    objs = [_obj(n, 10, 20, 110, 220) for n in SG_NAMES[:5]]
    objs.append(_obj("right upper lung zone", -5, -7, 350, 500))  # clipped to 0,0,300,400
    objs.append(_obj("left upper lung zone", 50, 50, 60, 60, w=0))  # invalid (width 0)
    attrs = [
        {"bbox_name": "right lung", "phrases": ["Right lung opacity.", "FINDINGS: right  lung\n opacity."],
         "attributes": [["anatomicalfinding|yes|lung opacity", "nlp|yes|abnormal"],
                        ["disease|yes|pneumonia", "anatomicalfinding|no|atelectasis"]]},
        {"bbox_name": "left lung", "phrases": ["Left lung is clear."],
         "attributes": [["nlp|yes|normal"]]},
        {"bbox_name": "right lung", "phrases": ["Right lung opacity."],
         "attributes": [["anatomicalfinding|yes|atelectasis"]]},
    ]
    graphs[d1] = scene_graph(d1, objects=objs, attributes=attrs)
    # image 3 (AP, W=400, H=300): duplicate box -> union, flagged -> dropped by cig_anatboxes
    objs3 = [_obj(n, 10, 20, 110, 220) for n in SG_NAMES[:5]]
    objs3.append(_obj("right lung", 5, 30, 100, 250))
    graphs[d3] = scene_graph(d3, view="AP", objects=objs3)
    # image 4: only 4 valid boxes -> skipped
    graphs[d4] = scene_graph(d4, objects=[_obj(n, 10, 20, 110, 220) for n in SG_NAMES[:4]])
    # image 6: fine, no attributes
    graphs[d6] = scene_graph(d6)
    # a lateral scene graph is skipped
    graphs["zz-lateral"] = scene_graph("zz-lateral", view="LATERAL")
    silver = root / "silver_dataset"
    silver.mkdir(parents=True, exist_ok=True)
    (silver / "splits").mkdir(exist_ok=True)
    if as_zip:
        with zipfile.ZipFile(silver / "scene_graph.zip", "w") as zf:
            for d, g in graphs.items():
                zf.writestr(f"scene_graph/{d}_SceneGraph.json", json.dumps(g))
    else:
        (silver / "scene_graph").mkdir(exist_ok=True)
        for d, g in graphs.items():
            (silver / "scene_graph" / f"{d}_SceneGraph.json").write_text(json.dumps(g))
    return root, {"kept": {d1, d3, d6}, "dup": {d3}}


def make_mscxr(root: Path) -> Path:
    d1, d3, d4, d6 = (MIMIC_IMAGES[i][0] for i in (0, 2, 3, 5))
    rows = [
        (d1, "Pneumonia", "Right lower lobe pneumonia", 10, 20, 30, 40),
        (d1, "Pneumonia", "Right lower lobe pneumonia", 100, 120, 50, 60),
        (d1, "Edema", "Mild edema", 5, 5, 10, 10),
        (d3, "Cardiomegaly", "Enlarged heart", 50, 60, 200, 100),
        (d4, "Pneumothorax", "Small left pneumothorax", 1, 2, 3, 4),
    ]
    df = pd.DataFrame(rows, columns=["dicom_id", "category_name", "label_text", "x", "y", "w", "h"])
    df["path"] = "files/p10/x.jpg"
    df["image_width"] = 300
    df["image_height"] = 400
    sub = root / "ms-cxr-making-the-most-of-text-semantics-to-improve-biomedical-vision-language-processing-0.1"
    sub.mkdir(parents=True, exist_ok=True)
    df.to_csv(sub / "MS_CXR_Local_Alignment_v1.0.0.csv", index=False)
    return root
