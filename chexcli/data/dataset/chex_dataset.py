"""A torch Dataset over one configuration and split of a processed folder.

Configurations (docs/data.md#loading, :mod:`.configs`):

=====================================  ==========================================================
``mimiccxr_reports``                    image + report sentences
``mimiccxr_reports_cig_multiboxclssent``  + 29 anatomy boxes, 5 multi-anatomy groups (stage 1),
                                        29 x 53 region labels, region sentences
``cig_boxclssent``                      anatomy boxes, region labels, region sentences
``mscxr_boxsent``                       MS-CXR finding boxes (8 classes) and their sentences
``vindrcxr_boxes`` / ``_top15``         VinDr-CXR boxes and labels (22 / 15 classes)
``nih8_boxes``                          NIH boxes (8 classes)
``custom_boxes``                        finding boxes and labels of a custom folder (its own classes)
=====================================  ==========================================================

Boxes are returned in relative centre format ``(x_c, y_c, w, h)`` after the transform.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from chexcli.data.dataset.boxes import to_center, to_relative, valid_boxes
from chexcli.data.dataset.configs import FOLDER_CLASSES, SPLIT_FILE, DatasetConfig, get_config
from chexcli.data.images.cache import cache_side as default_cache_side
from chexcli.data.images.cache import open_cache
from chexcli.data.images.readers import read_image_uint8
from chexcli.data.names import anatomy_names, class_names, multibox_mapping
from chexcli.data.processed.findings import folder_class_names
from chexcli.data.processed.manifest import read_manifest
from chexcli.data.transforms import EvalTransform, Targets, TrainTransform, laterality_permutation, swap_left_right
from chexcli.errors import ChexError
from chexcli.hashing import tensor_digest


class ChexDataset(Dataset):
    """One processed dataset configuration and split.

    ``transform``: "train" (augmentation), "eval" or a callable ``(img, Targets, rng)``.
    ``swap_laterality``: on a horizontal flip, swap left/right in anatomy targets and
    sentences (default True; False reproduces the reference, quirk 10).
    ``augment_multiboxes``: transform multi-anatomy boxes with the image (default True;
    False gives the reference's un-augmented targets, quirk 9).
    ``image_digests``: also return ``x_digest``, the 16-byte digest of the image tensor
    (``chexcli.hashing.tensor_digest``), computed in the data-loader worker for the training
    process's cache of frozen-tower encodings (chexcli.train.encoding_cache).
    """

    def __init__(self, folder: str | Path, config: str | DatasetConfig, split: str = "train",
                 transform="eval", size: int = 224, seed: int = 0, swap_laterality: bool = True,
                 augment_multiboxes: bool = True, cache_side: int | None = None, image_digests: bool = False):
        self.folder = Path(folder)
        self.image_digests = image_digests
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
        self.classes = (folder_class_names(self.folder) if self.cfg.class_list == FOLDER_CLASSES else
                        class_names(self.cfg.class_list) if self.cfg.class_list else [])
        self.class_index = {c: i for i, c in enumerate(self.classes)}
        if transform == "train":
            transform = TrainTransform(size, swap_laterality=swap_laterality, anatomy_names=self.anat_names)
        elif transform == "eval":
            transform = EvalTransform(size)
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.cache_side = cache_side or default_cache_side(size)
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
        return read_image_uint8(self._raw_root / row["path"]).astype(np.float32) / 255.0

    def sample_id(self, row) -> str:
        if "sample_id" in row and row["sample_id"]:
            return str(row["sample_id"])
        return str(row.iloc[0])

    def __getitem__(self, i: int) -> dict:
        row = self.df.iloc[i]
        img = self._image(row)
        t = Targets()
        out: dict = {"sample_id": self.sample_id(row)}
        if self.cfg.anatomy:
            self._anatomy_targets(row, t, out)
        if self.cfg.cls_boxes:
            self._class_box_targets(row, t, out)

        rng = np.random.default_rng([self.seed, self.epoch, i])
        x, t = self.transform(img, t, rng)
        swap = t.flipped and self.swap_laterality
        out["x"] = x
        if self.image_digests:
            out["x_digest"] = tensor_digest(x)

        if self.cfg.sentences:
            sents = json.loads(row["report_sentences"])
            out["sentences"] = [swap_left_right(s) for s in sents] if swap else sents
        if self.cfg.anatomy:
            self._anatomy_fields(row, t, swap, out)
        if self.cfg.cls_boxes:
            self._class_box_fields(t, out)
        if self.cfg.cls_labels:
            out["target_cls_labels"] = torch.tensor(
                [int(float(row[f"cls/{c}"] or 0) != 0) for c in self.classes], dtype=torch.int64)
        return out

    # -- targets before the transform (boxes follow the image through it)
    def _anatomy_targets(self, row, t: Targets, out: dict) -> None:
        """Anatomy boxes (and multi-anatomy member boxes) of the row into ``t``."""
        H, W = float(row["H"]), float(row["W"])
        boxes = json.loads(row["anat_boxes"])
        ab = np.zeros((len(self.anat_names), 4))
        for k, n in enumerate(self.anat_names):
            if n in boxes:
                ab[k] = to_relative(boxes[n], H, W, self.cfg.cached)[0]
        present = valid_boxes(ab)
        ab[~present] = 0
        t.anat_boxes, t.anat_present = ab, present
        if not self.multi:
            return
        mb = np.zeros((len(self.multi), 2, 4))
        for g, members in enumerate(self.multi.values()):
            for m, n in enumerate(members):
                mb[g, m] = ab[self.anat_names.index(n)]
        mp = valid_boxes(mb.reshape(-1, 4)).reshape(-1, 2)
        if self.augment_multiboxes:
            t.multi_boxes, t.multi_present = mb, mp
        else:  # reference behaviour: taken before the transform
            out["target_anat_multiboxes"] = to_center(mb.reshape(-1, 4)).reshape(-1, 2, 4) * mp[..., None]
            out["target_anat_multiboxes_masks"] = torch.from_numpy(mp)

    def _class_box_targets(self, row, t: Targets, out: dict) -> None:
        """Finding boxes of the known classes (and their sentences) into ``t``; the sentence
        boxes as loaded go to ``out`` (reference: not augmented)."""
        H, W = float(row["H"]), float(row["W"])
        raw = json.loads(row["clsbbox"]) if row["clsbbox"] else []
        keep = [k for k, b in enumerate(raw) if b[4] in self.class_index]
        if keep:
            cb = to_relative([raw[k][:4] for k in keep], H, W, self.cfg.cached)
            ids = np.array([self.class_index[raw[k][4]] for k in keep])
        else:
            cb, ids = np.zeros((0, 4)), np.zeros(0, dtype=np.int64)
        phrases = json.loads(row["clsbboxphrases"]) if self.cfg.box_sentences else []
        extra = [phrases[k] for k in keep] if phrases else []
        v = valid_boxes(cb)
        t.cls_boxes, t.cls_ids = cb[v], ids[v]
        t.cls_extra = [e for e, ok in zip(extra, v) if ok]
        if not self.cfg.box_sentences:
            return
        sent_boxes: dict[str, list] = {}
        for b, c, s in zip(t.cls_boxes, t.cls_ids, t.cls_extra):
            sent_boxes.setdefault(s, []).append(list(to_center(b)[0]) + [float(c)])
        grounded = sorted(sent_boxes)
        out["grounded_sentences"] = grounded
        out["target_sentence_boxes"] = [torch.tensor(sent_boxes[s], dtype=torch.float32) for s in grounded]

    # -- fields after the transform
    def _anatomy_fields(self, row, t: Targets, swap: bool, out: dict) -> None:
        """Anatomy boxes, region labels and region sentences (left/right swapped on a flip)."""
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

    def _class_box_fields(self, t: Targets, out: dict) -> None:
        cb = to_center(t.cls_boxes)
        out["target_cls_boxes"] = torch.from_numpy(
            np.concatenate([cb, np.asarray(t.cls_ids, dtype=np.float32).reshape(-1, 1)], axis=1))
        out["has_class_bboxes"] = torch.ones(len(self.classes), dtype=torch.bool)
        if self.cfg.box_sentences:
            out["target_cls_box_sentences"] = list(t.cls_extra)
