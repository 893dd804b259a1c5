"""`chex evaluate`: the nine paper tasks, their metrics and bootstrapping."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from chexcli.errors import ChexError

EXAMPLES = """
Examples:

  chex evaluate --task od_nih8 --model bundles/chex --data data/nih --split test --bootstrap 250

  chex evaluate --task od_mscxr --model bundles/chex --data data/mimic --tune

  chex evaluate --task od_mscxr --model bundles/chex --data data/mimic --settings runs/evaluate/run/settings.json

  chex evaluate --task od_nih8 --predictions runs/evaluate/run/test_od_nih8.predictions.jsonl --data data/nih
"""


def _fmt(metrics: dict, key: str) -> tuple[str, str]:
    if key in metrics:
        return f"{metrics[key]:.4f}", ""
    if f"{key}/mean" in metrics:
        m = metrics
        return (f"{m[key + '/point']:.4f}",
                f"{m[key + '/mean']:.4f} ± {m[key + '/std']:.4f}  [{m[key + '/ci_low']:.4f}, {m[key + '/ci_high']:.4f}]")
    return "–", ""


def evaluate(
    task: str = typer.Option(..., "--task", "-t", help="Task name, comma-separated names, or 'all'."),
    data: Path = typer.Option(..., "--data", "-d", help="Processed data folder (`chex data prepare`)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model bundle folder."),
    predictions: Optional[Path] = typer.Option(None, "--predictions",
                                               help="Re-score this prediction file instead of running the model."),
    split: str = typer.Option("test", "--split", help="val or test."),
    bootstrap: int = typer.Option(0, "--bootstrap", min=0,
                                  help="Bootstrap replicates for OD/SG (RC: 250, RE/RG: 10 as the reference); 0: off."),
    tune: bool = typer.Option(False, "--tune", help="Tune post-processing on the val split first (OD, SG)."),
    settings: Optional[Path] = typer.Option(None, "--settings", help="settings.json of an earlier run to reuse."),
    chexbert: Optional[Path] = typer.Option(None, "--chexbert",
                                            help="Folder with chexbert.pth and vocab.txt (clinical efficacy)."),
    out: Path = typer.Option(Path("runs/evaluate"), "--out", help="Parent folder of the run folder."),
    name: str = typer.Option("run", "--name", help="Run folder name (never overwritten)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per batch (the reference uses 8)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    workers: int = typer.Option(0, "--workers", min=0, help="Data-loader worker processes."),
    seed: int = typer.Option(42, "--seed", help="Global seed (RG multibox dropping)."),
) -> None:
    """Evaluate a model on the paper tasks, or re-score a saved prediction file."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from chexcli.evaluate.runner import evaluate_task, write_run_files
    from chexcli.evaluate.tasks import load_task, read_settings_file, resolve_names
    from chexcli.runs import check_out_dir, check_run_name, run_folder

    err = Console(stderr=True)
    check_run_name(name)
    check_out_dir(out)
    names = resolve_names(task)
    if split not in ("val", "test"):
        raise ChexError(f"--split {split!r}: use val or test")
    if (model is None) == (predictions is None):
        raise ChexError("give exactly one of --model BUNDLE (run the model) or --predictions FILE (re-score)")
    if predictions is not None and len(names) != 1:
        raise ChexError("--predictions holds one task's predictions; give a single --task")
    if predictions is not None and tune:
        raise ChexError("--tune needs the model on the val split; use --model instead of --predictions")
    if not data.is_dir():
        raise ChexError(f"data folder {data} not found; prepare it with `chex data prepare`")
    overrides = read_settings_file(settings) if settings else {}
    if predictions is not None:
        from chexcli.evaluate.runner import read_predictions

        read_predictions(predictions, load_task(names[0], overrides.get(names[0])))  # fail before any output
    labeler = None
    if chexbert is not None:
        from chexcli.metrics.chexbert import CheXbertLabeler

        labeler = CheXbertLabeler(chexbert, device=device if device.startswith("cuda") else "cpu")
    bundle = None
    dev = "cpu"
    if model is not None:
        from chexcli.devices import resolve_device
        from chexcli.model.bundle import load_bundle

        dev = resolve_device(device)
        tasks = [load_task(t, overrides.get(t)) for t in names]
        bundle = load_bundle(model, device=dev, needs=["prompts"] + (["sentences"] if any(
            t.generates for t in tasks) else []))
    runs = []
    with run_folder(out, name) as run_dir, Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=err, transient=True) as bar:
        err.print(f"run folder: {run_dir}")
        for t in names:
            cfg = load_task(t, overrides.get(t))
            pid = bar.add_task(f"{t} ({split})", total=None)

            def progress(n, total, pid=pid):
                bar.update(pid, advance=n, total=total)

            run = evaluate_task(cfg, run_dir, split, data, model=bundle, predictions=predictions,
                                batch_size=batch_size, device=dev, n_bootstrap=bootstrap, labeler=labeler,
                                tune=tune, resettle=settings is not None, progress=progress,
                                log=lambda m: err.print(m), workers=workers, seed=seed)
            runs.append(run)
            bar.remove_task(pid)
            for note in run.scores.notes:
                err.print(f"[yellow]note[/]: {t}: {note}")
    write_run_files(run_dir, runs, {"task": names, "model": model, "predictions": predictions, "data": data,
                                    "split": split, "bootstrap": bootstrap, "tune": tune, "settings": settings,
                                    "chexbert": chexbert, "batch_size": batch_size, "device": device, "seed": seed})
    table = Table(title=f"chex evaluate ({split})")
    table.add_column("task")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("bootstrap mean ± std [95% CI]")
    for run in runs:
        value, spread = _fmt(run.scores.metrics, run.task.headline)
        table.add_row(run.task.name, run.task.headline, value, spread)
    Console().print(table)
    err.print(f"metrics and predictions written to {run_dir}")
    unreadable = sum(len(r.unreadable) for r in runs)
    if unreadable:
        raise ChexError(f"{unreadable} image(s) could not be read and were left out of the metrics; see "
                        f"{run_dir}/*.skipped_images.csv", exit_code=1)


evaluate.__doc__ = (evaluate.__doc__ or "") + "\n" + EXAMPLES
