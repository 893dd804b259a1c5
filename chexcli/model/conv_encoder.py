"""A small convolutional image tower (``vision.kind: cnn``) for models trained from random weights.

ChEX's image tower is CLIP's ViT-B/32, which arrives pretrained (CheXzero). A ViT of a few
layers trained from random weights on a CPU learns large findings but hardly sees a nodule or
a thin pneumothorax within minutes (README, "Demo learnability": a linear head on the tiny
ViT's tokens scores AUROC 0.59-0.76 on them, on this tower's 1.00). `chex demo` therefore
builds its model with this tower; it has the ViT's interface (a grid of patch features at
the same stride, their positions and a global feature), so the detector, post decoder and
generator are unchanged.

Layout: log2(patch_size) stages of 3x3 convolution (stride 2), batch norm and ReLU with
width/4, width/2, then width channels, and a 1x1 projection to output_dim. Positions are
fixed 2-D sine-cosine embeddings, added to the patch features as a ViT's tokens carry theirs:
a convolution sees about 63 pixels around a patch, so without them a box pooled around a
small finding could not tell its side or zone (box prompts said "right mid lung zone" for a
nodule anywhere). A frozen tower (no trainable parameter) keeps its batch-norm
statistics in training mode too.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from chexcli.model.config import VisionConfig


def sincos_positions(grid: int, width: int) -> Tensor:
    """2-D sine-cosine embeddings of a grid x grid patch map, (grid * grid, width), row-major."""
    quarter = width // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float64) / max(1, quarter)))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                            indexing="ij")
    parts = []
    for coord in (ys.flatten(), xs.flatten()):
        angles = coord[:, None] * omega[None] * (math.pi / grid)
        parts += [angles.sin(), angles.cos()]
    emb = torch.cat(parts, dim=1)
    out = torch.zeros(grid * grid, width, dtype=torch.float64)
    out[:, : emb.shape[1]] = emb
    return out.float()


def stage_channels(cfg: VisionConfig) -> list[int]:
    """Output channels of the stages: width/4, width/2, then width (at least 1 each)."""
    n = int(math.log2(cfg.patch_size))
    return [max(1, cfg.width // 4), max(1, cfg.width // 2), *[cfg.width] * max(0, n - 2)][:n]


class ConvTower(nn.Module):
    """images (N, 1, S, S) -> patch features (N, S/patch, S/patch, output_dim), positions added."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        channels = [1, *stage_channels(cfg)]
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1), nn.BatchNorm2d(b), nn.ReLU())
            for a, b in zip(channels, channels[1:])
        )
        self.proj = nn.Conv2d(channels[-1], cfg.output_dim, 1)
        self.register_buffer("positions", sincos_positions(cfg.grid, cfg.output_dim))  # saved: loads on meta

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        g = self.cfg.grid
        return self.proj(x).permute(0, 2, 3, 1) + self.positions.to(x.dtype).view(g, g, -1)

    def train(self, mode: bool = True) -> "ConvTower":
        """A frozen tower stays in eval mode: its batch-norm statistics are part of its weights."""
        frozen = not any(p.requires_grad for p in self.parameters())
        return super().train(mode and not frozen)
