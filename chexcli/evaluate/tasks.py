"""Packaged task configurations (chexcli/configs/tasks/<task>.yaml)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from chexcli.errors import ChexError

TASKS: tuple[str, ...] = ("od_nih8", "od_mscxr", "od_vindrcxr", "sg_mscxr", "rc_mscxr", "rc_cig",
                          "rc_re_mscxr", "rc_re_cig", "rg_mimic")
KINDS = ("detection", "grounding", "box_explanation", "anatomy_explanation", "report_generation")
HEADLINE = {"od_nih8": "AP/mAP", "od_mscxr": "AP/mAP", "od_vindrcxr": "AP/mAP", "sg_mscxr": "mIoU",
            "rc_mscxr": "auroc", "rc_cig": "loc_auroc/weighted", "rc_re_mscxr": "micro_f1_14",
            "rc_re_cig": "micro_f1_14", "rg_mimic": "micro_f1_14"}
# the reference's misspelt keys, accepted in --settings files (B24)
ALIASES = {"synonyme_soft_removal_thres": "synonym_soft_removal_thres"}


@dataclass
class TaskConfig:
    name: str
    kind: str
    dataset: str
    settings: dict[str, Any]
    raw: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default=None):
        return self.raw.get(key, default)

    @property
    def headline(self) -> str:
        return HEADLINE[self.name]

    @property
    def generates(self) -> bool:
        return self.kind == "report_generation" or bool(self.settings.get("generate_sentences"))


def resolve_names(tasks: str) -> list[str]:
    """'all', one task or a comma-separated list -> task names (checked)."""
    names = list(TASKS) if tasks.strip() == "all" else [t.strip() for t in tasks.split(",") if t.strip()]
    for t in names:
        if t not in TASKS:
            raise ChexError(f"unknown task {t!r}; choose one of: all, {', '.join(TASKS)}")
    if not names:
        raise ChexError("no task given; use --task TASK or --task all")
    return names


def load_task(name: str, overrides: dict[str, Any] | None = None) -> TaskConfig:
    """The packaged config of `name`, with `overrides` merged into its settings."""
    if name not in TASKS:
        raise ChexError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    text = resources.files("chexcli").joinpath("configs", "tasks", f"{name}.yaml").read_text("utf-8")
    raw = yaml.safe_load(text)
    settings = copy.deepcopy(raw.get("settings", {}))
    for key, value in (overrides or {}).items():
        key = ALIASES.get(key, key)
        if key not in settings:
            raise ChexError(f"setting {key!r} does not exist for task {name}; known: {', '.join(settings)}")
        settings[key] = value
    return TaskConfig(name=name, kind=raw["kind"], dataset=raw["dataset"], settings=settings, raw=raw)


def read_settings_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """A settings JSON written by `chex evaluate` (`settings.json`): task -> settings."""
    p = Path(path)
    if not p.is_file():
        raise ChexError(f"settings file {p} not found; pass the settings.json of an earlier run")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as ex:
        raise ChexError(f"{p} is not valid JSON ({ex.msg} at line {ex.lineno}); pass a settings.json") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ChexError(f"{p} must map task names to settings objects, e.g. {{\"od_nih8\": {{...}}}}")
    data = {k: v.get("settings", v) for k, v in data.items()}
    for k in data:
        if k not in TASKS:
            raise ChexError(f"{p} names an unknown task {k!r}; known: {', '.join(TASKS)}")
    return data
