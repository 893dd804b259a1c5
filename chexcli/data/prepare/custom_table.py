"""The table of `chex data prepare custom`: read, check and group by image (docs/custom-data.md).

One row per image or per box (CSV with a header, or JSONL with one object per line; a JSONL
line may also hold its boxes as a list under ``boxes``). Rows naming the same ``image`` are
merged; the image-level columns (``split``, ``report``, ``sentences``) may sit on any of its
rows and must agree where repeated. Every problem is collected as ``TABLE:LINE: COLUMN: what``;
:func:`read_table` raises :class:`TableProblems` with all of them, so nothing is written
from a table that has one.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path

from chexcli.data.images.readers import image_size
from chexcli.data.names import anatomy_names
from chexcli.data.prepare.report_text import report_sentences, section_sentences
from chexcli.errors import ChexError

BOX_KEYS = ("x1", "y1", "x2", "y2")
IMAGE_KEYS = ("image", "split", "report", "sentences")
BOX_ROW_KEYS = ("finding", "anatomy", *BOX_KEYS, "sentence")
COLUMNS = (*IMAGE_KEYS, *BOX_ROW_KEYS)
SPLITS = {"train": "train", "validate": "validate", "val": "validate", "test": "test"}
SHOWN = 30  # problems printed; the summary counts all


class TableProblems(ChexError):
    """A table with problems: ``problems`` holds one line each; the message sums them up."""

    def __init__(self, problems: list[str], summary: str):
        super().__init__(summary)
        self.problems = problems

    def lines(self) -> list[str]:
        """The problems as printed: at most SHOWN, then how many more."""
        shown = self.problems[:SHOWN]
        more = len(self.problems) - len(shown)
        return shown + ([f"... and {more} more"] if more else [])


@dataclass
class Box:
    """One box row: ``kind`` finding or anatomy, ``box`` x1, y1, x2, y2 in pixels of the image file,
    ``link`` the sentence it describes (index into the image's sentences, or text), as given."""

    line: int
    kind: str
    name: str
    box: list[float]
    link: int | str | None = None
    text: str | None = None  # the linked sentence (resolved from the link)


@dataclass
class Image:
    """One image of the table with its boxes; ``width``/``height`` from the file's header."""

    key: str  # the image column as written: the sample id
    path: Path
    line: int  # first line naming it
    split: str | None = None
    sentences: list[str] | None = None
    boxes: list[Box] = field(default_factory=list)
    width: int = 0
    height: int = 0
    lines: dict[str, int] = field(default_factory=dict)  # image-level column -> line that set it


# ------------------------------------------------------------------------------------------ rows
def _rows(path: Path, problems: list[str]) -> list[tuple[int, dict]]:
    """(line, row) pairs of a CSV or JSONL table; a JSONL line's ``boxes`` become rows of that line."""
    try:
        text = path.read_text("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ChexError(f"{path} is not UTF-8 text (byte {err.start}); save the table as UTF-8") from None
    except OSError as err:
        raise ChexError(f"{path} cannot be read ({err.strerror or err})") from None
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return _jsonl_rows(path, text, problems)
    return _csv_rows(path, text, problems)


def _csv_rows(path: Path, text: str, problems: list[str]) -> list[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in reader.fieldnames or []]
    if not header:
        raise ChexError(f"{path} is empty; the first line must name the columns (docs/custom-data.md#columns)")
    reader.fieldnames = header
    for col in header:
        if col not in COLUMNS:
            problems.append(f"{path}:1: {col}: unknown column{_suggest(col, COLUMNS)}")
    for col in ("image", "split"):
        if col not in header:
            problems.append(f"{path}:1: {col}: missing column (every table needs image and split)")
    rows = []
    for row in reader:
        cells = {k: (v or "").strip() for k, v in row.items() if k in COLUMNS and isinstance(v, str)}
        if None in row:
            problems.append(f"{path}:{reader.line_num}: more cells than columns")
        rows.append((reader.line_num, {k: v for k, v in cells.items() if v != ""}))
    return rows


def _jsonl_rows(path: Path, text: str, problems: list[str]) -> list[tuple[int, dict]]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"{path}:{n}: not a JSON object ({err.msg})")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{path}:{n}: not a JSON object")
            continue
        boxes = obj.pop("boxes", [])
        for key in obj:
            if key not in COLUMNS:
                problems.append(f"{path}:{n}: {key}: unknown key{_suggest(key, (*COLUMNS, 'boxes'))}")
        obj = {k: v for k, v in obj.items() if k in COLUMNS and v not in (None, "")}
        if not isinstance(boxes, list) or not all(isinstance(b, dict) for b in boxes):
            problems.append(f"{path}:{n}: boxes: not a list of objects")
            boxes = []
        rows.append((n, obj))
        for b in boxes:
            for key in b:
                if key not in BOX_ROW_KEYS:
                    problems.append(f"{path}:{n}: boxes: {key}: unknown key{_suggest(key, BOX_ROW_KEYS)}")
            rows.append((n, {"image": obj.get("image"), **{k: v for k, v in b.items()
                                                           if k in BOX_ROW_KEYS and v not in (None, "")}}))
    return rows


def _suggest(word: str, choices) -> str:
    close = get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(choices)})"


