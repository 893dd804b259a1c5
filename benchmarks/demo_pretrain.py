"""How much does `chex demo`'s image tower pretraining (chexcli.demo.pretrain) put into the features?

Pretrains the image tower of a random `--model-config` model (as `chex demo` does) on the
train split of a synthetic processed folder. It then pools the tower's patch features over
every ground-truth lung-zone box (the detector's soft ROI pooling). A logistic regression
per finding kind, fitted on `--probe-train` train images, predicts "this region holds the
finding". The benchmark prints one JSON line with the pretraining seconds and the test
AUROC per finding kind (the demo's sentence check needs about 0.96, docs/demo.md).

Usage: python benchmarks/demo_pretrain.py DATA_DIR [--model-config tiny-cnn|tiny]
           [--updates 1000] [--lr 3e-3] [--probe-train 1500] [--probe-test 400] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from chexcli.data.dataset import ChexDataset, collate
from chexcli.data.names import anatomy_names
from chexcli.demo.pretrain import CIG_TABLE, load_training_targets, pretrain_image_tower, random_stage1_model
from chexcli.metrics.classification import binary_auroc
from chexcli.model.roi_pool import soft_roi_pool

KINDS = ("nodule", "opacity", "consolidation", "effusion", "pneumothorax", "cardiomegaly")


@torch.no_grad()
def region_features(model, data: Path, split: str, n: int) -> tuple[torch.Tensor, list[str]]:
    """(N, A, d) tower features pooled over the ground-truth anatomy boxes, and the sample ids."""
    ds = ChexDataset(data, CIG_TABLE, split=split, transform="eval")
    feats, ids = [], []
    for start in range(0, min(n, len(ds)), 64):
        batch = collate([ds[i] for i in range(start, min(start + 64, n, len(ds)))])
        patches = model.encode_image(batch["x"]).patch_features
        feats.append(soft_roi_pool(patches, batch["target_anat_boxes"], model.detector.beta))
        ids += [str(s) for s in batch["sample_id"]]
    return torch.cat(feats), ids


def probe_auroc(train: tuple, test: tuple, findings: dict[str, list[dict]], kind: str) -> float:
    """Logistic regression on the regions where `kind` occurs in the data; test AUROC."""
    index = {name: k for k, name in enumerate(anatomy_names("cig_default"))}
    regions = sorted({f["regions"][0] for fs in findings.values() for f in fs if f["kind"] == kind})

    def rows(feats, ids):
        x, y = [], []
        for i, sid in enumerate(ids):
            have = {f["regions"][0] for f in findings.get(sid, []) if f["kind"] == kind}
            for region in regions:
                x.append(feats[i, index[region]])
                y.append(float(region in have))
        return torch.stack(x), torch.tensor(y)

    x_tr, y_tr = rows(*train)
    x_te, y_te = rows(*test)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-6
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    head = nn.Linear(x_tr.shape[1], 1)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=200)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(head(x_tr).squeeze(1), y_tr) + 1e-3 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return binary_auroc(head(x_te).squeeze(1).numpy(), y_te.numpy() > 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--model-config", default="tiny-cnn")
    ap.add_argument("--updates", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--probe-train", type=int, default=1500)
    ap.add_argument("--probe-test", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = random_stage1_model(args.data, args.model_config)
    targets = load_training_targets(args.data)
    start = time.perf_counter()
    losses = pretrain_image_tower(model, targets, args.updates, lr=args.lr)
    seconds = time.perf_counter() - start
    model.eval()
    truth = pd.read_csv(args.data / "synthetic.csv", dtype={"sample_id": str}, keep_default_na=False)
    findings = {sid: json.loads(f) for sid, f in zip(truth["sample_id"], truth["findings"])}
    train = region_features(model, args.data, "train", args.probe_train)
    test = region_features(model, args.data, "test", args.probe_test)
    auroc = {kind: round(probe_auroc(train, test, findings, kind), 3) for kind in KINDS}
    print(json.dumps({"model_config": args.model_config, "updates": args.updates, "lr": args.lr,
                      "pretrain_seconds": round(seconds, 1), "final_loss": round(losses[-1], 4) if losses else None,
                      "region_auroc": auroc}))


if __name__ == "__main__":
    main()
