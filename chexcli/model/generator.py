"""Sentence generator: GPT-2 conditioned on a region feature through prefix key/values.

A region feature f (d) goes through the prefix MLP (Linear d -> 4d, GELU,
Linear 4d -> F_p * L * 2 * D) and is rearranged into F_p key/value positions
for every GPT-2 layer (flat index order: prefix position, layer, key/value,
head, head dim; docs/architecture.md#prefix-layout). Decoding is greedy from the
end-of-text token with position ids starting at `position_offset`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from chexcli.model.config import DropoutConfig, GeneratorConfig
from chexcli.model.gpt2 import GPT2LanguageModel, KVCache, TeacherForcing
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
    def __init__(self, cfg: GeneratorConfig, d_model: int, rates: DropoutConfig | None = None):
        """`rates`: training-mode dropout (`hidden` in the prefix MLP, `generator` in GPT-2); default
        the reference's."""
        super().__init__()
        rates = rates or DropoutConfig()
        self.cfg = cfg
        out = cfg.prefix_length_factor * cfg.n_layer * 2 * cfg.n_embd
        self.language_model = GPT2LanguageModel(cfg, rates.generator)
        self.prefix_proj = MLP(d_model, out, 2, hidden=cfg.prefix_hidden_dim or 4 * d_model, dropout=rates.hidden)

    def prefix(self, features: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """features (M, d) -> per-layer keys and values, each (M, heads, F_p, head_dim)."""
        c = self.cfg
        m = features.shape[0]
        hd = c.n_embd // c.n_head
        flat = self.prefix_proj(features)
        kv = flat.view(m, c.prefix_length_factor, c.n_layer, 2, c.n_head, hd).permute(2, 3, 0, 4, 1, 5)
        # one unbind (not 2 x n_layer selects): its backward assembles the gradient in one tensor,
        # where each select's backward would allocate and add a zero tensor of the whole prefix
        parts = kv.flatten(0, 1).unbind(0)  # layer-major: keys of layer 0, values of layer 0, ...
        return list(parts[0::2]), list(parts[1::2])

    def teacher_forcing_hidden(self, calls: list[tuple[Tensor, Tensor, Tensor]],
                               drop_padding: bool = False) -> list[Tensor]:
        """Training: per call region features (M, d), target ids (M, L) starting with the start
        token and token_mask (M, L) -> per call GPT-2 hidden states (M, L, n_embd).

        All calls run in one pass: the prefix MLP on every call's features at once, then
        `prefixed_hidden`.
        """
        sizes = [features.shape[0] for features, _, _ in calls]
        keys, values = self.prefix(torch.cat([features for features, _, _ in calls]) if len(calls) > 1
                                   else calls[0][0])
        keys = [k.split(sizes) for k in keys]  # per layer, per call
        values = [v.split(sizes) for v in values]
        return self.prefixed_hidden([(ids, mask, [k[j] for k in keys], [v[j] for v in values])
                                     for j, (_, ids, mask) in enumerate(calls)], drop_padding)

    def prefixed_hidden(self, calls: list[tuple[Tensor, Tensor, list[Tensor], list[Tensor]]],
                        drop_padding: bool = False) -> list[Tensor]:
        """GPT-2 over several calls, each (ids (M, L), token_mask (M, L), per-layer prefix keys and
        values (M, H, P, hd)), in one packed pass -> per call hidden states (M, L, n_embd).

        Positions: `teacher_forcing_positions`. With `drop_padding` the padding positions are not
        computed at all (their hidden states are 0): rows of equal length run together without
        padding, which changes nothing at the real positions, since padding is never attended to.
        Nor is each row's last real position: it predicts what follows the end token, which is
        never scored, and no earlier position attends to it (causal). Its hidden state is 0 too.
        Use it when padding is not scored.
        """
        lm = self.language_model
        inputs, where = [], []
        for j, (ids, mask, keys, values) in enumerate(calls):
            positions = teacher_forcing_positions(mask, self.cfg.position_offset)
            if not drop_padding:
                inputs.append(TeacherForcing(ids, positions, mask, keys, values))
                where.append((j, None, 0))
                continue
            lengths = mask.sum(dim=1)
            for length in sorted(set(lengths.tolist())):
                rows = (lengths == length).nonzero().squeeze(1)
                run = max(1, length - 1)  # the positions whose next token is real (scored)
                inputs.append(TeacherForcing(ids[rows, :run], positions[rows, :run], mask[rows, :run],
                                             [k[rows] for k in keys], [v[rows] for v in values]))
                where.append((j, rows, run))
        hidden = lm.teacher_forcing_hidden(inputs)
        if not drop_padding:
            return hidden
        out = [hidden[0].new_zeros(*ids.shape, hidden[0].shape[-1]) for ids, _, _, _ in calls]
        for (j, rows, length), h in zip(where, hidden):
            out[j][rows, :length] = h
        return out

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
