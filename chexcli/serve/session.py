"""The logic of `chex serve` as plain functions: upload -> prediction -> annotated image, table and JSON.

`ServeSession` loads a model bundle once and keeps, in one temporary folder
that `close()` removes, the uploaded images and the answers:

    session = ServeSession.load("bundles/chex")
    image = session.add_upload(data, "cxr.png")          # bytes of a PNG, JPEG or DICOM
    answer = session.ask(image.id, prompts=["left lung opacity"], boxes=[[120, 80, 400, 360]])
    answer.rows        # one table row per drawn item: colour, query, score, sentence
    answer.json_line   # exactly the line `chex predict --json` prints for this image
    answer.png         # the annotated image, drawn as `chex predict` draws it
    session.close()

`ask` is `run_question(prepare_question(...))`: the web layer checks a question
at once (`prepare_question`, cheap) and queues only the model call
(`run_question`, see `model_queue.py`). Model calls also take a lock, so direct
callers from several threads never run the model twice at once. The image
encoding of the last few images is cached, so new questions about the same
image skip the image encoder. Nothing here knows about HTTP.

Memory is bounded: an upload is refused above `max_pixels` (read from the
header, before decoding), and the kept images are capped by count
(`KEEP_IMAGES`) and by the memory of their decoded pixels (`KEEP_IMAGE_BYTES`);
the oldest are forgotten first.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from chexcli.errors import ChexError
from chexcli.serve.examples import EXAMPLES, example_path

#: largest accepted upload (a big uncompressed DICOM is ~40 MB)
MAX_UPLOAD_BYTES = 64 * 2**20
#: at most this many prompts and this many boxes per question
MAX_PROMPTS = 16
MAX_BOXES = 16
MAX_PROMPT_CHARS = 300
#: uploaded images and answers kept (older ones are forgotten and their files removed)
KEEP_IMAGES = 8
KEEP_ANSWERS = 32
#: decoded pixels (float32) of the kept images together; the newest image is always kept
KEEP_IMAGE_BYTES = 768 * 2**20
#: largest accepted image (the largest chest X-rays are about 18.5 Mpx); the readers' own limit is 50 Mpx
MAX_PIXELS = 30_000_000
#: long side of the preview PNG shown on the page (boxes are always in original pixels)
PREVIEW_SIZE = 1024
_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom"}


class EncodingCache:
    """Remembers a model's last few image encodings, keyed by the preprocessed pixels.

    `install(model)` replaces `encode_image` on that model instance only, so every
    path that encodes an image (`Predictor.predict`, the report task, and
    `detect_prompts` / `encode_regions` given a tensor) reuses the encoding of an
    image it has seen. Encodings are deterministic, so results are unchanged.
    """

    def __init__(self, size: int = 4):
        self.size = size
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[bytes, Any] = OrderedDict()
        self._encode = None

    def install(self, model) -> "EncodingCache":
        self._encode = model.encode_image
        model.encode_image = self.encode
        return self

    def encode(self, x):
        """x (N, S, S) preprocessed images -> the model's ImageEncoding (cached per batch content)."""
        digest = hashlib.sha256(x.detach().float().cpu().contiguous().numpy().tobytes())
        digest.update(repr((tuple(x.shape), str(x.device))).encode())
        key = digest.digest()
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
            return self._entries[key]
        self.misses += 1
        enc = self._encode(x)
        self._entries[key] = enc
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return enc


