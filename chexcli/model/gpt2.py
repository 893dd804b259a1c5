"""A compact GPT-2 language model with a preallocated key/value cache.

Parameter names and shapes are those of Hugging Face `GPT2LMHeadModel`
(`transformer.wte`, `transformer.h.{i}.attn.c_attn` stored (in x out), ...),
so GPT-2 checkpoints load by name; tests compare its logits with
`transformers.GPT2LMHeadModel` on random weights. The output head is tied to
the token embedding. Written out here (rather than driving
`GPT2LMHeadModel.generate`) so that prefix key/values, the cache layout,
dropping finished rows during decoding and int8 weights stay simple.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from chexcli.model.config import DropoutConfig, GeneratorConfig
from chexcli.model.layers import Dropout

class Conv1D(nn.Module):
    """GPT-2's linear layer with weight stored (in x out): y = x @ W + b."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out).normal_(std=0.02))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: Tensor) -> Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], -1)


def gelu_new(x: Tensor) -> Tensor:
    """GPT-2's tanh approximation of GELU."""
    return F.gelu(x, approximate="tanh")


@dataclass
class KVCache:
    """Per-layer keys/values, preallocated: keys[l] and values[l] are (B, H, L_max, hd).

    `length` positions are filled. `select(rows)` keeps a subset of the batch.
    """

    keys: list[Tensor]
    values: list[Tensor]
    length: int

    @classmethod
    def from_prefix(cls, prefix_keys: list[Tensor], prefix_values: list[Tensor], capacity: int) -> "KVCache":
        """Start a cache from per-layer prefix tensors (B, H, P, hd) with room for `capacity` positions."""
        keys, values = [], []
        for k, v in zip(prefix_keys, prefix_values):
            b, h, p, hd = k.shape
            kk = k.new_empty(b, h, capacity, hd)
            vv = v.new_empty(b, h, capacity, hd)
            kk[:, :, :p] = k
            vv[:, :, :p] = v
            keys.append(kk)
            values.append(vv)
        return cls(keys, values, prefix_keys[0].shape[2])

    def select(self, rows: Tensor) -> None:
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]

    def reserve(self, positions: int) -> None:
        """Make room for `positions` filled positions, doubling the capacity when it runs out."""
        capacity = self.keys[0].shape[2]
        if positions <= capacity:
            return
        new = max(positions, 2 * capacity)

        def grow(t: Tensor) -> Tensor:
            out = t.new_empty(t.shape[0], t.shape[1], new, t.shape[3])
            out[:, :, : self.length] = t[:, :, : self.length]
            return out

        self.keys = [grow(k) for k in self.keys]
        self.values = [grow(v) for v in self.values]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GeneratorConfig, dropout: float):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = Conv1D(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = Conv1D(cfg.n_embd, cfg.n_embd)
        self.dropout = dropout  # attention-probability and residual dropout (training only)
        self.resid_dropout = Dropout(dropout)

    def forward(self, x: Tensor, cache: KVCache | None, layer: int, mask: Tensor | None) -> Tensor:
        b, t, c = x.shape
        hd = c // self.n_head
        q, k, v = self.c_attn(x).split(c, dim=2)
        q = q.view(b, t, self.n_head, hd).transpose(1, 2)
        k = k.view(b, t, self.n_head, hd).transpose(1, 2)
        v = v.view(b, t, self.n_head, hd).transpose(1, 2)
        if cache is not None:
            start = cache.length
            cache.keys[layer][:, :, start : start + t] = k
            cache.values[layer][:, :, start : start + t] = v
            k = cache.keys[layer][:, :, : start + t]
            v = cache.values[layer][:, :, : start + t]
        if mask is None and t > 1:  # causal, aligned to the end of the key sequence
            past = k.shape[2] - t
            mask = torch.ones(t, k.shape[2], dtype=torch.bool, device=x.device).tril(past)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(b, t, c)))

    def forward_packed(self, x: Tensor, rows: "PackedRows", layer: int) -> Tensor:
        """Training: x (N, c) holds the computed positions of B rows of different lengths, one row
        after the other. The linear layers run on the N tokens; attention runs once on the rows
        padded to (B, T), each row after its own prefix (`rows.mask`)."""
        c = x.shape[-1]
        hd = c // self.n_head
        b, t = rows.shape
        qkv = self.c_attn(x)  # (N, 3c): one matrix product for every row's tokens
        padded = qkv.new_zeros(b * t, 3 * c).index_copy(0, rows.index, qkv).view(b, t, 3 * c)
        q, k, v = (part.view(b, t, self.n_head, hd).transpose(1, 2) for part in padded.split(c, dim=2))
        k = torch.cat([rows.prefix_keys[layer], k], dim=2)  # (B, H, P + T, hd)
        v = torch.cat([rows.prefix_values[layer], v], dim=2)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=rows.mask, dropout_p=p)  # (B, H, T, hd)
        y = y.transpose(1, 2).reshape(b * t, c).index_select(0, rows.index)  # (N, c)
        return self.resid_dropout(self.c_proj(y))


