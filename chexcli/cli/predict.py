"""`chex predict`: boxes and sentences for text prompts and box prompts on images."""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from chexcli.devices import resolve_device
from chexcli.errors import ChexError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".dcm", ".dicom"}

EXAMPLES = """
Examples:

  chex predict cxr.jpg --model bundles/chex --prompt "left lung opacity" --prompt "cardiomegaly"

  chex predict cxr.dcm --model bundles/chex --report

  chex predict scans/ --model bundles/chex --box 120,80,400,360 --json > predictions.jsonl

  chex predict cxr.png --model bundles/chex --prompt "cardiomegaly" --literal --name literal

  find scans -name '*.dcm' | chex predict - --model bundles/chex --prompt "pleural effusion" --json

  chex predict --queries study.csv --model bundles/chex --name job --shard 3/8 --resume
"""


def default_decode_workers() -> int:
    """Decoding processes for `chex predict`: none where the model needs every CPU (measured on 2 cores:
    a worker there lowers throughput by about 20 %), else up to 4, leaving 2 CPUs to the model."""
    from chexcli.workers import available_cpus

    cpus = available_cpus() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return 0 if cpus <= 2 else min(4, cpus - 2)


def parse_box(text: str) -> tuple[float, float, float, float]:
    """'x1,y1,x2,y2' -> four floats (one-line error otherwise)."""
    from chexcli.predict_jobs import parse_box_text

    try:
        return parse_box_text(text, f"--box {text!r}")
    except ValueError as err:
        raise ChexError(str(err)) from None


def _is_image_file(f: Path) -> bool:
    """A file of a folder worth reading: an image suffix, or a DICOM without one (scanners
    name files like 1.2.840.113619.2.5.1 or IM0001): the DICM magic at offset 128."""
    if not f.is_file() or f.name.startswith("."):
        return False
    if f.suffix.lower() in IMAGE_SUFFIXES:
        return True
    from chexcli.data.images.readers import is_dicom

    return is_dicom(f)


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns -> image paths in order.

    A missing file among others is reported per image later (the others are still
    predicted); when every named file is missing, that is an input error (exit 2).
    """
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(f for f in p.iterdir() if _is_image_file(f))
        elif any(ch in item for ch in "*?[") and not p.exists():
            paths += [Path(m) for m in sorted(glob.glob(item, recursive=True)) if Path(m).is_file()]
        else:
            paths.append(p)
    if not paths:
        raise ChexError(f"no images found in {' '.join(inputs)}")
    missing = [p for p in paths if not p.exists()]
    if len(missing) == len(paths):
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ChexError(f"{missing[0]}: file not found{more}")
    return paths


def read_jobs(images: list[str] | None, queries: str | None, prompts: list[str], boxes: list) -> list:
    """The ImageJobs of the command: a --queries table, else image paths (or `-`: paths on stdin)."""
    from chexcli.predict_jobs import jobs_from_paths, read_path_list, read_queries

    if queries:
        return read_queries(queries, prompts, boxes)
    inputs = read_path_list(sys.stdin) if images == ["-"] else list(images or [])
    return jobs_from_paths(expand_inputs(inputs), prompts, boxes)


def rank_device(dev):
    """Under torchrun, a bare `cuda` becomes the GPU of this process's LOCAL_RANK."""
    import torch

    if dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return dev


