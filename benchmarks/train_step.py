"""Speed and memory of one training step of the `paper`-size ChEX (random weights), on the reference's batches.

Builds the paper-size model with random weights, applies a stage's freezing (the default recipe,
or `--profile reference`) and times one step of the stage's training objective, after two
warm-up steps (which also fill the text-embedding cache, as after the first epoch):

  --scope fwd-bwd   zero_grad + forward + backward (the scope of the reference's published figures)
  --scope update    the same + gradient clipping + the AdamW step (what a training update costs)

The batch comes from `--batch-file` (a `torch.save`d dict in the reference's batch format, such
as the reference's own stage1_b8.pt / stage3_b2.pt) or, without it, a synthetic batch of the
same format. Each stage runs in its own process, so its peak memory is its own. One JSON object
per stage on stdout:

  step_s, step_s_min, step_s_max   median / fastest / slowest step over --repeats
  samples_per_s                    images per second at the median
  peak_rss_gb                      peak resident memory of the stage's process (CPU);
                                   peak_cuda_gb: peak allocated (CUDA)
  tokens                           stage 3: the generator's padded token count per step
  gflops_per_sample, tflops_per_s, fraction_of_peak   (CUDA) from the FLOP counts in
                                   docs/reproduce.md#gpu-hours-to-expect

It prints what it measured and nothing else: compare with another implementation only by
running both on the same machine.

Usage: python benchmarks/train_step.py [--stages 1,3] [--batch-file 1=stage1_b8.pt,3=stage3_b2.pt]
           [--scope fwd-bwd|update] [--batch 8] [--stage3-batch 2] [--device cpu|cuda] [--repeats 5]
           [--threads 2] [--amp] [--profile default|reference] [--gpt2-tokenizer DIR] [--breakdown]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chexcli.runtime import configure_allocator  # noqa: E402

configure_allocator()  # as `chex train` runs (huge pages for large tensors); THP_MEM_ALLOC_ENABLE=0 turns it off
import torch  # noqa: E402

from chexcli.data.names import anatomy_names, class_names, multibox_mapping  # noqa: E402
from chexcli.model.bundle import default_prompts  # noqa: E402
from chexcli.model.chex import ChEX  # noqa: E402
from chexcli.model.clip_tokenizer import ClipTokenizer  # noqa: E402
from chexcli.model.gpt2_text import build_tiny_gpt2_tokenizer  # noqa: E402
from chexcli.model.presets import model_config  # noqa: E402
from chexcli.train.freezing import apply_freezing  # noqa: E402
from chexcli.train.model_setup import regularised, stage_config  # noqa: E402
from chexcli.train.objective import ChexObjective  # noqa: E402
from chexcli.train.supervisors import LossWeights, SupervisionOptions  # noqa: E402
from chexcli.train.trainer import make_optimizer  # noqa: E402

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


def find_shared(*parts: str) -> Path | None:
    path = ROOT.parent.joinpath("shared", "reference", *parts)
    return path if path.exists() else None


def load_batch_file(path: Path) -> dict:
    """A batch in the reference's format; lists of per-sample tensors stay lists."""
    batch = torch.load(path, weights_only=True)
    if not isinstance(batch, dict) or "x" not in batch:
        raise SystemExit(f"{path}: not a batch in the reference's format (a dict with x, sentences, ...)")
    return batch


def repeat_batch(batch: dict, k: int) -> dict:
    """k copies of a reference-format batch, one after the other (per-sample tensors and lists)."""
    if k == 1:
        return batch
    n = len(batch["x"])
    out = {}
    for key, value in batch.items():
        if torch.is_tensor(value) and value.dim() and value.shape[0] == n:
            out[key] = torch.cat([value] * k)
        elif isinstance(value, list) and len(value) == n:
            out[key] = value * k
        else:  # batch-level entries, e.g. class_ids_with_boxes
            out[key] = value
    return out


