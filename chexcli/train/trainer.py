"""`chex train`: one training loop for every stage, readable top to bottom.

    resolve the recipe -> run folder -> data -> model (or resume) -> freeze ->
    optimizer + schedule -> for each update: accumulation micro-batches
    (forward under autocast, backward, `no_sync` on all but the last), clip,
    step, log, validate every N, checkpoint every N -> export RUN_DIR/bundle.

Steps count optimizer updates. Model-side randomness (dropout, prompt
synonyms, subsampling) is re-seeded at every micro-batch from
(seed, update, shard), so a resumed run draws what the interrupted one would
have drawn, and one process with accumulation k equals k processes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from chexcli.errors import ChexError
from chexcli.model.bundle import save_bundle
from chexcli.train import distributed as dist_utils
from chexcli.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from chexcli.train.data_setup import (ShardedBatchSampler, check_folders, dataset_names, shard_index, text_corpus,
                                      training_dataset)
from chexcli.train.encoding_cache import FrozenEncodingCache
from chexcli.train.model_setup import (apply_freezing, build_model, load_skeleton, save_skeleton,
                                      set_regularisation)
from chexcli.train.objective import ChexObjective, TxtgenObjective
from chexcli.train.recipe import resolve_recipe
from chexcli.train.schedule import CosineWarmupSchedule
from chexcli.train.supervisors import LossWeights, SupervisionOptions
from chexcli.workers import available_cpus, worker_init

CONFIG_FILE = "config.yaml"
ARGS_FILE = "args.json"
STATE_FILE = "state.json"
METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainOptions:
    """What `chex train` was asked to do (the CLI's options)."""

    stage: str
    data: list[Path] = field(default_factory=list)
    init: Path | None = None
    init_generator: Path | None = None
    model_config: str = "paper"
    out: Path = Path("runs/train")
    name: str | None = None
    config: Path | None = None
    profile: str | None = None
    sets: list[str] = field(default_factory=list)
    max_steps: int | None = None
    checkpoint_every: int | None = None
    val_every: int | None = None
    batch_size: int | None = None
    device: str = "auto"
    seed: int | None = None
    resume: Path | None = None
    compile: bool = False
    progress: bool = True

    def recipe_overrides(self) -> dict[str, Any]:
        return {"optim.max_steps": self.max_steps, "run.checkpoint_every": self.checkpoint_every,
                "run.val_every": self.val_every, "optim.batch_size": self.batch_size, "run.seed": self.seed}

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if k == "data" else v)
                for k, v in d.items()}


# ------------------------------------------------------------------------------------------ helpers
def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ChexError("--device cuda: no CUDA device is available here; use --device cpu")
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise ChexError(f"--device {name!r}: use cpu, cuda or auto")
    return torch.device("cpu")


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16 (with a grad scaler); no autocast on the CPU by default."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def micro_seed(seed: int, update: int, shard: int) -> int:
    return (seed * 1_000_003 + update * 10_007 + shard) % (2**63 - 1)


class JsonLog:
    """metrics.jsonl (appended) and, when the package is installed, TensorBoard events (rank 0 only)."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.path = run_dir / METRICS_FILE
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception:  # noqa: BLE001 - tensorboard is optional
                self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tb is not None and "step" in record:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch", "time"):
                    self.tb.add_scalar(f"{record.get('kind', 'train')}/{key}", value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class StopFlag:
    """Ctrl-C / SIGTERM: finish the current update, write a checkpoint, exit."""

    def __init__(self):
        self.raised = False
        self._old: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.raised:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.raised = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ------------------------------------------------------------------------------------------ run folder
def _new_run_dir(out: Path, name: str | None, stage: str) -> Path:
    from chexcli.runs import new_run_dir

    return new_run_dir(out, name or ("txtgen" if stage == "txtgen" else f"stage{stage}"))


def _read_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_state(run_dir: Path, **state) -> None:
    tmp = run_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(run_dir / STATE_FILE)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ------------------------------------------------------------------------------------------ validation
def validate(model, objective, recipe: dict, folders: list[Path], device: torch.device, batch_size: int,
             log: Callable[[str], None]) -> dict[str, float]:
    """Validation loss on the val split of the training data, plus the recipe's evaluation tasks."""
    from chexcli.train.validation import run_validation

    return run_validation(model, objective, recipe, folders, device, batch_size, log)


