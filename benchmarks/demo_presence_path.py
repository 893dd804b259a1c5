"""Does ChEX's pathology path learn finding presence from the demo's synthetic X-rays?

`benchmarks/demo_learnability.py` asks whether the image encoder can see the findings (a
linear head straight on the patch tokens). This benchmark asks the next question: does the
path that stage 1 trains, pathology prompt as a detector query -> token decoder -> soft ROI
pooling -> aggregated query feature, carry that signal? It builds the `tiny` model from
random weights as `chex train --stage 1` does, trains only the pathology supervisor on the
VinDr-style table of a synthetic processed folder, and prints one JSON object per
checkpoint (`updates`, training `seconds`, `pretrain_seconds`, the last batch's `loss`, the
options) with the test-split AUROC per finding class of:

  prompt   the paper's presence probability of the aggregated query feature,
           P(positive) = sigmoid(cosine with the positive prompt - cosine with the "No X"
           prompt) (chexcli.model.classify.classify_features)
  od       the paper's detection score, as the demo's detection check computes it: max over
           the R candidates of weight x P(positive)
  linear   a linear head on the aggregated query feature (only with --objective linear)

Options:
  --objective prompt   the reference's image-level classification loss (docs/training.md#losses)
  --objective linear   binary cross-entropy of a linear head on the same features: the easiest
                       objective the path could be given
  --detection W        add the pathology detection loss (matched boxes + weight focal loss) at W
  --skip-prob P        share of region tokens that mix the decoder token into the pooled feature
                       in training (the reference: 0.25; inference always mixes)
  --text frozen|trained  the random text encoder frozen (the recipe default) or trained
  --encoder vit|cnn    the tiny CLIP ViT, or the reference CNN of demo_learnability.py (five
                       stride-2 3x3 convolutions with batch norm, 1x1 projection to d_model)
  --pretrain N         first train the encoder alone for N updates with a max-pooled linear head
                       on the image-level labels, then freeze it (a stand-in for CheXzero)
  --fit-batch N        train on the first N train images only and score those same images
                       (can the path fit at all?)

Usage: python benchmarks/demo_presence_path.py DATA_DIR [--updates 300,600,900] [--lr 1e-3]
           [--objective prompt|linear] [--detection 0] [--skip-prob 0.25] [--text trained]
           [--encoder vit|cnn] [--pretrain 0] [--fit-batch 0] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from chexcli.data.dataset import ChexDataset, collate
from chexcli.metrics.classification import binary_auroc
from chexcli.model.classify import classify_features
from chexcli.model.detector import ImageEncoding
from chexcli.train.data_setup import text_corpus
from chexcli.train.model_setup import build_model
from chexcli.train.prompts import pathology_banks
from chexcli.train.schedule import CosineWarmupSchedule
from chexcli.train.supervisors import LossWeights, SupervisionOptions, pathology_supervisor
from demo_learnability import reference_cnn  # benchmarks/ is the script's folder, so on sys.path

TABLE = "vindrcxr_boxes"


class CnnImageEncoder(nn.Module):
    """Reference CNN in place of the ViT: (N, 224, 224) -> ImageEncoding with a 7 x 7 grid.

    Patch positions are the ViT's projected sine-cosine positions (the detector adds them)."""

    def __init__(self, d_model: int, positions: torch.Tensor):
        super().__init__()
        self.cnn = reference_cnn(d_model)
        self.register_buffer("positions", positions.detach().reshape(1, 7, 7, d_model).clone())

    def forward(self, x: torch.Tensor) -> ImageEncoding:
        x = x if x.dim() == 3 else x[:, 0]
        patches = self.cnn(x[:, None]).permute(0, 2, 3, 1)  # (N, 7, 7, d)
        pos = self.positions.expand(patches.shape[0], -1, -1, -1)
        return ImageEncoding(patches, pos, patches.mean(dim=(1, 2)))


def load(data: str, split: str, limit: int | None = None) -> tuple[list[dict], list[str]]:
    """The first `limit` samples of a split (eval transform) and the table's class names."""
    ds = ChexDataset(data, TABLE, split=split, transform="eval")
    return [ds[i] for i in range(len(ds) if limit is None else min(limit, len(ds)))], list(ds.classes)


def build(data: str, encoder: str, text: str, skip_prob: float):
    with tempfile.TemporaryDirectory() as tmp:
        corpus = lambda: text_corpus(ChexDataset(data, "mimiccxr_reports_cig_multiboxclssent", split="train"))
        model = build_model("1", None, None, "tiny", corpus, Path(tmp), warn=lambda _: None)
    model.requires_grad_(True)
    if encoder == "cnn":
        model.img_encoder = CnnImageEncoder(model.cfg.d_model, model.img_encoder.backbone.projected_patch_positions())
    model.txt_encoder.requires_grad_(text == "trained")
    model.txt_encoder.cache_enabled = text == "frozen"
    model.detector.skip_roi_pool_prob = skip_prob
    return model


