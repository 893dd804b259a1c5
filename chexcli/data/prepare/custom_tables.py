"""The tables of a custom folder, in the schemas training and evaluation already read
(docs/custom-data.md#what-prepare-writes).

===========================================  ==============================================  ===================
table prefix                                 rows                                            configuration
===========================================  ==============================================  ===================
``mimic-cxr-frontal-report``                 images with report sentences                    mimiccxr_reports
``mimic-cxr-frontal-report-cig_…``           the same, with anatomy boxes and phrases        mimiccxr_reports_cig_multiboxclssent
``mimic-cxr-frontal-cig_…``                  images with at least one anatomy box            cig_boxclssent
``mimic-cxr-frontal-mscxr_…``                validate/test images with a box of an MS-CXR    mscxr_boxsent
                                             category
``custom_findings``                          every image (finding boxes, labels per class)   custom_boxes
===========================================  ==============================================  ===================

Boxes stay in the pixels of the image file (``H``, ``W`` its size). Region labels are empty:
the table has none.
"""

from __future__ import annotations

import json

import pandas as pd

from chexcli.data.names import class_names
from chexcli.data.prepare.custom_table import Image
from chexcli.data.processed.findings import class_name
from chexcli.data.processed.layout import CUSTOM_FINDINGS, MIMIC_CIG, MIMIC_MSCXR, MIMIC_REPORTS, MIMIC_REPORTS_CIG


def _js(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def _anatomy(img: Image) -> tuple[dict, dict]:
    """anat_boxes {name: [x1, y1, x2, y2]} and anat_sentences {name: [linked sentences]}."""
    boxes, sentences = {}, {}
    for b in img.boxes:
        if b.kind == "anatomy":
            boxes[b.name] = b.box
            if b.text:
                sentences.setdefault(b.name, []).append(b.text)
    return boxes, sentences


def _base(images: list[Image]) -> pd.DataFrame:
    return pd.DataFrame({"dicom_id": [i.key for i in images], "H": [i.height for i in images],
                         "W": [i.width for i in images], "split": [i.split for i in images],
                         "sample_id": [i.key for i in images]}).set_index("dicom_id")


def _mscxr(images: list[Image]) -> pd.DataFrame:
    """Finding boxes of an MS-CXR category (case-insensitive name) on validate/test images."""
    categories = {c.split("/", 1)[-1].lower(): c for c in class_names("ms_cxr")}
    keep, boxes, phrases = [], [], []
    for img in images:
        mine = [b for b in img.boxes if b.kind == "finding" and b.name.lower() in categories]
        if not mine or img.split == "train":
            continue
        keep.append(img)
        boxes.append(_js([b.box + [categories[b.name.lower()]] for b in mine]))
        phrases.append(_js([b.text or b.name for b in mine]))
    return _base(keep).assign(clsbbox=boxes, clsbboxphrases=phrases, has_ms_cxr_boxes=True)


def _findings(images: list[Image], names: list[str]) -> pd.DataFrame:
    """Every image: its finding boxes ``[x1, y1, x2, y2, "custom/<name>"]``, linked sentences and
    one 0/1 label column ``cls/custom/<name>`` per finding name."""
    df = _base(images)
    df.index.name = "image_id"
    df["clsbbox"] = [_js([b.box + [class_name(b.name)] for b in i.boxes if b.kind == "finding"]) for i in images]
    df["clsbboxphrases"] = [_js([b.text or "" for b in i.boxes if b.kind == "finding"]) for i in images]
    for name in names:
        df[f"cls/{class_name(name)}"] = [int(any(b.kind == "finding" and b.name == name for b in i.boxes))
                                         for i in images]
    return df


def build_tables(images: list[Image], names: list[str]) -> dict[str, pd.DataFrame]:
    """Table prefix -> frame (index first, ``split`` column) of the images that were cached."""
    reported = [i for i in images if i.sentences]
    anatomy = {i.key: _anatomy(i) for i in images}
    reports = _base(reported).assign(report_sentences=[_js(i.sentences) for i in reported])
    cig_cols = lambda imgs: {"anat_boxes": [_js(anatomy[i.key][0]) for i in imgs],  # noqa: E731
                             "anat_has_duplicate_box": False, "anat_labels": [_js({}) for _ in imgs],
                             "anat_sentences": [_js(anatomy[i.key][1]) for i in imgs]}
    with_boxes = [i for i in images if anatomy[i.key][0]]
    tables = {MIMIC_REPORTS: reports, MIMIC_REPORTS_CIG: reports.assign(**cig_cols(reported)),
              MIMIC_CIG: _base(with_boxes).assign(**cig_cols(with_boxes)), MIMIC_MSCXR: _mscxr(images)}
    if names:
        tables[CUSTOM_FINDINGS] = _findings(images, names)
    return {k: v for k, v in tables.items() if len(v)}
