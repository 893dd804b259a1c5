"""The six raw sources: where they come from, where they go, what prepares them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from chexcli.errors import ChexError

PHYSIONET = "https://physionet.org"
KAGGLE = "https://www.kaggle.com"


@dataclass(frozen=True)
class Source:
    name: str
    title: str
    host: str  # "physionet" or "kaggle"
    project: str  # PhysioNet slug / Kaggle dataset ref
    version: str
    raw_dir: str  # relative to the data root
    processed_dir: str  # relative to the data root
    default_include: tuple[str, ...] = field(default_factory=tuple)

    @property
    def agreement_page(self) -> str:
        if self.host == "kaggle":
            return f"{KAGGLE}/datasets/{self.project}"
        return f"{PHYSIONET}/content/{self.project}/{self.version}/"


SOURCES: dict[str, Source] = {s.name: s for s in [
    Source("mimic-cxr-jpg", "MIMIC-CXR-JPG 2.0.0", "physionet", "mimic-cxr-jpg", "2.0.0",
           "MIMIC-CXR/mimic-cxr-jpg_2-0-0", "MIMIC-CXR/processed"),
    Source("mimic-cxr", "MIMIC-CXR 2.0.0 (reports)", "physionet", "mimic-cxr", "2.0.0",
           "MIMIC-CXR/mimic-cxr_2-0-0", "MIMIC-CXR/processed",
           default_include=("mimic-cxr-reports.zip", "*.csv.gz", "LICENSE.txt")),
    Source("chest-imagenome", "Chest ImaGenome 1.0.0", "physionet", "chest-imagenome", "1.0.0",
           "MIMIC-CXR/chest-imagenome-dataset-1.0.0", "MIMIC-CXR/processed",
           default_include=("silver_dataset/*", "LICENSE.txt", "README*")),
    Source("ms-cxr", "MS-CXR 0.1", "physionet", "ms-cxr", "0.1",
           "MIMIC-CXR/ms-cxr_0-1", "MIMIC-CXR/processed"),
    Source("vindr-cxr", "VinDr-CXR 1.0.0", "physionet", "vindr-cxr", "1.0.0",
           "vindr-cxr", "vindr-cxr/processed"),
    Source("nih-cxr14", "NIH ChestX-ray14", "kaggle", "nih-chest-xrays/data", "",
           "CXR8", "CXR8/processed"),
]}

MIMIC_PARTS = ("mimic-cxr-jpg", "mimic-cxr", "chest-imagenome", "ms-cxr")
# synthetic: generated, no raw data; custom: the user's own table (docs/custom-data.md)
PREPARE_NAMES = ("mimic",) + tuple(SOURCES) + ("synthetic", "custom")

#: the short names users type -> canonical names (compared case-insensitively, "_" as "-")
SHORT_NAMES = {
    "nih": "nih-cxr14", "vindr": "vindr-cxr", "cig": "chest-imagenome", "imagenome": "chest-imagenome",
    "mscxr": "ms-cxr", "mimic-jpg": "mimic-cxr-jpg", "mimic-reports": "mimic-cxr",
}


def resolve_name(name: str, choices: tuple[str, ...] | None = None) -> str:
    """The canonical dataset name of ``name`` (canonical or short, see SHORT_NAMES).

    ``choices`` are the canonical names allowed here (default: PREPARE_NAMES; `fetch`
    passes the sources). Unknown names raise a ChexError listing what is accepted.
    """
    choices = PREPARE_NAMES if choices is None else tuple(choices)
    key = name.strip().lower().replace("_", "-")
    canonical = key if key in choices else SHORT_NAMES.get(key)
    if canonical not in choices:
        short = [s for s, c in SHORT_NAMES.items() if c in choices]
        raise ChexError(f"unknown dataset {name!r}; choose one of: {', '.join(choices)} "
                        f"(short names: {', '.join(short)})")
    return canonical


def data_root() -> Path:
    root = os.environ.get("CHEX_DATA_DIR") or os.environ.get("DATA_DIR") or "~/datasets"
    return Path(root).expanduser()


def get_source(name: str) -> Source:
    """The Source of a canonical or short name (a short name such as ``nih`` is resolved)."""
    return SOURCES[resolve_name(name, tuple(SOURCES))]


def default_raw(name: str) -> Path:
    if name in ("synthetic", "custom"):  # nothing is read (custom: --table and --images)
        return data_root() / "synthetic"
    if name == "mimic":
        return data_root() / "MIMIC-CXR"
    return data_root() / get_source(name).raw_dir


def default_out(name: str) -> Path:
    if name == "synthetic":
        return data_root() / "synthetic"
    if name == "mimic":
        return data_root() / SOURCES["mimic-cxr-jpg"].processed_dir
    return data_root() / get_source(name).processed_dir