def predict(
    images: Optional[list[str]] = typer.Argument(None, help="Image files (JPEG, PNG, DICOM), folders or glob "
                                                 "patterns; - reads paths from standard input, one per line."),
    queries: Optional[str] = typer.Option(None, "--queries", "-q", metavar="FILE",
                                          help="A CSV or JSONL table with one row per image: image, prompts, "
                                               "boxes, id (- reads standard input; see docs/batch.md)."),
    model: Path = typer.Option(..., "--model", "-m", help="Model bundle folder."),
    prompt: Optional[list[str]] = typer.Option(None, "--prompt", "-p", help="Text prompt (repeatable)."),
    box: Optional[list[str]] = typer.Option(None, "--box", "-b", help="Box prompt x1,y1,x2,y2 (repeatable)."),
    literal: bool = typer.Option(False, "--literal", help="Embed every prompt exactly as typed (by default a "
                                 "known anatomy or pathology name uses the mean of its synonym prompts)."),
    out: Path = typer.Option(Path("runs/predict"), "--out", help="Parent folder of the run folder."),
    name: str = typer.Option("run", "--name", help="Run folder name, a plain name (run, run2, ... never overwritten)."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per image per line on stdout."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per batch."),
    dtype: str = typer.Option("float32", "--dtype",
                              help="float32 (exact), or float16 / int8 weights for the sentence generator (CPU, faster)."),
    box_format: str = typer.Option("pixel", "--box-format",
                                   help="pixel: x1,y1,x2,y2 in pixels; normalized: the same divided by width/height."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="Cap sentence length."),
    no_images: bool = typer.Option(False, "--no-images", help="Do not write annotated PNGs."),
    no_sentences: bool = typer.Option(False, "--no-sentences", help="Boxes and scores only (faster; works "
                                      "without the bundle's GPT-2 tokenizer)."),
    report: bool = typer.Option(False, "--report", help="Also write a full report (14 CheXpert + 15 anatomy "
                                "queries, region selection, synonym removal) with each sentence's box."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run folder --out/--name: images whose lines "
                                "are complete in predictions.jsonl are skipped."),
    shard: Optional[str] = typer.Option(None, "--shard", metavar="K/N", help="Predict only shard K of N (a "
                                        "contiguous block of the input); shards share the run folder --out/--name. "
                                        "Under torchrun each rank takes its own shard."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Processes that decode images while the "
                                          "model runs (0: decode in this process; default: 0 on a machine with "
                                          "2 CPUs or fewer, else up to 4, leaving 2 CPUs to the model)."),
) -> None:
    """Predict boxes and sentences for text prompts and/or boxes on one or many images.

    Writes annotated PNGs and predictions.jsonl into a new run folder.
    """
    from chexcli.predict_jobs import parse_shard, shard_from_environment
    from chexcli.predict_run import PredictOptions, run_jobs
    from chexcli.runs import check_out_dir, check_run_name

    if not images and not queries:
        raise ChexError("no images: give image files, folders, - (paths on standard input) or --queries FILE")
    if images and queries:
        raise ChexError("give either images or --queries FILE, not both")
    if not prompt and not box and not report and not queries:
        raise ChexError("no query: give at least one --prompt TEXT or --box x1,y1,x2,y2, or --report")
    if any(not p.strip() for p in prompt or []):
        raise ChexError("empty --prompt: give some text, e.g. --prompt 'left lung opacity'")
    if report and no_sentences:
        raise ChexError("--report writes sentences; drop --no-sentences")
    if box_format not in ("pixel", "normalized"):
        raise ChexError(f"unknown --box-format {box_format!r}; use pixel or normalized")
    if dtype not in ("float32", "float16", "int8"):
        raise ChexError(f"unknown --dtype {dtype!r}; use float32, float16 or int8")
    boxes = [parse_box(b) for b in box or []]
    check_run_name(name)
    check_out_dir(out)
    shard_k_n = parse_shard(shard) if shard else shard_from_environment()
    jobs = read_jobs(images, queries, list(prompt or []), boxes)
    dev = resolve_device(device)
    if shard_k_n and not shard:  # a torchrun rank
        dev = rank_device(dev)
    options = PredictOptions(model_dir=model, out=out, name=name, json_out=json_out, device=dev,
                             batch_size=batch_size, dtype=dtype, box_format=box_format, max_new_tokens=max_new_tokens,
                             write_images=not no_images, report=report, literal=literal, sentences=not no_sentences,
                             resume=resume, shard=shard_k_n,
                             workers=default_decode_workers() if workers is None else workers)
    sys.exit(run_jobs(jobs, options))


predict.__doc__ = (predict.__doc__ or "") + EXAMPLES
