"""The work list of `chex predict`: one `ImageJob` per image, from paths, standard input or a queries table.

    jobs = jobs_from_paths(paths, prompts, boxes)               # the same queries for every image
    jobs = read_queries("study.csv", prompts, boxes)            # per-image queries (CSV or JSONL, "-": stdin)
    jobs = shard_jobs(jobs, 3, 8)                               # --shard 3/8: a contiguous eighth
    done = ResumeState.read(run_dir / "predictions.jsonl")      # --resume: complete lines kept, half line dropped
    todo = [job for job in jobs if not done.take(job)]

A queries table has one row per image:

    column    required  meaning
    image     yes       image path (relative paths: relative to the table's folder; stdin: the working folder)
    prompts   no        text prompts; CSV: separated by "|", JSONL: a list of strings
    boxes     no        box prompts in --box-format units; CSV: "x1,y1,x2,y2|x1,y1,x2,y2", JSONL: [[x1, y1, x2, y2]]
    id        no        carried into the output line as "id" (unique; also the key of --resume)

The --prompt and --box options of the command are added to every row. Problems are
collected for the whole table and reported as "FILE:LINE: column NAME: what is wrong".
"""

from __future__ import annotations

import collections
import csv
import io
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from chexcli.errors import ChexError

Box = tuple[float, float, float, float]
COLUMNS = ("image", "prompts", "boxes", "id")
ALIASES = {"prompt": "prompts", "box": "boxes", "path": "image"}
MAX_PROBLEMS_SHOWN = 20


@dataclass(frozen=True)
class ImageJob:
    """One image and its queries. `index`: position in the whole input (before sharding)."""

    index: int
    path: Path
    prompts: tuple[str, ...] = ()
    boxes: tuple[Box, ...] = ()
    id: str | None = None

    @property
    def key(self) -> str:
        """What identifies the job's output line for --resume: its id, else its image path."""
        return f"id:{self.id}" if self.id is not None else f"image:{self.path}"


