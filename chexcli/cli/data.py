"""`chex data`: fetch raw datasets, prepare processed folders, show what a folder holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(help="Fetch, prepare and inspect the datasets.", no_args_is_help=True)


@app.command()
def fetch(
    name: str = typer.Argument(..., help="mimic-cxr-jpg, mimic-cxr, chest-imagenome, ms-cxr, vindr-cxr or nih-cxr14"),
    to: Optional[Path] = typer.Option(None, "--to", help="target folder (default: $CHEX_DATA_DIR/<dataset folder>)"),
    workers: int = typer.Option(4, "--workers", min=1, help="parallel downloads"),
    include: Optional[List[str]] = typer.Option(None, "--include", help="only files matching this glob (repeatable)"),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="server root (default https://physionet.org or https://www.kaggle.com)"),
    retries: int = typer.Option(5, "--retries", min=0, help="retries per file (and for the checksum list) on network errors, 5xx, stalls"),
    timeout: float = typer.Option(30.0, "--timeout", min=0.01, help="seconds to wait for a connection or for any single read before the attempt is retried"),
    stall_timeout: float = typer.Option(60.0, "--stall-timeout", min=0, help="retry an attempt that received fewer than --stall-bytes in this many seconds (0: off)"),
    stall_bytes: int = typer.Option(16384, "--stall-bytes", min=1, help="see --stall-timeout"),
) -> None:
    """Download a raw dataset, resumably, and verify every file.

    PhysioNet credentials come from PHYSIONET_USER / PHYSIONET_PASSWORD, a netrc entry or a prompt; Kaggle credentials from KAGGLE_USERNAME / KAGGLE_KEY or ~/.kaggle/kaggle.json.

    No wait is unbounded: a silent server costs --timeout per attempt, a trickling one --stall-timeout, each followed by a retry that resumes where the data stopped. Exit code 2 for bad input or refused credentials, 1 if a file could not be fetched.

    Example: chex data fetch mimic-cxr --include 'mimic-cxr-reports.zip' --to ~/datasets/MIMIC-CXR/mimic-cxr_2-0-0
    """
    from chexcli.data.fetch.run import fetch as do_fetch
    from chexcli.data.sources import default_raw
    from chexcli.errors import ChexError

    dest = to or default_raw(name)
    rep = do_fetch(name, dest, workers=workers, include=include, base_url=base_url, retries=retries,
                   timeout=timeout, stall_timeout=stall_timeout, stall_bytes=stall_bytes)
    typer.echo(f"{name}: {len(rep.downloaded)} downloaded, {len(rep.skipped)} already verified, "
               f"{len(rep.failed)} failed -> {dest}", err=True)
    for rel, why in rep.failed[:20]:
        typer.echo(f"  failed: {rel}: {why}", err=True)
    if len(rep.failed) > 20:
        typer.echo(f"  ... and {len(rep.failed) - 20} more", err=True)
    if rep.failed:
        n, final = len(rep.failed), len(rep.final)
        if not final:
            hint = "run the same command again to resume"
        elif final == n:
            hint = "rerunning will not help (see the reasons above)"
        else:
            hint = f"run the same command again to resume {n - final} of them; rerunning will not fix the other {final}"
        raise ChexError(f"{n} file(s) could not be fetched; {hint}", exit_code=1)


@app.command()
def prepare(
    name: str = typer.Argument(..., help="mimic (all four MIMIC sources), mimic-cxr-jpg, mimic-cxr, chest-imagenome, ms-cxr, "
                                "vindr-cxr, nih-cxr14, synthetic (generated, no download) or custom (your own table, "
                                "docs/custom-data.md); short names: mimic-jpg, cig, mscxr, vindr, nih"),
    raw: Optional[Path] = typer.Option(None, "--raw", help="raw folder (default: $CHEX_DATA_DIR/<dataset folder>)"),
    out: Optional[Path] = typer.Option(None, "--out", help="processed folder (default: $CHEX_DATA_DIR/<dataset>/processed)"),
    workers: int = typer.Option(2, "--workers", min=1, help="worker processes"),
    size: int = typer.Option(256, "--cache-size", help="image cache side: 256 (models up to 256 px) or 512"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON on stdout"),
    n: int = typer.Option(4000, "--n", min=1, help="synthetic: number of images"),
    seed: int = typer.Option(0, "--seed", min=0, help="synthetic: seed (same seed and --n, same bytes)"),
    table: Optional[Path] = typer.Option(None, "--table", help="custom: the CSV or JSONL table (docs/custom-data.md)"),
    images: Optional[Path] = typer.Option(None, "--images", help="custom: folder the table's image paths are "
                                          "relative to (default: the table's folder)"),
) -> None:
    """Turn raw downloads into a processed folder (tables, uint8 image cache, manifest).

    Resumable: rerun the same command after an interruption. Exit code 1 if an image or
    a report could not be read (listed in skipped_images.csv / skipped_reports.csv; the
    rest is prepared), 2 for bad input (a missing or damaged raw table), 0 otherwise.

    Example: chex data prepare mimic --raw ~/datasets/MIMIC-CXR --out ~/datasets/MIMIC-CXR/processed --workers 8

    Example: chex data prepare synthetic --n 4000 --seed 0 --out data/synthetic

    Example: chex data prepare custom --table cases.csv --images xrays/ --out data/mine
    """
    from chexcli.data.prepare.dispatch import prepare as do_prepare
    from chexcli.data.sources import default_out, default_raw, resolve_name
    from chexcli.errors import ChexError

    name = resolve_name(name)
    if size not in (256, 512):
        raise ChexError("--cache-size must be 256 or 512")
    if name == "custom":
        res = _prepare_custom(table, images, out, workers, size)
    else:
        res = do_prepare(name, raw or default_raw(name), out or default_out(name), workers=workers,
                         side=size, n=n, seed=seed)
    for m in res.messages:
        typer.echo(m, err=True)
    if as_json:
        typer.echo(json.dumps({"out": str(res.out), "skipped": res.skipped, "skipped_reports": res.skipped_reports,
                               "datasets": res.datasets}, indent=1))
    else:
        for ds, s in res.datasets.items():
            typer.echo(f"{ds}: " + ", ".join(f"{k} {v}" for k, v in s["splits"].items()), err=True)
        typer.echo(f"prepared {name} -> {res.out}", err=True)
    lost = [f"{n} {what} could not be read and were skipped (see {f})"
            for n, what, f in ((res.skipped, "image(s)", res.skipped_file),
                               (res.skipped_reports, "report(s)", res.skipped_reports_file)) if n]
    if lost:
        raise ChexError("; ".join(lost), exit_code=1)


def _prepare_custom(table: Optional[Path], images: Optional[Path], out: Optional[Path], workers: int, size: int):
    """`prepare custom`: every problem of the table on its own line (stderr), then the one-line error."""
    from chexcli.data.prepare.custom import summary
    from chexcli.data.prepare.custom_table import TableProblems
    from chexcli.data.prepare.dispatch import prepare as do_prepare
    from chexcli.errors import ChexError

    if table is None or out is None:
        raise ChexError("chex data prepare custom needs --table FILE and --out DIR (and --images DIR unless the "
                        "image paths are relative to the table's folder); see docs/custom-data.md")
    try:
        res = do_prepare("custom", Path("."), out, workers=workers, side=size, table=table, images=images)
    except TableProblems as err:
        for line in err.lines():
            typer.echo(line, err=True)
        raise
    res.messages[:0] = summary(res)
    return res


@app.command()
def info(
    folder: Path = typer.Argument(..., help="a processed folder"),
    as_json: bool = typer.Option(False, "--json", help="print JSON on stdout"),
) -> None:
    """Show schema version, counts per split and class, image cache size, completeness.

    Exit code 1 if the folder is incomplete.

    Example: chex data info ~/datasets/MIMIC-CXR/processed
    """
    from rich.console import Console

    from chexcli.data.processed.info import folder_info, render_info

    inf = folder_info(folder)
    if as_json:
        typer.echo(json.dumps(inf, indent=1))
    else:
        render_info(inf, Console())
    if not inf["complete"]:
        raise typer.Exit(1)
