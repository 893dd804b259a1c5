"""The batch job behind `chex predict`: read images, predict in batches, write a run folder, print.

    code = run_jobs(jobs, PredictOptions(model_dir=..., out=..., name=...))   # jobs: predict_jobs.ImageJob

Images are decoded (and their boxes checked) in data-loader worker processes while the
model runs on the previous batch. Each image's line is appended to predictions.jsonl with
one write and flushed, after its annotated PNG is in place, so a run killed at any point
leaves complete lines only (and at most one half line, which --resume cuts off). Batches
are fixed by position in the input, so a resumed run computes every image in the same
batch as an uninterrupted run would: the same numbers, the same lines.

Exit codes: 0 all images succeeded; 1 some image could not be read or
processed (the others are still written); 2 bad input for every image
(for example a box outside every image).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from chexcli.errors import ChexError
from chexcli.predict_jobs import ImageJob, ResumeState, annotated_names, jobs_from_paths, shard_jobs, shard_suffix
from chexcli.runs import check_out_dir, check_run_name, run_folder


def _to_user_boxes(boxes: list[tuple[float, float, float, float]], box_format: str, width: int, height: int):
    if box_format == "pixel":
        return [list(b) for b in boxes]
    return [[b[0] * width, b[1] * height, b[2] * width, b[3] * height] for b in boxes]


def _format_box(box, box_format: str, width: int, height: int):
    if box is None:
        return None
    if box_format == "pixel":
        return [round(float(v), 2) for v in box]
    return [round(float(box[0]) / width, 5), round(float(box[1]) / height, 5),
            round(float(box[2]) / width, 5), round(float(box[3]) / height, 5)]


def prediction_record(pred, box_format: str) -> dict:
    """JSON-ready dict of an ImagePrediction with boxes in the requested format."""
    d = pred.to_dict()
    d["box_format"] = box_format
    for q in d["queries"]:
        q["box"] = _format_box(q["box"], box_format, pred.width, pred.height)
        for r in q["regions"]:
            r["box"] = _format_box(r["box"], box_format, pred.width, pred.height)
        if q["features"] is None:
            del q["features"]
    return d


class BoxError(ChexError):
    """A box prompt that does not fit an image."""


def check_boxes(boxes, width: int, height: int):
    """Pixel boxes [x1, y1, x2, y2] checked against an image of width x height and its centre square
    (BoxError, one line, otherwise); returns them as float tuples."""
    from chexcli.model.preprocess import crop_info, pixel_boxes_to_model, validate_pixel_box

    try:
        checked = [validate_pixel_box(b, width, height) for b in boxes]
    except ChexError as err:
        raise BoxError(str(err)) from None
    if checked:
        model = pixel_boxes_to_model(np.asarray(checked), crop_info(height, width))
        for b, m in zip(checked, model):
            if m[2] <= 1e-3 or m[3] <= 1e-3:
                raise BoxError(f"box {list(b)} lies outside the centre square the model sees "
                                f"(the image is centre-cropped to {min(width, height)} px)")
    return checked


def build_record(pred, rep, path: Path, gray: np.ndarray, box_format: str) -> dict:
    """The JSON record of one image; `box_pixels` keys (for drawing) are removed by strip_pixels."""
    h, w = gray.shape
    if pred is not None:
        record = prediction_record(pred, box_format)
        for q, raw in zip(record["queries"], pred.queries):
            q["box_pixels"] = raw.box
            for r, rr in zip(q["regions"], raw.regions):
                r["box_pixels"] = rr.box
    else:
        record = {"image": str(path), "width": w, "height": h, "queries": [], "box_format": box_format}
    if rep is not None:
        record["report"] = rep["report"]
        record["report_queries"] = []
        for q in rep["queries"]:
            q = dict(q, box_pixels=q["box"], box=_format_box(q["box"], box_format, w, h))
            q["regions"] = [dict(r, box_pixels=r["box"], box=_format_box(r["box"], box_format, w, h))
                            for r in q["regions"]]
            record["report_queries"].append(q)
    return record


def strip_pixels(record: dict) -> None:
    """Remove the `box_pixels` keys that build_record adds for drawing (in place)."""
    for q in record["queries"] + record.get("report_queries", []):
        q.pop("box_pixels", None)
        for r in q["regions"]:
            r.pop("box_pixels", None)


def best_candidate(query: dict) -> dict | None:
    """The highest-weight region of a text prompt that is not present (none of its R regions is), else None.

    `query` is a record's query dict; the region dict is returned as it is (its `box`, `weight`, ...).
    """
    if query.get("type") != "prompt" or query.get("present") or not query.get("regions"):
        return None
    return max(query["regions"], key=lambda r: r["weight"])


def render_item(query: dict, label: str, with_regions: bool = True) -> dict:
    """The `draw_predictions` item of a record query (pixel boxes from `box_pixels`): its box or,
    for a prompt that is not present, its best candidate (drawn dashed); `with_regions` adds the
    present regions."""
    present = [r for r in query["regions"] if r["present"]] if with_regions else []
    item = {"label": label, "sentence": query.get("sentence"), "box": query["box_pixels"],
            "regions": [r["box_pixels"] for r in present], "region_weights": [r["weight"] for r in present],
            "score": query["score"]}
    best = best_candidate(query)
    if best is not None:
        item.update(best_box=best["box_pixels"], best_weight=best["weight"])
    return item


def annotate_image(path: Path, gray: np.ndarray, record: dict, target: Path) -> None:
    """Draw the record's boxes and sentences on the image (H, W) in [0, 1] and save the PNG to `target`."""
    from chexcli.render import draw_predictions

    image = Image.fromarray(np.clip(gray * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    items = [render_item(q, q["prompt"], with_regions=False) for q in record.get("report_queries", []) if q["kept"]]
    items += [render_item(q, q["prompt"] if q["type"] == "prompt" else "box") for q in record["queries"]]
    draw_predictions(image, items, title=path.name).save(target)


def _human_lines(record: dict) -> list[str]:
    lines = [f"{record['image']} ({record['width']}x{record['height']})"]
    if "report" in record:
        lines.append(f"  report: {record['report']}")
    for q in record["queries"]:
        label = f"prompt {q['prompt']!r} ({_source_text(q['prompt_source'])})" if q["type"] == "prompt" else "box"
        box = "none (not present)" if q["box"] is None else ", ".join(f"{v:g}" for v in q["box"])
        score = "" if q["score"] is None else f" score {q['score']:.3f}"
        lines.append(f"  {label}: box [{box}]{score}")
        for k, r in enumerate(q["regions"]):
            mark = "*" if r["present"] else " "
            lines.append(f"    {mark} region {k + 1}: [{', '.join(f'{v:g}' for v in r['box'])}] weight {r['weight']:.3f}")
        if q.get("sentence") is not None:
            lines.append(f"    sentence: {q['sentence'].strip()}")
    return lines


def _source_text(source: str | None) -> str:
    """prompt_source as printed: "as typed" for a verbatim prompt, else the name whose synonyms were averaged."""
    if source in (None, "sentence"):
        return "as typed"
    kind, _, name = source.partition(":")
    return f"{kind} {name}: mean of its synonym prompts"


def run_predict(paths: list[Path], model_dir: Path, prompts: list[str], boxes, out: Path, name: str,
                json_out: bool, device, batch_size: int, dtype: str, box_format: str,
                max_new_tokens: int | None, write_images: bool = True, report: bool = False,
                literal: bool = False, sentences: bool = True) -> int:
    """Predict every image of `paths` (the same prompts and boxes for each) into a new run folder
    `out/name`; returns the exit code. Raises ChexError (exit 2, no run folder left) when no image
    could be used at all."""
    options = PredictOptions(model_dir=Path(model_dir), out=Path(out), name=name, json_out=json_out, device=device,
                             batch_size=batch_size, dtype=dtype, box_format=box_format, max_new_tokens=max_new_tokens,
                             write_images=write_images, report=report, literal=literal, sentences=sentences)
    return run_jobs(jobs_from_paths(paths, prompts, boxes), options)


@dataclass
class PredictOptions:
    """How `chex predict` runs (everything but the images and their queries)."""

    model_dir: Path
    out: Path = Path("runs/predict")
    name: str = "run"
    json_out: bool = False
    device: object = "cpu"
    batch_size: int = 8
    dtype: str = "float32"
    box_format: str = "pixel"
    max_new_tokens: int | None = None
    write_images: bool = True
    report: bool = False
    literal: bool = False
    sentences: bool = True
    resume: bool = False  # continue the run folder out/name (complete lines are kept)
    shard: tuple[int, int] | None = None  # (K, N): this process predicts shard K of N
    workers: int = 0  # decoding processes (0: decode in this process)

    def recorded(self) -> dict:
        """What args.json records, and what --resume compares (what changes the output lines)."""
        keep = ("box_format", "dtype", "max_new_tokens", "report", "literal", "sentences", "batch_size")
        values = {k: v for k, v in asdict(self).items() if k in keep}
        return {"model": str(self.model_dir), **values, "shard": list(self.shard) if self.shard else None}


@dataclass
class RunFiles:
    """The files of a run (or of one shard of it) inside its run folder."""

    folder: Path
    suffix: str = ""

    def _name(self, stem: str, ext: str) -> Path:
        return self.folder / (f"{stem}.{self.suffix}{ext}" if self.suffix else f"{stem}{ext}")

    @property
    def predictions(self) -> Path:
        return self._name("predictions", ".jsonl")

    @property
    def args(self) -> Path:
        return self._name("args", ".json")

    @property
    def failed(self) -> Path:
        return self._name("failed", ".txt")

    @property
    def timing(self) -> Path:
        return self._name("timing", ".json")


@dataclass
class Decoded:
    """An image read (and its boxes checked) by a data-loader worker, or why it could not be."""

    job: ImageJob
    gray: object = None  # torch.Tensor (H, W) float32 in [0, 1] (shared memory between processes)
    boxes: list = field(default_factory=list)  # pixel boxes, checked against the image
    prepared: tuple | None = None  # preprocess_image(gray): network input (S, S) and its CropInfo
    error: str | None = None
    box_error: bool = False


class DecodeJobs:
    """A map-style dataset over jobs: item i is `Decoded` for jobs[i], read, checked and preprocessed
    for the model (runs in worker processes). `settings`: `Predictor.preprocess_settings()`."""

    def __init__(self, jobs: Sequence[ImageJob], box_format: str, settings: dict):
        self.jobs, self.box_format, self.settings = list(jobs), box_format, settings

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> Decoded:
        import torch

        from chexcli.data.images.readers import read_image
        from chexcli.model.preprocess import preprocess_image

        job = self.jobs[i]
        try:
            gray = read_image(job.path)
            h, w = gray.shape
            boxes = check_boxes(_to_user_boxes(list(job.boxes), self.box_format, w, h), w, h)
            return Decoded(job, torch.from_numpy(gray), boxes, preprocess_image(gray, **self.settings))
        except ChexError as err:
            message = str(err) if str(err).startswith(str(job.path)) else f"{job.path}: {err}"
            return Decoded(job, error=message, box_error=isinstance(err, BoxError))


def _as_list(batch):
    return batch


def decoded_batches(jobs: Sequence[ImageJob], batches: list[list[int]], box_format: str, settings: dict,
                    workers: int):
    """Decoded images batch by batch (`batches`: lists of positions in `jobs`), read ahead by
    `workers` processes while the caller predicts."""
    from torch.utils.data import DataLoader

    from chexcli.workers import worker_init

    loader = DataLoader(DecodeJobs(jobs, box_format, settings), batch_sampler=batches, collate_fn=_as_list,
                        num_workers=workers, worker_init_fn=worker_init() if workers else None,
                        prefetch_factor=2 if workers else None)
    return iter(loader)


def fixed_batches(jobs: Sequence[ImageJob], batch_size: int, done: ResumeState) -> tuple[list[list[int]], set[int]]:
    """Batches of `batch_size` consecutive jobs (fixed by position, as in an uninterrupted run), those
    with at least one job still to do; and the indices of the jobs already done."""
    batches, finished = [], set()
    for start in range(0, len(jobs), batch_size):
        positions = list(range(start, min(start + batch_size, len(jobs))))
        finished |= {jobs[p].index for p in positions if done.take(jobs[p])}
        if any(jobs[p].index not in finished for p in positions):
            batches.append(positions)
    return batches, finished


class LineWriter:
    """Appends whole lines to a file: one write per line, flushed to the operating system at once,
    so that a killed process leaves complete lines (and at most one half line at the end)."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, line: str) -> None:
        data = (line + "\n").encode()
        while data:
            data = data[os.write(self.fd, data):]

    def close(self) -> None:
        os.close(self.fd)


def write_png_atomically(path: Path, gray: np.ndarray, record: dict, target: Path) -> None:
    """annotate_image into a temporary file, then rename: a killed run leaves no half PNG."""
    tmp = target.with_name(f".tmp-{target.name}")  # keeps the .png suffix (PIL picks the format from it)
    annotate_image(path, gray, record, tmp)
    os.replace(tmp, target)


@dataclass
class RunStats:
    """What a run did and how long the model waited for decoded images."""

    written: int = 0
    skipped_done: int = 0
    failures: list[str] = field(default_factory=list)
    box_errors: int = 0
    wait_s: float = 0.0
    total_s: float = 0.0

    @property
    def wait_share(self) -> float:
        return self.wait_s / self.total_s if self.total_s else 0.0


def run_jobs(jobs: Sequence[ImageJob], options: PredictOptions) -> int:
    """Predict `jobs` (or their shard) into the run folder; returns the exit code (see the module doc)."""
    if options.shard:
        jobs = shard_jobs(jobs, *options.shard)
    if options.resume or options.shard:
        files = _shared_run_files(options)  # checked before the model loads
        return _run_into(files, _load_predictor(jobs, options), jobs, options)
    predictor = _load_predictor(jobs, options)
    with run_folder(options.out, options.name) as folder:
        return _run_into(RunFiles(folder), predictor, jobs, options)


def _load_predictor(jobs: Sequence[ImageJob], options: PredictOptions):
    from chexcli.model.bundle import load_bundle
    from chexcli.predict import Predictor

    needs = (["prompts"] if options.report or any(j.prompts for j in jobs) else []) + \
        (["sentences"] if options.sentences else [])
    model = load_bundle(options.model_dir, device=options.device, dtype=options.dtype, needs=needs)
    return Predictor(model, device=options.device, max_new_tokens=options.max_new_tokens,
                     generate=options.sentences, literal=options.literal)


def _shared_run_files(options: PredictOptions) -> RunFiles:
    """The run folder out/name itself (created when missing), for --resume and for shards, which
    share one folder; refuses to start over a run's predictions without --resume."""
    check_run_name(options.name)
    folder = check_out_dir(options.out) / options.name
    folder.mkdir(parents=True, exist_ok=True)
    files = RunFiles(folder, shard_suffix(*options.shard) if options.shard else "")
    if files.predictions.exists() and not options.resume:
        raise ChexError(f"{files.predictions} already exists; add --resume to continue that run, "
                        "or choose another --name")
    if options.resume and files.args.exists():
        before = json.loads(files.args.read_text())
        changed = sorted(k for k, v in options.recorded().items() if k in before and before[k] != v)
        if changed:
            raise ChexError(f"--resume: {folder} was started with other options ({', '.join(changed)}); "
                            "rerun with the same options, or choose another --name")
    return files


def _run_into(files: RunFiles, predictor, jobs: Sequence[ImageJob], options: PredictOptions) -> int:
    done = ResumeState.read(files.predictions) if options.resume else ResumeState.empty()
    files.args.write_text(json.dumps({**options.recorded(), "device": str(options.device), "images": len(jobs),
                                      "first_image": str(jobs[0].path) if jobs else None}, indent=1))
    batches, finished = fixed_batches(jobs, options.batch_size, done)
    stats = RunStats(skipped_done=len(finished))
    if finished:
        print(f"resuming: {len(finished)} of {len(jobs)} images already done", file=sys.stderr)
    started = time.perf_counter()
    sink = LineWriter(files.predictions)
    try:
        _predict_batches(jobs, batches, finished, predictor, options, files, annotated_names(jobs), sink, stats)
    finally:
        sink.close()
    stats.total_s = time.perf_counter() - started
    return _finish(files, stats, len(jobs))


def _predict_batches(jobs, batches, finished, predictor, options, files, names, sink, stats) -> None:
    from tqdm import tqdm

    workers = min(options.workers, len(batches)) if len(jobs) > 1 else 0
    todo = sum(len(b) for b in batches)
    with tqdm(total=todo, desc="predict", unit="img", file=sys.stderr, disable=todo < 2) as bar:
        stream = decoded_batches(jobs, batches, options.box_format, predictor.preprocess_settings(), workers)
        while True:
            waited = time.perf_counter()
            batch = next(stream, None)
            stats.wait_s += time.perf_counter() - waited
            if batch is None:
                break
            _predict_batch(batch, finished, predictor, options, files, names, sink, stats, multi=len(jobs) > 1)
            bar.update(len(batch))


def _predict_batch(batch: list[Decoded], finished: set[int], predictor, options, files, names, sink, stats,
                   multi: bool) -> None:
    """Predict one fixed batch (grouped by identical prompts) and write the lines of its jobs that are
    not done yet, in input order."""
    readable = [d for d in batch if d.error is None]  # done ones too: predicted again for the batch's numbers
    for d in batch:
        if d.error is not None and d.job.index not in finished:
            stats.failures.append(d.error)
            stats.box_errors += d.box_error
            if multi:
                print(f"skipped {d.error}", file=sys.stderr)
    results = {}
    for prompts in dict.fromkeys(d.job.prompts for d in readable):
        group = [d for d in readable if d.job.prompts == prompts]
        grays, paths = [d.gray.numpy() for d in group], [str(d.job.path) for d in group]
        prepared = [d.prepared for d in group]
        preds = (predictor.predict(grays, paths, list(prompts), [d.boxes for d in group], prepared=prepared)
                 if prompts or any(d.boxes for d in group) else [None] * len(group))
        reports = predictor.report(grays, paths, prepared=prepared) if options.report else [None] * len(group)
        results.update({d.job.index: (pred, rep) for d, pred, rep in zip(group, preds, reports)})
    for d in readable:
        if d.job.index in finished:
            continue
        _write_result(d, *results[d.job.index], options, files, names, sink)
        stats.written += 1


def _write_result(d: Decoded, pred, rep, options: PredictOptions, files: RunFiles, names, sink) -> None:
    gray = d.gray.numpy()
    record = build_record(pred, rep, d.job.path, gray, options.box_format)
    if d.job.id is not None:
        record = {"id": d.job.id, **record}
    if options.write_images:
        write_png_atomically(d.job.path, gray, record, files.folder / names[d.job.index])
    strip_pixels(record)
    line = json.dumps(record)
    sink.write(line)
    print(line if options.json_out else "\n".join(_human_lines(record)), flush=True)


def _finish(files: RunFiles, stats: RunStats, total: int) -> int:
    if total and not stats.written and not stats.skipped_done:  # nothing could run: bad input, not a partial failure
        if total == 1:
            raise ChexError(stats.failures[0])
        if stats.box_errors == total:
            raise ChexError(f"no image accepted the given boxes; first: {stats.failures[0]}")
        raise ChexError(f"none of the {total} images could be used; first: {stats.failures[0]}")
    if stats.failures:
        files.failed.write_text("\n".join(stats.failures) + "\n")
    else:
        files.failed.unlink(missing_ok=True)
    files.timing.write_text(json.dumps({
        "images_written": stats.written, "images_already_done": stats.skipped_done,
        "images_failed": len(stats.failures), "seconds": round(stats.total_s, 3),
        "waiting_for_input_s": round(stats.wait_s, 3), "waiting_share": round(stats.wait_share, 4)}, indent=1))
    print(f"results in {files.folder}", file=sys.stderr)
    return 1 if stats.failures else 0
