"""Where do a bundle's finding boxes go? The demo's stage-1 diagnostic.

For each finding kind of the synthetic data, the finding's prompt as a user types it
(``chexcli.demo.targets.FINDING_PROMPTS``, e.g. "nodule") is asked of every test image through
the predictor that `chex predict` uses, and its highest-weight candidate box is compared with
the finding's ground-truth box on the images that have the finding. Prints one JSON object:

  presence_auroc  {kind: AUROC of the prompt's score against "the image has it"}
  same_side       {kind: {"right" | "left": "k/n"}}: of the findings in the patient's right
                  (image left) or left lung, how many get their box centre on that half of
                  the image; a stage 1 that has not learnt to find a small finding parks every
                  box on one lung (docs/demo.md, "Detection weighted up")
  iou             {kind: mean IoU of the highest-weight candidate with the finding's box}
  images          test images read

The region weight that scores presence reads the pooled feature of its own box, so a box on
the wrong lung also costs presence. Any bundle from stage 1 on can be read (no generator
needed); about 10 s for 400 test images on 2 CPU cores.

Usage: python benchmarks/demo_finding_boxes.py BUNDLE DATA_DIR [--images 400] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from chexcli.boxes import box_iou_xyxy
from chexcli.data.images.cache import open_cache
from chexcli.demo.checks import presence_auroc
from chexcli.demo.targets import FINDING_PROMPTS, best_candidate, load_split
from chexcli.model.bundle import load_bundle
from chexcli.predict import Predictor

LATERAL = ("nodule", "opacity", "consolidation", "effusion", "pneumothorax")


def read_split(bundle: Path, data: Path, images: int | None, batch: int = 32):
    """(per image: {kind: (score, highest-weight box (4,) pixels)}, per image: its findings,
    image width in pixels)."""
    predictor = Predictor(load_bundle(bundle), generate=False)
    df = load_split(data, "test", images)
    cache, index = open_cache(data)
    kinds = list(FINDING_PROMPTS)
    answers, truths, width = [], [], 0
    for start in range(0, len(df), batch):
        chunk = df.iloc[start:start + batch]
        pixels = [np.asarray(cache[index[s]], dtype=np.float32) / 255 for s in chunk.sample_id]
        width = pixels[0].shape[1]
        preds = predictor.predict(pixels, list(chunk.dicom_id), prompts=[FINDING_PROMPTS[k] for k in kinds])
        for pred, findings in zip(preds, chunk.findings):
            answers.append({k: (q.score, best_candidate(q)) for k, q in zip(kinds, pred.queries)})
            truths.append(findings)
    return answers, truths, width


def summarise(answers: list[dict], truths: list[list[dict]], width: int) -> dict:
    out = {"presence_auroc": {}, "same_side": {}, "iou": {}, "images": len(answers)}
    for kind in FINDING_PROMPTS:
        has = [any(f["kind"] == kind for f in fs) for fs in truths]
        auroc = presence_auroc(np.array([a[kind][0] for a in answers]), has)
        if not np.isnan(auroc):
            out["presence_auroc"][kind] = round(float(auroc), 3)
        ious, sides = [], {"right": [0, 0], "left": [0, 0]}
        for answer, fs in zip(answers, truths):
            for f in (f for f in fs if f["kind"] == kind):
                box = answer[kind][1]
                ious.append(float(box_iou_xyxy(box, f["box"])[0, 0]))
                if kind in LATERAL and f.get("side") in sides:
                    centre = (box[0] + box[2]) / 2
                    truth_centre = (f["box"][0] + f["box"][2]) / 2
                    sides[f["side"]][0] += (centre < width / 2) == (truth_centre < width / 2)
                    sides[f["side"]][1] += 1
        if ious:
            out["iou"][kind] = round(float(np.mean(ious)), 3)
        if kind in LATERAL:
            out["same_side"][kind] = {s: f"{k}/{n}" for s, (k, n) in sides.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--images", type=int, default=None, help="test images to read (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    answers, truths, width = read_split(args.bundle, args.data, args.images)
    print(json.dumps(summarise(answers, truths, width)))


if __name__ == "__main__":
    main()
