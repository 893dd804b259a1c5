"""Ground truth of a task, per image, from a collated batch of `ChexDataset` samples.

Target records (plain lists, JSON-friendly), by task kind:
detection {"boxes" (G, 4) cxcywh, "labels" (G,)};
grounding {"sentences" (S,), "boxes" S x (G_s, 4)};
box_explanation {"boxes" (M, 4), "labels" (M,), "sentences" (M,)};
anatomy_explanation {"present" (A,), "labels" (A, C), "sentences" (A,) joined region phrases};
report_generation {"report": reference text}.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def batch_targets(kind: str, batch: dict) -> Iterator[dict]:
    """One target record per image of the batch."""
    n = len(batch["sample_id"])
    for i in range(n):
        sid = str(batch["sample_id"][i])
        if kind == "detection":
            cb = _np(batch["target_cls_boxes"][i]).reshape(-1, 5)
            yield {"image": sid, "boxes": cb[:, :4].tolist(), "labels": cb[:, 4].astype(int).tolist()}
        elif kind == "grounding":
            boxes = [_np(b).reshape(-1, 5)[:, :4].tolist() for b in batch["target_sentence_boxes"][i]]
            yield {"image": sid, "sentences": list(batch["grounded_sentences"][i]), "boxes": boxes}
        elif kind == "box_explanation":
            cb = _np(batch["target_cls_boxes"][i]).reshape(-1, 5)
            yield {"image": sid, "boxes": cb[:, :4].tolist(), "labels": cb[:, 4].astype(int).tolist(),
                   "sentences": [str(s) for s in batch["target_cls_box_sentences"][i]]}
        elif kind == "anatomy_explanation":
            yield {"image": sid, "present": _np(batch["target_anat_present_masks"][i]).astype(bool).tolist(),
                   "labels": _np(batch["target_anat_cls_labels"][i]).astype(int).tolist(),
                   "sentences": [" ".join(s) for s in batch["target_anat_sentences"][i]]}
        elif kind == "report_generation":
            yield {"image": sid, "report": " ".join(batch["sentences"][i])}
        else:
            raise ValueError(f"unknown task kind {kind}")
