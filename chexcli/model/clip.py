"""CLIP towers in OpenAI's parameter layout (CheXzero weights load by name).

`VisionTransformer` returns every token (class token first) after `ln_post`
and `proj`; `TextTransformer` returns the end-of-text pooled feature.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from chexcli.model.config import TextConfig, VisionConfig
from chexcli.model.layers import MultiheadAttention, QuickGELU


class _ClipMLP(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.gelu = QuickGELU()
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: z += MHA(LN1(z)); z += MLP(LN2(z)). x: (N, L, width)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = _ClipMLP(width)
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, mask)
        return x + self.mlp(self.ln_2(x))


class _Blocks(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class VisionTransformer(nn.Module):
    """CLIP ViT. forward(x (N, 3, S, S)) -> tokens (N, 1 + P, output_dim) after ln_post @ proj."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        scale = w**-0.5
        self.conv1 = nn.Conv2d(3, w, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.grid**2 + 1, w))
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = _Blocks(w, cfg.layers, cfg.heads)
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Parameter(scale * torch.randn(w, cfg.output_dim))

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x).flatten(2).transpose(1, 2)  # (N, P, w), row-major over (h, w)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x) @ self.proj

    def projected_patch_positions(self) -> Tensor:
        """Raw patch positional embeddings projected by `proj`: (P, output_dim)."""
        return self.positional_embedding[1:] @ self.proj


class TextTransformer(nn.Module):
    """CLIP text tower. forward(ids (B, 77)) -> (B, output_dim), pooled at the first EOT (max id)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.transformer = _Blocks(cfg.width, cfg.layers, cfg.heads)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(cfg.context_length, cfg.width))
        self.ln_final = nn.LayerNorm(cfg.width)
        self.text_projection = nn.Parameter(cfg.width**-0.5 * torch.randn(cfg.width, cfg.output_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        causal = torch.ones(cfg.context_length, cfg.context_length, dtype=torch.bool).tril()
        self.register_buffer("causal_mask", causal, persistent=False)

    def forward(self, ids: Tensor) -> Tensor:
        length = ids.shape[1]
        x = self.token_embedding(ids) + self.positional_embedding[:length]
        x = self.ln_final(self.transformer(x, self.causal_mask[:length, :length]))
        eot = ids.argmax(dim=-1)
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection
