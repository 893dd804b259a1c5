"""MIMIC-CXR 2.0.0 reports -> ``reports_processed.json`` (study id without ``s`` -> sentences).

Reads the extracted layout ``files/p*/p*/s*.txt`` or the release archive
``mimic-cxr-reports.zip`` in place (nothing is extracted). A report that is not UTF-8 text
is skipped and listed in ``skipped_reports.csv`` (docs/data.md#mimic-cxr-reports); the text
pipeline itself is :mod:`.report_text`.
"""

from __future__ import annotations

import multiprocessing as mp
import re
import zipfile
from pathlib import Path

import pandas as pd

from chexcli.data.prepare.raw_files import source_digests
from chexcli.data.prepare.report_text import report_sentences
from chexcli.data.prepare.result import PrepareResult
from chexcli.data.processed.files import write_csv, write_json
from chexcli.data.processed.layout import REPORTS_FILE, SKIPPED_REPORTS
from chexcli.errors import ChexError
from chexcli.workers import worker_init

ARCHIVE = "mimic-cxr-reports.zip"


def prepare_report_step(raw: Path, out: Path, res: PrepareResult, workers: int, progress: bool) -> dict:
    """Write the processed reports (and the list of unreadable ones); return the manifest entry."""
    if not raw.is_dir():
        raise ChexError(f"MIMIC-CXR report folder not found: {raw} (run `chex data fetch mimic-cxr`)")
    unreadable: list = []
    processed = prepare_reports(raw, workers=workers, progress=progress, skipped=unreadable)
    if not processed:
        raise ChexError(f"no reports found in {raw} (expected files/p*/p*/s*.txt or "
                        f"{ARCHIVE})" + (f"; {len(unreadable)} are not UTF-8 text" if unreadable else ""))
    write_json(out / REPORTS_FILE, processed)
    if unreadable:
        res.skipped_reports_file = out / SKIPPED_REPORTS
        write_csv(res.skipped_reports_file, pd.DataFrame(unreadable, columns=["study_id", "path", "reason"]),
                  index=False)
        res.skipped_reports = len(unreadable)
        res.messages.append(f"first unreadable report: {unreadable[0][1]}: {unreadable[0][2]}")
    elif (out / SKIPPED_REPORTS).exists():
        (out / SKIPPED_REPORTS).unlink()
    return {"raw": str(raw.resolve()), "studies_with_report": len(processed), "skipped": len(unreadable),
            "source_digests": source_digests(raw, [raw / ARCHIVE])}


def prepare_reports(raw: Path, workers: int = 1, progress: bool = True,
                    skipped: list | None = None) -> dict[str, list[str]]:
    """Process every report found under ``raw``: study id (no ``s``) -> sentences.

    Reports that cannot be read as UTF-8 text are listed in ``skipped`` (see
    :func:`iter_report_texts`); the others are processed.
    """
    from tqdm import tqdm

    items = iter_report_texts(raw, skipped)
    result: dict[str, list[str]] = {}
    bar = tqdm(desc="reports", unit="report", disable=not progress or None, leave=False)
    if workers <= 1:
        it = map(_process_one, items)
        pool = None
    else:
        pool = mp.get_context("fork").Pool(workers, initializer=worker_init())
        it = pool.imap(_process_one, items, chunksize=256)
    try:
        for study, sentences in it:
            bar.update(1)
            if sentences:
                result[study] = sentences
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    return result


def _process_one(item: tuple[str, str]) -> tuple[str, list[str] | None]:
    study, text = item
    return study[1:], report_sentences(text, study)


def iter_report_texts(raw: Path, skipped: list | None = None):
    """Yield (``s<study_id>``, text) for every report under ``raw``.

    Accepts the extracted layout ``files/p*/p*/s*.txt`` or the release archive
    ``mimic-cxr-reports.zip`` (read in place, nothing is extracted). A report that is not
    UTF-8 text (or cannot be read) is not yielded; ``(study_id, path, reason)`` is appended
    to ``skipped`` instead.
    """
    raw = Path(raw)
    files = sorted((raw / "files").glob("p*/p*/s*.txt")) if (raw / "files").is_dir() else []
    if files:
        yield from _texts_of_files(files, skipped)
    elif (raw / ARCHIVE).is_file():
        yield from _texts_of_archive(raw / ARCHIVE, skipped)


def _texts_of_files(files: list[Path], skipped: list | None):
    for f in files:
        try:
            data = f.read_bytes()
        except OSError as err:
            if skipped is not None:
                skipped.append((f.stem[1:], str(f), f"unreadable ({err.strerror or err})"))
            continue
        text = _decode(data, f.stem, str(f), skipped)
        if text is not None:
            yield f.stem, text


def _texts_of_archive(zpath: Path, skipped: list | None):
    try:
        with zipfile.ZipFile(zpath) as zf:
            names = sorted(n for n in zf.namelist() if re.search(r"(^|/)s\d+\.txt$", n))
            for n in names:
                study = n.rsplit("/", 1)[-1][:-4]
                text = _decode(zf.read(n), study, f"{zpath}/{n}", skipped)
                if text is not None:
                    yield study, text
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ChexError(f"{zpath} is not a readable zip archive ({err}); download it again") from None


def _decode(data: bytes, study: str, where: str, skipped: list | None) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        if skipped is not None:
            skipped.append((study[1:], where, f"not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start})"))
        return None