def build(stage: str, device: torch.device, profile: str, gpt2_dir: Path | None):
    """The paper-size model of a stage (random weights, train mode, the recipe's freezing and
    dropout) and its objective and optimizer."""
    from chexcli.model.gpt2_text import load_gpt2_tokenizer
    from chexcli.train.recipe import resolve_recipe

    clip = ClipTokenizer.build_tiny(WORDS, n_merges=50)
    if gpt2_dir is not None:  # the generator's token counts follow this tokenizer
        gpt2 = load_gpt2_tokenizer(gpt2_dir)
    else:
        gpt2 = build_tiny_gpt2_tokenizer(WORDS, vocab_size=400, folder=tempfile.mkdtemp(prefix="chex-bench-"))
    arch = model_config("paper", 49408, 50257, gpt2.convert_tokens_to_ids("<|endoftext|>"))
    recipe = resolve_recipe(stage, profile=profile)
    torch.manual_seed(0)
    model = ChEX(regularised(stage_config(arch, stage), recipe["model"]), clip, gpt2, prompts=default_prompts())
    model.to(device)
    apply_freezing(model, recipe)
    model.train()
    if stage == "1":
        classes = class_names("cig_all") + class_names("vindrcxr_loc")
        multi = list(multibox_mapping("cig_mapping"))
    else:
        classes, multi = class_names("cig_all"), []
    options = SupervisionOptions(**recipe["supervision"])
    objective = ChexObjective(model, LossWeights(**recipe["loss"]), options, classes, anatomy_names("cig_default"),
                              multi if options.use_multiboxes else [])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, recipe["optim"]["weight_decay"], device, lr=1e-5,
                               fused=recipe["optim"]["fused"])
    return model, objective, optimizer, params


def generator_tokens(batch: dict, model) -> int:
    """Padded token positions the generator runs per step (both calls), as the reference pads."""
    if model.txt_decoder is None:
        return 0
    cap, tok = model.cfg.max_generated_sentences, model.gpt2_tokenizer

    def padded(texts: list[str]) -> int:
        texts = texts[:cap]
        return len(texts) * min(max(len(tok.encode(t)) + 2 for t in texts), 128) if texts else 0

    sents = [s for r in batch["sentences"] or [] for s in r or []]
    phrases = [" ".join(p) for r in batch["target_anat_sentences"] for p in r if p]
    return padded(sents) + padded(phrases)


def stage3_flops_per_sample(batch: dict, model) -> float:
    """Vision ~23.8 GFLOPs + 3 x 0.71 GFLOPs per decoded token + 3 x 1.01 per prefix vector
    (docs/reproduce.md#gpu-hours-to-expect)."""
    cap, n = model.cfg.max_generated_sentences, len(batch["x"])
    n_sent = sum(len(r or []) for r in batch["sentences"] or [])
    n_anat = sum(1 for r in batch["target_anat_sentences"] for p in r if p)
    n_prefix = min(cap, n_sent) + min(cap, n_anat)
    return (23.8 * n + 3 * 0.71 * generator_tokens(batch, model) + 3 * 1.01 * n_prefix) / n


def _label(path: str) -> str:
    """The component a module belongs to; GPT-2 and the prefix MLP apart (they are most of stage 3)."""
    top = path.split(".")[0]
    if top == "txt_decoder":
        return "txt_decoder.prefix_proj" if ".prefix_proj" in path + "." else "txt_decoder.gpt2"
    return top


@contextlib.contextmanager
def _component_scopes(model):
    """Profiler scopes `component::<label>` around every module's forward (components are also called
    through methods, so every module is hooked) and around the tied output head, which is a method."""
    from torch.profiler import record_function

    stack: list = []

    def enter(name):
        def hook(module, args):
            scope = record_function(f"component::{name}")
            scope.__enter__()
            stack.append(scope)
        return hook

    def leave(module, args, out):
        stack.pop().__exit__(None, None, None)

    handles = []
    for path, module in model.named_modules():
        if path:
            handles += [module.register_forward_pre_hook(enter(_label(path))), module.register_forward_hook(leave)]
    lm = model.txt_decoder.language_model if model.txt_decoder is not None else None
    if lm is not None:
        plain_logits = lm.logits

        def logits(hidden):
            with record_function("component::txt_decoder.lm_head"):
                return plain_logits(hidden)
        lm.logits = logits
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        if lm is not None:
            del lm.logits


