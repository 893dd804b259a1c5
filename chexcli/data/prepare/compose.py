"""The composed MIMIC-based datasets (docs/data.md#composed-mimic-datasets).

Each composed dataset is named by its tags (``report``, ``cig_anatboxes``, ``mscxr_boxesonly``,
...) and joins the frontal image table with the outputs of the steps it needs; after every
MIMIC step, every dataset whose steps are complete is (re)written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from chexcli.data.processed.layout import (FRONTAL_TABLE, IMAGENOME_TABLE, MIMIC_CIG, MIMIC_MSCXR, MIMIC_REPORTS,
                                           MIMIC_REPORTS_CIG, MSCXR_TABLE, REPORTS_FILE)
from chexcli.data.processed.manifest import part_complete
from chexcli.data.processed.tables import write_dataset
from chexcli.data.sources import MIMIC_PARTS

# composed MIMIC datasets: processed file prefix -> required parts
MIMIC_DATASETS = {
    MIMIC_REPORTS: ("mimic-cxr-jpg", "mimic-cxr"),
    MIMIC_REPORTS_CIG: ("mimic-cxr-jpg", "mimic-cxr", "chest-imagenome"),
    MIMIC_CIG: ("mimic-cxr-jpg", "chest-imagenome"),
    MIMIC_MSCXR: ("mimic-cxr-jpg", "ms-cxr"),
}


def frontal_table(out: Path) -> pd.DataFrame:
    """The frontal image table written by the MIMIC-CXR-JPG step (index ``dicom_id``)."""
    df = pd.read_csv(out / FRONTAL_TABLE, dtype={"dicom_id": str, "sample_id": str})
    return df.set_index("dicom_id")


def compose_mimic(out: Path, also_done: set[str] = frozenset()) -> dict:
    """Write every composed MIMIC dataset whose parts are complete; return manifest entries."""
    done = {p for p in MIMIC_PARTS if part_complete(out, p)} | set(also_done)
    summaries = {}
    base = None
    for name, needs in MIMIC_DATASETS.items():
        if not set(needs) <= done:
            continue
        if base is None:
            base = frontal_table(out)
            base = base[base["cached"].astype(bool)].drop(columns=["cached", "path"])
        df = compose_one(out, name, base)
        box_col = "clsbbox" if "clsbbox" in df.columns else None
        summaries[name] = write_dataset(out, name, df, box_col=box_col)
    return summaries


def compose_one(out: Path, name: str, base: pd.DataFrame) -> pd.DataFrame:
    """The table of composed dataset ``name`` from the frontal images ``base``."""
    tags = name[len("mimic-cxr-"):].split("-")
    df = base.copy()
    if "report" in tags:
        df = _with_reports(out, df)
    if "cig_anatboxes" in tags:
        df = _with_imagenome(out, df, tags)
    if "mscxr_boxesonly" in tags:
        df = _with_mscxr(out, df, tags)
    df.index.name = "dicom_id"
    return df


def _with_reports(out: Path, df: pd.DataFrame) -> pd.DataFrame:
    """Images whose study has report sentences, with them."""
    rep = json.loads((out / REPORTS_FILE).read_text("utf-8"))
    keep = df["study_id"].astype(str).isin(rep.keys())
    df = df[keep].copy()
    df["report_sentences"] = [json.dumps(rep[str(s)], ensure_ascii=False) for s in df["study_id"]]
    return df


def _with_imagenome(out: Path, df: pd.DataFrame, tags: list[str]) -> pd.DataFrame:
    """Images with Chest ImaGenome anatomy boxes (none duplicated), labels and phrases as tagged."""
    cig = pd.read_csv(out / IMAGENOME_TABLE, dtype={"dicom_id": str}).set_index("dicom_id")
    cig["anat_has_duplicate_box"] = cig["anat_has_duplicate_box"].astype(str) == "True"
    cols = ["anat_boxes", "anat_has_duplicate_box"]
    if "cig_anatlabels" in tags:
        cols.append("anat_labels")
    if "cig_anatphrases" in tags:
        cols.append("anat_sentences")
    df = df.join(cig[cols], how="inner")
    return df[~df["anat_has_duplicate_box"]].copy()


def _with_mscxr(out: Path, df: pd.DataFrame, tags: list[str]) -> pd.DataFrame:
    """Images with MS-CXR boxes, splits moved as tagged (validate -> test, the rest -> validate)."""
    ms = pd.read_csv(out / MSCXR_TABLE, dtype={"dicom_id": str}).set_index("dicom_id")
    df = df.join(ms, how="inner")
    df["has_ms_cxr_boxes"] = True
    if "mscxr_valtotest" in tags:
        df.loc[df["split"] == "validate", "split"] = "test"
    if "mscxr_traintoval" in tags:
        df.loc[df["split"] != "test", "split"] = "validate"
    return df
