"""The dataset configurations: which processed table, classes and targets each one loads
(docs/data.md#loading)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from chexcli.data.processed.layout import (CUSTOM_FINDINGS, MIMIC_CIG, MIMIC_MSCXR, MIMIC_REPORTS, MIMIC_REPORTS_CIG,
                                           NIH, VINDR)
from chexcli.errors import ChexError

#: split name -> suffix of its table file
SPLIT_FILE = {"train": "train", "val": "val", "validate": "val", "test": "test"}
#: class_list of a configuration whose classes are listed in the folder (custom_findings.json)
FOLDER_CLASSES = "@folder"


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    table: str  # processed file prefix
    class_list: str | None = None
    sentences: bool = False
    anatomy: bool = False
    multiboxes: bool = False
    cls_boxes: bool = False
    cls_labels: bool = False
    box_sentences: bool = False
    cached: bool = True  # image from the uint8 cache (False: read the raw file, NIH)
    auto_balance: bool = False
    class_prefix_cig: bool = False
    extra: dict = field(default_factory=dict)


CONFIGS = {c.name: c for c in [
    DatasetConfig("mimiccxr_reports", MIMIC_REPORTS, sentences=True),
    DatasetConfig("mimiccxr_reports_cig_multiboxclssent", MIMIC_REPORTS_CIG,
                  class_list="cig_all", sentences=True, anatomy=True, multiboxes=True),
    DatasetConfig("cig_boxclssent", MIMIC_CIG, class_list="cig_all", anatomy=True),
    DatasetConfig("mscxr_boxsent", MIMIC_MSCXR, class_list="ms_cxr", cls_boxes=True, box_sentences=True),
    DatasetConfig("vindrcxr_boxes", VINDR, class_list="vindrcxr_loc", cls_boxes=True, cls_labels=True,
                  auto_balance=True),
    DatasetConfig("vindrcxr_boxes_top15", VINDR, class_list="vindrcxr_loc_top15", cls_boxes=True,
                  cls_labels=True),
    DatasetConfig("nih8_boxes", NIH, class_list="nih8", cls_boxes=True, cached=False),
    DatasetConfig("custom_boxes", CUSTOM_FINDINGS, class_list=FOLDER_CLASSES, cls_boxes=True, cls_labels=True),
]}


def get_config(name: str, **overrides) -> DatasetConfig:
    if name not in CONFIGS:
        raise ChexError(f"unknown dataset configuration {name!r}; choose one of: {', '.join(CONFIGS)}")
    cfg = CONFIGS[name]
    if overrides:
        cfg = replace(cfg, **overrides)
    return cfg