def _ancestor(ev, prefix: str):
    """The nearest enclosing profiler event (ev itself included) whose name starts with `prefix`."""
    while ev is not None and not ev.name.startswith(prefix):
        ev = ev.cpu_parent
    return ev


def _scope(ev, prefix: str) -> str | None:
    found = _ancestor(ev, prefix)
    return None if found is None else found.name[len(prefix):]


def breakdown(step, model, optimizer_phase: bool) -> dict:
    """Milliseconds of one step by phase and component, from the PyTorch profiler.

    Forward: each operator's own time goes to the top-level component (img_encoder, detector,
    post_decoder, txt_decoder, ...) whose forward it ran in, "losses/other" otherwise. Backward:
    each autograd node goes to the component of the forward operator that created it (matched
    by sequence number); "grad accumulation" is AccumulateGrad (summing a weight's gradients
    from several uses). Optimizer: clipping and AdamW.
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    with _component_scopes(model), profile(activities=[ProfilerActivity.CPU]) as prof:
        step(record_function)
    events = prof.events()
    out: dict[str, float] = {}

    def charge(key: str, ev) -> None:
        out[key] = out.get(key, 0.0) + ev.self_cpu_time_total / 1e3

    seq_component: dict[int, str] = {}
    for ev in events:
        if _scope(ev, "phase::") == "forward":
            comp = _scope(ev, "component::") or "losses/other"
            if ev.sequence_nr >= 0 and ev.name.startswith("aten::"):
                seq_component.setdefault(ev.sequence_nr, comp)
            charge(f"forward/{comp}", ev)
    for ev in events:
        phase = _scope(ev, "phase::")
        if phase == "backward":
            node = _ancestor(ev, "autograd::engine::evaluate_function")
            if node is None:
                comp = "other"
            elif "AccumulateGrad" in node.name:
                comp = "grad accumulation"
            else:
                comp = seq_component.get(node.sequence_nr, "losses/other")
            charge(f"backward/{comp}", ev)
        elif phase == "optimizer" and optimizer_phase:
            charge("optimizer", ev)
    return {k: round(v, 1) for k, v in sorted(out.items())}


def run(stage: str, batch: dict, device: torch.device, repeats: int, amp: bool, scope: str, profile: str,
        gpt2_dir: Path | None, peak_tflops: float, want_breakdown: bool) -> dict:
    model, objective, optimizer, params = build(stage, device, profile, gpt2_dir)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    dtype = torch.bfloat16 if amp and device.type == "cuda" else None
    counter = [0]

    def step(scoped=None):
        scoped = scoped or (lambda name: _Nothing())
        torch.manual_seed(counter[0])  # the same random choices (subsampling, dropout) at every run
        counter[0] += 1
        optimizer.zero_grad(set_to_none=True)
        with scoped("phase::forward"), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss, _ = objective(batch)
        with scoped("phase::backward"):
            loss.backward()
        if scope == "update":
            with scoped("phase::optimizer"):
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
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
    n = len(batch["x"])
    out = {"stage": stage, "scope": scope, "profile": profile, "device": str(device), "batch": n,
           "threads": torch.get_num_threads(), "amp": str(dtype) if dtype else "fp32",
           "step_s": round(step_s, 4), "step_s_min": round(min(times), 4), "step_s_max": round(max(times), 4),
           "samples_per_s": round(n / step_s, 2), "trainable_parameters": sum(p.numel() for p in params)}
    if device.type == "cuda":
        out["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    out["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
    if stage == "3":
        out["tokens"] = generator_tokens(batch, model)
        out["gpt2_tokenizer"] = str(gpt2_dir) if gpt2_dir else "tiny (built from a word list)"
    if device.type == "cuda":
        gflops = 32.0 if stage == "1" else stage3_flops_per_sample(batch, model)
        tflops = gflops * n / step_s / 1e3
        out.update(gflops_per_sample=round(gflops, 1), tflops_per_s=round(tflops, 1),
                   fraction_of_peak=round(tflops / peak_tflops, 3))
    if want_breakdown:
        out["breakdown_ms"] = breakdown(step, model, scope == "update")
    return out


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default="1,3")
    ap.add_argument("--batch-file", default=None,
                    help="STAGE=FILE[,STAGE=FILE]: reference-format batches (default: the reference's train_perf "
                         "batches when found next to the repository, else synthetic)")
    ap.add_argument("--scope", choices=("fwd-bwd", "update"), default="fwd-bwd")
    ap.add_argument("--batch", type=int, default=8, help="synthetic stage-1 batch")
    ap.add_argument("--stage3-batch", type=int, default=2, help="synthetic stage-3 micro-batch (reference: 8)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (0: torch default)")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    ap.add_argument("--profile", default="default", help="recipe profile: default or reference")
    ap.add_argument("--gpt2-tokenizer", default=None,
                    help="GPT-2 tokenizer folder (decides stage 3's token counts; default: the parity fixture's "
                         "gpt2_tiny when found, else a tiny one built from a word list)")
    ap.add_argument("--breakdown", action="store_true", help="time by phase and component (PyTorch profiler)")
    ap.add_argument("--repeat-batch", type=int, default=1, help="run K copies of the batch as one batch")
    ap.add_argument("--find-max-batch", action="store_true",
                    help="CUDA: double --repeat-batch until the step runs out of memory; report the largest that fits")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="the card's dense bf16 peak (H100 SXM 989)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if len(stages) > 1 and not args.child:  # one process per stage: each peak RSS is the stage's own
        for stage in stages:
            argv = [a for a in sys.argv[1:]]
            i = argv.index("--stages") if "--stages" in argv else None
            if i is not None:
                del argv[i:i + 2]
            argv = [a for a in argv if not a.startswith("--stages=")]
            code = subprocess.call([sys.executable, __file__, "--stages", stage, *argv])
            if code:
                raise SystemExit(code)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    files = {"1": find_shared("train_perf", "stage1_b8.pt"), "3": find_shared("train_perf", "stage3_b2.pt")}
    if args.batch_file:
        files = {k: None for k in files}
        for item in args.batch_file.split(","):
            stage, _, path = item.partition("=")
            files[stage.strip()] = Path(path.strip())
    gpt2_dir = Path(args.gpt2_tokenizer) if args.gpt2_tokenizer else find_shared("parity", "gpt2_tiny")
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    for stage in stages:
        path = files.get(stage)
        if path is not None:
            batch = load_batch_file(path)
        else:
            batch = stage1_batch(args.batch, g) if stage == "1" else stage3_batch(args.stage3_batch, g)
        if args.find_max_batch:
            print(json.dumps(find_max_batch(stage, batch, device, args)), flush=True)
            continue
        result = run(stage, repeat_batch(batch, args.repeat_batch), device, args.repeats, args.amp, args.scope,
                     args.profile, gpt2_dir, args.peak_tflops, args.breakdown)
        result["batch_file"] = str(path) if path is not None else "synthetic"
        print(json.dumps(result), flush=True)


def find_max_batch(stage: str, batch: dict, device: torch.device, args) -> dict:
    """The largest power-of-two multiple of the batch whose training update fits the GPU (one process)."""
    if device.type != "cuda":
        raise SystemExit("--find-max-batch needs --device cuda")
    fits, k = 0, max(1, args.repeat_batch)
    while True:
        try:
            result = run(stage, repeat_batch(batch, k), device, 1, args.amp, "update", args.profile,
                         Path(args.gpt2_tokenizer) if args.gpt2_tokenizer else find_shared("parity", "gpt2_tiny"),
                         args.peak_tflops, False)
            fits, last = k, result
            k *= 2
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    return {"stage": stage, "largest_batch": fits * len(batch["x"]), "at_largest": last if fits else None}


if __name__ == "__main__":
    main()
