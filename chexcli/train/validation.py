"""Validation during training (TRAINING.md §9), in eval mode and fp32.

* `val/<loss>`: the training objective on the val split of the first training
  dataset (the reference's `train_metrics` losses; the pathology supervisor
  is off there as in the reference);
* `val/<task>/<metric>`: the evaluation package's tasks named in the recipe
  (`data.val_tasks`) whose data is among the `--data` folders;
* txtgen, `val/sentgen/*`: every val sentence greedily reconstructed from
  its own text embedding, scored with BLEU-4 and ROUGE-L.

`run.val_batches` caps the number of batches of each part (None: all).
`_headline` names the metric a best bundle is chosen by: the first task's
headline metric, BLEU-4 for txtgen, else none (then `val/loss` is used).
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Callable

import torch

from chexcli.data.dataset import ChexDataset, collate
from chexcli.train.data_setup import find_folder


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
    sums: dict[str, float] = {}
    n = 0
    try:
        for batch in islice(_loader(folder, config, batch_size), cap):
            _, metrics = objective(batch)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
    finally:
        if saved is not None:
            weights.pathology_detection, weights.pathology_classification = saved
    return {f"val/{k}": v / max(1, n) for k, v in sums.items()}


@torch.no_grad()
def sentence_reconstruction(model, folder: Path, config: str, cap_sentences: int = 256) -> dict[str, float]:
    """txtgen: greedy reconstruction of val sentences from their text embeddings."""
    from chexcli.metrics.text import clean_pairs, nlg_scores

    ds = ChexDataset(folder, config, "val", transform="eval")
    import json

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


@torch.no_grad()
def task_metrics(model, task_name: str, folders: list[Path], device, batch_size: int,
                 cap: int | None) -> dict[str, float]:
    """One evaluation-package task on the val split -> `val/<task>/<metric>`; {} when its data is absent."""
    from chexcli.evaluate.inference import TaskInference
    from chexcli.evaluate.scoring import score_task
    from chexcli.evaluate.targets import batch_targets
    from chexcli.evaluate.tasks import load_task

    task = load_task(task_name)
    folder = find_folder(folders, task.dataset, "val")
    if folder is None:
        return {}
    inference = TaskInference(model, task, device=device, seed=42)
    records, targets = [], []
    for batch in islice(_loader(folder, task.dataset, batch_size), cap):
        records += inference(batch)
        targets += list(batch_targets(task.kind, batch))
    if not records:
        return {}
    scores = score_task(task, records, targets, n_bootstrap=0)
    out = {f"val/{task_name}/{k}": float(v) for k, v in scores.metrics.items() if isinstance(v, (int, float))}
    out["_headline_key"] = f"val/{task_name}/{task.headline}"
    return out


def run_validation(model, objective, recipe: dict, folders: list[Path], device, batch_size: int,
                   log: Callable[[str], None]) -> dict:
    model.eval()
    cap = recipe["run"].get("val_batches")
    first = recipe["data"]["train"][0]
    folder = find_folder(folders, first, "val")
    results: dict = {}
    headline = None
    if folder is not None:
        results.update(validation_loss(objective, folder, first, batch_size, cap))
        if "val/loss" not in results and "val/txtgen_loss" in results:
            results["val/loss"] = results["val/txtgen_loss"]
    for name in recipe["data"].get("val_tasks") or []:
        if name == "sentgen":
            if folder is not None and model.txt_decoder is not None and model.decode is not None:
                results.update(sentence_reconstruction(model, folder, first))
                headline = headline or "val/sentgen/BLEU-4"
            continue
        part = task_metrics(model, name, folders, device, batch_size, cap)
        key = part.pop("_headline_key", None)
        if key in part:
            headline = headline or key
        results.update(part)
    if headline:
        results["_headline"] = headline
    return results
