"""Prompt encoder: the CLIP text tower plus tokenisation, an embedding cache and prompt dictionaries.

docs/architecture.md#prompt-embeddings: a name's embedding is the mean of the (unnormalised)
embeddings of its synonym prompts; sentences are embedded as they are.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from chexcli.model.clip import TextTransformer
from chexcli.model.config import TextConfig


def expand_templates(prompts: list[str], placeholders: dict[str, list[str]]) -> list[str]:
    """Replace every `{name}` placeholder by each of its replacements (cartesian, table order)."""
    out = list(prompts)
    for name, replacements in placeholders.items():
        key = "{" + name + "}"
        out = list(itertools.chain.from_iterable(
            [p.replace(key, rep) for rep in replacements] if key in p else [p] for p in out
        ))
    bad = [p for p in out if "{" in p]
    if bad:
        raise ValueError(f"unknown placeholder in prompt {bad[0]!r}")
    return out


class PromptEncoder(TextTransformer):
    """CLIP text tower with a tokenizer and a per-string embedding cache.

    `tokenizer(texts, context_length)` must return (B, context_length) ids.
    """

    def __init__(self, cfg: TextConfig, tokenizer=None, placeholders: dict[str, list[str]] | None = None):
        super().__init__(cfg)
        self.tokenizer = tokenizer
        self.placeholders = placeholders or {}
        self._cache: dict[str, Tensor] = {}
        self.cache_enabled = True  # training switches it off while the text tower itself is trained

    def clear_cache(self) -> None:
        self._cache.clear()

    def tokenize(self, texts: list[str]) -> Tensor:
        if self.tokenizer is None:
            raise RuntimeError("this prompt encoder has no tokenizer")
        return self.tokenizer(texts, context_length=self.cfg.context_length)

    def encode_sentences(self, texts: list[str], use_cache: bool | None = None) -> Tensor:
        """texts (B) -> embeddings (B, d). Only uncached strings are encoded.

        Token sequences are cut to the longest one in the batch: with the
        causal mask and end-of-text pooling, padding positions never
        influence the result.
        """
        device = self.token_embedding.weight.device
        if use_cache is None:
            use_cache = self.cache_enabled
        if not texts:
            return torch.zeros(0, self.cfg.output_dim, device=device)
        unique = list(dict.fromkeys(texts))
        todo = [t for t in unique if t not in self._cache] if use_cache else unique
        fresh: dict[str, Tensor] = {}
        if todo:
            ids = self.tokenize(todo).to(device)
            length = int(ids.argmax(dim=1).max()) + 1  # end-of-text has the largest id
            with torch.set_grad_enabled(torch.is_grad_enabled() and not use_cache):
                fresh = dict(zip(todo, self.forward(ids[:, :length])))
            if use_cache:
                self._cache.update({t: f.detach().float() for t, f in fresh.items()})
        table = self._cache if use_cache else fresh
        return torch.stack([table[t] for t in texts]).to(device)

    def encode_prompts(self, prompt_dict: dict[str, list[str]], names: list[str]) -> tuple[Tensor, Tensor]:
        """Mean synonym embedding per name: (C, d) and a (C) mask of names that had prompts."""
        expanded = [expand_templates(list(prompt_dict.get(name, [])), self.placeholders) for name in names]
        flat = [p for prompts in expanded for p in prompts]
        feats = self.encode_sentences(flat) if flat else None
        d = self.cfg.output_dim
        device = self.token_embedding.weight.device
        out = torch.zeros(len(names), d, device=device)
        start = 0
        for i, prompts in enumerate(expanded):
            if prompts:
                out[i] = feats[start:start + len(prompts)].mean(dim=0)
                start += len(prompts)
        mask = torch.tensor([bool(p) for p in expanded], device=device)
        return out, mask

    def encode_pos_neg_prompts(self, names: list[str], pos_dict: dict[str, list[str]],
                               neg_dict: dict[str, list[str]] | None = None, mode: str = "neg",
                               no_finding: list[str] | None = None) -> tuple[Tensor, Tensor]:
        """Positive (C, d) and negative (C, d) embeddings; `mode` as docs/architecture.md#positive-and-negative-prompts."""
        pos, _ = self.encode_prompts(pos_dict, names)
        c = len(names)

        def neg_all() -> Tensor:
            if neg_dict is None:
                raise ValueError(f"negative prompt mode {mode!r} needs negative prompts")
            return self.encode_prompts(neg_dict, names)[0]

        def nofind() -> Tensor:
            if not no_finding:
                raise ValueError(f"negative prompt mode {mode!r} needs no-finding prompts")
            return self.encode_sentences(no_finding).mean(dim=0, keepdim=True)

        if mode == "neg":
            return pos, neg_all()
        pools = {
            "pos_centroid": lambda: [pos],
            "neg_centroid": lambda: [neg_all()],
            "no_finding": lambda: [nofind()],
            "posneg_centroid": lambda: [pos, neg_all()],
            "posnofind_centroid": lambda: [pos, nofind()],
            "negnofind_centroid": lambda: [neg_all(), nofind()],
            "all_centroid": lambda: [pos, neg_all(), nofind()],
        }
        if mode not in pools:
            raise ValueError(f"unknown negative prompt mode {mode!r}; choose one of neg, {', '.join(pools)}")
        centroid = torch.cat(pools[mode](), dim=0).mean(dim=0)
        return pos, centroid.expand(c, -1).clone()
