"""Class and anatomy name lists (docs/data.md#class-and-anatomy-names), read from the packaged YAML."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import yaml


@lru_cache(maxsize=1)
def name_lists() -> dict:
    """The packaged YAML of class names, anatomy names, multi-anatomy groups and prompt sets."""
    text = resources.files("chexcli").joinpath("configs", "prompts_and_names.yaml").read_text("utf-8")
    return yaml.safe_load(text)


def class_names(list_name: str) -> list[str]:
    """Ordered class names of a list (e.g. ``cig_all``, ``vindrcxr_loc``)."""
    return list(name_lists()["class_names"][list_name])


def anatomy_names(list_name: str = "cig_default") -> list[str]:
    return list(name_lists()["anatomy_names"][list_name])


def multibox_mapping(name: str = "cig_mapping") -> dict[str, list[str]]:
    return {k: list(v) for k, v in name_lists()["anatomy_multibox_mapping"][name].items()}


# VinDr-CXR: the 28 label columns of the 1.0.0 release (22 local then 6 global).
VINDR_LABELS = [
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
    "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity",
    "Lung cavity", "Lung cyst", "Mediastinal shift", "Nodule/Mass", "Pleural effusion",
    "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "Rib fracture", "Other lesion",
    "COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other disease", "No finding",
]

NIH_ALL_LABELS = [
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis",
    "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
    "No Finding",
]
NIH_BOX_LABELS = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax",
]

MSCXR_CATEGORIES = [
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Lung Opacity", "Pleural Effusion",
    "Pneumonia", "Pneumothorax",
]
