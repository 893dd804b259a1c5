"""Several datasets in one index space (stage 1 mixes MIMIC/Chest ImaGenome with VinDr-CXR)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from chexcli.data.dataset.chex_dataset import ChexDataset


class MixedDataset(Dataset):
    """Several datasets in one index space (stage 1: MIMIC/Chest ImaGenome + VinDr-CXR).

    Class lists are concatenated (class ids of later datasets shifted), anatomy lists
    taken from the first dataset that has one; every sample is padded to the global
    spaces and gets ``dataset_index``, ``dataset_name`` and ``has_*`` flags. A dataset
    with ``auto_balance`` is repeated round(largest / own size) times per epoch.
    """

    def __init__(self, datasets: list[ChexDataset], balance: list[bool] | None = None):
        self.datasets = datasets
        self.offsets, self.classes = [], []
        for d in datasets:
            self.offsets.append(len(self.classes))
            self.classes.extend(d.classes)
        self.anat_names = next((d.anat_names for d in datasets if d.anat_names), [])
        self.multi_names = next((list(d.multi) for d in datasets if d.multi), [])
        balance = balance if balance is not None else [d.cfg.auto_balance for d in datasets]
        largest = max(len(d) for d in datasets)
        self.repeats = [max(1, round(largest / len(d))) if b and len(d) else 1 for d, b in zip(datasets, balance)]
        self.sizes = [len(d) * r for d, r in zip(datasets, self.repeats)]
        self.cum = np.cumsum([0] + self.sizes)

    def __len__(self) -> int:
        return int(self.cum[-1])

    def set_epoch(self, epoch: int) -> None:
        for d in self.datasets:
            d.set_epoch(epoch)

    def __getitem__(self, i: int) -> dict:
        k = int(np.searchsorted(self.cum, i, side="right") - 1)
        d = self.datasets[k]
        s = d[(i - int(self.cum[k])) % len(d)]
        C, A, G = len(self.classes), len(self.anat_names), len(self.multi_names)
        off = self.offsets[k]
        nc = len(d.classes)
        s["dataset_index"] = k
        s["dataset_name"] = d.cfg.name
        s.setdefault("sentences", None)
        s["has_sentences"] = d.cfg.sentences
        has_anat = d.cfg.anatomy and A > 0
        s["has_anatomy_bboxes"] = torch.full((A,), has_anat, dtype=torch.bool)
        s["has_anatomy_sentences"] = torch.full((A,), has_anat, dtype=torch.bool)
        if not has_anat:
            s["target_anat_boxes"] = torch.zeros(A, 4)
            s["target_anat_present_masks"] = torch.zeros(A, dtype=torch.bool)
            s["target_anat_sentences"] = [[] for _ in range(A)]
        s["has_anatomy_multiboxes"] = torch.full((G,), bool(d.multi), dtype=torch.bool)
        if not d.multi:
            s["target_anat_multiboxes"] = torch.zeros(G, 2, 4)
            s["target_anat_multiboxes_masks"] = torch.zeros(G, 2, dtype=torch.bool)
        lab = torch.zeros(A, C, dtype=torch.int64)
        has_al = torch.zeros(A, C, dtype=torch.bool)
        if has_anat and "target_anat_cls_labels" in s:
            lab[:, off:off + nc] = s["target_anat_cls_labels"]
            has_al[:, off:off + nc] = True
        s["target_anat_cls_labels"], s["has_anatomy_class_labels"] = lab, has_al
        cl = torch.zeros(C, dtype=torch.int64)
        has_cl = torch.zeros(C, dtype=torch.bool)
        if "target_cls_labels" in s:
            cl[off:off + nc] = s["target_cls_labels"]
            has_cl[off:off + nc] = True
        s["target_cls_labels"], s["has_class_labels"] = cl, has_cl
        hb = torch.zeros(C, dtype=torch.bool)
        if d.cfg.cls_boxes:
            hb[off:off + nc] = True
            b = s["target_cls_boxes"].clone()
            b[:, 4] += off
            s["target_cls_boxes"] = b
        else:
            s["target_cls_boxes"] = torch.zeros(0, 5)
        s["has_class_bboxes"] = hb
        return s
