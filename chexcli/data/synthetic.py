"""`chex data prepare synthetic`: a deterministic synthetic chest X-ray data set (no download).

``prepare_synthetic(out, n, seed)`` draws ``n`` chest X-ray caricatures
(:mod:`chexcli.data.synthetic_draw`) with their report text
(:mod:`chexcli.data.synthetic_report`) and writes one processed folder in the schema of the
MIMIC-CXR + Chest ImaGenome + MS-CXR folder *and* of the VinDr-CXR folder, so that every
dataset configuration of :mod:`chexcli.data.dataset` (except NIH) loads it unchanged. The
same images serve every table (one image cache).

Folder layout::

    images_256.npy, images_256_index.csv, images_256_state.npy   image cache (uint8 N x 256 x 256)
    mimic_frontal.csv                     every image: dicom_id, H, W, view, study_id, subject_id,
                                          split, sample_id, path, cached
    synthetic.csv                         ground truth per image: cardiothoracic ratio, findings
                                          (kind, side, zone, size, box, sentence, regions)
    mimic-cxr-frontal-report.*.csv                                   mimiccxr_reports
    mimic-cxr-frontal-report-cig_anatboxes-cig_anatlabels-cig_anatphrases.*.csv
                                                                     mimiccxr_reports_cig_multiboxclssent
    mimic-cxr-frontal-cig_anatboxes-cig_anatlabels-cig_anatphrases.*.csv   cig_boxclssent
    mimic-cxr-frontal-mscxr_boxesonly-mscxr_valtotest-mscxr_traintoval.{all,val,test}.csv
                                                                     mscxr_boxsent (val/test only)
    vindrcxr.*.csv                                                   vindrcxr_boxes(_top15)
    manifest.json                         kind "synthetic", the generator's seed/n/version, counts

``*`` is ``all``, ``train``, ``val``, ``test``. Splits are fixed by the image index:
``index % 10 == 8`` validate, ``== 9`` test, else train (80/10/10). Boxes are pixel
coordinates of the 256 x 256 images.
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pandas as pd

from chexcli.data.common import (MANIFEST, SPLITS, atomic_write_bytes, dataset_summary, read_manifest,
                                 update_manifest, write_csv, write_json, write_split_tables)
from chexcli.data.names import VINDR_LABELS, anatomy_names
from chexcli.data.synthetic_draw import SIDE, render, sample_scene
from chexcli.data.synthetic_report import CIG_LABELS, MSCXR_CLASS, VINDR_CLASS, finding_regions, scene_text
from chexcli.errors import ChexError
from chexcli.workers import worker_init

KIND = "synthetic"
GENERATOR_VERSION = 5  # bumped whenever the same seed would draw different data
GROUND_TRUTH = "synthetic.csv"
FRONTAL_TABLE = "mimic_frontal.csv"
REPORTS = "mimic-cxr-frontal-report"
CIG_REPORTS = "mimic-cxr-frontal-report-cig_anatboxes-cig_anatlabels-cig_anatphrases"
CIG = "mimic-cxr-frontal-cig_anatboxes-cig_anatlabels-cig_anatphrases"
MSCXR = "mimic-cxr-frontal-mscxr_boxesonly-mscxr_valtotest-mscxr_traintoval"
VINDR = "vindrcxr"
MAX_N = 1_000_000


def split_of(index: int) -> str:
    """Split of image ``index``: 80 % train, 10 % validate, 10 % test, fixed by the index."""
    return {8: "validate", 9: "test"}.get(index % 10, "train")


def image_ids(seed: int, index: int) -> dict:
    """MIMIC-like identifiers of image ``index``: dicom_id, subject_id, study_id, sample_id."""
    subject, study = 10_000_000 + index, 50_000_000 + index
    dicom = f"synth{seed}-{index:06d}"
    return {"dicom_id": dicom, "subject_id": subject, "study_id": study, "sample_id": f"{subject}/{study}/{dicom}"}


def generate(seed: int, index: int) -> tuple[np.ndarray, dict]:
    """Image ``index`` of the data set ``seed``: (uint8 (256, 256), record of its tables)."""
    sc = sample_scene(seed, index)
    r = render(sc, seed, index)
    anatomy = anatomy_names("cig_default")
    text = scene_text(sc, np.random.default_rng([seed, index, 2]), anatomy)
    findings = []
    for f, box, sentence in zip(sc.findings, r.findings, text.finding_sentences):
        if box is None:  # pragma: no cover - findings are placed inside the lungs
            continue
        findings.append({"kind": f.kind, "side": f.side, "zone": f.zone, "size": f.size, "box": box,
                         "sentence": sentence, "regions": finding_regions(f)})
    rec = {**image_ids(seed, index), "index": index, "split": split_of(index), "ctr": round(sc.ctr, 4),
           "anat_boxes": {a: r.anatomy[a] for a in anatomy if r.anatomy[a] is not None},
           "anat_labels": text.anat_labels, "anat_sentences": text.anat_sentences,
           "report": text.report, "findings": findings}
    return r.image, rec


# ----------------------------------------------------------------------------- images
_W: dict = {}


def _init(array_path: str, seed: int, worker: bool = False) -> None:
    _W["arr"] = np.load(array_path, mmap_mode="r+")
    _W["seed"] = seed
    if worker:
        _keep_freed_memory()


def _keep_freed_memory() -> None:
    """Let glibc reuse freed buffers instead of handing them back to the OS.

    Drawing allocates many 256 KB temporaries per image; with glibc's defaults each one is
    a fresh memory mapping whose page faults cost a third of the drawing time. Best effort,
    and only in the worker processes (no effect outside glibc).
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _task(chunk: tuple[int, int]) -> list[dict]:
    records = []
    for i in range(*chunk):
        img, rec = generate(_W["seed"], i)
        _W["arr"][i] = img  # a shared file mapping: visible to the parent without a flush
        records.append(rec)
    return records