class QueryTableError(ChexError):
    """A queries table with problems; `problems` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]):
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = len(problems) - len(shown)
        self.problems = problems
        lines = shown + ([f"... and {more} more"] if more else [])
        super().__init__("\n".join(lines) + f"\n{source}: {len(problems)} problem{'s' * (len(problems) != 1)}; "
                         "fix the rows above (columns: image, prompts, boxes, id)")


# ---------------------------------------------------------------------- boxes


def check_box(values: Sequence, what: str) -> Box:
    """Four finite numbers x1, y1, x2, y2 with x2 > x1 and y2 > y1; ValueError naming `what` otherwise."""
    try:
        box = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        box = ()
    if len(box) != 4:
        raise ValueError(f"{what}: give four numbers x1,y1,x2,y2")
    if not all(math.isfinite(v) for v in box):
        raise ValueError(f"{what}: coordinates must be finite numbers")
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"{what}: need x2 > x1 and y2 > y1 (corners x1,y1,x2,y2)")
    return box  # type: ignore[return-value]


def parse_box_text(text: str, what: str) -> Box:
    """'x1,y1,x2,y2' -> a checked box."""
    return check_box([p for p in text.replace(" ", "").split(",") if p != ""], what)


# ---------------------------------------------------------------------- sources of jobs


def jobs_from_paths(paths: Sequence[Path], prompts: Sequence[str] = (), boxes: Sequence[Box] = ()) -> list[ImageJob]:
    """The same queries for every image."""
    return [ImageJob(i, Path(p), tuple(prompts), tuple(boxes)) for i, p in enumerate(paths)]


def read_path_list(stream) -> list[str]:
    """Image paths (or folders, patterns) from a text stream, one per line; blank lines skipped."""
    return [line.strip() for line in stream if line.strip()]


def read_queries(file: str, prompts: Sequence[str] = (), boxes: Sequence[Box] = ()) -> list[ImageJob]:
    """The jobs of a queries table (CSV or JSONL; "-" reads standard input)."""
    if file == "-":
        text, base, name = sys.stdin.read(), Path.cwd(), "<stdin>"
    else:
        path = Path(file)
        if not path.is_file():
            raise ChexError(f"--queries {file}: file not found")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as err:
            raise ChexError(f"--queries {file}: cannot read it as UTF-8 text ({err})") from None
        base, name = path.resolve().parent, file
    suffix = Path(file).suffix.lower()
    is_jsonl = suffix in (".jsonl", ".json") or (suffix != ".csv" and text.lstrip().startswith("{"))
    rows = _jsonl_rows(text, name) if is_jsonl else _csv_rows(text, name)
    return _jobs_from_rows(rows, name, base, tuple(prompts), tuple(boxes))


def _csv_rows(text: str, name: str) -> Iterable[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip().lower() for h in reader.fieldnames or []]
    columns = [ALIASES.get(h, h) for h in header]
    unknown = [h for h, c in zip(header, columns) if c not in COLUMNS]
    if not header or "image" not in columns or unknown:
        what = f"unknown column {unknown[0]!r}" if unknown else "no 'image' column"
        raise ChexError(f"{name}:1: {what}; the columns are image, prompts, boxes, id")
    for row in reader:
        values = dict(zip(columns, row.values()))
        fields = {"image": (values.get("image") or "").strip()}
        if values.get("prompts"):
            fields["prompts"] = [p for p in values["prompts"].split("|")]
        if values.get("boxes"):
            fields["boxes"] = [b for b in values["boxes"].split("|") if b.strip()]
        if (values.get("id") or "").strip():
            fields["id"] = values["id"].strip()
        yield reader.line_num, fields


def _jsonl_rows(text: str, name: str) -> Iterable[tuple[int, dict]]:
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            yield line_no, {"__error__": "not a JSON object"}
            continue
        if not isinstance(row, dict):
            yield line_no, {"__error__": "not a JSON object"}
            continue
        row = {ALIASES.get(k, k): v for k, v in row.items()}
        unknown = sorted(set(row) - set(COLUMNS))
        if unknown:
            row["__error__"] = f"unknown key {unknown[0]!r} (keys: image, prompts, boxes, id)"
        yield line_no, row


def _jobs_from_rows(rows: Iterable[tuple[int, dict]], name: str, base: Path, prompts: tuple[str, ...],
                    boxes: tuple[Box, ...]) -> list[ImageJob]:
    jobs, problems, ids = [], [], {}
    for line_no, row in rows:
        where = f"{name}:{line_no}"
        try:
            job = _job_from_row(len(jobs), row, base, prompts, boxes, where)
        except ValueError as err:
            problems.append(f"{where}: {err}")
            continue
        if job.id is not None:
            if job.id in ids:
                problems.append(f"{where}: column id: {job.id!r} is also on line {ids[job.id]}; ids must be unique")
                continue
            ids[job.id] = line_no
        jobs.append(job)
    if problems:
        raise QueryTableError(name, problems)
    if not jobs:
        raise ChexError(f"{name}: no rows; give one row per image (columns: image, prompts, boxes, id)")
    return jobs


def _job_from_row(index: int, row: dict, base: Path, prompts: tuple[str, ...], boxes: tuple[Box, ...],
                  where: str) -> ImageJob:
    if "__error__" in row:
        raise ValueError(row["__error__"])
    image = row.get("image")
    if not isinstance(image, str) or not image.strip():
        raise ValueError("column image: give the image's path")
    row_prompts = row.get("prompts") or []
    if isinstance(row_prompts, str):
        row_prompts = [row_prompts]
    if not isinstance(row_prompts, list) or not all(isinstance(p, str) for p in row_prompts):
        raise ValueError("column prompts: give a list of strings")
    cleaned = [" ".join(p.split()) for p in row_prompts]
    if any(not p for p in cleaned):
        raise ValueError("column prompts: an empty prompt")
    row_boxes = row.get("boxes") or []
    if not isinstance(row_boxes, list):
        raise ValueError("column boxes: give a list of [x1, y1, x2, y2]")
    checked = tuple(parse_box_text(b, f"column boxes: box {k}") if isinstance(b, str)
                    else check_box(b if isinstance(b, list) else [], f"column boxes: box {k}")
                    for k, b in enumerate(row_boxes, start=1))
    all_prompts, all_boxes = prompts + tuple(cleaned), boxes + checked
    if not all_prompts and not all_boxes:
        raise ValueError("no query: the row has no prompts or boxes (and no --prompt/--box was given)")
    job_id = row.get("id")
    if job_id is not None and not isinstance(job_id, (str, int)):
        raise ValueError("column id: give a string or a number")
    path = Path(image.strip())
    return ImageJob(index, path if path.is_absolute() else base / path, all_prompts, all_boxes,
                    None if job_id is None else str(job_id))


# ---------------------------------------------------------------------- shards


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' (1 <= K <= N) -> (K, N)."""
    k, sep, n = text.partition("/")
    if sep and k.strip().isdigit() and n.strip().isdigit() and 1 <= int(k) <= int(n):
        return int(k), int(n)
    raise ChexError(f"--shard {text!r}: give K/N with 1 <= K <= N, e.g. --shard 3/8")


