"""What the frozen-tower encoding cache and the token cache save in `chex demo`'s training.

Builds the demo's stage-1 model (`tiny-cnn`, random weights; the tower frozen as the demo
freezes it) on a small synthetic folder and times forward + backward + AdamW of the
stage-1 objective with the demo's recipe, per update, once encoding every image and once
through the frozen-encoding cache after one epoch has filled it (the steady state of epochs
2 and later), the cache's keys hashed in the training process (as before) and handed over by the
data loader (`x_digest`, what `chex train` does now: its worker hashes beside the training
process). It also times `encode_targets` for 256 region sentences with the token cache
cold and warm. Prints one JSON object.

Usage: python benchmarks/demo_train_cache.py [--images 64] [--updates 20] [--batch 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chexcli.data.dataset import collate  # noqa: E402
from chexcli.data.prepare.synthetic import prepare_synthetic  # noqa: E402
from chexcli.demo.pretrain import random_stage1_model  # noqa: E402
from chexcli.demo.run import FULL  # noqa: E402
from chexcli.model.gpt2_text import build_tiny_gpt2_tokenizer  # noqa: E402
from chexcli.train import generation  # noqa: E402
from chexcli.train.data_setup import dataset_names, training_dataset  # noqa: E402
from chexcli.train.encoding_cache import shared_cache  # noqa: E402
from chexcli.train.freezing import apply_freezing  # noqa: E402
from chexcli.train.objective import ChexObjective  # noqa: E402
from chexcli.train.recipe import resolve_recipe  # noqa: E402
from chexcli.train.supervisors import LossWeights, SupervisionOptions  # noqa: E402
from chexcli.train.trainer import make_optimizer  # noqa: E402


def time_updates(objective, batches: list[dict], updates: int) -> float:
    """Median seconds of one update (forward, backward, AdamW) over `updates` updates."""
    params = [p for p in objective.model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, 0.0, torch.device("cpu"), lr=1e-4)
    times = []
    for k in range(updates):
        start = time.perf_counter()
        loss, _ = objective(batches[k % len(batches)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--updates", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prepare_synthetic(data, n=args.images, seed=0, progress=False)
        recipe = resolve_recipe("1", None, list(FULL.common) + list(FULL.stage1))
        dataset = training_dataset([data], recipe["data"]["train"], 224, 0, recipe["data"]["swap_laterality"],
                                   recipe["data"]["augment_multiboxes"], "none", image_digests=True)
        model = random_stage1_model(data, FULL.model_config, recipe["model"])
        apply_freezing(model, recipe)
        model.train()
        n = len(dataset) - len(dataset) % args.batch
        order = torch.randperm(len(dataset)).tolist()  # shuffled as in training: both tables in every batch
        batches = [collate([dataset[i] for i in order[s:s + args.batch]]) for s in range(0, n, args.batch)]
        classes, anatomies, multi = dataset_names(dataset)
        sup = SupervisionOptions(**recipe["supervision"])

        def objective(cache_encodings: bool):
            return ChexObjective(model, LossWeights(**recipe["loss"]), sup, classes, anatomies,
                                 multi if sup.use_multiboxes else [], cache_encodings)

        plain = time_updates(objective(False), batches, args.updates)
        cache = shared_cache(model.img_encoder, model.device)  # the cache the objective looks up
        cached_objective = objective(True)
        for b in batches:  # one epoch fills the cache
            cache.encode(model, b["x"])
        hashing = [{k: v for k, v in b.items() if k != "x_digest"} for b in batches]
        cached_hashing = time_updates(cached_objective, hashing, args.updates)
        cached = time_updates(cached_objective, batches, args.updates)

        texts = []
        for b in batches:
            for s in b.get("sentences") or []:
                texts.extend(s or [])
        texts = (texts * (256 // max(1, len(texts)) + 1))[:256]
        tok = build_tiny_gpt2_tokenizer(texts, vocab_size=600, folder=Path(tmp) / "gpt2")  # end token: id 0
        bos = eos = pad = 0
        start = time.perf_counter()
        generation.encode_targets(tok, texts, bos, eos, pad)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        generation.encode_targets(tok, texts, bos, eos, pad)
        warm = time.perf_counter() - start
    print(json.dumps({
        "model": FULL.model_config, "batch": args.batch, "images": args.images, "threads": args.threads,
        "stage1_update_s": round(plain, 4), "stage1_update_cached_hashing_here_s": round(cached_hashing, 4),
        "stage1_update_cached_s": round(cached, 4), "speedup": round(plain / cached, 2),
        "loader_digests_speedup": round(cached_hashing / cached, 3), "cache_entries": len(cache), "cache_mb": round(cache.bytes / 2**20, 2),
        "encode_targets_256_cold_ms": round(cold * 1e3, 2), "encode_targets_256_warm_ms": round(warm * 1e3, 2),
    }))


if __name__ == "__main__":
    main()
