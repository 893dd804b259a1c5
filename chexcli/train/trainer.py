"""`chex train`: one training loop for every stage (docs/training.md#the-loop).

    train(opts)
      resolve the run (new, or the one --resume names)      chexcli.train.run_folder
      data: the training set and its sharded batch sampler  chexcli.train.data_setup
      model: built from the stage's sources, or resumed     chexcli.train.model_setup
      objective: batch -> (loss, sub-losses)                chexcli.train.objective
      loop: every update = accumulation micro-batches (forward under autocast, backward,
            `no_sync` on all but the last), clip, step; then log, validate, checkpoint
      export RUN_DIR/bundle (and RUN_DIR/bundle-best at each better validation)

Steps count optimizer updates. Model-side randomness (dropout, prompt synonyms,
subsampling) is re-seeded at every micro-batch from (seed, update, shard), so a resumed run
draws what the interrupted one would have drawn, and one process with accumulation k equals
k processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from chexcli.devices import resolve_device
from chexcli.errors import ChexError
from chexcli.model.bundle import load_skeleton, save_bundle
from chexcli.train import distributed as dist_utils
from chexcli.train.best_bundle import BestMetric
from chexcli.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from chexcli.train.data_setup import ShardedBatchSampler, dataset_names, shard_index, text_corpus, training_dataset
from chexcli.train.distributed import DistInfo
from chexcli.train.encoding_cache import caches_frozen_encodings
from chexcli.train.freezing import apply_freezing
from chexcli.train.loss_terms import RunningSums
from chexcli.train.metrics_log import MetricsLog
from chexcli.train.model_setup import build_model
from chexcli.train.objective import make_objective
from chexcli.train.options import TrainOptions
from chexcli.train.progress import ProgressBar
from chexcli.train.run_folder import (CHECKPOINT_DIR, MODEL_DIR, RunSpec, create_run_folder, remove_run_folder,
                                      resolve_run, write_state)
from chexcli.train.schedule import CosineWarmupSchedule
from chexcli.train.stop_flag import StopFlag
from chexcli.train.validation import Validation, validate
from chexcli.workers import available_cpus, worker_init

IMAGE_SIZE = 224


def train(opts: TrainOptions, echo: Callable[[str], None] = print) -> Path:
    """Run (or resume) one training run; returns the run folder."""
    device, info = start_processes(opts.device)
    say = echo if info.is_main else (lambda msg: None)
    spec = resolve_run(opts)
    if spec.finished:
        say(f"{spec.folder} has already finished (bundle: {spec.folder / 'bundle'}); nothing to do")
        return spec.folder
    trainer = Trainer(spec, opts, device, info, say)
    interrupted = False
    with StopFlag() as stop, trainer.progress:
        while trainer.step < trainer.max_steps and not interrupted:
            batches = trainer.epoch_batches()
            for _ in range(trainer.position, trainer.per_epoch):
                if trainer.step >= trainer.max_steps:
                    break
                trainer.update(batches)
                trainer.log_if_due()
                trainer.validate_if_due()
                trainer.checkpoint_if_due()
                if stop.raised:
                    interrupted = True
                    break
            if not interrupted:
                trainer.next_epoch_if_done()
    if interrupted:
        trainer.stop()
    return trainer.finish()


# ------------------------------------------------------------------------------------------ processes
def start_processes(device_name: str) -> tuple[torch.device, DistInfo]:
    """This process's device and its place among the DDP processes (one process without torchrun)."""
    device = resolve_device(device_name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    info = dist_utils.init(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    return device, info


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16 (with a grad scaler); no autocast on the CPU by default."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def micro_seed(seed: int, update: int, shard: int) -> int:
    return (seed * 1_000_003 + update * 10_007 + shard) % (2**63 - 1)


def make_optimizer(params: list, weight_decay: float, device: torch.device, lr: float = 0.0,
                   fused: bool = True) -> torch.optim.AdamW:
    """AdamW, fused on CUDA and on the CPU (several times faster than foreach there) unless
    `fused` is false (the reference's PyTorch default). Training starts at lr 0: the schedule
    sets the rate before every update."""
    fused = fused and device.type in ("cuda", "cpu")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def loader_workers(requested: int, info: DistInfo) -> int:
    """Data-loader workers per process: the recipe's count, at most the CPUs this process may use
    divided among the processes of this machine (more only compete for the same cores)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", info.world if info.enabled else 1))
    return max(0, min(int(requested), available_cpus() // max(1, local)))


# ------------------------------------------------------------------------------------------ data
@dataclass
class TrainingData:
    """The training set of a run and the sampler that shards its batches over processes and
    accumulation micro-batches; `micro` samples per micro-batch and process."""

    dataset: object
    sampler: ShardedBatchSampler
    micro: int
    accumulation: int

    @classmethod
    def build(cls, spec: RunSpec, info: DistInfo) -> "TrainingData":
        optim, data = spec.recipe["optim"], spec.recipe["data"]
        if optim["batch_size"] % info.world:
            raise ChexError(f"--batch-size {optim['batch_size']} must be divisible by the {info.world} processes")
        micro, accumulation = optim["batch_size"] // info.world, int(optim["accumulation_steps"])
        dataset = training_dataset(spec.folders, data["train"], IMAGE_SIZE, spec.seed, data["swap_laterality"],
                                   data["augment_multiboxes"], data.get("augmentation", "reference"),
                                   image_digests=caches_frozen_encodings(spec.recipe))
        sampler = ShardedBatchSampler(len(dataset), micro, accumulation, info.world, info.rank, spec.seed)
        return cls(dataset, sampler, micro, accumulation)

    def max_steps(self, optim: dict) -> int:
        return optim["max_steps"] or optim["max_epochs"] * self.sampler.updates_per_epoch()

    def loader(self, epoch: int, position: int, workers: int, device: torch.device):
        """The batches of `epoch` from update `position` on (loader workers die with this process)."""
        from torch.utils.data import DataLoader

        from chexcli.data.dataset import collate

        self.dataset.set_epoch(epoch)
        batches = list(self.sampler.epoch_batches(epoch, position))
        return DataLoader(self.dataset, batch_sampler=batches, collate_fn=collate, num_workers=workers,
                          pin_memory=device.type == "cuda", persistent_workers=False,
                          prefetch_factor=2 if workers else None, worker_init_fn=worker_init() if workers else None)


# ------------------------------------------------------------------------------------------ model
def initial_model(spec: RunSpec, opts: TrainOptions, info: DistInfo, data: TrainingData, max_steps: int,
                  say: Callable[[str], None]) -> tuple[Path, torch.nn.Module, dict | None]:
    """(run folder, model, checkpoint): a new run's folder and model, or the resumed run's model
    with its last checkpoint (None when it was killed before the first one: the initial weights are
    then rebuilt exactly). A new run that fails before training leaves no folder behind."""
    if spec.folder is not None:
        checkpoint = load_checkpoint(spec.folder / CHECKPOINT_DIR)
        if checkpoint is None:
            return spec.folder, _built_model(spec, spec.folder, info, data, say), None
        model = load_skeleton(spec.folder / MODEL_DIR)
        model.load_state_dict(checkpoint["model"])
        return spec.folder, model, checkpoint
    folder = create_run_folder(spec, opts) if info.is_main else None
    folder = Path(dist_utils.broadcast_object(info, str(folder) if folder else None))
    try:
        model = _built_model(spec, folder, info, data, say)
    except BaseException:
        if info.is_main:
            remove_run_folder(folder)
        raise
    if info.is_main:
        write_state(folder, status="running", step=0, max_steps=max_steps)
    dist_utils.barrier(info)
    return folder, model, None


def _built_model(spec: RunSpec, folder: Path, info: DistInfo, data: TrainingData, say) -> torch.nn.Module:
    """The stage's initial model (seeded), its skeleton saved in the run folder."""
    torch.manual_seed(spec.seed)
    model = build_model(spec.stage, spec.init, spec.init_generator, spec.model_config,
                        lambda: text_corpus(data.dataset), folder / ".work", say, spec.recipe["model"])
    if info.is_main:
        save_bundle(model, folder / MODEL_DIR, overwrite=True, weights=False)
    return model


def prepare_for_training(model, recipe: dict, device: torch.device) -> list[torch.nn.Parameter]:
    """Move, freeze and switch the model to train mode; returns the trained parameters."""
    model.to(device)
    apply_freezing(model, recipe)
    model.train()  # after freezing: a frozen convolutional tower stays in eval mode (conv_encoder)
    if recipe["run"].get("activation_checkpointing") and model.txt_decoder is not None:
        model.txt_decoder.language_model.gradient_checkpointing = True
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ChexError("the recipe trains nothing (model.trainable is empty)")
    return params


def prewarm_text_cache(model, objective, dataset) -> None:
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


def wrapped_for_processes(objective, info: DistInfo, device: torch.device, compile: bool):
    """(the module whose `no_sync` defers gradient reduction, the callable a micro-batch goes through)."""
    wrapped = objective
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # every trained parameter gets a gradient in every micro-batch (ChexObjective keeps an idle
        # generator in the graph), so DDP needs no extra search for unused ones
        wrapped = DDP(objective, device_ids=[device.index] if device.type == "cuda" else None,
                      find_unused_parameters=False)
    return wrapped, torch.compile(wrapped) if compile else wrapped


# ------------------------------------------------------------------------------------------ the run
class Trainer:
    """One run's model, objective, optimizer and counters, and the named steps of its loop."""

    def __init__(self, spec: RunSpec, opts: TrainOptions, device: torch.device, info: DistInfo, say):
        recipe, optim = spec.recipe, spec.recipe["optim"]
        self.spec, self.recipe, self.device, self.info, self.say = spec, recipe, device, info, say
        self.data = TrainingData.build(spec, info)
        self.per_epoch, self.max_steps = self.data.sampler.updates_per_epoch(), self.data.max_steps(optim)
        self.run_dir, self.model, checkpoint = initial_model(spec, opts, info, self.data, self.max_steps, say)
        self.params = prepare_for_training(self.model, recipe, device)
        self.objective = make_objective(spec.stage, self.model, recipe, dataset_names(self.data.dataset))
        prewarm_text_cache(self.model, self.objective, self.data.dataset)
        self.wrapped, self.forward = wrapped_for_processes(self.objective, info, device, opts.compile)
        self.optimizer = make_optimizer(self.params, optim["weight_decay"], device, fused=optim.get("fused", True))
        self.dtype = amp_dtype(recipe["run"]["amp"], device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.schedule = CosineWarmupSchedule.from_recipe(optim, self.max_steps)
        self.workers = loader_workers(recipe["data"]["workers"], info)
        self.step = self.epoch = self.position = 0
        self.best = BestMetric(recipe["run"].get("best_metric", "auto"))
        if checkpoint is not None:
            self._restore(checkpoint)
        self.log = MetricsLog(self.run_dir, info.is_main)
        self.progress = ProgressBar(self.max_steps, self.step, enabled=opts.progress and info.is_main)
        self.window_start, self.window_samples, self.last = time.perf_counter(), 0, {}
        self._announce(resumed=opts.resume is not None)

    def _restore(self, checkpoint: dict) -> None:
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.step, self.epoch = int(checkpoint["step"]), int(checkpoint["epoch"])
        self.position, self.best.value = int(checkpoint["position"]), checkpoint.get("best")
        set_rng_state(checkpoint["rng"])

    def _announce(self, resumed: bool) -> None:
        trained = sum(p.numel() for p in self.params)
        self.log.write({"kind": "resume" if resumed else "start", "step": self.step, "time": time.time(),
                        "trainable_parameters": trained, "processes": self.info.world})
        self.say(f"stage {self.spec.stage}: {len(self.data.dataset)} training samples, {self.per_epoch} updates "
                 f"per epoch of {self.data.sampler.global_batch}, {self.max_steps} updates, {trained:,} trained "
                 f"parameters -> {self.run_dir}")

    # --- one update ---------------------------------------------------------------------------
    def epoch_batches(self):
        return iter(self.data.loader(self.epoch, self.position, self.workers, self.device))

    def update(self, batches) -> None:
        """One optimizer update over `accumulation` micro-batches; the sub-losses averaged over them."""
        lr = self.schedule.lr(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        sums = RunningSums()
        for m in range(self.data.accumulation):
            batch = next(batches)
            sums.add(self._micro_batch(batch, m), divisor=self.data.accumulation)
            self.window_samples += len(batch["x"]) * self.info.world
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.recipe["optim"]["grad_clip"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.position += 1
        self.last = {"lr": lr, "grad_norm": grad_norm, "sums": sums}

    def _micro_batch(self, batch: dict, m: int) -> dict[str, torch.Tensor]:
        """Forward and backward of micro-batch `m` of the update, seeded from (seed, update, shard)."""
        accumulation = self.data.accumulation
        torch.manual_seed(micro_seed(self.spec.seed, self.step, shard_index(self.info.rank, accumulation, m)))
        last = m == accumulation - 1 or not self.info.enabled
        with contextlib.nullcontext() if last else self.wrapped.no_sync():
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                loss, metrics = self.forward(batch)
            self.scaler.scale(loss / accumulation).backward()
        return metrics

    # --- after an update ------------------------------------------------------------------------
    def log_if_due(self) -> None:
        """The progress bar after every update; a `train` record every `run.log_every` updates."""
        lr, grad_norm, rate = self.last["lr"], self.last["grad_norm"], None
        last = self.last["sums"].floats()  # the only device synchronisation of an update
        if self.step % self.recipe["run"]["log_every"] == 0 or self.step == self.max_steps:
            now = time.perf_counter()
            rate = self.window_samples / max(now - self.window_start, 1e-9)
            self.window_start, self.window_samples = now, 0
            self.log.write({"kind": "train", "step": self.step, "epoch": self.epoch, "lr": lr,
                            "grad_norm": float(grad_norm), "samples_per_s": rate, "time": time.time(), **last})
        self.progress.update(self.step, last.get("loss", float("nan")), lr, rate=rate)

    def validate_if_due(self) -> None:
        """Validate every `run.val_every` updates (default: once per epoch; 0: never) and at the end."""
        every = self.recipe["run"]["val_every"]
        every = self.per_epoch if every is None else every
        if not every or (self.step % every and self.step != self.max_steps):
            return
        result = Validation()
        if self.info.is_main:
            result = validate(self.model, self.objective, self.recipe, self.spec.folders, self.device,
                              self.recipe["optim"]["batch_size"])
        dist_utils.barrier(self.info)
        if result.metrics:
            if self.best.improved_by(result) and self.info.is_main:
                save_bundle(self.model, self.run_dir / "bundle-best", overwrite=True,
                            provenance=self._provenance({self.best.key: self.best.value}))
            self.log.write({"kind": "val", "step": self.step, "epoch": self.epoch, "best_metric": self.best.key,
                            "best": self.best.value, "time": time.time(), **result.metrics})
        self.model.train()  # validation switched to eval mode, with or without results

    def checkpoint_if_due(self) -> None:
        if self.step % self.recipe["run"]["checkpoint_every"] == 0 and self.step < self.max_steps:
            self.save("running")

    def next_epoch_if_done(self) -> None:
        if self.position >= self.per_epoch:
            self.epoch, self.position = self.epoch + 1, 0

    # --- saving -----------------------------------------------------------------------------
    def save(self, status: str) -> None:
        """A checkpoint of everything a resume needs, and the run's state (rank 0 writes)."""
        if self.info.is_main:
            save_checkpoint(self.run_dir / CHECKPOINT_DIR, {
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "step": self.step, "epoch": self.epoch, "position": self.position, "best": self.best.value,
                "rng": rng_state(), "recipe": json.dumps(self.recipe, sort_keys=True),
            })
            write_state(self.run_dir, status=status, step=self.step, max_steps=self.max_steps)
        dist_utils.barrier(self.info)

    def stop(self) -> None:
        """Ctrl-C: checkpoint, then a ChexError that says how to continue."""
        self.save("interrupted")
        self.log.close()
        dist_utils.shutdown(self.info)
        raise ChexError(f"interrupted at update {self.step}; a checkpoint was written. Continue with "
                        f"`chex train --resume {self.run_dir}`", exit_code=130)

    def finish(self) -> Path:
        """Checkpoint, export RUN_DIR/bundle, mark the run finished; returns the run folder."""
        self.save("exporting")
        if self.info.is_main:
            save_bundle(self.model, self.run_dir / "bundle", overwrite=True,
                        provenance=self._provenance({"best": self.best.value, "best_metric": self.best.key}))
            write_state(self.run_dir, status="finished", step=self.step, max_steps=self.max_steps)
            self.log.write({"kind": "end", "step": self.step, "time": time.time()})
        self.log.close()
        dist_utils.barrier(self.info)
        dist_utils.shutdown(self.info)
        self.say(f"finished: {self.run_dir / 'bundle'}")
        return self.run_dir

    def _provenance(self, extra: dict) -> dict:
        return {**self.model.provenance, "source": "chex train", "stage": self.spec.stage, "step": self.step, **extra}


__all__ = ["Trainer", "amp_dtype", "loader_workers", "make_optimizer", "micro_seed", "train"]