def pretrain(model, train: list[dict], updates: int, lr: float, classes: int) -> None:
    """Encoder alone, max-pooled linear head on the image-level labels, then frozen."""
    head = nn.Linear(model.cfg.d_model, classes)
    opt = torch.optim.AdamW(list(model.img_encoder.parameters()) + list(head.parameters()), lr=lr)
    for _ in range(updates):
        batch = collate([train[int(i)] for i in torch.randint(0, len(train), (16,))])
        feats = model.encode_image(batch["x"]).patch_features.flatten(1, 2)  # (N, P, d)
        loss = F.binary_cross_entropy_with_logits(head(feats).amax(dim=1), batch["target_cls_labels"].float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.img_encoder.eval()
    model.img_encoder.requires_grad_(False)


@torch.no_grad()
def scores(model, samples: list[dict], pos, neg, head: nn.Linear) -> dict[str, torch.Tensor]:
    """prompt / od / linear scores (N, C) of `samples` at inference (skip connection always on)."""
    was = model.training
    model.eval()
    pos.new_step()
    neg.new_step()
    p, q = pos.embed(model, False), neg.embed(model, False)
    out: dict[str, list] = {"prompt": [], "od": [], "linear": []}
    for k in range(0, len(samples), 64):
        batch = collate(samples[k:k + 64])
        det = model.detect_prompts(batch["x"], p, use_post_decoder=False, skip_roi_pool=True, clip_boxes=False)
        presence, _ = classify_features(det.box_features, p[None], q[None], threshold=None)  # (N, C)
        out["prompt"].append(presence)
        prob, _ = classify_features(det.multiboxes_features, p[None, :, None], q[None, :, None], threshold=None)
        out["od"].append((det.multiboxes_weights * prob).amax(dim=-1))  # as the demo's detection check scores
        out["linear"].append(torch.einsum("ncd,cd->nc", det.box_features, head.weight))
    model.train(was)
    if not any(p.requires_grad for p in model.img_encoder.parameters()):
        model.img_encoder.eval()  # a frozen (pretrained) encoder keeps its batch-norm statistics
    return {k: torch.cat(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("--updates", default="300,600,900")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--objective", choices=("prompt", "linear"), default="prompt")
    ap.add_argument("--detection", type=float, default=0.0)
    ap.add_argument("--skip-prob", type=float, default=0.25)
    ap.add_argument("--text", choices=("frozen", "trained"), default="trained")
    ap.add_argument("--encoder", choices=("vit", "cnn"), default="vit")
    ap.add_argument("--pretrain", type=int, default=0)
    ap.add_argument("--fit-batch", type=int, default=0)
    ap.add_argument("--test-images", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    checkpoints = sorted(int(u) for u in args.updates.split(","))

    train, classes = load(args.data, "train", args.fit_batch or None)
    test = train if args.fit_batch else load(args.data, "test", args.test_images)[0]
    model = build(args.data, args.encoder, args.text, args.skip_prob)
    pos, neg = pathology_banks(classes, model.prompts)
    pretrain_seconds = 0.0
    if args.pretrain:
        start = time.perf_counter()
        pretrain(model, train, args.pretrain, args.lr, len(classes))
        pretrain_seconds = round(time.perf_counter() - start, 1)
    head = nn.Linear(model.cfg.d_model, len(classes))
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-5)
    schedule = CosineWarmupSchedule(args.lr, 0.0, warmup=20, total=checkpoints[-1])  # as chex train's
    weights = LossWeights(pathology_classification=1.0 if args.objective == "prompt" else 0.0,
                          pathology_detection=args.detection)
    options = SupervisionOptions(randomize_prompts=False, pathology_box_subsample=len(classes),
                                 pathology_label_subsample=len(classes))
    labels = collate(test)["target_cls_labels"]
    kept = [j for j in range(len(classes)) if 0 < int(labels[:, j].sum()) < len(labels)]
    seconds, done = 0.0, 0
    for target in checkpoints:
        start = time.perf_counter()
        while done < target:
            batch = collate([train[int(i)] for i in torch.randint(0, len(train), (args.batch,))])
            batch["has_class_labels"] = torch.ones(args.batch, len(classes), dtype=torch.bool)
            pos.new_step()
            neg.new_step()
            enc = model.encode_image(batch["x"])
            loss = enc.patch_features.sum() * 0.0
            if weights.pathology_classification or weights.pathology_detection:
                loss = loss + pathology_supervisor(model, enc, batch, weights, options, pos, neg).weighted_sum()
            if args.objective == "linear":
                det = model.detect_prompts(enc, pos.embed(model, False), use_post_decoder=False, skip_roi_pool=None,
                                           clip_boxes=False)
                logits = torch.einsum("ncd,cd->nc", det.box_features, head.weight) + head.bias
                loss = loss + F.binary_cross_entropy_with_logits(logits, batch["target_cls_labels"].float())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            for group in opt.param_groups:
                group["lr"] = schedule.lr(done)
            opt.step()
            done += 1
        seconds += time.perf_counter() - start
        s = scores(model, test, pos, neg, head)
        shown = ("prompt", "od") + (("linear",) if args.objective == "linear" else ())
        result = {"updates": done, "seconds": round(seconds, 1), "pretrain_seconds": pretrain_seconds,
                  "loss": round(float(loss.detach()), 4),
                  **{k: v for k, v in vars(args).items() if k not in ("data", "updates", "threads")},
                  **{name: {classes[j].split("/", 1)[-1]: round(binary_auroc(s[name][:, j].numpy(),
                                                                             labels[:, j].numpy()), 3)
                            for j in kept} for name in shown}}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
