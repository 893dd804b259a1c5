"""`chex data prepare synthetic`: a deterministic synthetic chest X-ray data set (no download).

``prepare_synthetic(out, n, seed)`` draws ``n`` chest X-ray caricatures
(:mod:`chexcli.data.synthetic.drawing`) with their report text
(:mod:`chexcli.data.synthetic.report`) and writes one processed folder in the schema of the
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

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pandas as pd

from chexcli.data.names import VINDR_LABELS
from chexcli.data.prepare.result import PrepareResult
from chexcli.data.processed.files import write_csv, write_json, write_npy
from chexcli.data.processed.layout import (FRONTAL_TABLE, MANIFEST, MIMIC_CIG, MIMIC_MSCXR, MIMIC_REPORTS,
                                           MIMIC_REPORTS_CIG, SYNTHETIC_TRUTH, VINDR, image_cache_files)
from chexcli.data.processed.manifest import read_manifest, update_manifest
from chexcli.data.processed.tables import write_dataset
from chexcli.data.synthetic.generator import GENERATOR_VERSION, generate
from chexcli.data.synthetic.scene import SIDE
from chexcli.data.synthetic.tables import build_tables
from chexcli.errors import ChexError
from chexcli.workers import worker_init

KIND = "synthetic"
MAX_N = 1_000_000


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

    final = out / image_cache_files(SIDE)["array"]
    tmp = out / f".{final.name}.tmp"
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
    cache = image_cache_files(SIDE)
    write_csv(out / cache["index"],
              pd.DataFrame({"sample_id": [r["sample_id"] for r in records], "index": [r["index"] for r in records]}),
              index=False)
    state = np.tile(np.array([1, SIDE, SIDE], dtype=np.int32), (len(records), 1))  # all done, 256 x 256
    write_npy(out / cache["state"], state)


# ----------------------------------------------------------------------------- tables
def write_tables(out: Path, tables: dict) -> dict:
    """Write every table; return the manifest's dataset entries."""
    write_csv(out / FRONTAL_TABLE, tables["frontal"])
    write_csv(out / SYNTHETIC_TRUTH, tables["truth"])
    datasets = {}
    for name in (MIMIC_REPORTS, MIMIC_REPORTS_CIG, MIMIC_CIG, MIMIC_MSCXR, VINDR):
        if name == VINDR:
            datasets[name] = write_dataset(out, name, tables[name],
                                           label_cols=[f"cls/vindrcxr/{c}" for c in VINDR_LABELS])
        else:
            box_col = "clsbbox" if name == MIMIC_MSCXR else None
            datasets[name] = write_dataset(out, name, tables[name], box_col=box_col)
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
    cache = image_cache_files(SIDE)
    files += [cache["array"], cache["index"], FRONTAL_TABLE, SYNTHETIC_TRUTH]
    return bool(part.get("complete")) and all((out / f).is_file() for f in files)


def prepare_synthetic(out: Path, n: int = 4000, seed: int = 0, workers: int = 1, side: int = SIDE,
                      progress: bool = True) -> PrepareResult:
    """Write (or find already written) the synthetic data set ``seed`` of ``n`` images into ``out``.

    Idempotent: the same command on a finished folder does nothing; an interrupted run is
    redone from the start (same bytes). A non-empty ``out`` that holds anything else is refused.
    """
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
    update_manifest(out, KIND, KIND, _manifest_entry(params, records), datasets=res.datasets)
    return res


def _manifest_entry(params: dict, records: list[dict]) -> dict:
    kinds: dict[str, int] = {}
    for r in records:
        for f in r["findings"]:
            kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
    return {**params, "images": len(records), "cached": len(records), "skipped": 0,
            "normal_images": sum(not r["findings"] for r in records),
            "findings": dict(sorted(kinds.items())), "image_cache": image_cache_files(SIDE)["array"]}
