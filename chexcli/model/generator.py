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
import torch.nn.functional as F
from torch import Tensor, nn

from chexcli.model.config import DropoutConfig, GeneratorConfig
from chexcli.model.gpt2 import GPT2LanguageModel, KVCache, PackedRows
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
        features = torch.cat([f for f, _, _ in calls]) if len(calls) > 1 else calls[0][0]
        keys, values = self.prefix(features)
        return self.prefixed_hidden([(ids, mask) for _, ids, mask in calls], keys, values, drop_padding)

    def prefixed_hidden(self, targets: list[tuple[Tensor, Tensor]], keys: list[Tensor], values: list[Tensor],
                        drop_padding: bool = False) -> list[Tensor]:
        """GPT-2 over several calls in one packed pass: per call ids (M_j, L_j) and token_mask
        (M_j, L_j); per layer prefix keys and values (sum M_j, H, P, hd), rows in call order
        -> per call hidden states (M_j, L_j, n_embd).

        Positions: `teacher_forcing_positions`. With `drop_padding` the padding positions are not
        computed at all (their hidden states are 0), which changes nothing at the real positions,
        since padding is never attended to. Nor is each row's last real position: it predicts
        what follows the end token, which is never scored, and no earlier position attends to it
        (causal). Its hidden state is 0 too. Use it when padding is not scored.
        """
        computed = self._computed(targets, drop_padding)
        rows = self._packed_rows(targets, computed, keys, values)
        hidden = self.language_model.teacher_forcing_hidden(rows)  # (N, n_embd)
        out, start = [], 0
        for (ids, _), computed in zip(targets, computed):
            m, length = ids.shape
            where = computed.flatten().nonzero().squeeze(1)  # this call's tokens, row after row
            part = hidden[start:start + where.numel()]
            out.append(part.new_zeros(m * length, part.shape[-1]).index_copy(0, where, part).view(m, length, -1))
            start += where.numel()
        return out

    @staticmethod
    def _computed(targets: list[tuple[Tensor, Tensor]], drop_padding: bool) -> list[Tensor]:
        """Per call (M_j, L_j) bool: the positions that run through GPT-2 (every one, or with
        `drop_padding` those whose next token is real)."""
        if not drop_padding:
            return [torch.ones_like(mask, dtype=torch.bool) for _, mask in targets]
        out = []
        for _, mask in targets:
            runs = (mask.sum(dim=1) - 1).clamp(min=1)  # (M_j): scored positions per row
            out.append(torch.arange(mask.shape[1], device=mask.device)[None, :] < runs[:, None])
        return out

    def _packed_rows(self, targets: list[tuple[Tensor, Tensor]], computed: list[Tensor], keys: list[Tensor],
                     values: list[Tensor]) -> PackedRows:
        """The calls' rows as one `PackedRows` (`computed`: per call the positions that run, see
        `_computed`), padded to T = the longest computed row."""
        t = max(int(c.sum(dim=1).max()) for c in computed)
        ids_rows, pos_rows, real_rows, run_rows = [], [], [], []
        for (ids, mask), run in zip(targets, computed):
            width = min(t, ids.shape[1])
            pad = t - width
            positions = teacher_forcing_positions(mask, self.cfg.position_offset)
            ids_rows.append(F.pad(ids[:, :width], (0, pad)))
            pos_rows.append(F.pad(positions[:, :width], (0, pad)))
            real_rows.append(F.pad((mask.bool() & run)[:, :width], (0, pad)))
            run_rows.append(F.pad(run[:, :width], (0, pad)))
        ids, positions = torch.cat(ids_rows), torch.cat(pos_rows)  # (B, T)
        real, run = torch.cat(real_rows), torch.cat(run_rows)  # (B, T) bool
        b, p = ids.shape[0], keys[0].shape[2]
        causal = torch.ones(t, t, dtype=torch.bool, device=ids.device).tril()
        mask = torch.cat([torch.ones(b, t, p, dtype=torch.bool, device=ids.device),
                          causal[None] & real[:, None, :]], dim=2)[:, None]  # (B, 1, T, P + T)
        index = run.flatten().nonzero().squeeze(1)
        return PackedRows(ids.flatten()[index], positions.flatten()[index], index, (b, t), mask, keys, values)

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
