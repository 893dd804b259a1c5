"""A tiny processed data folder (MS-CXR, Chest ImaGenome, MIMIC reports) and a tiny model bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chexcli.data.names import anatomy_names

MSCXR = "mimic-cxr-frontal-mscxr_boxesonly-mscxr_valtotest-mscxr_traintoval"
CIG = "mimic-cxr-frontal-cig_anatboxes-cig_anatlabels-cig_anatphrases"
REPORTS = "mimic-cxr-frontal-report"
SIDE = 256

MSCXR_ROWS = {  # per image: boxes [x1, y1, x2, y2, class] in pixels of a 256 x 256 image, phrases
    "val": [
        ([[30, 40, 120, 200, "mscxr/Pleural Effusion"]], ["small left effusion"]),
        ([[60, 60, 200, 180, "mscxr/Cardiomegaly"]], ["enlarged heart"]),
        ([[20, 30, 100, 120, "mscxr/Pneumonia"], [140, 30, 230, 140, "mscxr/Pneumonia"]],
         ["bilateral pneumonia", "bilateral pneumonia"]),
    ],
    "test": [
        ([[30, 40, 120, 200, "mscxr/Atelectasis"], [130, 150, 220, 230, "mscxr/Pleural Effusion"]],
         ["left basal atelectasis", "right effusion"]),
        ([[60, 60, 200, 180, "mscxr/Cardiomegaly"]], ["The heart is enlarged"]),
        ([[10, 20, 90, 150, "mscxr/Lung Opacity"]], ["opacity in the right upper lobe"]),
        ([[50, 100, 150, 220, "mscxr/Edema"]], ["mild edema"]),
    ],
}


def _image_rows(n: int, split: str, offset: int):
    return [{"dicom_id": f"d{split}{offset + i}", "H": SIDE, "W": SIDE,
             "sample_id": f"p1/s{offset + i}/d{split}{offset + i}"} for i in range(n)]


def make_processed(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    sample_ids = []
    rng = np.random.default_rng(0)
    anat = anatomy_names("cig_default")
    for s_i, split in enumerate(("val", "test")):
        rows = _image_rows(len(MSCXR_ROWS[split]), split, 100 * s_i)
        for row, (boxes, phrases) in zip(rows, MSCXR_ROWS[split]):
            row["clsbbox"] = json.dumps(boxes)
            row["clsbboxphrases"] = json.dumps(phrases)
        pd.DataFrame(rows).set_index("dicom_id").to_csv(folder / f"{MSCXR}.{split}.csv")
        sample_ids += [r["sample_id"] for r in rows]
        cig_rows = _image_rows(3, split, 100 * s_i + 10)
        for k, row in enumerate(cig_rows):
            boxes, labels, sents = {}, {}, {}
            for a, name in enumerate(anat):
                if (a + k) % 7 == 3:
                    continue  # absent region
                x0, y0 = (a * 37) % 150, (a * 53) % 150
                boxes[name] = [x0, y0, x0 + 60 + a, y0 + 50 + k * 5]
                if (a + k) % 4 == 0:
                    labels[name] = ["abnormal", "af/lung opacity"]
                    sents[name] = [f"Opacity in the {name}."]
                elif (a + k) % 4 == 1:
                    labels[name] = ["normal"]
                    sents[name] = [f"The {name} is clear.", "No effusion."]
            row.update(anat_boxes=json.dumps(boxes), anat_labels=json.dumps(labels), anat_sentences=json.dumps(sents))
        pd.DataFrame(cig_rows).set_index("dicom_id").to_csv(folder / f"{CIG}.{split}.csv")
        sample_ids += [r["sample_id"] for r in cig_rows]
        rep_rows = _image_rows(3, split, 100 * s_i + 20)
        reports = [["The heart size is normal.", "No pneumothorax is seen."],
                   ["There is a small left pleural effusion."],
                   ["Mild pulmonary edema.", "Support devices are in place."]]
        for row, sents in zip(rep_rows, reports):
            row["report_sentences"] = json.dumps(sents)
        pd.DataFrame(rep_rows).set_index("dicom_id").to_csv(folder / f"{REPORTS}.{split}.csv")
        sample_ids += [r["sample_id"] for r in rep_rows]
    arr = rng.integers(0, 256, size=(len(sample_ids), SIDE, SIDE), dtype=np.uint8)
    np.save(folder / f"images_{SIDE}.npy", arr)
    pd.DataFrame({"sample_id": sample_ids, "index": range(len(sample_ids))}).to_csv(
        folder / f"images_{SIDE}_index.csv", index=False)
    return folder


@pytest.fixture(scope="session")
def processed(tmp_path_factory) -> Path:
    return make_processed(tmp_path_factory.mktemp("processed"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from chexcli.model.tiny import build_tiny_model

    return build_tiny_model(seed=0, tokenizer_dir=tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    from chexcli.model.tiny import save_tiny_bundle

    return save_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")
