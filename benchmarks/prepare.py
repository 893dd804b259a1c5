"""Benchmark of `chex data prepare mimic-cxr-jpg`: the image-cache step on realistic JPEGs.

Builds a synthetic MIMIC-CXR-JPG tree (metadata, split, N frontal JPEGs of about
2500 x 3000 px, chest-X-ray-like content), runs the real preparation with --workers, and
prints JSON: images per second, wall time, peak RSS of the main process and of the largest
worker. Distinct JPEGs are encoded once (``--distinct``) and hard-linked to the other
paths, so building the tree is fast while every image is still decoded from its own path.

    python benchmarks/prepare.py                      # 2000 images, 2 workers
    python benchmarks/prepare.py --images 300 --baseline 20
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def xray_like(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 90 + 60 * np.exp(-(((x - w * 0.3) / (w * 0.15)) ** 2 + ((y - h * 0.5) / (h * 0.3)) ** 2))
    img += 60 * np.exp(-(((x - w * 0.7) / (w * 0.15)) ** 2 + ((y - h * 0.5) / (h * 0.3)) ** 2))
    img += 25 * np.sin(y / 37.0 + seed) * np.cos(x / 53.0)
    img += rng.normal(0, 3, (h, w)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def build_tree(root: Path, n: int, distinct: int) -> None:
    srcs = []
    for k in range(distinct):
        w, h = 2500 + 8 * k, 3000 - 8 * k
        p = root / f"src_{k}.jpg"
        Image.fromarray(xray_like(w, h, k), "L").save(p, quality=95)
        srcs.append((p, w, h))
    meta = ["dicom_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns"]
    split = ["dicom_id,study_id,subject_id,split"]
    for i in range(n):
        p, w, h = srcs[i % distinct]
        subj, study = 10000000 + i, 50000000 + i
        dicom = f"{i:08x}-00000000-00000000-00000000-00000000"
        dest = root / "files" / f"p{str(subj)[:2]}" / f"p{subj}" / f"s{study}" / f"{dicom}.jpg"
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(p, dest)
        meta.append(f"{dicom},CHEST,PA,{h},{w}")
        split.append(f"{dicom},{study},{subj},train")
    with gzip.open(root / "mimic-cxr-2.0.0-metadata.csv.gz", "wt") as f:
        f.write("\n".join(meta) + "\n")
    with gzip.open(root / "mimic-cxr-2.0.0-split.csv.gz", "wt") as f:
        f.write("\n".join(split) + "\n")


def baseline(paths: list[Path], side: int = 256) -> float:
    """(images/s, images per CPU-second) of the reference's per-image path in one process:
    full decode, grey, float32 / 255, resize (shorter side -> 256, area averaging), crop."""
    t0, c0 = time.perf_counter(), time.process_time()
    for p in paths:
        with Image.open(p) as im:
            a = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
        h, w = a.shape
        tw, th = (side, round(h * side / w)) if w <= h else (round(w * side / h), side)
        r = np.asarray(Image.fromarray(a, "F").resize((tw, th), Image.Resampling.BOX))
        _ = r[(th - side) // 2:(th - side) // 2 + side, (tw - side) // 2:(tw - side) // 2 + side].copy()
    return len(paths) / (time.perf_counter() - t0), len(paths) / (time.process_time() - c0)


def _run_prepare(raw: Path, out: Path, workers: int, q) -> None:
    """Runs in a fresh process: its own peak RSS and its workers' are the numbers reported."""
    from chexcli.data.prepare.dispatch import prepare

    t0 = time.perf_counter()
    res = prepare("mimic-cxr-jpg", raw, out, workers=workers, progress=False)
    wall = time.perf_counter() - t0
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime
    q.put((wall, res.skipped, s.ru_maxrss / 1024, c.ru_maxrss / 1024, cpu))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--distinct", type=int, default=16)
    ap.add_argument("--baseline", type=int, default=0, help="also time the reference-style path on N images")
    ap.add_argument("--keep", type=Path, default=None, help="build the tree here and keep it")
    args = ap.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="chex-bench-"))
    raw, out = work / "raw", work / "out"
    try:
        if not (raw / "mimic-cxr-2.0.0-metadata.csv.gz").exists():
            raw.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            import multiprocessing as mp

            p = mp.get_context("spawn").Process(target=build_tree, args=(raw, args.images, args.distinct))
            p.start()
            p.join()  # in a child process, so that the main process's peak RSS is prepare's own
            print(f"built {args.images} JPEGs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        if out.exists():
            shutil.rmtree(out)
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        child = ctx.Process(target=_run_prepare, args=(raw, out, args.workers, q))
        child.start()
        child.join()
        if child.exitcode != 0 or q.empty():
            raise SystemExit(f"prepare failed (exit code {child.exitcode})")
        wall, skipped, me, kids, cpu = q.get()
        sizes = [f.stat().st_size for f in raw.glob("src_*.jpg")]
        result = {
            "benchmark": "prepare mimic-cxr-jpg (image cache, 256 px uint8)",
            "images": args.images, "workers": args.workers, "cpus": os.cpu_count(),
            "seconds": round(wall, 2), "images_per_s": round(args.images / wall, 1),
            "peak_rss_main_mb": round(me, 1), "peak_rss_worker_mb": round(kids, 1),
            "cpu_seconds": round(cpu, 2), "images_per_cpu_s": round(args.images / cpu, 1),
            "skipped": skipped, "jpeg_mb_mean": round(float(np.mean(sizes)) / 1e6, 2),
            "image_size": "about 2500 x 3000, 8-bit grayscale JPEG q95",
        }
        if args.baseline:
            paths = sorted((raw / "files").rglob("*.jpg"))[: args.baseline]
            ips, ipc = baseline(paths)
            result["reference_style_1proc_images_per_s"] = round(ips, 1)
            result["reference_style_1proc_images_per_cpu_s"] = round(ipc, 1)
        print(json.dumps(result, indent=1))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
