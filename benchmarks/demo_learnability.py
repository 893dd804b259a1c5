"""How fast can the demo's image encoder learn to see the synthetic findings?

Trains the `tiny` ChEX image encoder (CLIP ViT from random weights, sine-cosine patch
positions, as `chex train` builds it) with a linear head to predict which finding kinds an
image holds (binary cross-entropy), on the train split of a synthetic processed folder, and
prints one JSON object per checkpoint with the test-split AUROC per finding kind:

  updates        optimiser updates so far (batch --batch)
  seconds        training time so far
  auroc          {kind: AUROC of "the image holds this finding"} on the test split (0.5: chance)

Heads (--head): `flat`, one linear layer on all patch tokens (it knows where each token is,
as the detector's queries do); `max`, one linear layer per token, max over the tokens (where
does not matter). `--encoder cnn` swaps the ViT for a reference CNN (five stride-2 3x3
convolutions with batch norm, 16-64 channels, then the flat head): what an encoder with a
convolutional bias learns from the same images in the same updates.

The ViT with the flat head is the upper bound of what stage 1 can learn about finding
presence in the same number of updates (stage 1 shares its updates among anatomy, detection
and classification losses), and a one-minute feedback loop for changes to the synthetic
generator (docs/demo.md).

Usage: python benchmarks/demo_learnability.py DATA_DIR [--updates 1000,2000,3000] [--batch 16]
           [--lr 1e-3] [--head flat|max] [--encoder vit|cnn] [--patch 32] [--width 64] [--layers 2]
           [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from chexcli.data.images.cache import open_cache
from chexcli.data.synthetic.scene import FINDING_KINDS
from chexcli.data.transforms import EvalTransform, Targets
from chexcli.metrics.classification import binary_auroc
from chexcli.model.clip import VisionTransformer
from chexcli.model.config import VisionConfig
from chexcli.train.model_setup import init_positions


def load_split(data: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 224, 224) from the image cache through the evaluation transform, labels (N, K)
    of FINDING_KINDS."""
    truth = pd.read_csv(Path(data) / "synthetic.csv", keep_default_na=False)
    truth = truth[truth["split"] == split]
    cache, index = open_cache(Path(data))
    transform = EvalTransform()
    x = torch.stack([transform(np.asarray(cache[index[s]], dtype=np.float32) / 255.0, Targets())[0]
                     for s in truth["sample_id"]])
    kinds = [{f["kind"] for f in json.loads(cell)} for cell in truth["findings"]]
    y = torch.tensor([[k in have for k in FINDING_KINDS] for have in kinds], dtype=torch.float32)
    return x, y


def reference_cnn(out_channels: int | None = None) -> torch.nn.Sequential:
    """(N, 1, 224, 224) -> (N, C, 7, 7): five stride-2 3x3 convolutions with batch norm and ReLU
    (16, 32, 64, 64, 64 channels), then a 1x1 projection to `out_channels` if given (C = 64 without)."""
    channels = [1, 16, 32, 64, 64, 64]
    layers: list[torch.nn.Module] = [
        torch.nn.Sequential(torch.nn.Conv2d(a, b, 3, 2, 1), torch.nn.BatchNorm2d(b), torch.nn.ReLU())
        for a, b in zip(channels, channels[1:])]
    if out_channels is not None:
        layers.append(torch.nn.Conv2d(channels[-1], out_channels, 1))
    return torch.nn.Sequential(*layers)


class Probe(torch.nn.Module):
    """An image encoder from random weights and a linear head: images (N, 224, 224) -> logits (N, K)."""

    def __init__(self, encoder: str, head: str, patch: int, width: int, layers: int):
        super().__init__()
        k = len(FINDING_KINDS)
        self.encoder, self.head_kind = encoder, head
        if encoder == "vit":
            cfg = VisionConfig(image_size=224, patch_size=patch, width=width, layers=layers,
                               heads=max(2, width // 32), output_dim=32)
            self.vit = VisionTransformer(cfg)
            init_positions(self.vit)
            tokens, dim = (224 // patch) ** 2, cfg.output_dim
        else:
            self.cnn = reference_cnn()
            tokens, dim = 7 * 7, 64
        self.head = torch.nn.Linear(tokens * dim if head == "flat" else dim, k)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 224, 224) -> (N, P, D) patch tokens (ViT) or feature-map cells (CNN)."""
        if self.encoder == "vit":
            return self.vit(x[:, None].expand(-1, 3, -1, -1))[:, 1:]
        return self.cnn(x[:, None]).flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.tokens(x)
        return self.head(t.flatten(1)) if self.head_kind == "flat" else self.head(t).amax(dim=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("--updates", default="1000,2000,3000")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--head", choices=("flat", "max"), default="flat")
    ap.add_argument("--encoder", choices=("vit", "cnn"), default="vit")
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    checkpoints = sorted(int(u) for u in args.updates.split(","))
    x_train, y_train = load_split(args.data, "train")
    x_test, y_test = load_split(args.data, "test")
    probe = Probe(args.encoder, args.head, args.patch, args.width, args.layers)
    opt = torch.optim.AdamW(probe.parameters(), lr=args.lr, weight_decay=1e-4)
    seconds, done = 0.0, 0
    for target in checkpoints:
        probe.train()
        start = time.perf_counter()
        for _ in range(target - done):
            i = torch.randint(0, len(x_train), (args.batch,))
            loss = F.binary_cross_entropy_with_logits(probe(x_train[i]), y_train[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
        seconds += time.perf_counter() - start
        done = target
        probe.eval()
        with torch.no_grad():
            scores = torch.cat([probe(x_test[k:k + 64]) for k in range(0, len(x_test), 64)]).numpy()
        result = {"encoder": args.encoder, "head": args.head, "updates": done, "seconds": round(seconds, 1),
                  "batch": args.batch, "lr": args.lr,
                  "auroc": {k: round(binary_auroc(scores[:, j], y_test[:, j].numpy()), 3)
                            for j, k in enumerate(FINDING_KINDS)}}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
