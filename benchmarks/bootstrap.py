"""Benchmark: bootstrapped reference box AP (issue 5).

250 replicates of box AP on 2,000 images with about 5 predicted and 3 GT
boxes each, 8 classes. The reference recomputes its metric object for every
replicate (about 12.7 s per replicate, 3,170 s for 250, on the project's
machine kind); `chexcli.metrics.detection.BoxAP` matches every image once and
only re-sorts the stored TP flags per replicate. The naive oracle
(`chexcli.metrics.naive_ap`, which recomputes everything like the reference)
is timed on a few replicates for comparison, and the point estimates and
those replicates are checked to be identical.

    python benchmarks/bootstrap.py [--images 2000] [--replicates 250] [--naive 2] [--out FILE]

Prints one JSON object (also written to --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from chexcli.metrics.bootstrap import bootstrap, draw_indices  # noqa: E402
from chexcli.metrics.detection import BoxAP  # noqa: E402
from chexcli.metrics.naive_ap import naive_ap_table, naive_box_ap  # noqa: E402
from chexcli.metrics.synthetic import random_detection_set  # noqa: E402

REFERENCE_SECONDS_250 = 3170.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--replicates", type=int, default=250)
    ap.add_argument("--naive", type=int, default=2, help="naive (recompute-all) replicates to time and compare")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    images = random_detection_set(args.images, args.classes, 5.0, 3.0, seed=args.seed, score_levels=1000)
    names = [f"class{c}" for c in range(args.classes)]

    t0 = time.perf_counter()
    metric = BoxAP(images, names)
    t_match = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = bootstrap(metric, args.replicates)
    t_boot = time.perf_counter() - t0
    fast_total = t_match + t_boot

    naive_seconds = None
    identical = None
    if args.naive > 0:
        t0 = time.perf_counter()
        naive_point = naive_box_ap(images, names)
        t_naive_point = time.perf_counter() - t0
        identical = naive_point == result.point
        idx = draw_indices(len(images), args.naive)
        t0 = time.perf_counter()
        for r in range(args.naive):
            table = naive_ap_table([images[i] for i in idx[r]], args.classes)
            identical = identical and bool(np.array_equal(table, metric.ap_table(idx[r])))
        naive_seconds = (time.perf_counter() - t0) / args.naive
        naive_seconds = (naive_seconds * args.naive + t_naive_point) / (args.naive + 1)

    out = {
        "benchmark": "bootstrap_box_ap",
        "images": args.images,
        "classes": args.classes,
        "pred_boxes": int(sum(len(i.pred_scores) for i in images)),
        "gt_boxes": int(sum(len(i.gt_labels) for i in images)),
        "replicates": args.replicates,
        "match_seconds": round(t_match, 3),
        "bootstrap_seconds": round(t_boot, 3),
        "total_seconds": round(fast_total, 3),
        "seconds_per_replicate": round(t_boot / max(args.replicates, 1), 5),
        "naive_seconds_per_replicate": None if naive_seconds is None else round(naive_seconds, 3),
        "naive_estimated_total_seconds": None if naive_seconds is None else round(naive_seconds * (args.replicates + 1), 1),
        "reference_seconds_250": REFERENCE_SECONDS_250,
        "speedup_vs_reference": round(REFERENCE_SECONDS_250 * args.replicates / 250 / fast_total, 1),
        "identical_to_naive": identical,
        "mAP_point": result.point["AP/mAP"],
        "mAP_mean": float(result.replicates["AP/mAP"].mean()) if args.replicates else None,
        "cpu_count": os.cpu_count(),
        "torch_threads": __import__("torch").get_num_threads(),
        "python": platform.python_version(),
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