@dataclass
class ImageEntry:
    """An image the user uploaded (or picked from the examples)."""

    id: str
    name: str  # the user's file name, shown on the page and written as "image" in the JSON
    path: Path  # the upload, inside the session's temporary folder
    gray: np.ndarray  # (H, W) float32 in [0, 1], as `chex predict` reads it
    preview: Path  # 8-bit PNG (long side <= PREVIEW_SIZE) for the page

    @property
    def height(self) -> int:
        return int(self.gray.shape[0])

    @property
    def width(self) -> int:
        return int(self.gray.shape[1])

    def info(self) -> dict[str, Any]:
        """What the page needs: id, name, size and the centre square the model sees."""
        side = min(self.width, self.height)
        return {"id": self.id, "name": self.name, "width": self.width, "height": self.height,
                "crop": [(self.width - side) // 2, (self.height - side) // 2, side]}


@dataclass
class Question:
    """A checked question about one image: cleaned prompts, pixel boxes inside the centre square."""

    image: ImageEntry
    prompts: list[str]
    boxes: list[tuple[float, float, float, float]]
    report: bool = False


@dataclass
class Answer:
    """The result of one question about one image."""

    id: str
    image_id: str
    record: dict[str, Any]  # the JSON object of `chex predict --json`
    rows: list[dict[str, Any]]  # one per drawn item, in the colours of the image
    png: Path  # annotated image
    report: str | None = None

    @property
    def json_line(self) -> str:
        return json.dumps(self.record)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "image": self.image_id, "rows": self.rows, "report": self.report,
                "record": self.record}


def clean_name(name: str | None) -> str:
    """A display name from a client-supplied file name: the last path part, printable, at most 100 chars."""
    base = re.split(r"[\\/]", str(name or ""))[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    if len(base) > 100:
        stem, dot, suffix = base.rpartition(".")
        base = (stem[: 90] + dot + suffix[:9]) if dot and len(suffix) < 10 else base[:100]
    return base or "upload"


def clean_prompts(prompts: Sequence[str]) -> list[str]:
    """Stripped, non-empty prompts; too many or too long ones are refused."""
    out = [" ".join(str(p).split()) for p in prompts or []]
    out = [p for p in out if p]
    if len(out) > MAX_PROMPTS:
        raise ChexError(f"{len(out)} prompts: ask at most {MAX_PROMPTS} at once")
    for p in out:
        if len(p) > MAX_PROMPT_CHARS:
            raise ChexError(f"prompt {p[:40]!r}... is {len(p)} characters long; keep prompts under {MAX_PROMPT_CHARS}")
    return out


def parse_boxes(boxes: Sequence[Any]) -> list[tuple[float, float, float, float]]:
    """Boxes given as [x1, y1, x2, y2] lists (or "x1,y1,x2,y2" strings) -> float tuples."""
    if len(boxes or []) > MAX_BOXES:
        raise ChexError(f"{len(boxes)} boxes: mark at most {MAX_BOXES} at once")
    out = []
    for k, box in enumerate(boxes or [], start=1):
        values = box.replace(" ", "").split(",") if isinstance(box, str) else box
        try:
            x = tuple(float(v) for v in values)
        except (TypeError, ValueError):
            x = ()
        if len(x) != 4 or not all(math.isfinite(v) for v in x):
            raise ChexError(f"box {k}: give four numbers x1, y1, x2, y2 (pixels), got {box!r}")
        out.append(x)
    return out


def table_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of the results table, in the order (and colours) `chex predict` draws the items.

    Kept report sentences come first, then the prompts, then the boxes. A prompt that is not
    present has `best`: its most probable region (`box` in pixels, `weight`), the dashed box of
    the image; every other row has `best: None`.
    """
    from chexcli.predict_run import best_candidate
    from chexcli.render import item_color

    items = [("report", q) for q in record.get("report_queries", []) if q.get("kept")]
    items += [(q["type"], q) for q in record["queries"]]
    rows = []
    for i, (kind, q) in enumerate(items):
        box = q.get("box")
        if kind == "box":
            query = f"box {box[0]:.0f}, {box[1]:.0f} – {box[2]:.0f}, {box[3]:.0f} px"
        else:
            query = q["prompt"]
        rows.append({
            "index": i + 1, "color": "#%02x%02x%02x" % item_color(i), "kind": kind, "query": query,
            "score": None if q.get("score") is None else round(float(q["score"]), 3),
            "present": bool(q.get("present")), "box": box,
            "sentence": (q.get("sentence") or "").strip() or None,
            "best": _best_row(best_candidate(q)),
        })
    return rows


def _best_row(region: dict | None) -> dict | None:
    """A table row's `best`: {"box": [x1, y1, x2, y2] pixels, "weight": as in the JSON}, or None.

    The weight is not rounded, so the page's label (2 decimals) is the one on the PNG."""
    if region is None:
        return None
    return {"box": [round(float(v), 2) for v in region["box"]], "weight": float(region["weight"])}


class ServeSession:
    """A loaded model plus the user's images and answers, kept in one temporary folder."""

    def __init__(self, predictor, model_name: str = "model", max_upload_bytes: int = MAX_UPLOAD_BYTES,
                 max_pixels: int = MAX_PIXELS, keep_image_bytes: int = KEEP_IMAGE_BYTES,
                 workdir: str | Path | None = None):
        """predictor: a `chexcli.predict.Predictor`."""
        self.predictor = predictor
        self.model_name = model_name
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = max_pixels
        self.keep_image_bytes = keep_image_bytes
        self.encodings = EncodingCache().install(predictor.model)
        self.workdir = Path(tempfile.mkdtemp(prefix="chex-serve-", dir=workdir))
        self._images: OrderedDict[str, ImageEntry] = OrderedDict()
        self._answers: OrderedDict[str, Answer] = OrderedDict()
        self._model_lock = threading.Lock()  # one model call at a time: requests queue here
        self._state_lock = threading.Lock()  # the image and answer tables

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "cpu", dtype: str = "float32",
             max_new_tokens: int | None = None, **kwargs) -> "ServeSession":
        """Load a bundle (once) and start a session."""
        from chexcli.model.bundle import load_bundle
        from chexcli.predict import Predictor

        model = load_bundle(model_dir, device=device, dtype=dtype)
        predictor = Predictor(model, device=device, max_new_tokens=max_new_tokens)
        return cls(predictor, model_name=Path(model_dir).name, **kwargs)

    # ------------------------------------------------------------------ images
    def add_upload(self, data: bytes, filename: str | None) -> ImageEntry:
        """Store and read an uploaded file (PNG, JPEG or DICOM). Bad files raise a one-line ChexError."""
        name = clean_name(filename)
        if not data:
            raise ChexError(f"{name}: the file is empty")
        if len(data) > self.max_upload_bytes:
            raise ChexError(f"{name}: the file is {len(data) / 2**20:.1f} MB; the limit is "
                            f"{self.max_upload_bytes / 2**20:.0f} MB")
        suffix = Path(name).suffix.lower()
        image_id = uuid.uuid4().hex[:12]
        folder = self.workdir / "uploads"
        folder.mkdir(exist_ok=True)
        path = folder / f"{image_id}{suffix if suffix in _SUFFIXES else '.img'}"
        path.write_bytes(data)
        try:
            return self._add(image_id, name, path)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    def add_example(self, example: str) -> ImageEntry:
        """Open one of the packaged example images (a key of `chexcli.serve.examples.EXAMPLES`)."""
        if example not in EXAMPLES:
            raise ChexError(f"unknown example {example!r}; choose one of {', '.join(EXAMPLES)}")
        source = example_path(example)
        return self.add_upload(source.read_bytes(), source.name)

    def _add(self, image_id: str, name: str, path: Path) -> ImageEntry:
        from chexcli.data.images.readers import read_image

        try:
            gray = read_image(path, max_pixels=self.max_pixels)
        except ChexError as err:  # say which file, not where we stored it
            message = str(err).replace(str(path), name)
            raise ChexError(message if message.startswith(name) else f"{name}: {message}") from None
        preview = path.with_name(f"{image_id}-preview.png")
        small = Image.fromarray(np.clip(gray * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
        small.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE), Image.Resampling.BILINEAR)
        small.save(preview)
        entry = ImageEntry(image_id, name, path, gray, preview)
        with self._state_lock:
            self._images[image_id] = entry
            while len(self._images) > 1 and (len(self._images) > KEEP_IMAGES
                                             or self.kept_image_bytes() > self.keep_image_bytes):
                _, old = self._images.popitem(last=False)
                old.path.unlink(missing_ok=True)
                old.preview.unlink(missing_ok=True)
        return entry

    def kept_image_bytes(self) -> int:
        """Memory of the decoded pixels of the kept images."""
        return sum(entry.gray.nbytes for entry in self._images.values())

    def image(self, image_id: str) -> ImageEntry:
        with self._state_lock:
            entry = self._images.get(str(image_id))
        if entry is None:
            raise ChexError("this image is no longer available (the app keeps the last "
                            f"{KEEP_IMAGES} images, or it was restarted); upload it again")
        return entry

    # ------------------------------------------------------------------ questions
    def ask(self, image_id: str, prompts: Sequence[str] = (), boxes: Sequence[Any] = (),
            report: bool = False) -> Answer:
        """Predict boxes and sentences for the prompts and boxes (pixels) on an image, and draw them.

        The record is what `chex predict --json` prints (pixel boxes); `report`
        adds the full report as `chex predict --report` does.
        """
        return self.run_question(self.prepare_question(image_id, prompts, boxes, report))

    def prepare_question(self, image_id: str, prompts: Sequence[str] = (), boxes: Sequence[Any] = (),
                         report: bool = False) -> Question:
        """Check a question without running the model (one-line ChexError on bad input)."""
        from chexcli.predict_run import check_boxes

        entry = self.image(image_id)
        prompts = clean_prompts(prompts)
        checked = check_boxes(parse_boxes(boxes), entry.width, entry.height)
        if not prompts and not checked and not report:
            raise ChexError("nothing to ask: type a prompt, mark a box on the image, or tick 'full report'")
        return Question(entry, prompts, checked, report)

    def run_question(self, question: Question) -> Answer:
        """Run the model on a checked question and draw the answer."""
        from chexcli.predict_run import annotate_image, build_record, strip_pixels

        entry = question.image
        with self._model_lock:
            pred = (self.predictor.predict([entry.gray], [entry.name], question.prompts, [question.boxes])[0]
                    if question.prompts or question.boxes else None)
            rep = self.predictor.report([entry.gray], [entry.name])[0] if question.report else None
        record = build_record(pred, rep, Path(entry.name), entry.gray, "pixel")
        answer_id = uuid.uuid4().hex[:12]
        folder = self.workdir / "answers"
        folder.mkdir(exist_ok=True)
        png = folder / f"{answer_id}.png"
        annotate_image(Path(entry.name), entry.gray, record, png)
        rows = table_rows(record)
        strip_pixels(record)
        answer = Answer(answer_id, entry.id, record, rows, png, report=record.get("report"))
        with self._state_lock:
            self._answers[answer_id] = answer
            while len(self._answers) > KEEP_ANSWERS:
                _, old = self._answers.popitem(last=False)
                old.png.unlink(missing_ok=True)
        return answer

    def answer(self, answer_id: str) -> Answer:
        with self._state_lock:
            found = self._answers.get(str(answer_id))
        if found is None:
            raise ChexError("this result is no longer available; press Explain again")
        return found

    def close(self) -> None:
        """Forget everything and remove the temporary folder with every upload."""
        with self._state_lock:
            self._images.clear()
            self._answers.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)