def _draw_all(out: Path, n: int, seed: int, workers: int, progress: bool) -> list[dict]:
    """Render every image into ``images_256.npy`` (written under a temporary name, then renamed)."""
    from tqdm import tqdm

    final = out / f"images_{SIDE}.npy"
    tmp = out / f".images_{SIDE}.npy.tmp"
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, SIDE, SIDE))
    del arr
    step = 25
    chunks = [(a, min(a + step, n)) for a in range(0, n, step)]
    records: list[dict] = []
    bar = tqdm(total=n, desc="synthetic images", unit="img", disable=not progress or None, leave=False,
               dynamic_ncols=True)
    try:
        if len(chunks) < 3:  # small: draw here
            _init(str(tmp), seed)
            for c in chunks:
                records += _task(c)
                bar.update(c[1] - c[0])
            _W.clear()
        else:
            ctx = mp.get_context("fork") if hasattr(os, "fork") else mp.get_context()
            with ctx.Pool(workers, initializer=worker_init(_init), initargs=(str(tmp), seed, True)) as pool:
                for recs in pool.imap(_task, chunks):
                    records += recs
                    bar.update(len(recs))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return records


def _write_cache_index(out: Path, records: list[dict]) -> None:
    write_csv(out / f"images_{SIDE}_index.csv",
              pd.DataFrame({"sample_id": [r["sample_id"] for r in records], "index": [r["index"] for r in records]}),
              index=False)
    state = np.tile(np.array([1, SIDE, SIDE], dtype=np.int32), (len(records), 1))  # all done, 256 x 256
    buf = io.BytesIO()
    np.save(buf, state)
    atomic_write_bytes(out / f"images_{SIDE}_state.npy", buf.getvalue())


# ----------------------------------------------------------------------------- tables
def _base(records: list[dict]) -> pd.DataFrame:
    """The frontal MIMIC table of the synthetic images (index dicom_id)."""
    df = pd.DataFrame({
        "dicom_id": [r["dicom_id"] for r in records], "H": SIDE, "W": SIDE, "view": "PA",
        "study_id": [r["study_id"] for r in records], "subject_id": [r["subject_id"] for r in records],
        "split": [r["split"] for r in records], "sample_id": [r["sample_id"] for r in records],
    })
    return df.set_index("dicom_id")


def _js(values) -> list[str]:
    return [json.dumps(v, ensure_ascii=False) for v in values]


