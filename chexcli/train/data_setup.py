"""Training data: match `--data` folders to a recipe's dataset configurations, and a resumable sampler.

`find_folder` looks for `<table>.train.csv` of a configuration in the given
folders (docs/data.md file names). `ShardedBatchSampler`
splits every update's global batch into W x accumulation shards (W
processes): shard `rank * accumulation + micro` goes to that process's
micro-batch `micro`. A single process with accumulation 2 and two processes
with accumulation 1 therefore see the same samples in the same shards, and
the order is a pure function of (seed, epoch), so a resumed run continues
at the exact next update.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from chexcli.data.dataset import ChexDataset, MixedDataset, get_config
from chexcli.errors import ChexError

PREPARE_HINT = {
    "vindrcxr_boxes": "chex data prepare vindr-cxr", "vindrcxr_boxes_top15": "chex data prepare vindr-cxr",
    "nih8_boxes": "chex data prepare nih-cxr14",
    "custom_boxes": "chex data prepare custom --table FILE --images DIR --out DIR",
}


def find_folder(folders: list[Path], config: str, split: str = "train") -> Path | None:
    table = get_config(config).table
    split_file = "val" if split in ("val", "validate") else split
    for folder in folders:
        if (Path(folder) / f"{table}.{split_file}.csv").is_file():
            return Path(folder)
    return None


def check_folders(folders: list[Path]) -> None:
    if not folders:
        raise ChexError("no --data folder given; pass a processed folder, e.g. --data runs/demo/data "
                        "(`chex data prepare synthetic --out runs/demo/data` makes one)")
    for folder in folders:
        if not Path(folder).is_dir():
            raise ChexError(f"--data {folder} is not a folder; pass a processed folder from `chex data prepare`")
        if not (Path(folder) / "manifest.json").is_file():
            raise ChexError(f"--data {folder} is not a prepared folder (no manifest.json); run `chex data prepare` first")


AUGMENTATION = {  # TrainTransform options per recipe `data.augmentation`
    "reference": {"crop_scale": (0.5, 1.0), "blur_p": 0.5},  # docs/training.md#augmentation
    "light": {"crop_scale": (0.85, 1.0), "blur_p": 0.0},  # small models from scratch (the demo)
}


def training_dataset(folders: list[Path], configs: list[str], size: int, seed: int, swap_laterality: bool,
                     augment_multiboxes: bool, augmentation: str = "reference", image_digests: bool = False):
    """The recipe's training data: one ChexDataset, or a MixedDataset of several (stage 1).

    augmentation: "reference" (docs/training.md#augmentation), "light" (milder crop, no blur) or "none"
    (the evaluation transform). image_digests: samples carry their image's digest (`x_digest`),
    for a run that caches a frozen tower's encodings.
    """
    from chexcli.data.transforms import TrainTransform

    if augmentation not in (*AUGMENTATION, "none"):
        raise ChexError(f"recipe data.augmentation must be reference, light or none, got {augmentation!r}")
    parts = []
    for name in configs:
        folder = find_folder(folders, name)
        if folder is None:
            table = get_config(name).table
            hint = PREPARE_HINT.get(name, "chex data prepare mimic")
            raise ChexError(f"the recipe needs dataset {name} ({table}.train.csv), which none of the --data "
                            f"folders holds; prepare it (`{hint}`) and add --data FOLDER")
        ds = ChexDataset(folder, name, "train", transform="eval", size=size, seed=seed,
                         swap_laterality=swap_laterality, augment_multiboxes=augment_multiboxes,
                         image_digests=image_digests)
        if augmentation != "none":
            ds.transform = TrainTransform(size, swap_laterality=swap_laterality, anatomy_names=ds.anat_names,
                                          **AUGMENTATION[augmentation])
        if len(ds) == 0:
            raise ChexError(f"{folder}: the train split of {name} is empty; prepare the dataset again")
        parts.append(ds)
    return parts[0] if len(parts) == 1 else MixedDataset(parts)


def dataset_names(ds) -> tuple[list[str], list[str], list[str]]:
    """(class names, anatomy names, multi-anatomy names) of a training dataset."""
    if isinstance(ds, MixedDataset):
        return list(ds.classes), list(ds.anat_names), list(ds.multi_names)
    return list(ds.classes), list(ds.anat_names), list(ds.multi)


def text_corpus(ds) -> list[str]:
    """Every report sentence and anatomy phrase of the training tables (unique, sorted)."""
    parts = ds.datasets if isinstance(ds, MixedDataset) else [ds]
    out: set[str] = set()
    for part in parts:
        df: pd.DataFrame = part.df
        for column in ("report_sentences",):
            if column in df:
                for cell in df[column]:
                    if cell:
                        out.update(json.loads(cell))
        if "anat_sentences" in df:
            for cell in df["anat_sentences"]:
                if cell:
                    for phrases in json.loads(cell).values():
                        out.update(phrases)
    return sorted(out)


class ShardedBatchSampler:
    """Yields this process's micro-batches (lists of dataset indices) of one epoch, from update `start`."""

    def __init__(self, n: int, micro_batch: int, accumulation: int, world: int, rank: int, seed: int):
        self.n, self.micro, self.accum, self.world, self.rank, self.seed = n, micro_batch, accumulation, world, rank, seed
        self.global_batch = micro_batch * accumulation * world
        if self.updates_per_epoch() == 0:
            raise ChexError(f"the training data has {n} samples, fewer than one update's batch of "
                            f"{self.global_batch}; lower --batch-size or optim.accumulation_steps")

    def updates_per_epoch(self) -> int:
        return self.n // self.global_batch

    def epoch_batches(self, epoch: int, start_update: int = 0):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        for u in range(start_update, self.updates_per_epoch()):
            block = order[u * self.global_batch:(u + 1) * self.global_batch]
            for m in range(self.accum):
                shard = self.rank * self.accum + m
                yield block[shard * self.micro:(shard + 1) * self.micro].tolist()


def shard_index(rank: int, accumulation: int, micro: int) -> int:
    return rank * accumulation + micro
