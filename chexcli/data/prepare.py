"""`chex data prepare`: raw downloads -> processed folders (tables + image cache + manifest).

MIMIC-based sources share one processed folder: ``mimic-cxr-jpg`` writes the frontal image
table and the image cache, ``mimic-cxr`` the processed reports, ``chest-imagenome`` and
``ms-cxr`` their tables. After every step, each composed dataset of DATASETS.md section 8
whose inputs are all present is (re)written. ``mimic`` runs the four steps in order from
a base folder that holds the four raw folders.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from chexcli.data import imagenome, mimic, mscxr, nih, reports, vindr
from chexcli.data.common import (PrepareResult, dataset_summary, read_manifest, update_manifest, write_csv,
                                 write_json, write_split_tables)
from chexcli.data.sources import MIMIC_PARTS, get_source, resolve_name
from chexcli.errors import ChexError

__all__ = ["PrepareResult", "prepare", "prepare_mimic_part", "compose_mimic"]

REPORTS_FILE = "reports_processed.json"
SKIPPED_REPORTS = "skipped_reports.csv"
MIMIC_RAW_SUBDIRS = {
    "mimic-cxr-jpg": "mimic-cxr-jpg_2-0-0",
    "mimic-cxr": "mimic-cxr_2-0-0",
    "chest-imagenome": "chest-imagenome-dataset-1.0.0",
    "ms-cxr": "ms-cxr_0-1",
}

# composed MIMIC datasets: processed file prefix -> required parts
MIMIC_DATASETS = {
    "mimic-cxr-frontal-report": ("mimic-cxr-jpg", "mimic-cxr"),
    "mimic-cxr-frontal-report-cig_anatboxes-cig_anatlabels-cig_anatphrases":
        ("mimic-cxr-jpg", "mimic-cxr", "chest-imagenome"),
    "mimic-cxr-frontal-cig_anatboxes-cig_anatlabels-cig_anatphrases":
        ("mimic-cxr-jpg", "chest-imagenome"),
    "mimic-cxr-frontal-mscxr_boxesonly-mscxr_valtotest-mscxr_traintoval":
        ("mimic-cxr-jpg", "ms-cxr"),
}


def prepare(name: str, raw: Path, out: Path, workers: int = 1, side: int = 256,
            progress: bool = True, n: int = 4000, seed: int = 0) -> PrepareResult:
    """Prepare dataset ``name`` (a canonical or short name, see sources.resolve_name) from ``raw`` into ``out``."""
    name = resolve_name(name)
    raw, out = Path(raw).expanduser().resolve(), Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    if name == "mimic":
        res = PrepareResult(out)
        for part in MIMIC_PARTS:
            sub = raw / MIMIC_RAW_SUBDIRS[part]
            if not sub.is_dir():
                if part == "mimic-cxr-jpg":
                    raise ChexError(f"{sub} not found; `prepare mimic` expects the raw folders "
                                    f"{', '.join(MIMIC_RAW_SUBDIRS.values())} below --raw")
                res.messages.append(f"{part}: {sub} not found, skipped")
                continue
            r = prepare_mimic_part(part, sub, out, workers, side, progress)
            res.skipped += r.skipped
            res.skipped_file = r.skipped_file or res.skipped_file
            res.skipped_reports += r.skipped_reports
            res.skipped_reports_file = r.skipped_reports_file or res.skipped_reports_file
            res.datasets.update(r.datasets)
            res.messages.extend(r.messages)
        return res
    if name == "synthetic":  # generated: ``raw`` is not read; ``n`` images from ``seed``
        from chexcli.data.synthetic import prepare_synthetic

        return prepare_synthetic(out, n=n, seed=seed, workers=workers, side=side, progress=progress)
    get_source(name)
    if name in MIMIC_PARTS:
        return prepare_mimic_part(name, raw, out, workers, side, progress)
    if name == "vindr-cxr":
        return vindr.prepare_vindr(raw, out, workers=workers, side=side, progress=progress)
    if name == "nih-cxr14":
        return nih.prepare_nih(raw, out, workers=workers, progress=progress)
    raise ChexError(f"unknown dataset {name!r}")


# ----------------------------------------------------------------------------- MIMIC
def prepare_mimic_part(part: str, raw: Path, out: Path, workers: int, side: int,
                       progress: bool) -> PrepareResult:
    res = PrepareResult(out)
    man = read_manifest(out)
    if man and man.get("kind") not in (None, "mimic"):
        raise ChexError(f"{out} holds a prepared {man['kind']} dataset; use another --out for MIMIC")
    if part != "mimic-cxr-jpg" and not _part_complete(out, "mimic-cxr-jpg"):
        raise ChexError(f"prepare mimic-cxr-jpg into {out} first: {part} is joined with its image table")
    update_manifest(out, "mimic", part, None)
    if part == "mimic-cxr-jpg":
        entry, skipped = mimic.prepare_jpg(raw, out, side=side, workers=workers, progress=progress)
        if skipped:
            from chexcli.data.cache import write_skipped

            res.skipped_file = write_skipped(out, skipped)
            res.skipped = len(skipped)
        elif (out / "skipped_images.csv").exists():
            (out / "skipped_images.csv").unlink()
    elif part == "mimic-cxr":
        if not raw.is_dir():
            raise ChexError(f"MIMIC-CXR report folder not found: {raw} (run `chex data fetch mimic-cxr`)")
        unreadable: list = []
        processed = reports.prepare_reports(raw, workers=workers, progress=progress, skipped=unreadable)
        if not processed:
            raise ChexError(f"no reports found in {raw} (expected files/p*/p*/s*.txt or "
                            "mimic-cxr-reports.zip)" + (f"; {len(unreadable)} are not UTF-8 text" if unreadable else ""))
        write_json(out / REPORTS_FILE, processed)
        if unreadable:
            res.skipped_reports_file = out / SKIPPED_REPORTS
            write_csv(res.skipped_reports_file, pd.DataFrame(unreadable, columns=["study_id", "path", "reason"]),
                      index=False)
            res.skipped_reports = len(unreadable)
            res.messages.append(f"first unreadable report: {unreadable[0][1]}: {unreadable[0][2]}")
        elif (out / SKIPPED_REPORTS).exists():
            (out / SKIPPED_REPORTS).unlink()
        from chexcli.data.common import source_digests

        entry = {"raw": str(raw.resolve()), "studies_with_report": len(processed), "skipped": len(unreadable),
                 "source_digests": source_digests(raw, [raw / "mimic-cxr-reports.zip"])}
    elif part == "chest-imagenome":
        frontal = _frontal(out)
        entry = imagenome.prepare_imagenome(raw, out, frontal, workers=workers, progress=progress)
    elif part == "ms-cxr":
        entry = mscxr.prepare_mscxr(raw, out)
    else:  # pragma: no cover
        raise ChexError(f"unknown MIMIC part {part}")
    # the part's outputs are on disk: (re)build the composed datasets, then write the
    # manifest entry last, so an interrupted step never looks complete
    res.datasets = compose_mimic(out, also_done={part})
    update_manifest(out, "mimic", part, entry, datasets=res.datasets)
    return res


def _part_complete(out: Path, part: str) -> bool:
    man = read_manifest(out) or {}
    return bool(man.get("parts", {}).get(part, {}).get("complete"))


def _frontal(out: Path) -> pd.DataFrame:
    df = pd.read_csv(out / mimic.FRONTAL_TABLE, dtype={"dicom_id": str, "sample_id": str})
    return df.set_index("dicom_id")


def compose_mimic(out: Path, also_done: set[str] = frozenset(), only: list[str] | None = None) -> dict:
    """Write every composed MIMIC dataset whose parts are complete; return manifest entries."""
    done = {p for p in MIMIC_PARTS if _part_complete(out, p)} | set(also_done)
    summaries = {}
    base = None
    for name, needs in MIMIC_DATASETS.items():
        if only is not None and name not in only:
            continue
        if not set(needs) <= done:
            continue
        if base is None:
            base = _frontal(out)
            base = base[base["cached"].astype(bool)].drop(columns=["cached", "path"])
        df = compose_one(out, name, base)
        counts = write_split_tables(out, name, df)
        box_col = "clsbbox" if "clsbbox" in df.columns else None
        summary = dataset_summary(df, box_col=box_col)
        if "anat_labels" in df.columns:
            summary["classes"] = _region_class_counts(df)
        summary["files"] = {k: f"{name}.{k}.csv" for k, v in counts.items() if v} | {"all": f"{name}.all.csv"}
        summaries[name] = summary
    return summaries


def compose_one(out: Path, name: str, base: pd.DataFrame) -> pd.DataFrame:
    tags = name[len("mimic-cxr-"):].split("-")
    df = base.copy()
    if "report" in tags:
        rep = json.loads((out / REPORTS_FILE).read_text("utf-8"))
        keep = df["study_id"].astype(str).isin(rep.keys())
        df = df[keep].copy()
        df["report_sentences"] = [json.dumps(rep[str(s)], ensure_ascii=False) for s in df["study_id"]]
    if "cig_anatboxes" in tags:
        cig = pd.read_csv(out / imagenome.TABLE, dtype={"dicom_id": str}).set_index("dicom_id")
        cig["anat_has_duplicate_box"] = cig["anat_has_duplicate_box"].astype(str) == "True"
        cols = ["anat_boxes", "anat_has_duplicate_box"]
        if "cig_anatlabels" in tags:
            cols.append("anat_labels")
        if "cig_anatphrases" in tags:
            cols.append("anat_sentences")
        df = df.join(cig[cols], how="inner")
        df = df[~df["anat_has_duplicate_box"]].copy()
    if "mscxr_boxesonly" in tags:
        ms = pd.read_csv(out / mscxr.TABLE, dtype={"dicom_id": str}).set_index("dicom_id")
        df = df.join(ms, how="inner")
        df["has_ms_cxr_boxes"] = True
        if "mscxr_valtotest" in tags:
            df.loc[df["split"] == "validate", "split"] = "test"
        if "mscxr_traintoval" in tags:
            df.loc[df["split"] != "test", "split"] = "validate"
    df.index.name = "dicom_id"
    return df


def _region_class_counts(df: pd.DataFrame) -> dict:
    """Images with the label in at least one region, per split."""
    from chexcli.data.common import SPLITS

    counts: dict[str, dict[str, int]] = {}
    for split, cell in zip(df["split"], df["anat_labels"]):
        labs = set()
        for v in json.loads(cell).values():
            labs.update(v)
        s = SPLITS.get(split, split)
        for lab in labs:
            d = counts.setdefault(f"cig/{lab}", {})
            d[s] = d.get(s, 0) + 1
    return dict(sorted(counts.items()))