class _MLP(nn.Module):
    def __init__(self, cfg: GeneratorConfig, dropout: float):
        super().__init__()
        self.c_fc = Conv1D(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = Conv1D(4 * cfg.n_embd, cfg.n_embd)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(gelu_new(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GeneratorConfig, dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.attn = CausalSelfAttention(cfg, dropout)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = _MLP(cfg, dropout)

    def forward(self, x: Tensor, cache: KVCache | None, layer: int, mask: Tensor | None) -> Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, mask)
        return x + self.mlp(self.ln_2(x))

    def forward_packed(self, x: Tensor, rows: "PackedRows", layer: int) -> Tensor:
        """x (N, n_embd): the packed tokens of teacher forcing (see `CausalSelfAttention.forward_packed`)."""
        x = x + self.attn.forward_packed(self.ln_1(x), rows, layer)
        return x + self.mlp(self.ln_2(x))


@dataclass
class PackedRows:
    """Teacher forcing over B rows of different lengths in one pass.

    The N tokens are the rows' computed positions, row after row: `ids` and `positions` (N).
    `index` (N) is each token's place (row * T + position) in the padded (B, T) layout, `shape`
    (B, T); `mask` (B, 1, T, P + T) bool says which keys a position attends to: its row's prefix
    and the earlier positions (causal) that are real tokens. prefix_keys[l], prefix_values[l]:
    (B, H, P, hd) per layer.
    """

    ids: Tensor
    positions: Tensor
    index: Tensor
    shape: tuple[int, int]
    mask: Tensor
    prefix_keys: list[Tensor]
    prefix_values: list[Tensor]


class _Transformer(nn.Module):
    def __init__(self, cfg: GeneratorConfig, dropout: float):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.n_positions, cfg.n_embd)
        self.h = nn.ModuleList(Block(cfg, dropout) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.drop = Dropout(dropout)
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.01)


class GPT2LanguageModel(nn.Module):
    """GPT-2 with tied output head.

    forward(ids (B, T), positions (B, T), cache, mask) -> logits (B, T, V).
    With a cache the new keys/values are written at `cache.length` and the
    caller advances `cache.length` by T. `mask`: bool, broadcastable to
    (B, heads, T, L_past + T), True = may attend; None = attend to everything
    (valid for single-token steps).
    """

    def __init__(self, cfg: GeneratorConfig, dropout: float = DropoutConfig.generator):
        super().__init__()
        self.cfg = cfg
        self.transformer = _Transformer(cfg, dropout)
        self.head: nn.Module | None = None  # set by int8 quantisation; None = tied to wte
        self.gradient_checkpointing = False  # recompute block activations in backward (training)
        std = 0.02 / math.sqrt(2 * cfg.n_layer)
        for block in self.transformer.h:
            nn.init.normal_(block.attn.c_proj.weight, std=std)
            nn.init.normal_(block.mlp.c_proj.weight, std=std)

    def hidden_states(self, ids: Tensor, positions: Tensor, cache: KVCache | None = None,
                      mask: Tensor | None = None) -> Tensor:
        tr = self.transformer
        x = tr.wte(ids) + tr.wpe(positions)
        for i, block in enumerate(tr.h):
            x = block(x, cache, i, mask)
        return tr.ln_f(x)

    def teacher_forcing_hidden(self, rows: PackedRows) -> Tensor:
        """Training: the packed rows of teacher forcing -> hidden states (N, n_embd) of their tokens.

        Every token sees its row's prefix and the row's earlier real tokens; dropout is active in
        training mode. The linear layers run on the N tokens only (no padding), so every weight
        is read once and gets one gradient; attention runs once per layer on the padded rows.
        """
        tr = self.transformer
        # one embedding lookup for every token: each lookup's backward builds a dense (vocab x n_embd) gradient
        x = tr.drop(tr.wte(rows.ids) + tr.wpe(rows.positions))
        for i, block in enumerate(tr.h):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block.forward_packed, x, rows, i, use_reentrant=False)
            else:
                x = block.forward_packed(x, rows, i)
        return tr.ln_f(x)

    def logits(self, hidden: Tensor) -> Tensor:
        if self.head is not None:
            return self.head(hidden)
        return hidden @ self.transformer.wte.weight.t()

    def forward(self, ids: Tensor, positions: Tensor, cache: KVCache | None = None,
                mask: Tensor | None = None) -> Tensor:
        return self.logits(self.hidden_states(ids, positions, cache, mask))
