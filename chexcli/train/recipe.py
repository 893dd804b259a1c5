"""Training recipes: the packaged YAML of each stage, merged with `--config` and `--set`.

A recipe is a plain nested dict (sections data, model, optim, run, loss,
supervision, txtgen). `--config FILE` and `--set key=value` may change any
existing field and nothing else: an unknown key is an error, so a typo never
silently trains with the default. Values of `--set` are parsed as YAML
(`--set optim.lr=3e-4`, `--set data.train=[mimiccxr_reports]`).
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from chexcli.errors import ChexError

SAMPLING_MODES = ("uniform", "balanced")  # supervision.generation_sampling (chexcli.train.generation)

STAGES = ("1", "2", "txtgen", "3")
PROFILES = ("default", "reference")  # chexcli/configs/train/profiles/<name>.yaml; default: the recipe as packaged
PREFIX_ACTIVATIONS = ("gelu", "relu")  # txtgen.prefix_activation


def load_recipe(stage: str) -> dict[str, Any]:
    """The packaged recipe of a stage (chexcli/configs/train/stage<N>.yaml or txtgen.yaml)."""
    if stage not in STAGES:
        raise ChexError(f"unknown stage {stage!r}; choose one of: {', '.join(STAGES)}")
    name = "txtgen.yaml" if stage == "txtgen" else f"stage{stage}.yaml"
    text = resources.files("chexcli").joinpath("configs", "train", name).read_text("utf-8")
    return yaml.safe_load(text)


def load_profile(name: str) -> dict[str, Any]:
    """The recipe changes of a profile (`chex train --profile NAME`); `default` changes nothing."""
    if name not in PROFILES:
        raise ChexError(f"--profile {name!r}: choose one of {', '.join(PROFILES)}")
    if name == "default":
        return {}
    text = resources.files("chexcli").joinpath("configs", "train", "profiles", f"{name}.yaml").read_text("utf-8")
    return yaml.safe_load(text) or {}


def _apply_profile(recipe: dict[str, Any], changes: dict[str, Any]) -> None:
    """Set the profile's keys that this stage's recipe has (a profile spans every stage)."""
    for section, values in changes.items():
        if section in recipe and isinstance(recipe[section], dict):
            for key, value in values.items():
                if key in recipe[section]:
                    recipe[section][key] = value


def _merge(base: dict[str, Any], changes: dict[str, Any], where: str, path: str = "") -> None:
    for key, value in changes.items():
        full = f"{path}{key}"
        if full == "profile":
            raise ChexError(f"{where}: the profile is chosen with --profile NAME ({', '.join(PROFILES)})")
        if key not in base:
            known = ", ".join(f"{path}{k}" for k in base)
            raise ChexError(f"{where}: unknown recipe key {full!r}; known keys here: {known}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ChexError(f"{where}: {full!r} is a section; set one of its keys, e.g. {full}.{next(iter(base[key]))}")
            _merge(base[key], value, where, f"{full}.")
        else:
            base[key] = value


def parse_set(item: str) -> dict[str, Any]:
    """'optim.lr=3e-4' -> {'optim': {'lr': 0.0003}}."""
    if "=" not in item:
        raise ChexError(f"--set {item!r}: expected key=value, e.g. --set optim.lr=3e-4")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ChexError(f"--set {item!r}: the key must be dotted names, e.g. optim.lr")
    value = _parse_value(raw)
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _parse_value(raw: str) -> Any:
    """YAML, except that numbers such as 3e-4 (strings to YAML 1.1) become floats."""
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def resolve_recipe(stage: str, config_file: str | Path | None = None, sets: list[str] | None = None,
                   overrides: dict[str, Any] | None = None, profile: str | None = None) -> dict[str, Any]:
    """Packaged recipe <- profile <- config file <- --set items <- explicit CLI options (in that order).

    The resolved recipe names its profile (`profile: default|reference`).
    """
    recipe = copy.deepcopy(load_recipe(stage))
    profile = profile or "default"
    _apply_profile(recipe, load_profile(profile))
    recipe["profile"] = profile
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ChexError(f"--config {path} not found; pass a YAML file with the recipe keys to change")
        try:
            changes = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ChexError(f"--config {path} is not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(changes, dict):
            raise ChexError(f"--config {path} must be a mapping of recipe sections, e.g. 'optim: {{lr: 3e-4}}'")
        changes.pop("stage", None)
        changes.pop("profile", None)
        _merge(recipe, changes, str(path))
    for item in sets or []:
        _merge(recipe, parse_set(item), f"--set {item}")
    for key, value in (overrides or {}).items():
        if value is not None:
            _merge(recipe, parse_set(f"{key}={value}") if not isinstance(value, (list, dict)) else
                   _nested(key, value), f"option {key}")
    check_recipe(recipe)
    return recipe


def _nested(key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _positive_int(recipe: dict, section: str, key: str, allow_none: bool = False) -> None:
    value = recipe[section][key]
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ChexError(f"recipe {section}.{key} must be a positive integer, got {value!r}")


def check_recipe(recipe: dict[str, Any]) -> None:
    """Types and ranges of the fields the trainer relies on (one-line errors)."""
    for key in ("batch_size", "accumulation_steps"):
        _positive_int(recipe, "optim", key)
    _positive_int(recipe, "optim", "max_steps", allow_none=True)
    _positive_int(recipe, "optim", "max_epochs", allow_none=True)
    for key in ("log_every", "checkpoint_every"):
        _positive_int(recipe, "run", key)
    if recipe["run"]["val_every"] != 0:  # 0: no validation
        _positive_int(recipe, "run", "val_every", allow_none=True)
    _positive_int(recipe, "run", "val_batches", allow_none=True)
    for key in ("lr", "min_lr", "weight_decay", "grad_clip"):
        value = recipe["optim"][key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ChexError(f"recipe optim.{key} must be a non-negative number, got {value!r}")
    if not isinstance(recipe["optim"]["warmup_steps"], int) or recipe["optim"]["warmup_steps"] < 0:
        raise ChexError(f"recipe optim.warmup_steps must be a non-negative integer")
    if recipe["optim"]["max_steps"] is None and recipe["optim"]["max_epochs"] is None:
        raise ChexError("recipe needs optim.max_steps or optim.max_epochs")
    if recipe["run"]["amp"] not in ("auto", "bf16", "fp16", "off"):
        raise ChexError(f"recipe run.amp must be auto, bf16, fp16 or off, got {recipe['run']['amp']!r}")
    if not isinstance(recipe["data"]["train"], list) or not recipe["data"]["train"]:
        raise ChexError("recipe data.train must be a non-empty list of dataset configurations")
    for key, value in recipe.get("loss", {}).items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ChexError(f"recipe loss.{key} must be a non-negative number, got {value!r}")
    mode = recipe.get("supervision", {}).get("anatomy_region_mode", "token")
    if mode not in ("token", "bbox", "random"):
        raise ChexError(f"recipe supervision.anatomy_region_mode must be token, bbox or random, got {mode!r}")
    skip = recipe.get("model", {}).get("skip_roi_pool_prob", 0.25)
    if not isinstance(skip, (int, float)) or isinstance(skip, bool) or not 0 <= skip <= 1:
        raise ChexError(f"recipe model.skip_roi_pool_prob must be a number in [0, 1], got {skip!r}")
    lag = recipe["optim"].get("schedule_lag", 0)
    if not isinstance(lag, int) or isinstance(lag, bool) or lag < 0:
        raise ChexError(f"recipe optim.schedule_lag must be a non-negative integer, got {lag!r}")
    if not isinstance(recipe["optim"].get("fused", True), bool):
        raise ChexError(f"recipe optim.fused must be true or false, got {recipe['optim']['fused']!r}")
    act = recipe.get("txtgen", {}).get("prefix_activation", "gelu")
    if act not in PREFIX_ACTIVATIONS:
        raise ChexError(f"recipe txtgen.prefix_activation must be {' or '.join(PREFIX_ACTIVATIONS)}, got {act!r}")
    sampling = recipe.get("supervision", {}).get("generation_sampling", "uniform")
    if sampling not in SAMPLING_MODES:
        raise ChexError(f"recipe supervision.generation_sampling must be {' or '.join(SAMPLING_MODES)}, "
                        f"got {sampling!r}")
