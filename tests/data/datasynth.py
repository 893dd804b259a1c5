"""Builders of small synthetic raw trees in the real layouts of the six sources."""

from __future__ import annotations

import gzip
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


# ----------------------------------------------------------------------------- VinDr-CXR
def write_dicom(path: Path, arr: np.ndarray, photometric: str = "MONOCHROME2",
                transfer_syntax: str | None = None, raw_pixel_bytes: bytes | None = None) -> None:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    bits = 8 if arr.dtype == np.uint8 else 16
    ds.BitsAllocated = bits
    ds.BitsStored = bits if bits == 8 else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if raw_pixel_bytes is not None:
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([raw_pixel_bytes])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


VINDR_IDS = [f"{i:032x}" for i in (0xA1, 0xA2, 0xB1, 0xB2, 0xB3, 0xB4)]  # 2 train, 4 test


def make_vindr(root: Path, compressed_bad: bool = True) -> tuple[Path, dict]:
    from chexcli.data.names import VINDR_LABELS

    rel = root / "vindr-cxr" / "1.0.0"
    ann = rel / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    t1, t2 = VINDR_IDS[:2]
    # training: 3 radiologists; t1: two overlapping Cardiomegaly boxes (fused), one Nodule (kept)
    rows = [
        (t1, "R1", "Cardiomegaly", 100, 200, 300, 260),
        (t1, "R2", "Cardiomegaly", 110, 210, 310, 270),
        (t1, "R3", "Nodule/Mass", 20, 30, 40, 50),
        (t1, "R3", "Aortic enlargement", 500, 500, 520, 520),
        (t1, "R1", "Aortic enlargement", 10, 10, 12, 12),  # no overlap -> two clusters
        (t2, "R1", "No finding", None, None, None, None),
        (t2, "R2", "No finding", None, None, None, None),
        (t2, "R3", "No finding", None, None, None, None),
    ]
    cols = ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
    pd.DataFrame(rows, columns=cols).to_csv(ann / "annotations_train.csv", index=False)
    test_rows = [(i, "No finding", None, None, None, None) for i in VINDR_IDS[2:]]
    test_rows[0] = (VINDR_IDS[2], "Pleural effusion", 5.0, 6.0, 50.0, 60.0)
    pd.DataFrame(test_rows, columns=["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"]).to_csv(
        ann / "annotations_test.csv", index=False)
    train_cols = [c if c != "Other disease" else "Other diseases" for c in VINDR_LABELS]
    lab = []
    for i, rad in [(t1, "R1"), (t1, "R2"), (t1, "R3"), (t2, "R1"), (t2, "R2"), (t2, "R3")]:
        v = dict.fromkeys(train_cols, 0)
        if i == t1:
            v["Cardiomegaly"] = 1 if rad in ("R1", "R2") else 0  # majority 1
            v["Nodule/Mass"] = 1 if rad == "R3" else 0  # majority 0
        else:
            v["No finding"] = 1
        lab.append({"image_id": i, "rad_id": rad, **v})
    # the test file has its columns in another order (quirk 14: compared as sets)
    pd.DataFrame(lab)[["image_id", "rad_id"] + train_cols].to_csv(ann / "image_labels_train.csv", index=False)
    tl = []
    for i in VINDR_IDS[2:]:
        v = dict.fromkeys(VINDR_LABELS, 0)
        v["Pleural effusion" if i == VINDR_IDS[2] else "No finding"] = 1
        tl.append({"image_id": i, **v})
    pd.DataFrame(tl)[["image_id"] + VINDR_LABELS[::-1]].to_csv(ann / "image_labels_test.csv", index=False)
    # images: t1 16-bit MONOCHROME1 (H=300, W=200); t2 8-bit; test 16-bit; one JPEG 2000 without decoder
    rng = np.random.default_rng(0)
    arrs = {}
    arrs[t1] = (np.arange(300 * 200).reshape(300, 200) % 4096).astype(np.uint16)
    write_dicom(rel / "train" / f"{t1}.dicom", arrs[t1], photometric="MONOCHROME1")
    arrs[t2] = rng.integers(0, 256, (240, 260), dtype=np.uint8)
    write_dicom(rel / "train" / f"{t2}.dicom", arrs[t2])
    for i in VINDR_IDS[2:]:
        arrs[i] = rng.integers(0, 4096, (256, 256)).astype(np.uint16)
        if i == VINDR_IDS[5] and compressed_bad:
            write_dicom(rel / "test" / f"{i}.dicom", arrs[i], transfer_syntax="1.2.840.10008.1.2.4.90",
                        raw_pixel_bytes=b"\xff\x4f\xff\x51not-really-j2k")
        else:
            write_dicom(rel / "test" / f"{i}.dicom", arrs[i])
    return root, arrs


# ----------------------------------------------------------------------------- NIH
NIH_BOX_ROWS = [  # image, label, x, y, w, h
    ("00000001_000.png", "Atelectasis", 10.0, 20.0, 30.0, 40.0),
    ("00000001_000.png", "Infiltrate", 100.0, 100.0, 50.0, 50.0),
    ("00000002_000.png", "Mass", 5.0, 5.0, 10.0, 10.0),
    ("00000002_001.png", "Nodule", 15.0, 25.0, 10.0, 10.0),
    ("00000003_000.png", "Effusion", 0.0, 0.0, 64.0, 64.0),
    ("00000004_000.png", "Pneumothorax", 1.0, 2.0, 3.0, 4.0),
]
NIH_ENTRIES = {
    "00000001_000.png": "Atelectasis|Infiltration", "00000002_000.png": "Mass",
    "00000002_001.png": "Nodule", "00000003_000.png": "Effusion", "00000004_000.png": "Pneumothorax",
    "00000005_000.png": "No Finding", "00000006_000.png": "Hernia", "00000007_000.png": "Edema|Effusion",
}


def make_nih(root: Path, kaggle_layout: bool = True, size: int = 128) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    ent = pd.DataFrame({"Image Index": list(NIH_ENTRIES), "Finding Labels": list(NIH_ENTRIES.values()),
                        "Follow-up #": 0, "Patient ID": 1, "Patient Age": 50, "Patient Gender": "M",
                        "View Position": "PA", "OriginalImage[Width": 2500, "Height]": 2048,
                        "OriginalImagePixelSpacing[x": 0.14, "y]": 0.14})
    ent.to_csv(root / "Data_Entry_2017.csv", index=False)
    bb = pd.DataFrame(NIH_BOX_ROWS, columns=["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"])
    for k in ("Unnamed: 6", "Unnamed: 7", "Unnamed: 8"):
        bb[k] = ""
    bb.to_csv(root / "BBox_List_2017.csv", index=False)
    for i, name in enumerate(NIH_ENTRIES):
        folder = root / (f"images_00{1 + i % 2}/images" if kaggle_layout else "images")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gradient(size, size), "L").save(folder / name)
    return root


# ----------------------------------------------------------------------------- damaged inputs
def rewrite_csv(path: Path, edit) -> Path:
    """Rewrite a raw CSV (plain or .gz) as ``edit(DataFrame)`` returns it."""
    df = edit(pd.read_csv(path, dtype=str, keep_default_na=False))
    if path.suffix == ".gz":
        _gz_csv(path, df)
    else:
        df.to_csv(path, index=False)
    return path


def png_declaring_size(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header declares ``width`` x ``height`` 8-bit gray pixels (a decompression bomb
    in miniature: a few hundred bytes that would need width * height bytes to decode)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1) * 4)  # only the first rows
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to ``keep`` of its bytes (an interrupted download)."""
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path
