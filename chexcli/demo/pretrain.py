"""`chex demo`'s stand-in for CheXzero: the image tower pretrained on the synthetic training split.

Real training starts stage 1 from CheXzero's image and text towers (`chex weights
import-chexzero`), and the image tower stays largely frozen. The demo has no such weights,
and a tower trained from random weights inside stage 1 does not learn the small findings in
CPU minutes (docs/demo.md). This step gives stage 1 a pretrained tower instead: it trains the
image tower of the random model that stage 1 would build, with two heads that are then
dropped, on the patch grid (N, g, g) of every training image:

  cells    for every cell, the share of it covered by each anatomy box (the 29 names of
           cig_default) and by each finding box (the VinDr-CXR classes), binary cross-entropy
           of a linear head on the LayerNorm-ed patch features;
  regions  the LayerNorm-ed features soft-ROI pooled over each ground-truth anatomy box, as the
           detector pools its boxes, -> that region's finding labels (binary cross-entropy).

Then the text tower (`pretrain_text_tower`, `text_updates` > 0) learns to keep the prompt
names apart: a symmetric InfoNCE between two draws of one synonym per anatomy and pathology
name (CheXzero's text tower tells "Lung opacity" from "Left hilar structures"; a random one
embeds them alike).

The result is a bundle (provenance stage "pretrain") that `chex train --stage 1 --init` takes
like a CheXzero bundle.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CIG_TABLE = "cig_boxclssent"
VINDR_TABLE = "vindrcxr_boxes"


def cell_coverage(boxes: Tensor, grid: int) -> Tensor:
    """boxes (..., 4) center format in [0, 1] -> (..., grid, grid) share of each cell inside the box."""
    lo = torch.arange(grid, device=boxes.device, dtype=boxes.dtype) / grid
    hi = lo + 1.0 / grid
    cx, cy, w, h = boxes.unbind(-1)

    def overlap(c: Tensor, size: Tensor) -> Tensor:  # (..., grid)
        a, b = (c - size / 2)[..., None], (c + size / 2)[..., None]
        return (torch.minimum(b, hi) - torch.maximum(a, lo)).clamp(min=0) * grid

    return overlap(cy, h)[..., :, None] * overlap(cx, w)[..., None, :]


def load_training_targets(data_dir: Path) -> dict[str, Tensor]:
    """The train split in memory: images x (N, S, S) float16, anatomy boxes (N, A, 4) and presence
    (N, A), region finding labels (N, A, C), finding boxes as (K, 6) rows (image, box, class)."""
    from chexcli.data.dataset import ChexDataset

    cig = ChexDataset(data_dir, CIG_TABLE, split="train", transform="eval")
    vindr = ChexDataset(data_dir, VINDR_TABLE, split="train", transform="eval")
    vindr_row = {vindr.sample_id(row): k for k, (_, row) in enumerate(vindr.df.iterrows())}
    xs, boxes, present, labels, findings = [], [], [], [], []
    for i in range(len(cig)):
        s = cig[i]
        xs.append(s["x"].to(torch.float16))
        boxes.append(s["target_anat_boxes"])
        present.append(s["target_anat_present_masks"].bool())
        labels.append(s["target_anat_cls_labels"].float())
        j = vindr_row.get(str(s["sample_id"]))
        if j is None:
            raise ValueError(f"{data_dir}: the {VINDR_TABLE} and {CIG_TABLE} tables list different images")
        for row in vindr[j]["target_cls_boxes"]:
            findings.append(torch.cat([torch.tensor([float(i)]), row[:5].float()]))
    return {"x": torch.stack(xs), "anat_boxes": torch.stack(boxes), "anat_present": torch.stack(present),
            "anat_labels": torch.stack(labels),
            "findings": torch.stack(findings) if findings else torch.zeros(0, 6),
            "n_classes": torch.tensor(len(vindr.classes))}


def cell_targets(data: dict[str, Tensor], index: Tensor, grid: int) -> Tensor:
    """(B, grid, grid, A + C) anatomy and finding coverage of the cells of images `index`."""
    anat = cell_coverage(data["anat_boxes"][index], grid) * data["anat_present"][index][..., None, None]
    b, n_cls = len(index), int(data["n_classes"])
    found = torch.zeros(b, n_cls, grid, grid)
    rows = data["findings"]
    for k, image in enumerate(index.tolist()):
        mine = rows[rows[:, 0] == image]
        if len(mine):
            cov = cell_coverage(mine[:, 1:5], grid)  # (K, g, g)
            for row, c in zip(mine, cov):
                cls = int(row[5])
                found[k, cls] = torch.maximum(found[k, cls], c)
    return torch.cat([anat, found], dim=1).permute(0, 2, 3, 1)


def pretrain_image_tower(model, data: dict[str, Tensor], updates: int, batch_size: int = 16, lr: float = 3e-3,
                         seed: int = 0, on_step: Callable[[int, float, float], None] | None = None) -> list[float]:
    """Train `model.img_encoder` in place with the cells + regions objective; returns the losses.

    The heads (a LayerNorm and two linear layers) are dropped afterwards. `on_step(update, loss, lr)`."""
    from chexcli.model.roi_pool import soft_roi_pool
    from chexcli.train.schedule import CosineWarmupSchedule

    gen = torch.Generator().manual_seed(seed)
    encoder, d = model.img_encoder, model.cfg.d_model
    grid = model.cfg.vision.grid
    n_anat, n_cls = data["anat_boxes"].shape[1], int(data["n_classes"])
    norm, cells, regions = nn.LayerNorm(d), nn.Linear(d, n_anat + n_cls), nn.Linear(d, data["anat_labels"].shape[-1])
    params = [*encoder.parameters(), *norm.parameters(), *cells.parameters(), *regions.parameters()]
    for p in params:
        p.requires_grad_(True)
    # channels-last convolution weights: about a third faster on a CPU; undone before returning,
    # as a bundle stores contiguous tensors
    encoder.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = CosineWarmupSchedule(lr, lr * 0.01, min(20, max(1, updates // 10)), updates)
    targets = cell_targets(data, torch.arange(len(data["x"])), grid)  # (N, g, g, A + C), once
    encoder.train()
    losses = []
    for step in range(updates):
        index = torch.randint(0, len(data["x"]), (batch_size,), generator=gen)
        feats = norm(encoder(data["x"][index].float()).patch_features)  # (B, g, g, d)
        loss_cells = F.binary_cross_entropy_with_logits(cells(feats), targets[index])
        present = data["anat_present"][index]
        pooled = soft_roi_pool(feats, data["anat_boxes"][index], model.detector.beta)  # (B, A, d)
        loss_regions = F.binary_cross_entropy_with_logits(regions(pooled)[present], data["anat_labels"][index][present])
        loss = loss_cells + loss_regions
        for group in opt.param_groups:
            group["lr"] = schedule.lr(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step + 1, losses[-1], schedule.lr(step))
    encoder.to(memory_format=torch.contiguous_format)
    encoder.eval()
    return losses


def prompt_groups(model) -> list[list[str]]:
    """The model's prompt names as groups of synonym strings: every anatomy name, every positive
    and every negative pathology name of its prompt dictionaries (one group each). A string that
    an earlier group holds is left out of later ones (two dictionaries may name the same
    finding), and groups left empty are dropped."""
    sets = (model.prompts or {}).get("prompt_sets", {})
    assembly = (model.prompts or {}).get("model_prompt_assembly", {})
    groups: list[list[str]] = []
    seen: set[str] = set()
    for key in ("anatomy_prompts", "pathology_pos_prompts", "pathology_neg_prompts"):
        for set_name in assembly.get(key, []):
            for prompts in sets.get(set_name, {}).values():
                fresh = [p for p in dict.fromkeys(prompts) if p not in seen]
                seen.update(fresh)
                if fresh:
                    groups.append(fresh)
    return groups


def pretrain_text_tower(model, groups: list[list[str]], updates: int, lr: float = 3e-3, tau: float = 0.1,
                        seed: int = 0) -> list[float]:
    """Train `model.txt_encoder` in place so that different prompt names embed far apart.

    CheXzero's text tower arrives knowing that "Lung opacity" is not "Left hilar structures"; a
    random one embeds most short prompts alike (cosine 0.8-0.9 after stage 1 on the demo data),
    so a detector query cannot tell them apart. Each update embeds one random synonym of every
    group twice over (two draws) and applies a symmetric InfoNCE between the draws: the same
    name is the positive, every other name a negative. Returns the losses."""
    encoder = model.txt_encoder
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in encoder.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    encoder.train()
    labels = torch.arange(len(groups))
    losses = []
    for _ in range(updates):
        draws = []
        for _view in range(2):
            picks = [g[int(torch.randint(len(g), (1,), generator=gen))] for g in groups]
            draws.append(F.normalize(encoder.encode_sentences(picks, use_cache=False).float(), dim=-1))
        sim = draws[0] @ draws[1].t() / tau
        loss = (F.cross_entropy(sim, labels) + F.cross_entropy(sim.t(), labels)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    encoder.eval()
    encoder.clear_cache()
    return losses


def random_stage1_model(data_dir: Path, model_config: str, model_recipe: dict | None = None):
    """The random model `chex train --stage 1` builds for `model_config` (tokenizers from `data_dir`;
    `model_recipe`: a recipe's `model` section, None: the reference's dropout)."""
    from chexcli.data.dataset import ChexDataset
    from chexcli.train.data_setup import text_corpus
    from chexcli.train.model_setup import build_model

    def corpus() -> list[str]:
        return text_corpus(ChexDataset(data_dir, "mimiccxr_reports_cig_multiboxclssent", split="train"))

    with tempfile.TemporaryDirectory() as tmp:
        return build_model("1", None, None, model_config, corpus, Path(tmp), warn=lambda _: None,
                           model_recipe=model_recipe)


def pretrain_bundle(data_dir: Path, out: Path, model_config: str, updates: int, batch_size: int = 16,
                    seed: int = 0, progress: bool = True, echo: Callable[[str], None] = print,
                    text_updates: int = 0) -> Path:
    """Build the random stage-1 model of `model_config`, pretrain its image tower on `data_dir`'s
    train split and save it as a bundle at `out` (for `chex train --stage 1 --init out`)."""
    from chexcli.model.bundle import save_bundle
    from chexcli.train.progress import ProgressBar

    torch.manual_seed(seed)
    start = time.perf_counter()
    model = random_stage1_model(data_dir, model_config)
    data = load_training_targets(data_dir)
    echo(f"image tower pretraining: {len(data['x'])} train images, {updates} updates of {batch_size}")
    with ProgressBar(updates, 0, enabled=progress) as bar:
        losses = pretrain_image_tower(model, data, updates, batch_size, seed=seed,
                                      on_step=lambda step, loss, lr: bar.update(step, loss, lr, samples=batch_size))
    groups = prompt_groups(model)
    text_losses = pretrain_text_tower(model, groups, text_updates, seed=seed) if text_updates else []
    if text_losses:
        echo(f"text tower pretraining: {len(groups)} prompt names, {text_updates} updates, "
             f"loss {text_losses[0]:.3f} -> {text_losses[-1]:.3f}")
    seconds = round(time.perf_counter() - start, 1)
    provenance = {"stage": "pretrain", "architecture": model.provenance["architecture"], "updates": updates,
                  "final_loss": round(losses[-1], 4) if losses else None, "seconds": seconds,
                  "text_updates": text_updates,
                  "text_final_loss": round(text_losses[-1], 4) if text_losses else None,
                  "objective": "cell anatomy/finding coverage + pooled region finding labels; prompt names "
                               "apart in the text tower (chexcli.demo.pretrain)"}
    return save_bundle(model, out, provenance=provenance, overwrite=True)


__all__ = ["cell_coverage", "cell_targets", "load_training_targets", "pretrain_bundle", "pretrain_image_tower",
           "random_stage1_model"]
