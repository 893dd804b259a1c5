"""Torch Datasets over processed folders, dataset mixing and the collate function.

Configurations (DATASETS.md sections 1 and 11):

=====================================  ==========================================================
``mimiccxr_reports``                    image + report sentences
``mimiccxr_reports_cig_multiboxclssent``  + 29 anatomy boxes, 5 multi-anatomy groups (stage 1),
                                        29 x 53 region labels, region sentences
``cig_boxclssent``                      anatomy boxes, region labels, region sentences
``mscxr_boxsent``                       MS-CXR finding boxes (8 classes) and their sentences
``vindrcxr_boxes`` / ``_top15``         VinDr-CXR boxes and labels (22 / 15 classes)
``nih8_boxes``                          NIH boxes (8 classes)
=====================================  ==========================================================

Boxes are returned in relative centre format ``(x_c, y_c, w, h)`` after the transform.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from chexcli.data.cache import open_cache
from chexcli.data.common import read_manifest
from chexcli.data.names import anatomy_names, class_names, multibox_mapping
from chexcli.data.transforms import EvalTransform, Targets, TrainTransform, laterality_permutation, swap_left_right
from chexcli.errors import ChexError

MIN_SIZE = 0.001
SPLIT_FILE = {"train": "train", "val": "val", "validate": "val", "test": "test"}


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
    DatasetConfig("mimiccxr_reports", "mimic-cxr-frontal-report", sentences=True),
    DatasetConfig("mimiccxr_reports_cig_multiboxclssent",
                  "mimic-cxr-frontal-report-cig_anatboxes-cig_anatlabels-cig_anatphrases",
                  class_list="cig_all", sentences=True, anatomy=True, multiboxes=True),
    DatasetConfig("cig_boxclssent", "mimic-cxr-frontal-cig_anatboxes-cig_anatlabels-cig_anatphrases",
                  class_list="cig_all", anatomy=True),
    DatasetConfig("mscxr_boxsent", "mimic-cxr-frontal-mscxr_boxesonly-mscxr_valtotest-mscxr_traintoval",
                  class_list="ms_cxr", cls_boxes=True, box_sentences=True),
    DatasetConfig("vindrcxr_boxes", "vindrcxr", class_list="vindrcxr_loc", cls_boxes=True, cls_labels=True,
                  auto_balance=True),
    DatasetConfig("vindrcxr_boxes_top15", "vindrcxr", class_list="vindrcxr_loc_top15", cls_boxes=True,
                  cls_labels=True),
    DatasetConfig("nih8_boxes", "nih_cxr", class_list="nih8", cls_boxes=True, cached=False),
]}


def get_config(name: str, **overrides) -> DatasetConfig:
    if name not in CONFIGS:
        raise ChexError(f"unknown dataset configuration {name!r}; choose one of: {', '.join(CONFIGS)}")
    cfg = CONFIGS[name]
    if overrides:
        from dataclasses import replace

        cfg = replace(cfg, **overrides)
    return cfg


def to_relative(boxes: np.ndarray, H: float, W: float, cached: bool) -> np.ndarray:
    """Original-pixel corner boxes -> relative corner boxes of the loaded image (DATASETS.md 3.3)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if cached:
        S = min(H, W)
        cx = (W - S) / 2 if W > H else 0.0
        cy = (H - S) / 2 if H > W else 0.0
        b = (b - [cx, cy, cx, cy]) / S
    else:
        b = b / [W, H, W, H]
    return np.clip(b, 0.0, 1.0)


def _valid(b: np.ndarray) -> np.ndarray:
    return ((b[:, 2] - b[:, 0]) > MIN_SIZE) & ((b[:, 3] - b[:, 1]) > MIN_SIZE)


def to_center(b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
    return np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]],
                    axis=1).astype(np.float32)


