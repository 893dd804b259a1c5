"""What `chex train` was asked to do: every option once, with its flag, help and recipe key.

`TrainOptions` is filled by the CLI (chexcli.cli.train builds its options from these fields),
by `chex demo` and by tests, and taken by `chexcli.train.trainer.train`. An option with a
`recipe` key overrides that recipe field when given (docs/training.md, "Recipes, --config, --set").
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


def option(default: Any, flag: str, help: str, recipe: str | None = None, min: int | None = None,
           factory: type | None = None) -> Any:
    """A `TrainOptions` field: its default (or `factory`), command-line `flag`, `help`, the recipe
    field it overrides and its smallest allowed value."""
    meta = {"flag": flag, "help": help, "recipe": recipe, "min": min}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass
class TrainOptions:
    """The options of one `chex train` command."""

    stage: str | None = option(None, "--stage", "1, 2, txtgen or 3 (not needed with --resume)")
    data: list[Path] = option(None, "--data", "a processed data folder (repeatable)", factory=list)
    init: Path | None = option(None, "--init", "bundle to start from (see docs/training.md)")
    init_generator: Path | None = option(None, "--init-generator",
                                         "bundle with the sentence generator (txtgen, stage 3)")
    model_config: str = option("paper", "--model-config",
                               "sizes for random weights: paper, small, tiny, tiny-cnn, demo-cnn or a YAML file")
    out: Path = option(Path("runs/train"), "--out", "folder of the run folders")
    name: str | None = option(None, "--name", "run folder name (default: stage1, txtgen, ...)")
    config: Path | None = option(None, "--config", "YAML file overriding recipe fields")
    profile: str | None = option(None, "--profile", "default, or reference: the reference's training behaviour "
                                                    "(docs/training.md, Profiles)")
    sets: list[str] = option(None, "--set", "override one recipe field: key=value (repeatable)", factory=list)
    max_steps: int | None = option(None, "--max-steps", "optimizer updates to run", recipe="optim.max_steps", min=1)
    checkpoint_every: int | None = option(None, "--checkpoint-every", "updates between checkpoints",
                                          recipe="run.checkpoint_every", min=1)
    val_every: int | None = option(None, "--val-every", "updates between validations (0: none)",
                                   recipe="run.val_every", min=0)
    batch_size: int | None = option(None, "--batch-size", "micro-batch over all processes (recipe default per stage)",
                                    recipe="optim.batch_size", min=1)
    devices: int = option(1, "--devices", "processes on this machine (DDP through torchrun)", min=1)
    device: str = option("auto", "--device", "cpu, cuda, cuda:N or auto")
    seed: int | None = option(None, "--seed", "random seed (recipe default 42)", recipe="run.seed")
    resume: Path | None = option(None, "--resume", "continue the run in RUN_DIR exactly")
    compile: bool = option(False, "--compile", "torch.compile the training forward")
    progress: bool = option(True, "--progress/--no-progress", "a progress bar on stderr")

    def recipe_overrides(self) -> dict[str, Any]:
        """Recipe key -> value of every option that overrides a recipe field (None: not given)."""
        return {f.metadata["recipe"]: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["recipe"]}

    def changes_recipe(self) -> bool:
        """Whether the options ask for another recipe than the packaged one."""
        return bool(self.sets or self.config or self.profile
                    or any(v is not None for v in self.recipe_overrides().values()))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if k == "data" else v)
                for k, v in d.items()}


__all__ = ["TrainOptions", "option"]
