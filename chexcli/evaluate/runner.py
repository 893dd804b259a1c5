"""What `chex evaluate` runs: one task on a model (or on a prediction file) -> files + metrics.

Files written into the run folder, per evaluated task (`<split>_<task>` prefix):
`<split>_<task>.predictions.jsonl` (one JSON line per image, model runs only),
`<split>_<task>.json` (flat metrics: point values, or `/mean`, `/std`, `/point`,
`/ci_low`, `/ci_high` when bootstrapped), `<split>_<task>[_<group>]_bootstrap.csv`
(one row per replicate), `<split>_<task>.skipped_images.csv` (images that could not be
read: left out of the metrics, the run goes on); and for the run: `settings.json` (task -> the
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
from chexcli.evaluate.records import read_predictions
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
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (sample_id, reason) left out

    @property
    def prefix(self) -> str:
        return f"{self.split}_{self.task.name}"


class SkipUnreadable(torch.utils.data.Dataset):
    """A ChexDataset whose unreadable images become {"unreadable": (sample_id, reason)} instead of an error.

    Evaluation lists such an image and goes on with the others (the NIH images are read
    from the raw files at this point; a file may have been damaged after prepare).
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        try:
            return self.dataset[i]
        except ChexError as err:
            return {"unreadable": (self.dataset.sample_id(self.dataset.df.iloc[i]), " ".join(str(err).split()))}


def collate_readable(samples: list[dict]) -> dict:
    """`collate` of the readable samples; the others are listed under "unreadable" (no "x" if none is left)."""
    from chexcli.data.dataset import collate

    good = [s for s in samples if "unreadable" not in s]
    batch = collate(good) if good else {}
    batch["unreadable"] = [s["unreadable"] for s in samples if "unreadable" in s]
    return batch


def make_loader(data_dir: str | Path, task: TaskConfig, split: str, batch_size: int, workers: int = 0):
    from torch.utils.data import DataLoader

    from chexcli.data.dataset import ChexDataset
    from chexcli.workers import worker_init

    ds = ChexDataset(data_dir, task.dataset, split=split, transform="eval")
    if len(ds) == 0:
        raise ChexError(f"the {split} split of {task.dataset} in {data_dir} is empty; prepare the dataset first")
    return DataLoader(SkipUnreadable(ds), batch_size=batch_size, shuffle=False, drop_last=False,
                      collate_fn=collate_readable, num_workers=workers,
                      worker_init_fn=worker_init() if workers else None)  # workers die with this process


def _readable_batches(loader, unreadable: list | None):
    """The batches of `loader` that hold at least one image; unreadable images go to `unreadable`."""
    for batch in loader:
        if unreadable is not None:
            unreadable.extend(batch["unreadable"])
        if "x" in batch:
            yield batch


def run_inference(model, task: TaskConfig, data_dir, split: str, batch_size: int, device, sink=None,
                  progress: Callable[[int, int], None] | None = None, workers: int = 0, seed: int = 42,
                  unreadable: list | None = None):
    """(records, targets) of a split; each record is also written to `sink` as a JSON line.

    Images that cannot be read are left out of both and appended to `unreadable` as
    (sample_id, reason).
    """
    loader = make_loader(data_dir, task, split, batch_size, workers)
    inf = TaskInference(model, task, device=device, seed=seed)
    records, targets = [], []
    total = len(loader.dataset)
    skipped: list = []
    for batch in loader:
        skipped += batch["unreadable"]
        recs = inf(batch) if "x" in batch else []
        records += recs
        if recs:
            targets += list(batch_targets(task.kind, batch))
        if sink is not None:
            for r in recs:
                sink.write(json.dumps(r) + "\n")
        if progress is not None:
            progress(len(recs) + len(batch["unreadable"]), total)
    if unreadable is not None:
        unreadable.extend(skipped)
    if not records:
        raise ChexError(f"no image of the {split} split of {task.dataset} in {data_dir} could be read "
                        f"(first: {skipped[0][1] if skipped else 'none'})")
    return records, targets


def load_targets(data_dir, task: TaskConfig, split: str, batch_size: int = 16, workers: int = 0,
                 unreadable: list | None = None) -> list[dict]:
    """Ground truth of a split (unreadable images left out and appended to `unreadable`)."""
    targets = []
    for batch in _readable_batches(make_loader(data_dir, task, split, batch_size, workers), unreadable):
        targets += list(batch_targets(task.kind, batch))
    return targets


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
    unreadable: list[tuple[str, str]] = []
    if predictions is not None:
        records = read_predictions(predictions, task)
        if resettle:
            _repostprocess(task, records)
        targets = load_targets(data_dir, task, split, unreadable=unreadable)
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
                                             progress=progress, workers=workers, seed=seed, unreadable=unreadable)
        tmp.replace(path)
        files = [path]
    scores = score_task(task, records, targets, n_bootstrap=n_bootstrap, labeler=labeler)
    run = TaskRun(task, split, scores, task.settings, files, unreadable)
    if unreadable:
        path = run_dir / f"{prefix}.skipped_images.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["sample_id", "reason"])
            w.writerows(unreadable)
        run.files.append(path)
        scores.notes.append(f"{len(unreadable)} image(s) could not be read and were left out of the metrics "
                            f"(see {path.name}); first: {unreadable[0][1]}")
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
