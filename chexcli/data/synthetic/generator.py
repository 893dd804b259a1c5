"""One synthetic image and its record: image ``i`` of data set ``seed`` depends only on
(``seed``, ``i``), so images can be drawn in any order and in parallel."""

from __future__ import annotations

import numpy as np

from chexcli.data.names import anatomy_names
from chexcli.data.synthetic.drawing import render
from chexcli.data.synthetic.report import finding_regions, scene_text
from chexcli.data.synthetic.sampling import sample_scene

GENERATOR_VERSION = 8  # bumped whenever the same seed would draw different data


def split_of(index: int) -> str:
    """Split of image ``index``: 80 % train, 10 % validate, 10 % test, fixed by the index."""
    return {8: "validate", 9: "test"}.get(index % 10, "train")


def image_ids(seed: int, index: int) -> dict:
    """MIMIC-like identifiers of image ``index``: dicom_id, subject_id, study_id, sample_id."""
    subject, study = 10_000_000 + index, 50_000_000 + index
    dicom = f"synth{seed}-{index:06d}"
    return {"dicom_id": dicom, "subject_id": subject, "study_id": study, "sample_id": f"{subject}/{study}/{dicom}"}


def generate(seed: int, index: int) -> tuple[np.ndarray, dict]:
    """Image ``index`` of the data set ``seed``: (uint8 (256, 256), record of its tables)."""
    sc = sample_scene(seed, index)
    r = render(sc, seed, index)
    anatomy = anatomy_names("cig_default")
    text = scene_text(sc, np.random.default_rng([seed, index, 2]), anatomy)
    findings = []
    for f, box, sentence in zip(sc.findings, r.findings, text.finding_sentences):
        if box is None:  # pragma: no cover - findings are placed inside the lungs
            continue
        findings.append({"kind": f.kind, "side": f.side, "zone": f.zone, "size": f.size, "box": box,
                         "sentence": sentence, "regions": finding_regions(f)})
    rec = {**image_ids(seed, index), "index": index, "split": split_of(index), "ctr": round(sc.ctr, 4),
           "anat_boxes": {a: r.anatomy[a] for a in anatomy if r.anatomy[a] is not None},
           "anat_labels": text.anat_labels, "anat_sentences": text.anat_sentences,
           "report": text.report, "findings": findings}
    return r.image, rec
