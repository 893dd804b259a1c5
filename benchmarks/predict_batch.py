"""Benchmark: `chex predict` as a batch job (issue 25): images per second over a --queries table, and the
share of the run the model spends waiting for decoded images.

Writes N synthetic chest-X-ray-sized JPEGs (--image-size, default 2048 x 2048, noise: JPEG decoding
costs what a real radiograph costs) and a queries table with --prompts prompts per image, builds a
random-weight bundle of --size (paper: the released sizes, with a small GPT-2 vocabulary learnt from
a short corpus), then runs `chex predict --queries ... --json` in a subprocess per configuration and
reads the run's timing.json:

    images_per_s      images written / run time (model loading excluded)
    waiting_share     time the model loop waited for the next decoded batch / run time (target < 10 %)

Configurations: --dtypes x (with, without sentences) x --workers.

    python benchmarks/predict_batch.py [--images 1000] [--prompts 10] [--size paper] [--dtypes float32,int8]
                                       [--workers 0,1] [--max-new-tokens 20] [--out FILE]

Prints one JSON object per configuration and a summary (also written to --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

PROMPTS = ["left lung opacity", "right lung opacity", "cardiomegaly", "pleural effusion", "pneumothorax",
           "left lower lung zone", "right upper lung zone", "cardiac silhouette", "nodule", "consolidation"]


def write_images(folder: Path, n: int, side: int) -> list[Path]:
    """n noise JPEGs (side x side, grayscale) made from 4 distinct ones (writing is not what is measured)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sources = []
    for k in range(4):
        path = folder / f"source{k}.jpg"
        noise = rng.normal(128, 40, (side // 8, side // 8)).clip(0, 255).astype(np.uint8)
        Image.fromarray(noise).resize((side, side), Image.Resampling.BICUBIC).save(path, quality=92)
        sources.append(path.read_bytes())
    paths = []
    for i in range(n):
        path = folder / f"img{i:05d}.jpg"
        path.write_bytes(sources[i % 4])
        paths.append(path)
    return paths


def write_bundle(folder: Path, size: str) -> Path:
    import torch

    from chexcli.model.bundle import save_bundle
    from chexcli.model.clip_tokenizer import ClipTokenizer
    from chexcli.model.gpt2_text import build_tiny_gpt2_tokenizer
    from chexcli.model.presets import model_config
    from chexcli.model.tiny import TINY_CORPUS, build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        gpt2 = build_tiny_gpt2_tokenizer(TINY_CORPUS, vocab_size=1000, folder=Path(tmp) / "probe")
        clip = ClipTokenizer.build_tiny(TINY_CORPUS, n_merges=200)
        cfg = model_config(size, clip.vocab_size, len(gpt2), gpt2.convert_tokens_to_ids("<|endoftext|>"))
        torch.manual_seed(0)
        model = build_tiny_model(seed=0, gpt2_vocab_size=1000, tokenizer_dir=Path(tmp) / "tok", config=cfg)
        return save_bundle(model, folder, provenance={"source": f"random {size} model (benchmark)"})


def run_config(bundle: Path, table: Path, out: Path, name: str, dtype: str, sentences: bool, workers: int,
               max_new_tokens: int, batch_size: int, threads: int) -> dict:
    args = [sys.executable, "-m", "chexcli", "predict", "--queries", str(table), "--model", str(bundle),
            "--dtype", dtype, "--workers", str(workers), "--batch-size", str(batch_size), "--no-images", "--json",
            "--out", str(out), "--name", name, "--max-new-tokens", str(max_new_tokens)]
    if not sentences:
        args.append("--no-sentences")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    proc = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"chex predict failed: {proc.stderr[-2000:]}")
    timing = json.loads((out / name / "timing.json").read_text())
    return {"dtype": dtype, "sentences": sentences, "workers": workers,
            "images": timing["images_written"], "run_s": timing["seconds"],
            "images_per_s": round(timing["images_written"] / timing["seconds"], 2),
            "waiting_share": timing["waiting_share"], "wall_s_with_loading": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--sentence-images", type=int, default=None,
                        help="images for the configurations with sentences (default: --images)")
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--size", default="paper")
    parser.add_argument("--image-size", type=int, default=2048)
    parser.add_argument("--dtypes", default="float32,int8")
    parser.add_argument("--workers", default="0,1")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = write_images(tmp / "images", args.images, args.image_size)
        bundle = write_bundle(tmp / "bundle", args.size)
        tables = {}
        for sentences in (False, True):
            n = args.sentence_images if sentences and args.sentence_images else args.images
            table = tmp / f"queries_{n}.jsonl"
            table.write_text("".join(json.dumps({"image": str(p), "prompts": PROMPTS[: args.prompts]}) + "\n"
                                     for p in images[:n]))
            tables[sentences] = table
        for dtype in args.dtypes.split(","):
            for sentences in (False, True):
                for workers in map(int, args.workers.split(",")):
                    name = f"{dtype}-{'sent' if sentences else 'boxes'}-w{workers}"
                    result = run_config(bundle, tables[sentences], tmp / "runs", name, dtype, sentences, workers,
                                        args.max_new_tokens, args.batch_size, args.threads)
                    print(json.dumps(result), flush=True)
                    results.append(result)
    summary = {"size": args.size, "image_size": args.image_size, "prompts_per_image": args.prompts,
               "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "threads": args.threads,
               "results": results, "machine": {"cpu": platform.processor() or platform.machine(),
                                               "cores": os.cpu_count()}}
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