def build_tables(records: list[dict]) -> dict[str, pd.DataFrame]:
    """Every table of the folder from the image records: file prefix -> frame (with ``split``)."""
    base = _base(records)
    frontal = base.assign(path="", cached=True)
    reports = base.assign(report_sentences=_js(r["report"] for r in records))
    cig_cols = {"anat_boxes": _js(r["anat_boxes"] for r in records), "anat_has_duplicate_box": False,
                "anat_labels": _js(r["anat_labels"] for r in records),
                "anat_sentences": _js(r["anat_sentences"] for r in records)}
    cig_reports = reports.assign(**cig_cols)
    cig = base.assign(**cig_cols)

    ms_boxes = [[f["box"] + [f"mscxr/{MSCXR_CLASS[f['kind']]}"] for f in r["findings"] if f["kind"] in MSCXR_CLASS]
                for r in records]
    ms_phrases = [[f["sentence"] for f in r["findings"] if f["kind"] in MSCXR_CLASS] for r in records]
    mscxr = base.assign(clsbbox=_js(ms_boxes), clsbboxphrases=_js(ms_phrases), has_ms_cxr_boxes=True)
    mscxr = mscxr[[bool(b) for b in ms_boxes]]
    mscxr = mscxr[mscxr["split"] != "train"]  # evaluation only, like the reference (no train split)

    labels = {c: [int(any(VINDR_CLASS[f["kind"]] == c for f in r["findings"])) for r in records]
              for c in VINDR_LABELS}
    labels["No finding"] = [int(not r["findings"]) for r in records]
    vindr = pd.DataFrame({f"cls/vindrcxr/{c}": v for c, v in labels.items()})
    vindr.insert(0, "image_id", [r["dicom_id"] for r in records])
    vindr["split"] = [r["split"] for r in records]
    vindr["clsbbox"] = _js([f["box"] + [f"vindrcxr/{VINDR_CLASS[f['kind']]}"] for f in r["findings"]]
                           for r in records)
    vindr["H"], vindr["W"] = float(SIDE), float(SIDE)
    vindr["sample_id"] = [r["sample_id"] for r in records]  # the image's row in the shared cache
    vindr = vindr.set_index("image_id")

    truth = base[["sample_id", "split"]].assign(ctr=[r["ctr"] for r in records],
                                                findings=_js(r["findings"] for r in records))
    return {"frontal": frontal, "truth": truth, REPORTS: reports, CIG_REPORTS: cig_reports, CIG: cig,
            MSCXR: mscxr, VINDR: vindr}


def _region_class_counts(df: pd.DataFrame) -> dict:
    """Images with the label in at least one region, per split (as for Chest ImaGenome)."""
    counts: dict[str, dict[str, int]] = {}
    for split, cell in zip(df["split"], df["anat_labels"]):
        for lab in sorted({lab for v in json.loads(cell).values() for lab in v}):
            d = counts.setdefault(f"cig/{lab}", {})
            d[SPLITS[split]] = d.get(SPLITS[split], 0) + 1
    return dict(sorted(counts.items()))


def write_tables(out: Path, tables: dict[str, pd.DataFrame]) -> dict:
    """Write every table; return the manifest's dataset entries."""
    write_csv(out / FRONTAL_TABLE, tables["frontal"])
    write_csv(out / GROUND_TRUTH, tables["truth"])
    datasets = {}
    for name in (REPORTS, CIG_REPORTS, CIG, MSCXR, VINDR):
        df = tables[name]
        counts = write_split_tables(out, name, df)
        if name == VINDR:
            summary = dataset_summary(df, label_cols=[f"cls/vindrcxr/{c}" for c in VINDR_LABELS])
        else:
            summary = dataset_summary(df, box_col="clsbbox" if name == MSCXR else None)
        if "anat_labels" in df.columns:
            summary["classes"] = _region_class_counts(df)
        summary["files"] = {k: f"{name}.{k}.csv" for k, v in counts.items() if v} | {"all": f"{name}.all.csv"}
        datasets[name] = summary
    return datasets


# ----------------------------------------------------------------------------- prepare
def _params(n: int, seed: int) -> dict:
    return {"n": n, "seed": seed, "generator_version": GENERATOR_VERSION, "side": SIDE}


