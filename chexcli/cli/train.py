"""`chex train`: the four training runs of ChEX (stage 1, 2, txtgen, 3) on one or many processes."""

from __future__ import annotations

import dataclasses
import inspect
import sys
import typing

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


def train(**values) -> None:
    """Train one stage of ChEX and export RUN_DIR/bundle (and RUN_DIR/bundle-best after validation).

    Each stage is a packaged recipe (chexcli/configs/train/) with the reference's hyperparameters;
    --config FILE and --set key=value change any of its fields. Checkpoints are written every
    --checkpoint-every updates; Ctrl-C writes one and stops; --resume RUN_DIR continues exactly.
    """
    from chexcli.train.options import TrainOptions

    opts = TrainOptions(**{k: v for k, v in values.items() if v is not None or k not in LIST_OPTIONS})
    check_options(opts)
    if opts.devices > 1:
        from chexcli.train.distributed import launched_by_torchrun, relaunch

        if launched_by_torchrun():
            raise ChexError("--devices is for a single command; under torchrun set --nproc-per-node instead")
        code = relaunch(opts.devices, _without_devices(sys.argv[1:]))
        if code:
            raise ChexError(f"a training process failed (exit {code}); see the messages above", exit_code=1)
        return
    from chexcli.train.trainer import train as run_training

    run_training(opts, echo=lambda m: typer.echo(m, err=True))


def check_options(opts) -> None:
    """One-line errors for a command that cannot start a run."""
    from chexcli.runs import check_out_dir, check_run_name
    from chexcli.train.recipe import STAGES

    if opts.resume is not None:
        return
    if opts.stage is None:
        raise ChexError("give --stage 1|2|txtgen|3 (or --resume RUN_DIR)")
    if opts.stage not in STAGES:
        raise ChexError(f"--stage {opts.stage!r}: choose one of {', '.join(STAGES)}")
    if not opts.data:
        raise ChexError("give at least one --data FOLDER (a processed folder from `chex data prepare`)")
    if opts.name is not None:
        check_run_name(opts.name)
    check_out_dir(opts.out)


def _typer_signature() -> inspect.Signature:
    """`train`'s parameters: one typer option per `TrainOptions` field (its flag, help, minimum)."""
    from chexcli.train.options import TrainOptions

    hints = typing.get_type_hints(TrainOptions)
    params = []
    for f in dataclasses.fields(TrainOptions):
        listed = f.name in LIST_OPTIONS  # a repeatable option: None when not given, the field's [] then
        default = None if listed else f.default
        annotation = typing.Optional[hints[f.name]] if listed else hints[f.name]
        meta = f.metadata
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                        default=typer.Option(default, meta["flag"], help=meta["help"],
                                                             min=meta["min"])))
    return inspect.Signature(params, return_annotation=None)


LIST_OPTIONS = ("data", "sets")
train.__signature__ = _typer_signature()


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
