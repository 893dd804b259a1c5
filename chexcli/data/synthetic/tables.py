"""The tables of a synthetic folder, built from the image records: the frontal image table, the
composed MIMIC datasets, VinDr-CXR and the ground truth, in the schema of the real sources."""

from __future__ import annotations

import json

import pandas as pd

from chexcli.data.names import VINDR_LABELS
from chexcli.data.processed.layout import MIMIC_CIG, MIMIC_MSCXR, MIMIC_REPORTS, MIMIC_REPORTS_CIG, VINDR
from chexcli.data.synthetic.report import MSCXR_CLASS, VINDR_CLASS
from chexcli.data.synthetic.scene import SIDE


def _base(records: list[dict]) -> pd.DataFrame:
    """The frontal MIMIC table of the synthetic images (index dicom_id)."""
    df = pd.DataFrame({
        "dicom_id": [r["dicom_id"] for r in records], "H": SIDE, "W": SIDE, "view": "PA",
        "study_id": [r["study_id"] for r in records], "subject_id": [r["subject_id"] for r in records],
        "split": [r["split"] for r in records], "sample_id": [r["sample_id"] for r in records],
    })
    return df.set_index("dicom_id")


def _js(values) -> list[str]:
    return [json.dumps(v, ensure_ascii=False) for v in values]


def build_tables(records: list[dict]) -> dict[str, pd.DataFrame]:
    """Every table of the folder from the image records: file prefix -> frame (with ``split``)."""
    base = _base(records)
    frontal = base.assign(path="", cached=True)
    reports = base.assign(report_sentences=_js(r["report"] for r in records))
    cig_cols = {"anat_boxes": _js(r["anat_boxes"] for r in records), "anat_has_duplicate_box": False,
                "anat_labels": _js(r["anat_labels"] for r in records),
                "anat_sentences": _js(r["anat_sentences"] for r in records)}
    cig_reports = reports.assign(**cig_cols)
    cig = base.assign(**cig_cols)

    ms_boxes = [[f["box"] + [f"mscxr/{MSCXR_CLASS[f['kind']]}"] for f in r["findings"] if f["kind"] in MSCXR_CLASS]
                for r in records]
    ms_phrases = [[f["sentence"] for f in r["findings"] if f["kind"] in MSCXR_CLASS] for r in records]
    mscxr = base.assign(clsbbox=_js(ms_boxes), clsbboxphrases=_js(ms_phrases), has_ms_cxr_boxes=True)
    mscxr = mscxr[[bool(b) for b in ms_boxes]]
    mscxr = mscxr[mscxr["split"] != "train"]  # evaluation only, like the reference (no train split)

    labels = {c: [int(any(VINDR_CLASS[f["kind"]] == c for f in r["findings"])) for r in records]
              for c in VINDR_LABELS}
    labels["No finding"] = [int(not r["findings"]) for r in records]
    vindr = pd.DataFrame({f"cls/vindrcxr/{c}": v for c, v in labels.items()})
    vindr.insert(0, "image_id", [r["dicom_id"] for r in records])
    vindr["split"] = [r["split"] for r in records]
    vindr["clsbbox"] = _js([f["box"] + [f"vindrcxr/{VINDR_CLASS[f['kind']]}"] for f in r["findings"]]
                           for r in records)
    vindr["H"], vindr["W"] = float(SIDE), float(SIDE)
    vindr["sample_id"] = [r["sample_id"] for r in records]  # the image's row in the shared cache
    vindr = vindr.set_index("image_id")

    truth = base[["sample_id", "split"]].assign(ctr=[r["ctr"] for r in records],
                                                findings=_js(r["findings"] for r in records))
    return {"frontal": frontal, "truth": truth, MIMIC_REPORTS: reports, MIMIC_REPORTS_CIG: cig_reports,
            MIMIC_CIG: cig, MIMIC_MSCXR: mscxr, VINDR: vindr}