def _check_out(out: Path, params: dict) -> bool:
    """True when ``out`` already holds this exact finished data set; raise when it holds anything else."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise ChexError(f"--out {out} is a file; give a folder")
    if not any(out.iterdir()):
        return False
    man = read_manifest(out) or {}
    held = man.get(KIND)
    if man.get("kind") != KIND or held != params:
        what = "other files"
        if man.get("kind") == KIND and isinstance(held, dict):
            what = (f"a synthetic data set with --n {held.get('n')} --seed {held.get('seed')} "
                    f"(generator version {held.get('generator_version')}, this chexcli draws {GENERATOR_VERSION})")
        raise ChexError(f"--out {out} is not empty and holds {what}; give an empty or new folder for "
                        f"--n {params['n']} --seed {params['seed']}")
    part = man.get("parts", {}).get(KIND, {})
    files = [f for ds in man.get("datasets", {}).values() for f in ds.get("files", {}).values()]
    files += [f"images_{SIDE}.npy", f"images_{SIDE}_index.csv", FRONTAL_TABLE, GROUND_TRUTH]
    return bool(part.get("complete")) and all((out / f).is_file() for f in files)


def prepare_synthetic(out: Path, n: int = 4000, seed: int = 0, workers: int = 1, side: int = SIDE,
                      progress: bool = True):
    """Write (or find already written) the synthetic data set ``seed`` of ``n`` images into ``out``.

    Idempotent: the same command on a finished folder does nothing; an interrupted run is
    redone from the start (same bytes). A non-empty ``out`` that holds anything else is refused.
    """
    from chexcli.data.prepare import PrepareResult

    if not 1 <= n <= MAX_N:
        raise ChexError(f"--n must be between 1 and {MAX_N}, got {n}")
    if seed < 0:
        raise ChexError(f"--seed must be >= 0, got {seed}")
    if side != SIDE:
        raise ChexError(f"synthetic images are {SIDE} x {SIDE}: use --cache-size {SIDE}")
    out = Path(out)
    params = _params(n, seed)
    res = PrepareResult(out)
    if _check_out(out, params):
        man = read_manifest(out) or {}
        res.datasets = man.get("datasets", {})
        res.messages.append(f"{out} already holds the synthetic data set --n {n} --seed {seed}; nothing to do")
        return res
    out.mkdir(parents=True, exist_ok=True)
    man = read_manifest(out) or {}
    man[KIND] = params
    write_json(out / MANIFEST, man)
    update_manifest(out, KIND, KIND, None)
    records = _draw_all(out, n, seed, workers, progress)
    _write_cache_index(out, records)
    res.datasets = write_tables(out, build_tables(records))
    normal = sum(not r["findings"] for r in records)
    kinds: dict[str, int] = {}
    for r in records:
        for f in r["findings"]:
            kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
    entry = {**params, "images": n, "cached": n, "skipped": 0, "normal_images": normal,
             "findings": dict(sorted(kinds.items())), "image_cache": f"images_{SIDE}.npy"}
    update_manifest(out, KIND, KIND, entry, datasets=res.datasets)
    return res


# ----------------------------------------------------------------------------- corpus
def synthetic_corpus(folder: str | Path) -> list[str]:
    """Every text a from-scratch tokenizer should know, each once (first-seen order).

    The report sentences, region sentences and box phrases of the folder, then the anatomy
    names, class names and prompt texts of the packaged name lists.
    """
    from chexcli.data.names import _names

    folder = Path(folder)
    seen: dict[str, None] = {}

    def add(texts) -> None:
        for t in texts:
            if isinstance(t, str) and t.strip():
                seen.setdefault(t, None)

    for path, col in ((folder / f"{CIG_REPORTS}.all.csv", "report_sentences"),
                      (folder / f"{CIG_REPORTS}.all.csv", "anat_sentences"),
                      (folder / f"{MSCXR}.all.csv", "clsbboxphrases")):
        if not path.is_file():
            raise ChexError(f"{path} not found; run `chex data prepare synthetic --out {folder}` first")
        for cell in pd.read_csv(path, usecols=[col], keep_default_na=False)[col]:
            value = json.loads(cell)
            add(t for v in value.values() for t in v) if isinstance(value, dict) else add(value)
    names = _names()
    for group in ("anatomy_names", "class_names"):
        for items in names[group].values():
            add(items)
            add(str(c).split("/", 1)[-1] for c in items)
    for prompts in names["prompt_sets"].values():
        for texts in prompts.values():
            add(texts)
    add(sorted(set(sum(CIG_LABELS.values(), []))))
    return list(seen)
