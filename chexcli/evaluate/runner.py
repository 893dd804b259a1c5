"""What `chex evaluate` runs: one task on a model (or on a prediction file) -> files + metrics.

Files written into the run folder, per evaluated task (`<split>_<task>` prefix):
`<split>_<task>.predictions.jsonl` (one JSON line per image, model runs only),
`<split>_<task>.json` (flat metrics: point values, or `/mean`, `/std`, `/point`,
`/ci_low`, `/ci_high` when bootstrapped), `<split>_<task>[_<group>]_bootstrap.csv`
(one row per replicate); and for the run: `settings.json` (task -> the
post-processing settings used; reusable with `--settings`), `metrics.json`
(all tasks, keys prefixed `<split>_<task>/`), `args.json`.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

from chexcli.errors import ChexError
from chexcli.evaluate.inference import TaskInference, apply_detection_postprocess, apply_grounding_postprocess
from chexcli.evaluate.scoring import TaskScores, score_task
from chexcli.evaluate.targets import batch_targets
from chexcli.evaluate.tasks import TaskConfig
from chexcli.evaluate.tune import tune_task

GROUP_SUFFIX = {"": "", "cls": "_cls", "sent": "_sent"}


@dataclass
class TaskRun:
    task: TaskConfig
    split: str
    scores: TaskScores
    settings: dict
    files: list[Path] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"{self.split}_{self.task.name}"


def make_loader(data_dir: str | Path, task: TaskConfig, split: str, batch_size: int, workers: int = 0):
    from torch.utils.data import DataLoader

    from chexcli.data.dataset import ChexDataset, collate

    ds = ChexDataset(data_dir, task.dataset, split=split, transform="eval")
    if len(ds) == 0:
        raise ChexError(f"the {split} split of {task.dataset} in {data_dir} is empty; prepare the dataset first")
    return DataLoader(ds, batch_size=batch_size, shuffle=False, drop_last=False, collate_fn=collate,
                      num_workers=workers)


def run_inference(model, task: TaskConfig, data_dir, split: str, batch_size: int, device, sink=None,
                  progress: Callable[[int, int], None] | None = None, workers: int = 0, seed: int = 42):
    """(records, targets) of a split; each record is also written to `sink` as a JSON line."""
    loader = make_loader(data_dir, task, split, batch_size, workers)
    inf = TaskInference(model, task, device=device, seed=seed)
    records, targets = [], []
    total = len(loader.dataset)
    for batch in loader:
        recs = inf(batch)
        records += recs
        targets += list(batch_targets(task.kind, batch))
        if sink is not None:
            for r in recs:
                sink.write(json.dumps(r) + "\n")
        if progress is not None:
            progress(len(recs), total)
    return records, targets


def load_targets(data_dir, task: TaskConfig, split: str, batch_size: int = 16, workers: int = 0) -> list[dict]:
    targets = []
    for batch in make_loader(data_dir, task, split, batch_size, workers):
        targets += list(batch_targets(task.kind, batch))
    return targets


def read_predictions(path: str | Path, task: TaskConfig) -> list[dict]:
    """Records of a prediction JSONL file (checks that they belong to `task`)."""
    p = Path(path)
    if not p.is_file():
        raise ChexError(f"prediction file {p} not found; pass the .predictions.jsonl of a `chex evaluate` run")
    records = []
    with open(p) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise ChexError(f"{p} line {n} is not JSON; pass a JSON-lines prediction file") from None
            if not isinstance(rec, dict) or "image" not in rec or "queries" not in rec:
                raise ChexError(f"{p} line {n} lacks 'image'/'queries'; pass a prediction file of `chex evaluate`")
            if rec.get("task", task.name) != task.name:
                raise ChexError(f"{p} holds predictions of task {rec['task']}, not {task.name}; "
                                f"use --task {rec['task']}")
            records.append(rec)
    if not records:
        raise ChexError(f"{p} holds no predictions")
    return records


def write_results(run_dir: Path, run: TaskRun) -> list[Path]:
    files = []
    path = run_dir / f"{run.prefix}.json"
    path.write_text(json.dumps(run.scores.metrics, indent=2, allow_nan=True) + "\n")
    files.append(path)
    for group, res in run.scores.groups.items():
        rows = res.rows()
        if not rows:
            continue
        path = run_dir / f"{run.prefix}{GROUP_SUFFIX.get(group, '_' + group)}_bootstrap.csv"
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        files.append(path)
    return files


def evaluate_task(task: TaskConfig, run_dir: Path, split: str, data_dir, model=None, predictions=None,
                  batch_size: int = 8, device="cpu", n_bootstrap: int = 0, labeler=None, tune: bool = False,
                  resettle: bool = False, progress=None, log: Callable[[str], None] = lambda m: None,
                  workers: int = 0, seed: int = 42) -> TaskRun:
    """Evaluate one task with the model, or re-score `predictions` (a JSONL path).

    tune: tune the post-processing on the val split first (model runs only).
    resettle: re-apply post-processing from the stored raw candidates of a
    prediction file with `task.settings` (otherwise its `detections` are scored).
    """
    run_dir = Path(run_dir)
    prefix = f"{split}_{task.name}"
    if predictions is not None:
        records = read_predictions(predictions, task)
        if resettle:
            _repostprocess(task, records)
        targets = load_targets(data_dir, task, split)
        files = []
    else:
        if model is None:
            raise ChexError("give --model BUNDLE to run inference, or --predictions FILE to re-score")
        torch.manual_seed(seed)
        if tune and task.kind in ("detection", "grounding"):
            log(f"{task.name}: tuning post-processing on the val split")
            val_records, val_targets = run_inference(model, task, data_dir, "val", batch_size, device,
                                                     progress=progress, workers=workers, seed=seed)
            task = TaskConfig(task.name, task.kind, task.dataset, tune_task(task, val_records, val_targets), task.raw)
        elif tune:
            log(f"{task.name}: nothing to tune for this task; using its settings")
        path = run_dir / f"{prefix}.predictions.jsonl"
        tmp = path.with_suffix(".jsonl.part")
        with open(tmp, "w") as sink:
            records, targets = run_inference(model, task, data_dir, split, batch_size, device, sink=sink,
                                             progress=progress, workers=workers, seed=seed)
        tmp.replace(path)
        files = [path]
    scores = score_task(task, records, targets, n_bootstrap=n_bootstrap, labeler=labeler)
    run = TaskRun(task, split, scores, task.settings, files)
    run.files += write_results(run_dir, run)
    return run


def _repostprocess(task: TaskConfig, records: Iterable[dict]) -> None:
    from chexcli.data.names import class_names

    if task.kind == "detection":
        names = class_names(task.get("class_names"))
        for rec in records:
            if any("logit" not in r for q in rec["queries"] for r in q.get("regions", [])):
                raise ChexError("this prediction file has no raw candidates to re-post-process; drop --settings")
            apply_detection_postprocess(rec, task.settings, names)
    elif task.kind == "grounding":
        for rec in records:
            apply_grounding_postprocess(rec, task.settings)


def write_run_files(run_dir: Path, runs: list[TaskRun], args: dict) -> None:
    metrics = {f"{r.prefix}/{k}": v for r in runs for k, v in r.scores.metrics.items()}
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (run_dir / "settings.json").write_text(json.dumps({r.task.name: r.settings for r in runs}, indent=2) + "\n")
    (run_dir / "args.json").write_text(json.dumps(args, indent=2, default=str) + "\n")
