"""`chex data prepare custom --table FILE --images DIR --out DIR`: a user's own table of images,
reports and boxes -> a processed folder that `chex train` and `chex evaluate` read like the
public ones (docs/custom-data.md).

The table is read and checked whole first (:mod:`.custom_table`); with any problem nothing is
written. The folder is then built under a temporary name next to ``--out`` (image cache,
tables of :mod:`.custom_tables`, ``custom_findings.json``, manifest) and renamed into place
at the end, replacing an earlier custom folder there; an interrupted run leaves ``--out`` as
it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from chexcli.data.images.cache import build_cache
from chexcli.data.images.cache_loaders import array_for_cache, load_cached_image
from chexcli.data.images.files import is_dicom
from chexcli.data.images.readers import read_image_uint8
from chexcli.data.prepare.custom_table import Image, read_table
from chexcli.data.prepare.custom_tables import build_tables
from chexcli.data.prepare.result import PrepareResult, note_skipped_images
from chexcli.data.processed.findings import findings_record, write_findings
from chexcli.data.processed.layout import CUSTOM_FINDINGS, MIMIC_MSCXR, SKIPPED_IMAGES
from chexcli.data.processed.manifest import read_manifest, update_manifest
from chexcli.data.processed.tables import write_dataset
from chexcli.errors import ChexError
from chexcli.hashing import sha256_file

KIND = "custom"


def load_image(path: str, side: int):
    """Cache loader: PNG/JPEG through the common loader, DICOM through the DICOM reader."""
    if is_dicom(path):
        arr = read_image_uint8(path)
        return array_for_cache(arr, side), arr.shape[0], arr.shape[1]
    return load_cached_image(path, side)


def _check_out(out: Path) -> None:
    """Refuse an ``--out`` that is a file or holds anything but an earlier custom folder."""
    if out.exists() and not out.is_dir():
        raise ChexError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and (read_manifest(out) or {}).get("kind") != KIND:
        raise ChexError(f"--out {out} is not empty and holds no custom folder; give an empty or new folder")


def prepare_custom(table: Path, images: Path | None, out: Path, workers: int = 1, side: int = 256,
                   progress: bool = True) -> PrepareResult:
    """Check ``table`` and write its processed folder to ``out`` (see the module docstring).

    ``images``: the folder the table's image paths are relative to (default: the table's folder).
    Raises TableProblems (every problem of the table) or ChexError before anything is written.
    """
    table = Path(table).expanduser().resolve()
    images = Path(images).expanduser().resolve() if images is not None else table.parent
    out = Path(out).expanduser().absolute()
    _check_out(out)
    entries, names = read_table(table, images)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        res = _write_folder(tmp, entries, names, table, images, workers, side, progress)
        _swap(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    res.out = out
    if res.skipped_file is not None:
        res.skipped_file = out / SKIPPED_IMAGES
    return res


def _write_folder(folder: Path, entries: list[Image], names: list[str], table: Path, images: Path,
                  workers: int, side: int, progress: bool) -> PrepareResult:
    res = PrepareResult(folder)
    cache = build_cache(folder, [e.key for e in entries], [str(e.path) for e in entries], side=side,
                        workers=workers, loader=load_image, progress=progress, desc="custom images")
    note_skipped_images(res, cache.skipped)
    lost = {s[0] for s in cache.skipped}
    kept = [e for e in entries if e.key not in lost]
    if not kept:
        raise ChexError(f"none of the {len(entries)} images could be read (first: {cache.skipped[0][0]}: "
                        f"{cache.skipped[0][2]}); nothing was written")
    for name, df in build_tables(kept, names).items():
        if name == CUSTOM_FINDINGS:
            res.datasets[name] = write_dataset(folder, name, df, label_cols=[c for c in df if c.startswith("cls/")],
                                               box_col="clsbbox")
        else:
            res.datasets[name] = write_dataset(folder, name, df, box_col="clsbbox" if name == MIMIC_MSCXR else None)
    if names:
        write_findings(folder, names)
    update_manifest(folder, KIND, KIND, _entry(table, images, kept, names, len(cache.skipped)),
                    datasets=res.datasets)
    return res


def _entry(table: Path, images: Path, kept: list[Image], names: list[str], skipped: int) -> dict:
    boxes = [b for e in kept for b in e.boxes]
    record = findings_record(names)
    return {"table": str(table), "table_sha256": sha256_file(table), "raw": str(images),
            "images": len(kept) + skipped, "cached": len(kept), "skipped": skipped,
            "with_sentences": sum(bool(e.sentences) for e in kept),
            "boxes": len(boxes), "anatomy_boxes": sum(b.kind == "anatomy" for b in boxes),
            "finding_boxes": sum(b.kind == "finding" for b in boxes),
            "new_findings": record["new"], "known_findings": record["known"]}


def _swap(tmp: Path, out: Path) -> None:
    """Put the finished ``tmp`` folder at ``out``; an earlier folder there is removed after the rename."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def summary(res: PrepareResult) -> list[str]:
    """Lines that sum up a prepared custom folder: images, sentences, boxes, finding names."""
    entry = (read_manifest(res.out) or {}).get("parts", {}).get(KIND, {})
    lines = [f"custom: {entry.get('cached', 0)} images ({entry.get('with_sentences', 0)} with report sentences), "
             f"{entry.get('anatomy_boxes', 0)} anatomy boxes, {entry.get('finding_boxes', 0)} finding boxes"]
    if entry.get("new_findings"):
        lines.append("new finding names (the model learns them in stage 1 with custom_boxes): "
                     + ", ".join(entry["new_findings"]))
    if entry.get("known_findings"):
        lines.append("finding names the model knows: " + ", ".join(f"{k} ({v})" for k, v in
                                                                   entry["known_findings"].items()))
    return lines
