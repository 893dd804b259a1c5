"""A training run's folder (docs/training.md#run-folder) and what a resume reads back from it.

    RUN_DIR/
      config.yaml      the resolved recipe          (written first: from then on the run can resume)
      args.json        the `chex train` options
      state.json       running | interrupted | exporting | finished, and the update reached
      model/           the model's configuration and tokenizers (a bundle without weights)
      checkpoints/     last.pt (chexcli.train.checkpoint)
      metrics.jsonl    one JSON record per log line (chexcli.train.metrics_log)
      bundle/          the trained model; bundle-best/ the best validated one

`resolve_run` turns the options into a `RunSpec`: a new run's recipe, data and sources, or
those of the run being resumed (options that would change its recipe are refused).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from chexcli.errors import ChexError
from chexcli.train.data_prompts import with_data_prompts
from chexcli.train.data_setup import check_folders
from chexcli.train.options import TrainOptions
from chexcli.train.recipe import resolve_recipe

CONFIG_FILE = "config.yaml"
ARGS_FILE = "args.json"
STATE_FILE = "state.json"
MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"


@dataclass
class RunSpec:
    """What a run trains: its stage, recipe, data folders and source bundles; `folder` is None for a
    run not yet created, `finished` true for a resumed run that has nothing left to do."""

    stage: str
    recipe: dict[str, Any]
    folders: list[Path]
    init: Path | None
    init_generator: Path | None
    model_config: str
    folder: Path | None = None
    finished: bool = False

    @property
    def seed(self) -> int:
        return int(self.recipe["run"]["seed"])


def resolve_run(opts: TrainOptions) -> RunSpec:
    """The run the options ask for: a new one, or the one `--resume` names."""
    return _resumed_run(opts) if opts.resume is not None else _new_run(opts)


def _new_run(opts: TrainOptions) -> RunSpec:
    recipe = resolve_recipe(opts.stage, opts.config, opts.sets, opts.recipe_overrides(), opts.profile)
    folders = [Path(p).resolve() for p in opts.data]
    check_folders(folders)
    recipe = with_data_prompts(recipe, folders)  # new finding names of a custom folder
    for option, path in (("--init", opts.init), ("--init-generator", opts.init_generator)):
        if path is not None and not Path(path).is_dir():
            raise ChexError(f"{option} {path} is not a bundle folder; pass RUN_DIR/bundle of an earlier run "
                            "or a bundle from `chex weights import`")
    return RunSpec(opts.stage, recipe, folders, opts.init, opts.init_generator, opts.model_config)


def _resumed_run(opts: TrainOptions) -> RunSpec:
    folder = Path(opts.resume)
    if not (folder / CONFIG_FILE).is_file() or not (folder / ARGS_FILE).is_file():
        raise ChexError(f"--resume {folder} is not a chex train run folder (no {CONFIG_FILE}); "
                        "pass RUN_DIR of an earlier `chex train`")
    recipe = yaml.safe_load((folder / CONFIG_FILE).read_text())
    saved = json.loads((folder / ARGS_FILE).read_text())
    stage = saved["stage"]
    if opts.changes_recipe():
        wanted = resolve_recipe(stage, opts.config, opts.sets, opts.recipe_overrides(),
                                opts.profile or saved.get("profile"))
        wanted = with_data_prompts(wanted, [Path(p) for p in saved["data"]])
        if wanted != recipe:
            raise ChexError(f"--resume {folder}: the given options change its configuration; resume without "
                            "--set/--config/--max-steps/... or start a new run")
    return RunSpec(stage, recipe, [Path(p) for p in saved["data"]], _path(saved.get("init")),
                   _path(saved.get("init_generator")), saved.get("model_config", "paper"), folder,
                   finished=read_state(folder).get("status") == "finished")


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def create_run_folder(spec: RunSpec, opts: TrainOptions) -> Path:
    """A new run folder holding the recipe and the options (written before anything else)."""
    from chexcli.runs import new_run_dir

    folder = new_run_dir(opts.out, opts.name or ("txtgen" if spec.stage == "txtgen" else f"stage{spec.stage}"))
    atomic_text(folder / CONFIG_FILE, yaml.safe_dump(spec.recipe, sort_keys=False))
    args = opts.to_json()
    args.update(stage=spec.stage, data=[str(f) for f in spec.folders],
                init=str(Path(spec.init).resolve()) if spec.init else None,
                init_generator=str(Path(spec.init_generator).resolve()) if spec.init_generator else None)
    atomic_text(folder / ARGS_FILE, json.dumps(args, indent=1))
    return folder


def remove_run_folder(folder: Path) -> None:
    """Remove the folder of a run that failed before training anything."""
    shutil.rmtree(folder, ignore_errors=True)


def read_state(folder: Path) -> dict[str, Any]:
    path = folder / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_state(folder: Path, **state) -> None:
    atomic_text(folder / STATE_FILE, json.dumps(state, indent=1))


def atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


__all__ = ["ARGS_FILE", "CHECKPOINT_DIR", "CONFIG_FILE", "MODEL_DIR", "RunSpec", "STATE_FILE", "atomic_text",
           "create_run_folder", "read_state", "remove_run_folder", "resolve_run", "write_state"]