def shard_from_environment() -> tuple[int, int] | None:
    """(RANK + 1, WORLD_SIZE) under torchrun with more than one process, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and "RANK" in os.environ:
        return int(os.environ["RANK"]) + 1, world
    return None


def shard_jobs(jobs: Sequence[ImageJob], k: int, n: int) -> list[ImageJob]:
    """Shard k of n: a contiguous block, so that concatenating shards 1..n keeps the input order."""
    total = len(jobs)
    return list(jobs[(k - 1) * total // n: k * total // n])


def shard_suffix(k: int, n: int) -> str:
    """'shard-03-of-12': zero-padded, so that `cat predictions.shard-*.jsonl` lists shards in order."""
    width = len(str(n))
    return f"shard-{k:0{width}d}-of-{n}"


# ---------------------------------------------------------------------- outputs


def annotated_names(jobs: Sequence[ImageJob]) -> dict[int, str]:
    """Job index -> file name of its annotated PNG: the image's stem, then stem_2, stem_3, ... for repeated
    stems in input order. Fixed by the input alone, so a resumed run writes the same names."""
    seen: collections.Counter[str] = collections.Counter()
    names = {}
    for job in jobs:
        stem = job.path.stem
        seen[stem] += 1
        names[job.index] = f"{stem}.png" if seen[stem] == 1 else f"{stem}_{seen[stem]}.png"
    return names


class ResumeState:
    """The complete lines of an interrupted run's predictions file, counted by job key."""

    def __init__(self, keys: collections.Counter):
        self.keys = keys

    @classmethod
    def empty(cls) -> "ResumeState":
        return cls(collections.Counter())

    @classmethod
    def read(cls, path: Path) -> "ResumeState":
        """Count the complete lines of `path`; a half-written last line is cut off the file."""
        if not path.exists():
            return cls(collections.Counter())
        data = path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            with open(path, "r+b") as f:
                f.truncate(len(complete))
        keys: collections.Counter[str] = collections.Counter()
        for line_no, line in enumerate(complete.splitlines(), start=1):
            try:
                record = json.loads(line)
            except ValueError:
                raise ChexError(f"{path}:{line_no}: not a prediction line; this file was not written by "
                                "chex predict, so --resume cannot continue it") from None
            keys[f"id:{record['id']}" if "id" in record else f"image:{record['image']}"] += 1
        return cls(keys)

    @property
    def count(self) -> int:
        return sum(self.keys.values())

    def take(self, job: ImageJob) -> bool:
        """True (and the line is used up) when the job's line is already complete."""
        if self.keys[job.key] > 0:
            self.keys[job.key] -= 1
            return True
        return False
