"""Sentence generator: GPT-2 conditioned on a region feature through prefix key/values.

A region feature f (d) goes through the prefix MLP (Linear d -> 4d, GELU,
Linear 4d -> F_p * L * 2 * D) and is rearranged into F_p key/value positions
for every GPT-2 layer (flat index order: prefix position, layer, key/value,
head, head dim; ARCHITECTURE.md §7.2). Decoding is greedy from the
end-of-text token with position ids starting at `position_offset`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from chexcli.model.config import GeneratorConfig
from chexcli.model.gpt2 import GPT2LanguageModel, KVCache
from chexcli.model.layers import MLP


@dataclass
class Generated:
    """Greedy decoding result for one region: generated ids (without the final EOS)."""

    ids: list[int]
    ended_with_eos: bool


def teacher_forcing_positions(token_mask: Tensor, offset: int) -> Tensor:
    """Position ids of right-padded targets: token_mask (M, L) -> (M, L).

    Real tokens count from `offset`; padding positions get `offset + 1`, as the reference's
    teacher forcing sets them (they are only scored when the padding is, see
    chexcli.train.losses.generation_loss).
    """
    positions = token_mask.long().cumsum(dim=1) - 1
    return positions.masked_fill(~token_mask.bool(), 1) + offset


class SentenceGenerator(nn.Module):
    def __init__(self, cfg: GeneratorConfig, d_model: int, dropout: float = 0.3):
        super().__init__()
        self.cfg = cfg
        out = cfg.prefix_length_factor * cfg.n_layer * 2 * cfg.n_embd
        self.language_model = GPT2LanguageModel(cfg)
        self.prefix_proj = MLP(d_model, out, 2, hidden=cfg.prefix_hidden_dim or 4 * d_model, dropout=dropout)

    def prefix(self, features: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """features (M, d) -> per-layer keys and values, each (M, heads, F_p, head_dim)."""
        c = self.cfg
        m = features.shape[0]
        hd = c.n_embd // c.n_head
        flat = self.prefix_proj(features)
        kv = flat.view(m, c.prefix_length_factor, c.n_layer, 2, c.n_head, hd).permute(2, 3, 0, 4, 1, 5)
        return [kv[i, 0] for i in range(c.n_layer)], [kv[i, 1] for i in range(c.n_layer)]

    def teacher_forcing_logits(self, features: Tensor, ids: Tensor, token_mask: Tensor) -> Tensor:
        """Training: features (M, d), target ids (M, L) starting with the start token, token_mask (M, L)
        -> next-token logits (M, L, V). Positions: `teacher_forcing_positions`."""
        keys, values = self.prefix(features)
        positions = teacher_forcing_positions(token_mask, self.cfg.position_offset)
        lm = self.language_model
        return lm.logits(lm.hidden_states_with_prefix(ids, positions, keys, values, token_mask))

    @torch.no_grad()
    def generate(self, features: Tensor, max_new_tokens: int | None = None, min_new_tokens: int = 0) -> list[Generated]:
        """Greedy decoding for M regions at once. features: (M, d).

        Stops a region at the end-of-text token (which is not returned) or
        after `max_new_tokens` (default: max_length - 1, the reference's
        total length of 128 including the start token). Finished regions
        leave the batch, which changes no result: regions are independent.
        """
        c = self.cfg
        m = features.shape[0]
        if m == 0:
            return []
        max_new = max_new_tokens if max_new_tokens is not None else c.max_length - 1
        keys, values = self.prefix(features)
        # grown on demand: most sentences end long before max_length
        cache = KVCache.from_prefix(keys, values, capacity=c.prefix_length_factor + min(max_new, 32))
        lm = self.language_model
        rows = torch.arange(m, device=features.device)
        ids = torch.full((m, 1), c.bos_token_id, dtype=torch.long, device=features.device)
        out: list[list[int]] = [[] for _ in range(m)]
        ended = [False] * m
        for step in range(max_new):
            cache.reserve(cache.length + 1)
            pos = torch.full_like(ids, c.position_offset + step)
            logits = lm.logits(lm.hidden_states(ids, pos, cache)[:, -1])
            cache.length += 1
            if step < min_new_tokens:
                logits[:, c.eos_token_id] = float("-inf")
            nxt = logits.argmax(dim=-1)
            finished = nxt == c.eos_token_id
            for r, tok, fin in zip(rows.tolist(), nxt.tolist(), finished.tolist()):
                if fin:
                    ended[r] = True
                else:
                    out[r].append(tok)
            if bool(finished.any()):
                keep = (~finished).nonzero().squeeze(1)
                if keep.numel() == 0:
                    break
                rows, nxt = rows[keep], nxt[keep]
                cache.select(keep)
            ids = nxt[:, None]
        return [Generated(ids, e) for ids, e in zip(out, ended)]
