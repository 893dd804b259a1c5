"""Process-group set-up for `torchrun` (DDP) and `--devices N`.

`torchrun --nproc-per-node 8 -m chexcli train ...` sets RANK, WORLD_SIZE,
LOCAL_RANK and the rendezvous variables; `chex train --devices N` re-launches
itself through torch.distributed.run with the same arguments. Backend: NCCL
on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from chexcli.errors import ChexError
from chexcli.workers import available_cpus, die_with_parent


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(device_type: str) -> DistInfo:
    if not launched_by_torchrun():
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    die_with_parent()  # a training process started by torchrun's agent goes when the agent goes
    if info.world > 1 and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(info: DistInfo, obj):
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_mean(info: DistInfo, value: float) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / info.world


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def relaunch(devices: int, argv: list[str]) -> int:
    """Run `python -m torch.distributed.run --nproc-per-node N -m chexcli <argv>` (without --devices)."""
    if devices < 2:
        raise ChexError("--devices must be at least 2 to start several processes")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={devices}",
           "-m", "chexcli", *argv]
    parent = os.getpid()
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:  # the CPUs shared among the processes (torchrun would print a banner)
        env["OMP_NUM_THREADS"] = str(max(1, available_cpus() // devices))
    # the launcher dies with this process (and its training processes with it: see `init`)
    return subprocess.call(cmd, env=env, preexec_fn=lambda: die_with_parent(parent))
