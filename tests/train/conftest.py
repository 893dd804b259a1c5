"""A small synthetic processed folder and a tiny four-stage training chain, shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from chexcli.train.options import TrainOptions
from chexcli.train.trainer import train

# a few updates of a tiny model: fast, but every loss term runs
FAST = ["data.workers=0", "run.log_every=1", "run.val_batches=1", "optim.warmup_steps=1", "optim.lr=1e-3"]


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> Path:
    from chexcli.data.prepare.synthetic import prepare_synthetic

    out = tmp_path_factory.mktemp("synth") / "data"
    prepare_synthetic(out, n=60, seed=0, progress=False)
    return out


def run_stage(stage: str, data: Path, out: Path, name: str, steps: int = 2, batch: int = 4,
              init: Path | None = None, init_generator: Path | None = None, sets: list[str] | None = None,
              val_every: int = 0, **kw) -> Path:
    opts = TrainOptions(stage=stage, data=[data], init=init, init_generator=init_generator, model_config="tiny",
                        out=out, name=name, sets=FAST + list(sets or []), max_steps=steps, batch_size=batch,
                        val_every=val_every, device="cpu", progress=False, **kw)
    return train(opts, echo=lambda m: None)


@pytest.fixture(scope="session")
def chain(synth, tmp_path_factory) -> dict[str, Path]:
    """Run folders of stage 1, txtgen, 2 and 3 (tiny, 2-3 updates each, validation at the end)."""
    out = tmp_path_factory.mktemp("runs")
    runs = {"1": run_stage("1", synth, out, "s1", steps=3, val_every=3)}
    runs["txtgen"] = run_stage("txtgen", synth, out, "tg", steps=3, init=runs["1"] / "bundle", val_every=3,
                               sets=["optim.accumulation_steps=1"])
    runs["2"] = run_stage("2", synth, out, "s2", steps=2, init=runs["1"] / "bundle", val_every=2)
    runs["3"] = run_stage("3", synth, out, "s3", steps=2, batch=2, init=runs["2"] / "bundle",
                          init_generator=runs["txtgen"] / "bundle", val_every=2,
                          sets=["optim.accumulation_steps=2"])
    return runs