class ChexDataset(Dataset):
    """One processed dataset configuration and split.

    ``transform``: "train" (augmentation), "eval" or a callable ``(img, Targets, rng)``.
    ``swap_laterality``: on a horizontal flip, swap left/right in anatomy targets and
    sentences (default True; False reproduces the reference, quirk 10).
    ``augment_multiboxes``: transform multi-anatomy boxes with the image (default True;
    False gives the reference's un-augmented targets, quirk 9).
    """

    def __init__(self, folder: str | Path, config: str | DatasetConfig, split: str = "train",
                 transform="eval", size: int = 224, seed: int = 0, swap_laterality: bool = True,
                 augment_multiboxes: bool = True, cache_side: int | None = None):
        self.folder = Path(folder)
        self.cfg = get_config(config) if isinstance(config, str) else config
        self.split = split
        if split not in SPLIT_FILE:
            raise ChexError(f"unknown split {split!r}; use train, val or test")
        path = self.folder / f"{self.cfg.table}.{SPLIT_FILE[split]}.csv"
        if not path.is_file():
            raise ChexError(f"{path} not found: prepare the dataset first, or this configuration has "
                            f"no {split} split (`chex data info {self.folder}`)")
        self.df = pd.read_csv(path, dtype={"dicom_id": str, "image_id": str, "file_name": str,
                                           "sample_id": str}, keep_default_na=False)
        self.swap_laterality = swap_laterality
        self.augment_multiboxes = augment_multiboxes
        self.anat_names = anatomy_names("cig_default") if self.cfg.anatomy else []
        self.anat_perm = laterality_permutation(self.anat_names) if self.anat_names else None
        self.multi = multibox_mapping("cig_mapping") if self.cfg.multiboxes else {}
        self.classes = class_names(self.cfg.class_list) if self.cfg.class_list else []
        self.class_index = {c: i for i, c in enumerate(self.classes)}
        if transform == "train":
            transform = TrainTransform(size, swap_laterality=swap_laterality, anatomy_names=self.anat_names)
        elif transform == "eval":
            transform = EvalTransform(size)
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.cache_side = cache_side or (256 if size <= 256 else 512)
        self._cache = None
        self._raw_root = None
        if not self.cfg.cached:
            man = read_manifest(self.folder) or {}
            part = next(iter(man.get("parts", {}).values()), {})
            self._raw_root = Path(part.get("raw", self.folder))

    def __len__(self) -> int:
        return len(self.df)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    # -- loading
    def _image(self, row) -> np.ndarray:
        if self.cfg.cached:
            if self._cache is None:
                self._cache = open_cache(self.folder, self.cache_side)
            arr, index = self._cache
            sid = row["sample_id"] if "sample_id" in row else row.iloc[0]
            return np.asarray(arr[index[str(sid)]], dtype=np.float32) / 255.0
        from chexcli.data.image_io import read_image_uint8

        return read_image_uint8(self._raw_root / row["path"]).astype(np.float32) / 255.0

    def sample_id(self, row) -> str:
        if "sample_id" in row and row["sample_id"]:
            return str(row["sample_id"])
        return str(row.iloc[0])

    def __getitem__(self, i: int) -> dict:
        row = self.df.iloc[i]
        H, W = float(row["H"]), float(row["W"])
        cached = self.cfg.cached
        img = self._image(row)
        t = Targets()
        out: dict = {"sample_id": self.sample_id(row)}

        if self.cfg.anatomy:
            boxes = json.loads(row["anat_boxes"])
            ab = np.zeros((len(self.anat_names), 4))
            present = np.zeros(len(self.anat_names), dtype=bool)
            for k, n in enumerate(self.anat_names):
                if n in boxes:
                    ab[k] = to_relative(boxes[n], H, W, cached)[0]
            present = _valid(ab)
            ab[~present] = 0
            t.anat_boxes, t.anat_present = ab, present
            if self.multi:
                mb = np.zeros((len(self.multi), 2, 4))
                for g, members in enumerate(self.multi.values()):
                    for m, n in enumerate(members):
                        k = self.anat_names.index(n)
                        mb[g, m] = ab[k]
                mp = _valid(mb.reshape(-1, 4)).reshape(-1, 2)
                if self.augment_multiboxes:
                    t.multi_boxes, t.multi_present = mb, mp
                else:  # reference behaviour: taken before the transform
                    out["target_anat_multiboxes"] = to_center(mb.reshape(-1, 4)).reshape(-1, 2, 4) * mp[..., None]
                    out["target_anat_multiboxes_masks"] = torch.from_numpy(mp)
        if self.cfg.cls_boxes:
            raw = json.loads(row["clsbbox"]) if row["clsbbox"] else []
            keep = [k for k, b in enumerate(raw) if b[4] in self.class_index]
            if keep:
                cb = to_relative([raw[k][:4] for k in keep], H, W, cached)
                ids = np.array([self.class_index[raw[k][4]] for k in keep])
            else:
                cb, ids = np.zeros((0, 4)), np.zeros(0, dtype=np.int64)
            phrases = json.loads(row["clsbboxphrases"]) if self.cfg.box_sentences else []
            extra = [phrases[k] for k in keep] if phrases else []
            v = _valid(cb)
            t.cls_boxes, t.cls_ids = cb[v], ids[v]
            t.cls_extra = [e for e, ok in zip(extra, v) if ok]
            if self.cfg.box_sentences:
                # sentence boxes as loaded (reference: not augmented)
                sent_boxes: dict[str, list] = {}
                for b, c, s in zip(t.cls_boxes, t.cls_ids, t.cls_extra):
                    sent_boxes.setdefault(s, []).append(list(to_center(b)[0]) + [float(c)])
                grounded = sorted(sent_boxes)
                out["grounded_sentences"] = grounded
                out["target_sentence_boxes"] = [torch.tensor(sent_boxes[s], dtype=torch.float32) for s in grounded]

        rng = np.random.default_rng([self.seed, self.epoch, i])
        x, t = self.transform(img, t, rng)
        swap = t.flipped and self.swap_laterality
        out["x"] = x

        if self.cfg.sentences:
            sents = json.loads(row["report_sentences"])
            out["sentences"] = [swap_left_right(s) for s in sents] if swap else sents
        if self.cfg.anatomy:
            out["target_anat_boxes"] = torch.from_numpy(to_center(t.anat_boxes) * t.anat_present[:, None])
            out["target_anat_present_masks"] = torch.from_numpy(np.asarray(t.anat_present, dtype=bool))
            labels = json.loads(row["anat_labels"]) if "anat_labels" in row else {}
            lab = np.zeros((len(self.anat_names), len(self.classes)), dtype=np.int64)
            for k, n in enumerate(self.anat_names):
                for c in labels.get(n, []):
                    j = self.class_index.get(f"cig/{c}")
                    if j is not None:
                        lab[k, j] = 1
            sentences = json.loads(row["anat_sentences"]) if "anat_sentences" in row else {}
            anat_s = [list(sentences.get(n, [])) for n in self.anat_names]
            if swap:
                lab = lab[self.anat_perm]
                anat_s = [[swap_left_right(s) for s in anat_s[j]] for j in self.anat_perm]
            out["target_anat_cls_labels"] = torch.from_numpy(lab)
            out["target_anat_sentences"] = anat_s
            if self.multi and self.augment_multiboxes:
                out["target_anat_multiboxes"] = torch.from_numpy(
                    to_center(t.multi_boxes.reshape(-1, 4)).reshape(-1, 2, 4) * t.multi_present[..., None])
                out["target_anat_multiboxes_masks"] = torch.from_numpy(np.ascontiguousarray(t.multi_present))
            elif self.multi:
                out["target_anat_multiboxes"] = torch.from_numpy(np.asarray(out["target_anat_multiboxes"],
                                                                            dtype=np.float32))
        if self.cfg.cls_boxes:
            cb = to_center(t.cls_boxes)
            out["target_cls_boxes"] = torch.from_numpy(
                np.concatenate([cb, np.asarray(t.cls_ids, dtype=np.float32).reshape(-1, 1)], axis=1))
            out["has_class_bboxes"] = torch.ones(len(self.classes), dtype=torch.bool)
            if self.cfg.box_sentences:
                out["target_cls_box_sentences"] = list(t.cls_extra)
        if self.cfg.cls_labels:
            out["target_cls_labels"] = torch.tensor(
                [int(float(row[f"cls/{c}"] or 0) != 0) for c in self.classes], dtype=torch.int64)
        return out


# ----------------------------------------------------------------------------- mixing
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


# ----------------------------------------------------------------------------- collate
_LIST_KEYS = {"sample_id", "sentences", "target_anat_sentences", "target_cls_boxes", "target_cls_box_sentences",
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