# ------------------------------------------------------------------------------------------ cells
def _text(value) -> str | None:
    return " ".join(value.split()) if isinstance(value, str) and value.strip() else None


def _sentence_list(value, where: str, problems: list[str]) -> list[str] | None:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        problems.append(f"{where}: sentences: not a list of strings; write e.g. "
                        "[\"Heart size is normal.\", \"No effusion.\"]")
        return None
    return [t for s in value if (t := _text(s))]


def _report(value, where: str, problems: list[str]) -> list[str] | None:
    if not isinstance(value, str):
        problems.append(f"{where}: report: not text")
        return None
    return report_sentences(value) or section_sentences(value)


def _number(value, key: str, where: str, problems: list[str]) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        problems.append(f"{where}: {key}: {value!r} is not a number (pixels of the image file)")
        return None
    if not math.isfinite(x):
        problems.append(f"{where}: {key}: {value!r} is not a finite number")
        return None
    return x


def _link(value) -> int | str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return value
    text = str(value).strip()
    return int(text) if text.lstrip("-").isdigit() else _text(text)


# ------------------------------------------------------------------------------------------ checks
class _Reader:
    """Collects images and problems row by row."""

    def __init__(self, table: Path, images_dir: Path):
        self.table, self.images_dir = table, images_dir
        self.problems: list[str] = []
        self.images: dict[str, Image] = {}
        self.anatomy = {n.lower(): n for n in anatomy_names("cig_default")}
        self.findings: dict[str, str] = {}  # lower-case name -> the first spelling

    def where(self, line: int) -> str:
        return f"{self.table}:{line}"

    def row(self, line: int, row: dict) -> None:
        key = row["image"].strip() if isinstance(row.get("image"), str) else None
        if not key:
            self.problems.append(f"{self.where(line)}: image: missing; give the image file's path below --images")
            return
        img = self.images.get(key)
        if img is None:
            path = Path(key) if Path(key).is_absolute() else self.images_dir / key
            img = self.images[key] = Image(key, path, line)
        self._image_columns(img, line, row)
        self._box(img, line, row)

    def _image_columns(self, img: Image, line: int, row: dict) -> None:
        where = self.where(line)
        values = {}
        if "split" in row:
            split = SPLITS.get(str(row["split"]).strip().lower())
            if split is None:
                self.problems.append(f"{where}: split: unknown split {row['split']!r}; use train, validate or test")
                img.lines.setdefault("split", line)  # reported here, not again as missing
            values["split"] = split
        if "sentences" in row:
            values["sentences"] = _sentence_list(row["sentences"], where, self.problems)
        elif "report" in row:
            values["sentences"] = _report(row["report"], where, self.problems)
        for col, value in values.items():
            if value is None:
                continue
            old = getattr(img, col)
            if old is not None and old != value:
                self.problems.append(f"{where}: {col}: differs from line {img.lines[col]} for the same image "
                                     f"{img.key}; give it once per image")
                continue
            if old is None:
                setattr(img, col, value)
                img.lines[col] = line

    def _box(self, img: Image, line: int, row: dict) -> None:
        where = self.where(line)
        given = [k for k in BOX_KEYS if k in row]
        finding, anatomy = _text(row.get("finding")), _text(row.get("anatomy"))
        if not given and finding is None and anatomy is None:
            if "sentence" in row:
                self.problems.append(f"{where}: sentence: a sentence link needs a box on the same row")
            return
        if finding is not None and anatomy is not None:
            self.problems.append(f"{where}: finding/anatomy: give one name per box, not both")
            return
        if finding is None and anatomy is None:
            self.problems.append(f"{where}: finding/anatomy: a box needs a finding or an anatomy name")
            return
        missing = [k for k in BOX_KEYS if k not in row]
        if missing:
            self.problems.append(f"{where}: {missing[0]}: missing; a box needs x1, y1, x2, y2 (pixels)")
            return
        coords = [_number(row[k], k, where, self.problems) for k in BOX_KEYS]
        if any(c is None for c in coords):
            return
        x1, y1, x2, y2 = coords
        if not (x1 < x2 and y1 < y2):
            self.problems.append(f"{where}: box: {x1:g},{y1:g},{x2:g},{y2:g} is empty or reversed "
                                 "(x1 < x2 and y1 < y2 needed)")
            return
        name = self._name(finding, anatomy, where)
        if name is None:
            return
        img.boxes.append(Box(line, "finding" if finding else "anatomy", name, coords, _link(row.get("sentence"))))

    def _name(self, finding: str | None, anatomy: str | None, where: str) -> str | None:
        if anatomy is not None:
            name = self.anatomy.get(anatomy.lower())
            if name is None:
                close = get_close_matches(anatomy.lower(), list(self.anatomy), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                self.problems.append(f"{where}: anatomy: unknown anatomy {anatomy!r}; {hint}the 29 names are in "
                                     "docs/custom-data.md#anatomy-names (a new name goes in the finding column)")
            return name
        if "/" in finding:
            self.problems.append(f"{where}: finding: {finding!r} contains '/'; write e.g. 'Nodule or mass'")
            return None
        return self.findings.setdefault(finding.lower(), finding)

    # ----------------------------------------------------------------------------- per image
    def check_images(self) -> None:
        """File, size, split, duplicate anatomies, box bounds and sentence links of every image."""
        for img in self.images.values():
            where = self.where(img.line)
            if img.split is None and "split" not in img.lines:
                self.problems.append(f"{where}: split: missing for image {img.key}; use train, validate or test")
            if not img.path.is_file():
                self.problems.append(f"{where}: image: file not found: {img.path}")
                continue
            try:
                img.width, img.height = image_size(img.path)
            except (ChexError, OSError, ValueError) as err:
                self.problems.append(f"{where}: image: cannot be read ({str(err).splitlines()[0]})")
                continue
            seen: dict[str, int] = {}
            for b in img.boxes:
                self._check_box(img, b, seen)

    def _check_box(self, img: Image, b: Box, seen: dict[str, int]) -> None:
        where = self.where(b.line)
        x1, y1, x2, y2 = b.box
        if x1 < 0 or y1 < 0 or x2 > img.width or y2 > img.height:
            self.problems.append(f"{where}: box: {x1:g},{y1:g},{x2:g},{y2:g} is outside the image "
                                 f"({img.width} x {img.height} pixels)")
        if b.kind == "anatomy":
            if b.name in seen:
                self.problems.append(f"{where}: anatomy: {b.name!r} has a box on line {seen[b.name]} already "
                                     "for this image; give one box per anatomy")
            seen.setdefault(b.name, b.line)
        if isinstance(b.link, int):
            n = len(img.sentences or [])
            if not 0 <= b.link < n:
                self.problems.append(f"{where}: sentence: index {b.link} but the image has {n} sentence(s) "
                                     "(0-based); or link by the sentence's text")
            else:
                b.text = img.sentences[b.link]
        elif isinstance(b.link, str):
            b.text = b.link


def read_table(table: Path, images_dir: Path) -> tuple[list[Image], list[str]]:
    """The images of ``table`` (in table order) and the finding names (first spelling, table order).

    Raises TableProblems listing every problem (``TABLE:LINE: COLUMN: what``), ChexError for a
    table that cannot be read at all.
    """
    table, images_dir = Path(table), Path(images_dir)
    if not table.is_file():
        raise ChexError(f"--table {table} not found; give the CSV or JSONL table (docs/custom-data.md)")
    if not images_dir.is_dir():
        raise ChexError(f"--images {images_dir} is not a folder; give the folder the image paths are relative to")
    reader = _Reader(table, images_dir)
    rows = _rows(table, reader.problems)
    if not any(p.endswith("missing column (every table needs image and split)") for p in reader.problems):
        for line, row in rows:
            reader.row(line, row)
        reader.check_images()
    if not reader.images and not reader.problems:
        reader.problems.append(f"{table}:2: image: the table has no rows")
    if reader.problems:
        n = len(reader.problems)
        raise TableProblems(reader.problems, f"{table}: {n} problem{'s' if n > 1 else ''}; nothing was written "
                                             "(fix the table and run the same command again)")
    return list(reader.images.values()), list(reader.findings.values())
