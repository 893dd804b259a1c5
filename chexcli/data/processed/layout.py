"""File names of a processed folder, spelled once (docs/data.md#processed-folders).

Tables are ``<prefix>.all.csv`` (with a ``split`` column) plus ``<prefix>.{train,val,test}.csv``;
the prefixes of the composed datasets below are the reference's file names.
"""

from __future__ import annotations

MANIFEST = "manifest.json"
SKIPPED_IMAGES = "skipped_images.csv"
SKIPPED_REPORTS = "skipped_reports.csv"

# step outputs of the MIMIC-based sources (one shared folder)
FRONTAL_TABLE = "mimic_frontal.csv"  # every frontal image, in image-cache order
REPORTS_FILE = "reports_processed.json"  # study id -> report sentences
IMAGENOME_TABLE = "chest_imagenome.csv"
IMAGENOME_INVALID_BOXES = "chest_imagenome-invalid_boxes.csv"
MSCXR_TABLE = "ms_cxr.csv"
NIH_VERIFIED = "nih_images_verified.csv"
SYNTHETIC_TRUTH = "synthetic.csv"  # ground truth of the synthetic images
CUSTOM_FINDINGS_FILE = "custom_findings.json"  # finding names of a custom folder and their prompts

# composed datasets (table prefixes)
MIMIC_REPORTS = "mimic-cxr-frontal-report"
MIMIC_REPORTS_CIG = "mimic-cxr-frontal-report-cig_anatboxes-cig_anatlabels-cig_anatphrases"
MIMIC_CIG = "mimic-cxr-frontal-cig_anatboxes-cig_anatlabels-cig_anatphrases"
MIMIC_MSCXR = "mimic-cxr-frontal-mscxr_boxesonly-mscxr_valtotest-mscxr_traintoval"
VINDR = "vindrcxr"
NIH = "nih_cxr"
CUSTOM_FINDINGS = "custom_findings"  # finding boxes of `chex data prepare custom` (docs/custom-data.md)

#: split value in a table -> suffix of its split file
SPLITS = {"train": "train", "validate": "val", "test": "test"}


def split_file(prefix: str, suffix: str) -> str:
    """``<prefix>.<suffix>.csv``; ``suffix`` is ``all``, ``train``, ``val`` or ``test``."""
    return f"{prefix}.{suffix}.csv"


def image_cache_files(side: int) -> dict[str, str]:
    """The image cache of side ``side``: pixel array, sample-id index, per-row state."""
    return {"array": f"images_{side}.npy", "index": f"images_{side}_index.csv",
            "state": f"images_{side}_state.npy"}
