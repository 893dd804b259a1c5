"""The four MIMIC-based sources, prepared into one shared folder.

``mimic-cxr-jpg`` writes the frontal image table and the image cache, ``mimic-cxr`` the
processed reports, ``chest-imagenome`` and ``ms-cxr`` their tables (the last three join
the image table, so ``mimic-cxr-jpg`` comes first). After every step the composed datasets
whose steps are complete are (re)written (:mod:`.compose`). ``mimic`` runs the four steps in
order from a base folder that holds the four raw folders.
"""

from __future__ import annotations

from pathlib import Path

from chexcli.data.prepare import imagenome, mimic_jpg, mscxr, reports
from chexcli.data.prepare.compose import compose_mimic, frontal_table
from chexcli.data.prepare.result import PrepareResult, note_skipped_images
from chexcli.data.processed.manifest import part_complete, require_kind, update_manifest
from chexcli.data.sources import MIMIC_PARTS, SOURCES
from chexcli.errors import ChexError


def prepare_all_mimic(raw: Path, out: Path, workers: int, side: int, progress: bool) -> PrepareResult:
    """The four steps in order from ``raw``, the folder that holds their raw folders."""
    subdirs = {part: Path(SOURCES[part].raw_dir).name for part in MIMIC_PARTS}
    res = PrepareResult(out)
    for part in MIMIC_PARTS:
        sub = raw / subdirs[part]
        if not sub.is_dir():
            if part == "mimic-cxr-jpg":
                raise ChexError(f"{sub} not found; `prepare mimic` expects the raw folders "
                                f"{', '.join(subdirs.values())} below --raw")
            res.messages.append(f"{part}: {sub} not found, skipped")
            continue
        res.add(prepare_mimic_part(part, sub, out, workers, side, progress))
    return res


def prepare_mimic_part(part: str, raw: Path, out: Path, workers: int, side: int,
                       progress: bool) -> PrepareResult:
    """One MIMIC step, then the composed datasets; the manifest entry is written last."""
    res = PrepareResult(out)
    require_kind(out, "mimic", "MIMIC")
    if part != "mimic-cxr-jpg" and not part_complete(out, "mimic-cxr-jpg"):
        raise ChexError(f"prepare mimic-cxr-jpg into {out} first: {part} is joined with its image table")
    update_manifest(out, "mimic", part, None)
    entry = STEPS[part](raw, out, res, workers, side, progress)
    # the part's outputs are on disk: (re)build the composed datasets, then write the
    # manifest entry last, so an interrupted step never looks complete
    res.datasets = compose_mimic(out, also_done={part})
    update_manifest(out, "mimic", part, entry, datasets=res.datasets)
    return res


def _images(raw: Path, out: Path, res: PrepareResult, workers: int, side: int, progress: bool) -> dict:
    entry, skipped = mimic_jpg.prepare_jpg(raw, out, side=side, workers=workers, progress=progress)
    note_skipped_images(res, skipped, say_first=False)
    return entry


def _reports(raw: Path, out: Path, res: PrepareResult, workers: int, side: int, progress: bool) -> dict:
    return reports.prepare_report_step(raw, out, res, workers=workers, progress=progress)


def _imagenome(raw: Path, out: Path, res: PrepareResult, workers: int, side: int, progress: bool) -> dict:
    return imagenome.prepare_imagenome(raw, out, frontal_table(out), workers=workers, progress=progress)


def _mscxr(raw: Path, out: Path, res: PrepareResult, workers: int, side: int, progress: bool) -> dict:
    return mscxr.prepare_mscxr(raw, out)


#: MIMIC step -> function writing its outputs and returning its manifest entry
STEPS = {"mimic-cxr-jpg": _images, "mimic-cxr": _reports, "chest-imagenome": _imagenome, "ms-cxr": _mscxr}