# ------------------------------------------------------------------------------------------ the loop
def make_optimizer(params: list, weight_decay: float, device: torch.device, lr: float = 0.0,
                   fused: bool = True) -> torch.optim.AdamW:
    """AdamW, fused on CUDA and on the CPU (several times faster than foreach there) unless
    `fused` is false (the reference's PyTorch default). Training starts at lr 0: the schedule
    sets the rate before every update."""
    fused = fused and device.type in ("cuda", "cpu")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def train(opts: TrainOptions, echo: Callable[[str], None] = print) -> Path:
    """Run (or resume) one training run; returns the run folder."""
    device = pick_device(opts.device)
    info = dist_utils.init(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    say = echo if info.is_main else (lambda msg: None)

    # --- recipe and run folder ----------------------------------------------------------------
    if opts.resume is not None:
        run_dir = Path(opts.resume)
        if not (run_dir / CONFIG_FILE).is_file() or not (run_dir / ARGS_FILE).is_file():
            raise ChexError(f"--resume {run_dir} is not a chex train run folder (no {CONFIG_FILE}); "
                            "pass RUN_DIR of an earlier `chex train`")
        recipe = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
        saved = json.loads((run_dir / ARGS_FILE).read_text())
        stage = saved["stage"]
        asked = (opts.sets or opts.config or opts.profile
                 or any(v is not None for v in opts.recipe_overrides().values()))
        if asked:
            wanted = resolve_recipe(stage, opts.config, opts.sets, opts.recipe_overrides(),
                                    opts.profile or saved.get("profile"))
            if wanted != recipe:
                raise ChexError(f"--resume {run_dir}: the given options change its configuration; resume without "
                                "--set/--config/--max-steps/... or start a new run")
        if _read_state(run_dir).get("status") == "finished":
            say(f"{run_dir} has already finished (bundle: {run_dir / 'bundle'}); nothing to do")
            return run_dir
        folders = [Path(p) for p in saved["data"]]
        init = Path(saved["init"]) if saved.get("init") else None
        init_generator = Path(saved["init_generator"]) if saved.get("init_generator") else None
        model_config = saved.get("model_config", "paper")
    else:
        stage = opts.stage
        recipe = resolve_recipe(stage, opts.config, opts.sets, opts.recipe_overrides(), opts.profile)
        folders = [Path(p).resolve() for p in opts.data]
        check_folders(folders)
        init, init_generator, model_config = opts.init, opts.init_generator, opts.model_config
        for option, path in (("--init", init), ("--init-generator", init_generator)):
            if path is not None and not Path(path).is_dir():
                raise ChexError(f"{option} {path} is not a bundle folder; pass RUN_DIR/bundle of an earlier run "
                                "or a bundle from `chex weights import`")
        run_dir = None
    seed = int(recipe["run"]["seed"])
    optim_cfg = recipe["optim"]
    accum = int(optim_cfg["accumulation_steps"])
    if optim_cfg["batch_size"] % info.world:
        raise ChexError(f"--batch-size {optim_cfg['batch_size']} must be divisible by the {info.world} processes")
    micro = optim_cfg["batch_size"] // info.world

    # --- data -------------------------------------------------------------------------------
    size = 224
    dataset = training_dataset(folders, recipe["data"]["train"], size, seed, recipe["data"]["swap_laterality"],
                               recipe["data"]["augment_multiboxes"], recipe["data"].get("augmentation", "reference"))
    sampler = ShardedBatchSampler(len(dataset), micro, accum, info.world, info.rank, seed)
    per_epoch = sampler.updates_per_epoch()
    max_steps = optim_cfg["max_steps"] or optim_cfg["max_epochs"] * per_epoch

    # --- model ------------------------------------------------------------------------------
    checkpoint = None
    if run_dir is None:
        if info.is_main:
            run_dir = _new_run_dir(opts.out, opts.name, stage)
            # the recipe and options first: from here on the run folder can be resumed
            _atomic_text(run_dir / CONFIG_FILE, yaml.safe_dump(recipe, sort_keys=False))
            args = opts.to_json()
            args.update(stage=stage, data=[str(f) for f in folders],
                        init=str(Path(init).resolve()) if init else None,
                        init_generator=str(Path(init_generator).resolve()) if init_generator else None)
            _atomic_text(run_dir / ARGS_FILE, json.dumps(args, indent=1))
        run_dir = Path(dist_utils.broadcast_object(info, str(run_dir) if run_dir else None))
        try:
            torch.manual_seed(seed)
            model = build_model(stage, init, init_generator, model_config, lambda: text_corpus(dataset),
                                run_dir / ".work", say)
        except BaseException:
            if info.is_main:  # nothing was trained yet: leave no run folder behind
                import shutil

                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        if info.is_main:
            save_skeleton(model, run_dir / "model")
            _write_state(run_dir, status="running", step=0, max_steps=max_steps)
        dist_utils.barrier(info)
    else:
        checkpoint = load_checkpoint(run_dir / "checkpoints")
        if checkpoint is not None:
            model = load_skeleton(run_dir / "model")
            model.load_state_dict(checkpoint["model"])
        else:  # killed before the first checkpoint: the initial weights are rebuilt exactly
            torch.manual_seed(seed)
            model = build_model(stage, init, init_generator, model_config, lambda: text_corpus(dataset),
                                run_dir / ".work", say)
            if info.is_main:
                save_skeleton(model, run_dir / "model")
    model.to(device)
    apply_freezing(model, recipe)
    model.train()  # after freezing: a frozen convolutional tower stays in eval mode (conv_encoder)
    set_regularisation(model, recipe)
    if recipe["run"].get("activation_checkpointing") and model.txt_decoder is not None:
        model.txt_decoder.language_model.gradient_checkpointing = True

    classes, anatomies, multi = dataset_names(dataset)
    if stage == "txtgen":
        t = recipe["txtgen"]
        objective = TxtgenObjective(model, t["max_sentences"], tuple(t["copies"]), t["dropout"],
                                    t["generation_include_padding"], t["generation_keep_end_token"],
                                    t.get("prefix_activation", "gelu"))
    else:
        sup = SupervisionOptions(**recipe["supervision"])
        # without augmentation a frozen image tower sees the same image tensors every epoch
        cache = recipe["run"].get("cache_frozen_encodings") and recipe["data"].get("augmentation") == "none"
        encodings = FrozenEncodingCache() if cache else None
        objective = ChexObjective(model, LossWeights(**recipe["loss"]), sup, classes, anatomies,
                                  multi if sup.use_multiboxes else [], encodings)
    _prewarm_text_cache(model, objective, dataset, say)

    wrapped = objective
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # every trained parameter gets a gradient in every micro-batch (ChexObjective keeps an idle
        # generator in the graph), so DDP needs no extra search for unused ones
        wrapped = DDP(objective, device_ids=[device.index] if device.type == "cuda" else None,
                      find_unused_parameters=False)
    forward = torch.compile(wrapped) if opts.compile else wrapped

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ChexError("the recipe trains nothing (model.trainable is empty)")
    optimizer = make_optimizer(params, optim_cfg["weight_decay"], device, fused=optim_cfg.get("fused", True))
    dtype = amp_dtype(recipe["run"]["amp"], device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    step, epoch, position, best = 0, 0, 0, None
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        step, epoch, position = int(checkpoint["step"]), int(checkpoint["epoch"]), int(checkpoint["position"])
        best = checkpoint.get("best")
        set_rng_state(checkpoint["rng"])
    log = JsonLog(run_dir, info.is_main)
    log.write({"kind": "resume" if opts.resume is not None else "start", "step": step, "time": time.time(),
               "trainable_parameters": sum(p.numel() for p in params), "processes": info.world})
    say(f"stage {stage}: {len(dataset)} training samples, {per_epoch} updates per epoch of "
        f"{sampler.global_batch}, {max_steps} updates, {sum(p.numel() for p in params):,} trained parameters "
        f"-> {run_dir}")

    def save(status: str) -> None:
        if info.is_main:
            save_checkpoint(run_dir / "checkpoints", {
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "step": step, "epoch": epoch, "position": position, "best": best, "rng": rng_state(),
                "recipe": json.dumps(recipe, sort_keys=True),
            })
            _write_state(run_dir, status=status, step=step, max_steps=max_steps)
        dist_utils.barrier(info)

    schedule = CosineWarmupSchedule.from_recipe(optim_cfg, max_steps)
    workers = loader_workers(recipe["data"]["workers"], info)
    val_every = per_epoch if recipe["run"]["val_every"] is None else recipe["run"]["val_every"]  # 0: never
    ckpt_every = recipe["run"]["checkpoint_every"]
    log_every = recipe["run"]["log_every"]
    best_key, best_mode = None, "max"
    progress = _Progress(max_steps, step, enabled=opts.progress and info.is_main)
    window_t, window_n = time.perf_counter(), 0
    interrupted = False
    with StopFlag() as stop, progress:
        while step < max_steps:
            dataset.set_epoch(epoch)
            loader = _loader(dataset, sampler, epoch, position, workers, device)
            batches = iter(loader)
            for _ in range(position, per_epoch):
                if step >= max_steps:
                    break
                lr = schedule.lr(step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                sums: dict[str, float] = {}
                for m in range(accum):
                    batch = next(batches)
                    torch.manual_seed(micro_seed(seed, step, shard_index(info.rank, accum, m)))
                    sync = m == accum - 1 or not info.enabled
                    ctx = contextlib.nullcontext() if sync else wrapped.no_sync()
                    with ctx:
                        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                            loss, metrics = forward(batch)
                        scaler.scale(loss / accum).backward()
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0.0) + v / accum
                    window_n += len(batch["x"]) * info.world
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, optim_cfg["grad_clip"])
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                position += 1
                progress.update(step, sums.get("loss", float("nan")), lr)
                if step % log_every == 0 or step == max_steps:
                    now = time.perf_counter()
                    rate = window_n / max(now - window_t, 1e-9)
                    window_t, window_n = now, 0
                    progress.rate = rate
                    log.write({"kind": "train", "step": step, "epoch": epoch, "lr": lr,
                               "grad_norm": float(grad_norm), "samples_per_s": rate, "time": time.time(),
                               **sums})
                if val_every and (step % val_every == 0 or step == max_steps):
                    results = _validation(model, objective, recipe, folders, device, optim_cfg["batch_size"],
                                          info, progress)
                    headline = results.pop("_headline", None)
                    if results:
                        if best_key is None:
                            best_key, best_mode = _best_key(recipe, headline)
                        value = results.get(best_key)
                        improved = value is not None and math.isfinite(value) and (
                            best is None or (value > best if best_mode == "max" else value < best))
                        if improved:
                            best = value
                            if info.is_main:
                                save_bundle(model, run_dir / "bundle-best", overwrite=True,
                                            provenance=_provenance(model, stage, step, {best_key: value}))
                        log.write({"kind": "val", "step": step, "epoch": epoch, "best_metric": best_key,
                                   "best": best, "time": time.time(), **results})
                    model.train()  # validation switched to eval mode, with or without results
                if step % ckpt_every == 0 and step < max_steps:
                    save("running")
                if stop.raised:
                    interrupted = True
                    break
            if interrupted:
                break
            if position >= per_epoch:
                epoch, position = epoch + 1, 0
    if interrupted:
        save("interrupted")
        log.close()
        dist_utils.shutdown(info)
        raise ChexError(f"interrupted at update {step}; a checkpoint was written. Continue with "
                        f"`chex train --resume {run_dir}`", exit_code=130)
    save("exporting")
    if info.is_main:
        save_bundle(model, run_dir / "bundle", overwrite=True,
                    provenance=_provenance(model, stage, step, {"best": best, "best_metric": best_key}))
        _write_state(run_dir, status="finished", step=step, max_steps=max_steps)
        log.write({"kind": "end", "step": step, "time": time.time()})
    log.close()
    dist_utils.barrier(info)
    dist_utils.shutdown(info)
    say(f"finished: {run_dir / 'bundle'}")
    return run_dir


def _provenance(model, stage: str, step: int, extra: dict) -> dict:
    prov = dict(getattr(model, "provenance", {}) or {})
    prov.update(source="chex train", stage=stage, step=step, **extra)
    return prov


def _best_key(recipe: dict, headline: str | None) -> tuple[str, str]:
    wanted = recipe["run"].get("best_metric", "auto")
    if wanted and wanted != "auto":
        mode = "min" if "loss" in wanted else "max"
        return wanted, mode
    if headline:
        return headline, "max"
    return "val/loss", "min"


def _validation(model, objective, recipe, folders, device, batch_size, info, progress) -> dict[str, float]:
    if not info.is_main:
        dist_utils.barrier(info)
        return {}
    with progress.paused():
        results = validate(model, objective, recipe, folders, device, batch_size, lambda m: None)
    dist_utils.barrier(info)
    return results


def loader_workers(requested: int, info) -> int:
    """Data-loader workers per process: the recipe's count, at most the CPUs this process may use
    divided among the processes of this machine (more only compete for the same cores)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", info.world if info.enabled else 1))
    return max(0, min(int(requested), available_cpus() // max(1, local)))


def _loader(dataset, sampler: ShardedBatchSampler, epoch: int, position: int, workers: int, device):
    from torch.utils.data import DataLoader

    from chexcli.data.dataset import collate

    batches = list(sampler.epoch_batches(epoch, position))
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=False,
                      prefetch_factor=2 if workers else None,
                      worker_init_fn=worker_init() if workers else None)  # workers die with this process


def _prewarm_text_cache(model, objective, dataset, say) -> None:
    """Embed every training string once, in a fixed order and chunking.

    The frozen text tower's cache then holds the same values whether a run
    went straight through or was resumed, which keeps resumes exact.
    """
    if not model.txt_encoder.cache_enabled:
        return
    from chexcli.data.transforms import swap_left_right

    corpus = text_corpus(dataset)
    strings = sorted(set(corpus) | {swap_left_right(s) for s in corpus} | set(objective.text_strings()))
    with torch.no_grad():
        for start in range(0, len(strings), 256):
            model.encode_sentences(strings[start:start + 256])


class _Progress:
    """A rich progress bar on stderr: step, loss, lr, samples/s, ETA."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.enabled = enabled
        self.total, self.done = total, done
        self.rate = 0.0
        self._bar = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  "
                                            "{task.fields[rate]:.1f} samples/s"),
                                 TimeRemainingColumn(), console=Console(stderr=True), transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task("train", total=self.total, completed=self.done, loss=float("nan"),
                                            lr=0.0, rate=0.0)
        return self

    def update(self, step: int, loss: float, lr: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step, loss=loss, lr=lr, rate=self.rate)

    @contextlib.contextmanager
    def paused(self):
        yield

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
