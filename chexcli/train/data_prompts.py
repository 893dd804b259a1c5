"""Prompts of the finding names a custom folder brings (docs/custom-data.md#finding-names).

A run that trains ``custom_boxes`` records the folder's prompt sets (``custom_findings.json``)
in its recipe as ``model.data_prompts``; the model it builds adds them to its ``prompts``, so
the training prompt banks, the run's bundles and ``chex predict --prompt NAME`` all use the
same strings. A later stage built from such a bundle carries its ``custom_*`` sets over.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from chexcli.data.processed.findings import read_findings

CUSTOM_CONFIG = "custom_boxes"
CARRIED_PREFIX = "custom_"  # prompt sets of custom folders, carried from bundle to bundle


def with_data_prompts(recipe: dict[str, Any], folders: list[Path]) -> dict[str, Any]:
    """``recipe`` with ``model.data_prompts`` set when it trains ``custom_boxes`` from one of ``folders``."""
    if CUSTOM_CONFIG not in recipe["data"]["train"]:
        return recipe
    from chexcli.train.data_setup import find_folder

    folder = find_folder(folders, CUSTOM_CONFIG)
    record = read_findings(folder) if folder is not None else None
    if record is not None:
        recipe["model"]["data_prompts"] = record["prompts"]
    return recipe


def carried_prompts(prompts: dict[str, Any] | None) -> dict[str, Any]:
    """The ``custom_*`` prompt sets of a bundle's prompts, with their places in the assembly."""
    prompts = prompts or {}
    sets = {k: v for k, v in prompts.get("prompt_sets", {}).items() if k.startswith(CARRIED_PREFIX)}
    assembly = {key: [s for s in names if s in sets]
                for key, names in prompts.get("model_prompt_assembly", {}).items() if isinstance(names, list)}
    return {"prompt_sets": sets, "model_prompt_assembly": {k: v for k, v in assembly.items() if v}}


def merge_prompts(base: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    """``base`` plus the prompt sets of ``extra`` (entries of a set present in both: extra wins) and
    their set names appended to the assembly lists."""
    out = copy.deepcopy(base)
    if not extra:
        return out
    sets = out.setdefault("prompt_sets", {})
    for name, entries in extra.get("prompt_sets", {}).items():
        sets[name] = {**sets.get(name, {}), **copy.deepcopy(entries)}
    assembly = out.setdefault("model_prompt_assembly", {})
    for key, names in extra.get("model_prompt_assembly", {}).items():
        listed = assembly.setdefault(key, [])
        listed.extend(n for n in names if n not in listed)
    return out


def model_prompts(base: dict[str, Any], sources: list, model_recipe: dict[str, Any] | None) -> dict[str, Any]:
    """A new model's prompts: ``base`` (the packaged ones), the ``custom_*`` sets of its source
    bundles (``sources``: models), then the recipe's ``data_prompts``."""
    prompts = base
    for source in sources:
        prompts = merge_prompts(prompts, carried_prompts(getattr(source, "prompts", None)))
    return merge_prompts(prompts, (model_recipe or {}).get("data_prompts"))
