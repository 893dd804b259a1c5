"""Validation during training (docs/training.md#validation), in eval mode and fp32.

* `val/<loss>`: the training objective on the val split of the first training
  dataset (the reference's `train_metrics` losses; the pathology supervisor
  is off there as in the reference);
* `val/<task>/<metric>`: the evaluation package's tasks named in the recipe
  (`data.val_tasks`) whose data is among the `--data` folders;
* txtgen, `val/sentgen/*`: every val sentence greedily reconstructed from
  its own text embedding, scored with BLEU-4 and ROUGE-L.

`run.val_batches` caps the number of batches of each part (None: all).
`validate` returns a `Validation`: the metrics, and the headline metric a best
bundle is chosen by: the first task's headline metric, BLEU-4 for txtgen,
else none (then chexcli.train.best_bundle uses `val/loss`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import torch

from chexcli.data.dataset import ChexDataset, collate
from chexcli.train.data_setup import find_folder
from chexcli.train.loss_terms import RunningSums


def _loader(folder: Path, config: str, batch_size: int):
    from torch.utils.data import DataLoader

    ds = ChexDataset(folder, config, "val", transform="eval")
    return DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=0)


@torch.no_grad()
def validation_loss(objective, folder: Path, config: str, batch_size: int, cap: int | None,
                    seed: int = 1234) -> dict[str, float]:
    """Mean of every logged sub-loss over the val split (eval mode, fixed seed)."""
    weights = getattr(objective, "weights", None)
    saved = None
    if weights is not None:  # the reference's train_metrics task runs without the pathology supervisor
        saved = (weights.pathology_detection, weights.pathology_classification)
        weights.pathology_detection = weights.pathology_classification = 0.0
    torch.manual_seed(seed)
    sums = RunningSums()
    n = 0
    try:
        for batch in islice(_loader(folder, config, batch_size), cap):
            sums.add(objective(batch)[1])
            n += 1
    finally:
        if saved is not None:
            weights.pathology_detection, weights.pathology_classification = saved
    return {f"val/{k}": v / max(1, n) for k, v in sums.floats().items()}


@torch.no_grad()
def sentence_reconstruction(model, folder: Path, config: str, cap_sentences: int = 256) -> dict[str, float]:
    """txtgen: greedy reconstruction of val sentences from their text embeddings."""
    from chexcli.metrics.text import clean_pairs, nlg_scores

    ds = ChexDataset(folder, config, "val", transform="eval")
    sentences: list[str] = []
    for cell in ds.df["report_sentences"]:
        sentences.extend(json.loads(cell) if cell else [])
        if len(sentences) >= cap_sentences:
            break
    sentences = sentences[:cap_sentences]
    if not sentences:
        return {}
    emb = model.encode_sentences(sentences).to(model.device)
    hyps = model.describe(emb, max_new_tokens=min(64, model.cfg.generator.max_length - 1))
    h, r, _ = clean_pairs(hyps, sentences)
    scores = nlg_scores(h, r, ["BLEU-4", "Rouge-L"])
    exact = sum(a.strip().lower() == b.strip().lower() for a, b in zip(hyps, sentences)) / len(sentences)
    out = {f"val/sentgen/{k}": v for k, v in scores.items()}
    out["val/sentgen/exact_match"] = exact
    return out


@dataclass
class Validation:
    """Metrics of one validation (`val/...` -> value; empty when nothing could be validated) and
    the key of its headline metric (None: none of its parts has one)."""

    metrics: dict[str, float] = field(default_factory=dict)
    headline: str | None = None

    def add(self, other: "Validation") -> None:
        """Take `other`'s metrics, and its headline if this one has none yet."""
        self.metrics.update(other.metrics)
        self.headline = self.headline or other.headline


@torch.no_grad()
def task_metrics(model, task_name: str, folders: list[Path], device, batch_size: int,
                 cap: int | None) -> Validation:
    """One evaluation-package task on the val split -> `val/<task>/<metric>`; empty when its data is absent."""
    from chexcli.evaluate.inference import TaskInference
    from chexcli.evaluate.scoring import score_task
    from chexcli.evaluate.targets import batch_targets
    from chexcli.evaluate.tasks import load_task

    task = load_task(task_name)
    folder = find_folder(folders, task.dataset, "val")
    if folder is None:
        return Validation()
    inference = TaskInference(model, task, device=device, seed=42)
    records, targets = [], []
    for batch in islice(_loader(folder, task.dataset, batch_size), cap):
        records += inference(batch)
        targets += list(batch_targets(task.kind, batch))
    if not records:
        return Validation()
    scores = score_task(task, records, targets, n_bootstrap=0)
    metrics = {f"val/{task_name}/{k}": float(v) for k, v in scores.metrics.items() if isinstance(v, (int, float))}
    headline = f"val/{task_name}/{task.headline}"
    return Validation(metrics, headline if headline in metrics else None)


def validate(model, objective, recipe: dict, folders: list[Path], device, batch_size: int) -> Validation:
    """The validation loss on the val split of the first training dataset, then the recipe's
    evaluation tasks (`data.val_tasks`); leaves the model in eval mode."""
    model.eval()
    cap = recipe["run"].get("val_batches")
    first = recipe["data"]["train"][0]
    folder = find_folder(folders, first, "val")
    result = Validation()
    if folder is not None:
        result.metrics.update(validation_loss(objective, folder, first, batch_size, cap))
        if "val/loss" not in result.metrics and "val/txtgen_loss" in result.metrics:
            result.metrics["val/loss"] = result.metrics["val/txtgen_loss"]
    for name in recipe["data"].get("val_tasks") or []:
        if name != "sentgen":
            result.add(task_metrics(model, name, folders, device, batch_size, cap))
        elif folder is not None and model.txt_decoder is not None and model.decode is not None:
            result.add(Validation(sentence_reconstruction(model, folder, first), "val/sentgen/BLEU-4"))
    return result


__all__ = ["Validation", "sentence_reconstruction", "task_metrics", "validate", "validation_loss"]
