"""Inference speed and memory of the default-size ChEX (random weights, nothing downloaded).

Saves the model once as a bundle, then prints one JSON object per configuration
(device x dtype), each loading the bundle as `chex predict` does, in a fresh
subprocess so that peak RSS belongs to that configuration alone:

  image_encoder_s          encode 1 image
  detect_1_prompt_s        detect 1 text prompt (detector + post decoder) on an encoded image
  sentence_30_tokens_s     generate 1 sentence forced to exactly 30 new tokens
  sentences_10x30_s        10 such sentences in one batch
  throughput_8x10          8 images x 10 prompts, end to end (encode, detect, 80 sentences of 30 tokens)
  peak_rss_gb              peak resident memory of the process
  bandwidth_bound_*        for fp32 on CPU: bytes the generator must read per token step, the
                           machine's measured read bandwidth, and time-per-token as a fraction of that bound
  compact_vs_fp32          (float16 / int8) agreement of greedy next tokens and logit error vs fp32 on the same weights

Reference implementation on the 2-core CPU machine (fp32, median): image encoder 0.134 s,
1 prompt detected 0.053 s, one 30-token sentence 3.97 s, ten in a batch 9.57 s, peak RSS 5.2 GB.

Usage: python benchmarks/predict.py [--threads 2] [--repeats 3] [--configs cpu:float32,cpu:float16,cpu:int8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REFERENCE = {"image_encoder_s": 0.134, "detect_1_prompt_s": 0.053, "sentence_30_tokens_s": 3.97,
             "sentences_10x30_s": 9.57, "peak_rss_gb": 5.2}


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _read_bandwidth_gbs() -> float:
    """Best of 5 reads of a 1 GB float32 array (a token step of the generator is read-bound)."""
    import torch

    a = torch.ones(256 * 1024 * 1024)
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        a.sum()
        best = max(best, a.numel() * 4 / (time.perf_counter() - t) / 1e9)
    return best


def save_random_bundle(folder: str) -> None:
    """The default-size model with random weights, saved as a bundle (+ float32 reference logits)."""
    import torch

    from chexcli.model.bundle import save_bundle
    from chexcli.model.chex import ChEX
    from chexcli.model.clip_tokenizer import ClipTokenizer
    from chexcli.model.config import ChexConfig
    from chexcli.model.tiny import TINY_CORPUS

    torch.manual_seed(0)
    tok = ClipTokenizer.build_tiny(TINY_CORPUS, n_merges=200)
    model = ChEX(ChexConfig(), tok).eval()  # the released stage-3 sizes
    save_bundle(model, folder, provenance={"source": "random weights (benchmark)"}, overwrite=True)
    torch.save(_teacher_forced_logits(model, "cpu"), os.path.join(folder, "reference_logits.pt"))


def run_one(bundle: str, device: str, dtype: str, threads: int, repeats: int) -> dict:
    """Load the bundle as `chex predict` does (load_bundle with dtype) and time every stage."""
    import torch

    from chexcli.model.bundle import load_bundle

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = load_bundle(bundle, device=device, dtype=dtype)
    load_s = time.perf_counter() - t0
    load_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    cfg = model.cfg
    n_params = sum(p.numel() for p in model.parameters())
    reference_logits = None
    if dtype != "float32":
        reference_logits = torch.load(os.path.join(bundle, "reference_logits.pt"), weights_only=True)

    x1 = torch.randn(1, 224, 224, device=device)
    x8 = torch.randn(8, 224, 224, device=device)
    prompts = [f"prompt number {i}" for i in range(10)]

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    with torch.inference_mode():
        enc = model.encode_image(x1)
        emb1 = model.encode_sentences(prompts[:1])
        emb10 = model.encode_sentences(prompts)
        feats1 = model.detect_prompts(enc, emb1).box_features[0]
        feats10 = torch.randn(10, cfg.d_model, device=device)

        def timed(fn):
            return _median_time(lambda: (fn(), sync()), repeats)

        result = {
            "device": device, "dtype": dtype, "threads": threads, "float_parameters": n_params,
            "load_s": round(load_s, 2), "peak_rss_after_load_gb": load_rss,
            "image_encoder_s": timed(lambda: model.encode_image(x1)),
            "detect_1_prompt_s": timed(lambda: model.detect_prompts(enc, emb1)),
            "sentence_30_tokens_s": timed(lambda: model.generate(feats1, max_new_tokens=30, min_new_tokens=30)),
            "sentences_10x30_s": timed(lambda: model.generate(feats10, max_new_tokens=30, min_new_tokens=30)),
        }

        def end_to_end():
            e = model.encode_image(x8)
            det = model.detect_prompts(e, emb10)
            model.generate(det.box_features.flatten(0, 1), max_new_tokens=30, min_new_tokens=30)

        t = _median_time(lambda: (end_to_end(), sync()), max(1, repeats // 2))
        result["throughput_8x10"] = {"seconds": t, "images_per_s": 8 / t, "sentences_per_s": 80 / t}

    if device == "cpu" and dtype == "float32":
        lm = model.txt_decoder.language_model
        step_bytes = sum(p.numel() * p.element_size() for p in lm.parameters())  # layers + tied head read once
        bw = _read_bandwidth_gbs()
        per_token = result["sentence_30_tokens_s"] / 30
        bound = step_bytes / (bw * 1e9)
        result["bandwidth_bound"] = {"bytes_per_token_step_gb": step_bytes / 1e9, "read_bandwidth_gbs": bw,
                                     "bound_s_per_token": bound, "measured_s_per_token": per_token,
                                     "fraction_of_bound": bound / per_token}
    if reference_logits is not None:
        quant_logits = _teacher_forced_logits(model, device)
        agree = (quant_logits.argmax(-1) == reference_logits.argmax(-1)).float().mean().item()
        err = (quant_logits - reference_logits).abs()
        result["compact_vs_fp32"] = {"greedy_token_agreement": agree,
                                  "max_abs_logit_error": err.max().item(),
                                  "mean_abs_logit_error": err.mean().item(),
                                  "logit_std": reference_logits.std().item()}
    result["speedup_vs_reference"] = {k: REFERENCE[k] / result[k] for k in
                                      ("image_encoder_s", "detect_1_prompt_s", "sentence_30_tokens_s", "sentences_10x30_s")}
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    return result


def _teacher_forced_logits(model, device):
    """Logits of 30 teacher-forced steps for 4 regions (same inputs for every dtype)."""
    import torch

    from chexcli.model.gpt2 import KVCache

    g = torch.Generator().manual_seed(1)
    feats = torch.randn(4, model.cfg.d_model, generator=g).to(device)
    ids = torch.randint(0, model.cfg.generator.vocab_size, (4, 30), generator=g).to(device)
    gen = model.txt_decoder
    with torch.inference_mode():
        keys, values = gen.prefix(feats)
        cache = KVCache.from_prefix(keys, values, capacity=model.cfg.generator.prefix_length_factor + 30)
        lm = gen.language_model
        hidden = lm.hidden_states(ids, torch.arange(30, device=device)[None].expand(4, -1), cache)
        return lm.logits(hidden).float().cpu()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", default=None, help="comma list of device:dtype (default: CPU float32, float16 and int8, CUDA float32 if present)")
    parser.add_argument("--bundle", default=None, help="reuse a bundle saved by an earlier run (default: a temporary one)")
    parser.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_save", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._save:
        save_random_bundle(args._save)
        return
    if args._one:
        device, dtype = args._one.split(":")
        print(json.dumps(run_one(args.bundle, device, dtype, args.threads, args.repeats)))
        return
    import tempfile

    import torch

    tmp = None
    if args.bundle is None:
        tmp = tempfile.TemporaryDirectory(prefix="chex-bench-")
        args.bundle = os.path.join(tmp.name, "bundle")
    if not os.path.exists(os.path.join(args.bundle, "reference_logits.pt")):
        subprocess.run([sys.executable, __file__, "--_save", args.bundle], check=True)

    configs = args.configs.split(",") if args.configs else (
        ["cpu:float32", "cpu:float16", "cpu:int8"] + (["cuda:float32"] if torch.cuda.is_available() else []))
    for config in configs:
        proc = subprocess.run([sys.executable, __file__, "--_one", config, "--threads", str(args.threads),
                               "--repeats", str(args.repeats), "--bundle", args.bundle], capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if proc.returncode != 0:
            print(json.dumps({"config": config, "error": proc.stderr.strip().splitlines()[-1:]}))
        else:
            print(proc.stdout.strip().splitlines()[-1], flush=True)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
