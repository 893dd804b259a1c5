"""What does a bundle's frozen image tower tell about each lung zone?

A linear probe on the region features a zone prompt starts from: the tower's patch features
(LayerNorm-ed, as the pretraining heads see them) soft-ROI pooled over each ground-truth lung
zone box (the six "<side> <upper|mid|lower> lung zone" names), trained to say which finding
sits in that zone: none, nodule, opacity, consolidation (their zone), effusion (the lower
zone), pneumothorax (the upper zone). Multinomial logistic regression (L-BFGS, a small L2
penalty) on the probe's train images, scored on the test split. Prints one JSON object:

  recall      {kind: share of the test zones holding that kind that the probe names right}
  confused    {kind: {predicted kind: count}} of the misses
  neighbours  of the zones without a finding that the probe calls "opacity", how many lie in a
              lung that holds an opacity in another zone (the soft ROI kernel reaches into
              the neighbouring zones: exp(-1) of the peak one box height away)
  n           {kind: test zones}

`--pool tight` pools with a near-box kernel instead (half the box, beta 8): what the patch
features hold when neighbours do not leak in. docs/demo.md reports the probe for the
pretrained towers of synthetic data versions 7 and 8.

Usage: python benchmarks/demo_zone_probe.py BUNDLE DATA_DIR [--train-images 1500]
           [--pool soft|tight] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from chexcli.data.dataset import ChexDataset
from chexcli.data.names import anatomy_names
from chexcli.model.bundle import load_bundle
from chexcli.model.roi_pool import soft_roi_pool

ZONES = [f"{side} {zone} lung zone" for side in ("right", "left") for zone in ("upper", "mid", "lower")]
KINDS = ["none", "nodule", "opacity", "consolidation", "effusion", "pneumothorax"]
ZONED = {"nodule": 0, "opacity": 0, "consolidation": 0, "effusion": 1, "pneumothorax": 1}  # index into regions


def zone_labels(findings: list[dict]) -> dict[str, str]:
    """zone name -> the finding kind in it ("none" if nothing), from the synthetic truth."""
    labels = {z: "none" for z in ZONES}
    for f in findings:
        if f["kind"] in ZONED:
            labels[f["regions"][ZONED[f["kind"]]]] = f["kind"]
    return labels


def pooled_zones(model, data: Path, split: str, images: int, tight: bool):
    """(features (N * 6, d), kind index (N * 6,), opacity in another zone of that lung (N * 6,))."""
    truth = pd.read_csv(data / "synthetic.csv", dtype={"sample_id": str}, keep_default_na=False)
    findings = {s: json.loads(f) if f else [] for s, f in zip(truth.sample_id, truth.findings)}
    ds = ChexDataset(data, "cig_boxclssent", split=split, transform="eval")
    names = anatomy_names("cig_default")
    columns = [names.index(z) for z in ZONES]
    picks = np.linspace(0, len(ds) - 1, min(images, len(ds))).astype(int)
    feats, kinds, beside = [], [], []
    for start in range(0, len(picks), 64):
        items = [ds[int(i)] for i in picks[start:start + 64]]
        x = torch.stack([it["x"] for it in items]).float()
        boxes = torch.stack([it["target_anat_boxes"] for it in items])[:, columns]  # (B, 6, 4) center format
        with torch.no_grad():
            patches = model.img_encoder(x).patch_features
            patches = F.layer_norm(patches, patches.shape[-1:])
            if tight:
                boxes = torch.cat([boxes[..., :2], boxes[..., 2:] * 0.5], dim=-1)
            pooled = soft_roi_pool(patches, boxes, 8.0 if tight else model.detector.beta)  # (B, 6, d)
        for item, zones in zip(items, pooled):
            labels = zone_labels(findings[str(item["sample_id"])])
            for zone, feature in zip(ZONES, zones):
                side = zone.split()[0]
                feats.append(feature)
                kinds.append(KINDS.index(labels[zone]))
                beside.append(any(k == "opacity" and z != zone and z.startswith(side) for z, k in labels.items()))
    return torch.stack(feats), torch.tensor(kinds), torch.tensor(beside)


def fit_probe(x: torch.Tensor, y: torch.Tensor, penalty: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression weights (d, K) and bias (K,)."""
    w = torch.zeros(x.shape[1], len(KINDS), requires_grad=True)
    b = torch.zeros(len(KINDS), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + penalty * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--train-images", type=int, default=1500)
    ap.add_argument("--pool", choices=("soft", "tight"), default="soft")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_bundle(args.bundle).eval()
    tight = args.pool == "tight"
    x_train, y_train, _ = pooled_zones(model, args.data, "train", args.train_images, tight)
    x_test, y_test, beside = pooled_zones(model, args.data, "test", 10**9, tight)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    w, b = fit_probe((x_train - mean) / std, y_train)
    predicted = (((x_test - mean) / std) @ w + b).argmax(1)
    recall, confused, n = {}, {}, {}
    for k, kind in enumerate(KINDS):
        mine = y_test == k
        n[kind] = int(mine.sum())
        counts = Counter(predicted[mine].tolist())
        recall[kind] = round(counts[k] / max(n[kind], 1), 3)
        confused[kind] = {KINDS[j]: c for j, c in counts.items() if j != k}
    false_opacity = (y_test == 0) & (predicted == KINDS.index("opacity"))
    print(json.dumps({"bundle": str(args.bundle), "pool": args.pool, "train_images": args.train_images,
                      "recall": recall, "confused": confused,
                      "neighbours": {"none called opacity": int(false_opacity.sum()),
                                     "of them beside an opacity": int((false_opacity & beside).sum())},
                      "n": n}))


if __name__ == "__main__":
    main()
