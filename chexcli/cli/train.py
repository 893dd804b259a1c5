"""`chex train`: the four training runs of ChEX (stage 1, 2, txtgen, 3) on one or many processes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from chexcli.errors import ChexError

EXAMPLES = """
Examples:

  chex train --stage 1 --data ~/datasets/MIMIC-CXR/processed --data ~/datasets/vindr-cxr/processed --init bundles/chexzero

  chex train --stage txtgen --data ~/datasets/MIMIC-CXR/processed --init bundles/chexzero --init-generator bundles/gpt2

  chex train --stage 2 --data ~/datasets/MIMIC-CXR/processed --init runs/train/stage1/bundle

  chex train --stage 3 --data ~/datasets/MIMIC-CXR/processed --init runs/train/stage2/bundle --init-generator runs/train/txtgen/bundle

  chex train --stage 1 --data runs/demo/data --model-config tiny --max-steps 50 --set optim.lr=1e-3

  chex train --resume runs/train/stage1

  torchrun --nproc-per-node 8 -m chexcli train --stage 1 --data ... --init bundles/chexzero
"""


def train(
    stage: Optional[str] = typer.Option(None, "--stage", help="1, 2, txtgen or 3 (not needed with --resume)"),
    data: Optional[List[Path]] = typer.Option(None, "--data", help="a processed data folder (repeatable)"),
    init: Optional[Path] = typer.Option(None, "--init", help="bundle to start from (see docs/training.md)"),
    init_generator: Optional[Path] = typer.Option(None, "--init-generator",
                                                  help="bundle with the sentence generator (txtgen, stage 3)"),
    model_config: str = typer.Option("paper", "--model-config",
                                     help="sizes for random weights: paper, small, tiny, tiny-cnn or a YAML file"),
    out: Path = typer.Option(Path("runs/train"), "--out", help="folder of the run folders"),
    name: Optional[str] = typer.Option(None, "--name", help="run folder name (default: stage1, txtgen, ...)"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file overriding recipe fields"),
    profile: Optional[str] = typer.Option(None, "--profile",
                                          help="default, or reference: the reference's training behaviour "
                                               "(docs/training.md, Profiles)"),
    sets: Optional[List[str]] = typer.Option(None, "--set", help="override one recipe field: key=value (repeatable)"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="optimizer updates to run"),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", min=1,
                                                   help="updates between checkpoints"),
    val_every: Optional[int] = typer.Option(None, "--val-every", min=0,
                                            help="updates between validations (0: none)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1,
                                             help="micro-batch over all processes (recipe default per stage)"),
    devices: int = typer.Option(1, "--devices", min=1, help="processes on this machine (DDP through torchrun)"),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto"),
    seed: Optional[int] = typer.Option(None, "--seed", help="random seed (recipe default 42)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue the run in RUN_DIR exactly"),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the training forward"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar"),
) -> None:
    """Train one stage of ChEX and export RUN_DIR/bundle (and RUN_DIR/bundle-best after validation).

    Each stage is a packaged recipe (chexcli/configs/train/) with the reference's hyperparameters;
    --config FILE and --set key=value change any of its fields. Checkpoints are written every
    --checkpoint-every updates; Ctrl-C writes one and stops; --resume RUN_DIR continues exactly.
    """
    from chexcli.runs import check_out_dir, check_run_name
    from chexcli.train.recipe import STAGES

    if resume is None:
        if stage is None:
            raise ChexError("give --stage 1|2|txtgen|3 (or --resume RUN_DIR)")
        if stage not in STAGES:
            raise ChexError(f"--stage {stage!r}: choose one of {', '.join(STAGES)}")
        if not data:
            raise ChexError("give at least one --data FOLDER (a processed folder from `chex data prepare`)")
        if name is not None:
            check_run_name(name)
        check_out_dir(out)
    if devices > 1:
        from chexcli.train.distributed import launched_by_torchrun, relaunch

        if launched_by_torchrun():
            raise ChexError("--devices is for a single command; under torchrun set --nproc-per-node instead")
        argv = _without_devices(sys.argv[1:])
        code = relaunch(devices, argv)
        if code:
            raise ChexError(f"a training process failed (exit {code}); see the messages above", exit_code=1)
        return
    from chexcli.train.trainer import TrainOptions
    from chexcli.train.trainer import train as run_training

    opts = TrainOptions(stage=stage or "", data=list(data or []), init=init, init_generator=init_generator,
                        model_config=model_config, out=out, name=name, config=config, profile=profile,
                        sets=list(sets or []),
                        max_steps=max_steps, checkpoint_every=checkpoint_every, val_every=val_every,
                        batch_size=batch_size, device=device, seed=seed, resume=resume, compile=compile,
                        progress=not no_progress)
    run_training(opts, echo=lambda m: typer.echo(m, err=True))


def _without_devices(argv: list[str]) -> list[str]:
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--devices":
            skip = True
            continue
        if arg.startswith("--devices="):
            continue
        out.append(arg)
    return out


train.__doc__ = (train.__doc__ or "") + EXAMPLES
