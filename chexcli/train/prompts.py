"""Prompt embeddings used as training queries: anatomy prompts and pathology pos/neg prompts.

docs/training.md#training-prompts: with `randomize` one synonym is drawn uniformly per name and
forward (torch's global RNG, so a resumed run draws the same ones); otherwise
the mean over the synonyms is used. Names without prompts fall back to the
name itself ("left lung" -> "Left lung"), so every name has a query.
"""

from __future__ import annotations

import torch
from torch import Tensor

from chexcli.model.prompt_encoder import expand_templates


def _fallback(name: str) -> str:
    text = name.split("/")[-1]
    return text[:1].upper() + text[1:]


class PromptBank:
    """Expanded prompt lists of some names; `embed(model)` -> (len(names), d)."""

    def __init__(self, names: list[str], prompt_dicts: list[dict[str, list[str]]], placeholders: dict,
                 negate: bool = False):
        self.names = list(names)
        merged: dict[str, list[str]] = {}
        for d in prompt_dicts:
            for key, prompts in d.items():
                merged.setdefault(key, list(prompts))
        self.prompts: list[list[str]] = []
        for name in self.names:
            found = merged.get(name) or merged.get(name.split("/", 1)[-1])
            if not found:
                found = [("No " + _fallback(name).lower()) if negate else _fallback(name)]
            self.prompts.append(expand_templates(list(found), placeholders))
        self._memo: Tensor | None = None  # synonym means of the current training step (see `new_step`)

    def new_step(self) -> None:
        """Forget the embeddings of the previous step (the text tower may have changed since)."""
        self._memo = None

    def all_strings(self) -> list[str]:
        return [p for prompts in self.prompts for p in prompts]

    def embed(self, model, randomize: bool) -> Tensor:
        """(C, d) prompt embeddings: one random synonym per name, or the synonym mean.

        The synonym mean is computed once per step (`new_step`): the anatomy and pathology
        supervisors both embed the pathology prompts.
        """
        if randomize:
            picks = [prompts[int(torch.randint(len(prompts), ()))] for prompts in self.prompts]
            return model.encode_sentences(picks)
        if self._memo is not None:
            return self._memo
        flat = self.all_strings()
        emb = model.encode_sentences(flat)
        out, start = [], 0
        for prompts in self.prompts:
            out.append(emb[start:start + len(prompts)].mean(dim=0))
            start += len(prompts)
        self._memo = torch.stack(out)
        return self._memo


def pathology_banks(class_names: list[str], prompts: dict) -> tuple[PromptBank, PromptBank]:
    """Positive and negative ("No X") prompt banks of the ChEX model assembly (docs/training.md#training-prompts)."""
    sets = prompts.get("prompt_sets", {})
    assembly = prompts.get("model_prompt_assembly", {})
    placeholders = prompts.get("template_placeholders", {})
    pos = [sets[s] for s in assembly.get("pathology_pos_prompts", ["vindrcxr_pos", "cigcls_pos"]) if s in sets]
    neg = [sets[s] for s in assembly.get("pathology_neg_prompts", ["vindrcxr_neg", "cigcls_neg"]) if s in sets]
    return PromptBank(class_names, pos, placeholders), PromptBank(class_names, neg, placeholders, negate=True)


def anatomy_bank(anatomy_names: list[str], prompts: dict) -> PromptBank:
    sets = prompts.get("prompt_sets", {})
    assembly = prompts.get("model_prompt_assembly", {})
    placeholders = prompts.get("template_placeholders", {})
    dicts = [sets[s] for s in assembly.get("anatomy_prompts", ["cig_anat_synonym"]) if s in sets]
    return PromptBank(anatomy_names, dicts, placeholders)
