"""Batches of samples: tensors stacked, lists kept, class boxes padded per class."""

from __future__ import annotations

import numpy as np
import torch

# keys whose values stay Python lists in a batch
_LIST_KEYS = {"sample_id", "x_digest", "sentences", "target_anat_sentences", "target_cls_boxes", "target_cls_box_sentences",
              "grounded_sentences", "target_sentence_boxes", "dataset_name"}


def collate(samples: list[dict]) -> dict:
    """Stack tensors, keep lists as lists, and pad class boxes per class.

    Adds ``class_ids_with_boxes`` (classes with ``has_class_bboxes`` anywhere in the batch),
    ``target_cls_boxes_padded`` (B, C_b, M, 5) and ``target_cls_boxes_mask`` (B, C_b, M);
    M is 0 when the batch has no box (the reference crashes there).
    """
    batch: dict = {}
    for key in samples[0]:
        vals = [s[key] for s in samples]
        if key in _LIST_KEYS or not isinstance(vals[0], (torch.Tensor, bool, int, float, np.ndarray)):
            batch[key] = vals
        elif isinstance(vals[0], torch.Tensor):
            batch[key] = torch.stack(vals)
        else:
            batch[key] = torch.tensor(np.asarray(vals))
    if "target_cls_boxes" in batch and "has_class_bboxes" in batch:
        has = batch["has_class_bboxes"]
        ids = torch.nonzero(has.any(0)).flatten()
        per = [[b[b[:, 4].long() == c] for c in ids.tolist()] for b in batch["target_cls_boxes"]]
        M = max([len(x) for p in per for x in p], default=0)
        padded = torch.zeros(len(samples), len(ids), M, 5)
        mask = torch.zeros(len(samples), len(ids), M, dtype=torch.bool)
        for i, p in enumerate(per):
            for j, x in enumerate(p):
                padded[i, j, :len(x)] = x
                mask[i, j, :len(x)] = True
        batch["class_ids_with_boxes"] = ids
        batch["target_cls_boxes_padded"] = padded
        batch["target_cls_boxes_mask"] = mask
    return batch
