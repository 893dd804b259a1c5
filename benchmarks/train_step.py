"""Speed and memory of one optimisation step of the `paper`-size ChEX (random weights, synthetic batches).

Times forward + backward + AdamW step of the stage-1 and stage-3 training objectives on
batches in the reference's batch format (TRAINING.md §4.3), after warm-up steps, and prints
one JSON object per stage:

  step_s            median seconds per step (micro-batch of --batch images, one update); step_s_min the fastest
  samples_per_s     images per second
  peak_mem_gb       peak resident memory of the process (CPU) / peak allocated (CUDA)
  gflops_per_sample training FLOPs per image from TRAINING.md §12 (stage 1: 32.0 with ln_pre frozen;
                    stage 3: from the batch's actual token and prefix counts)
  tflops_per_s      achieved (CUDA only), and the fraction of --peak-tflops

The reference implementation takes 3.30 s for a stage-1 step at batch 8 on the 2-core CPU
machine (fp32); the target is at least 1.5x faster (<= 2.2 s).

Usage: python benchmarks/train_step.py [--stages 1,3] [--batch 8] [--stage3-batch 2] [--device cpu|cuda]
                                       [--repeats 5] [--threads 2] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chexcli.data.names import anatomy_names, class_names, multibox_mapping  # noqa: E402
from chexcli.model.bundle import attach_gpt2_tokenizer, default_prompts  # noqa: E402
from chexcli.model.chex import ChEX  # noqa: E402
from chexcli.model.clip_tokenizer import ClipTokenizer  # noqa: E402
from chexcli.model.gpt2_text import build_tiny_gpt2_tokenizer  # noqa: E402
from chexcli.train.model_setup import _stage_config, apply_freezing, preset_config  # noqa: E402
from chexcli.train.objective import ChexObjective  # noqa: E402
from chexcli.train.recipe import load_recipe  # noqa: E402
from chexcli.train.supervisors import LossWeights, SupervisionOptions  # noqa: E402
from chexcli.train.trainer import make_optimizer  # noqa: E402

REFERENCE_STAGE1_S = 3.30
WORDS = ("left right upper lower lung zone opacity effusion pleural small moderate large heart size normal "
         "cardiac silhouette enlarged pneumothorax no there is a the of in with mild atelectasis basilar").split()


def _sentence(g: torch.Generator, n_words: int) -> str:
    idx = torch.randint(len(WORDS), (n_words,), generator=g).tolist()
    return " ".join(WORDS[i] for i in idx).capitalize() + "."


def _box(g: torch.Generator, n: int) -> torch.Tensor:
    c = 0.25 + 0.5 * torch.rand(n, 2, generator=g)
    wh = 0.1 + 0.3 * torch.rand(n, 2, generator=g)
    return torch.cat([c, wh], dim=1)


def stage1_batch(n: int, g: torch.Generator) -> dict:
    """Half MIMIC/Chest ImaGenome samples (sentences, anatomy boxes, labels), half VinDr (class boxes)."""
    anat, multi = anatomy_names("cig_default"), list(multibox_mapping("cig_mapping"))
    cig, vindr = class_names("cig_all"), class_names("vindrcxr_loc")
    a, gm, c = len(anat), len(multi), len(cig) + len(vindr)
    mimic = torch.arange(n) < n // 2
    batch = {"x": torch.randn(n, 224, 224, generator=g), "has_sentences": mimic.clone(),
             "sentences": [[_sentence(g, 8) for _ in range(7)] if m else None for m in mimic.tolist()]}
    batch["target_anat_boxes"] = _box(g, n * a).view(n, a, 4) * mimic[:, None, None]
    batch["target_anat_present_masks"] = mimic[:, None].expand(n, a).clone()
    batch["has_anatomy_bboxes"] = mimic[:, None].expand(n, a).clone()
    batch["target_anat_multiboxes"] = _box(g, n * gm * 2).view(n, gm, 2, 4)
    batch["target_anat_multiboxes_masks"] = mimic[:, None, None].expand(n, gm, 2).clone()
    batch["has_anatomy_multiboxes"] = mimic[:, None].expand(n, gm).clone()
    labels = (torch.rand(n, a, c, generator=g) < 0.05).long()
    has_al = torch.zeros(n, a, c, dtype=torch.bool)
    has_al[:, :, : len(cig)] = mimic[:, None, None]
    batch["target_anat_cls_labels"], batch["has_anatomy_class_labels"] = labels * has_al, has_al
    batch["target_anat_sentences"] = [[[_sentence(g, 5)] if m else [] for _ in range(a)] for m in mimic.tolist()]
    batch["has_anatomy_sentences"] = mimic[:, None].expand(n, a).clone()
    has_cl = torch.zeros(n, c, dtype=torch.bool)
    has_cl[:, len(cig):] = ~mimic[:, None]
    batch["target_cls_labels"] = (torch.rand(n, c, generator=g) < 0.15).long() * has_cl
    batch["has_class_labels"], batch["has_class_bboxes"] = has_cl, has_cl.clone()
    ids = torch.arange(len(cig), c)
    m_boxes = 3
    padded = torch.zeros(n, len(ids), m_boxes, 5)
    mask = torch.zeros(n, len(ids), m_boxes, dtype=torch.bool)
    for i in range(n):
        if mimic[i]:
            continue
        for j in torch.randperm(len(ids), generator=g)[:3].tolist():
            k = int(torch.randint(1, m_boxes + 1, (), generator=g))
            padded[i, j, :k, :4] = _box(g, k)
            mask[i, j, :k] = True
    batch["class_ids_with_boxes"], batch["target_cls_boxes_padded"], batch["target_cls_boxes_mask"] = ids, padded, mask
    return batch


def stage3_batch(n: int, g: torch.Generator) -> dict:
    """MIMIC/Chest ImaGenome samples only (no has_* flags), 7 sentences and one phrase per anatomy."""
    a, c = len(anatomy_names("cig_default")), len(class_names("cig_all"))
    return {"x": torch.randn(n, 224, 224, generator=g),
            "sentences": [[_sentence(g, 10) for _ in range(7)] for _ in range(n)],
            "target_anat_boxes": _box(g, n * a).view(n, a, 4),
            "target_anat_present_masks": torch.ones(n, a, dtype=torch.bool),
            "target_anat_cls_labels": torch.zeros(n, a, c, dtype=torch.long),
            "target_anat_sentences": [[[_sentence(g, 8), _sentence(g, 6)] for _ in range(a)] for _ in range(n)]}


def build(stage: str, device: torch.device):
    clip = ClipTokenizer.build_tiny(WORDS, n_merges=50)
    tmp = tempfile.mkdtemp(prefix="chex-bench-")
    gpt2 = build_tiny_gpt2_tokenizer(WORDS, vocab_size=400, folder=tmp)
    arch = preset_config("paper", 49408, 50257, gpt2.convert_tokens_to_ids("<|endoftext|>"))
    torch.manual_seed(0)
    model = ChEX(_stage_config(arch, stage), clip, prompts=default_prompts())
    attach_gpt2_tokenizer(model, gpt2)
    recipe = load_recipe(stage)
    model.to(device).train()
    apply_freezing(model, recipe)
    if stage == "1":
        classes = class_names("cig_all") + class_names("vindrcxr_loc")
        multi = list(multibox_mapping("cig_mapping"))
    else:
        classes, multi = class_names("cig_all"), []
    objective = ChexObjective(model, LossWeights(**recipe["loss"]), SupervisionOptions(**recipe["supervision"]),
                              classes, anatomy_names("cig_default"), multi)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, recipe["optim"]["weight_decay"], device, lr=1e-5)
    return model, objective, optimizer, params


def stage3_flops_per_sample(batch: dict, model) -> float:
    """TRAINING.md §12: vision ~23.8 GFLOPs + 3 x 0.71 GFLOPs per decoded token + 3 x 1.01 per prefix vector."""
    cap = model.cfg.max_generated_sentences
    tok = model.gpt2_tokenizer
    n = len(batch["x"])

    def tokens(texts: list[str]) -> int:
        texts = texts[:cap]
        longest = max(len(tok.encode(t)) + 2 for t in texts)
        return len(texts) * min(longest, 128)

    sents = [s for r in batch["sentences"] for s in r]
    phrases = [" ".join(p) for r in batch["target_anat_sentences"] for p in r[:20] if p]
    n_tok = tokens(sents) + tokens(phrases)
    n_prefix = min(cap, len(sents)) + min(cap, len(phrases))
    return 23.8 * n + 3 * 0.71 * n_tok + 3 * 1.01 * n_prefix * 5 / 5


def run(stage: str, batch_size: int, device: torch.device, repeats: int, amp: bool, peak_tflops: float) -> dict:
    model, objective, optimizer, params = build(stage, device)
    g = torch.Generator().manual_seed(0)
    batch = stage1_batch(batch_size, g) if stage == "1" else stage3_batch(batch_size, g)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    dtype = torch.bfloat16 if amp and device.type == "cuda" else None

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss, _ = objective(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up: also fills the text-embedding cache, as after the first epoch
    step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 1e9
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    gflops = 32.0 if stage == "1" else stage3_flops_per_sample(batch, model) / batch_size
    out = {"stage": stage, "device": str(device), "batch": batch_size, "amp": str(dtype) if dtype else "fp32",
           "step_s": round(step_s, 4), "step_s_min": round(min(times), 4),
           "samples_per_s": round(batch_size / step_s, 2),
           "peak_mem_gb": round(peak, 2), "gflops_per_sample": round(gflops, 1),
           "trainable_parameters": sum(p.numel() for p in params)}
    if stage == "1" and device.type == "cpu" and batch_size == 8:
        out["reference_step_s"] = REFERENCE_STAGE1_S
        out["speedup_vs_reference"] = round(REFERENCE_STAGE1_S / step_s, 2)
    if device.type == "cuda":
        tflops = gflops * batch_size / step_s / 1e3
        out["tflops_per_s"] = round(tflops, 1)
        out["fraction_of_peak"] = round(tflops / peak_tflops, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default="1,3")
    ap.add_argument("--batch", type=int, default=8, help="stage-1 batch")
    ap.add_argument("--stage3-batch", type=int, default=2, help="stage-3 micro-batch (reference: 8)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (0: torch default)")
    ap.add_argument("--no-amp", action="store_true", help="fp32 on CUDA too")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="the card's dense bf16 peak (H100 SXM 989)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    for stage in args.stages.split(","):
        n = args.batch if stage == "1" else args.stage3_batch
        print(json.dumps(run(stage.strip(), n, device, args.repeats, not args.no_amp, args.peak_tflops)), flush=True)


if __name__ == "__main__":
    main()
