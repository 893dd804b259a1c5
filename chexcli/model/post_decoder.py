"""Post decoder: refines region features with context (docs/architecture.md#post-decoder)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from chexcli.model.config import ChexConfig
from chexcli.model.detector import ImageEncoding
from chexcli.model.layers import DecoderBlock, block_diagonal, combine_self_attention_masks


class PostDecoder(nn.Module):
    """Decoder layers over region tokens, cross-attending to patches (+ positions) and the global feature.

    Output of every token: LN_gate(x + gate * layers(x)).
    """

    def __init__(self, cfg: ChexConfig):
        super().__init__()
        d = cfg.d_model
        self.drop_prob = cfg.post_decoder_multibox_drop
        self.post_decoder_layers = nn.ModuleList(
            DecoderBlock(d, cfg.n_head, cfg.ff_hidden, cfg.dropout, cross_droppath=True)
            for _ in range(cfg.n_post_decoder_layers)
        )
        self.gate = nn.Parameter(torch.zeros(1))
        self.ln_gate = nn.LayerNorm(d)

    def _run(self, tokens: Tensor, image: ImageEncoding, sa_mask: Tensor | None) -> Tensor:
        memory = torch.cat(
            [(image.patch_features + image.pos_embeddings).flatten(1, 2), image.global_features[:, None]], dim=1
        )  # (N, P + 1, d)
        x = tokens
        for layer in self.post_decoder_layers:
            x = layer(x, memory, sa_mask)
        return self.ln_gate(tokens + self.gate * x)

    def refine_detections(self, box_features: Tensor, multibox_features: Tensor, image: ImageEncoding,
                          query_mask: Tensor | None = None, keep_multibox: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """box_features (N, Q, d), multibox_features (N, Q, R, d) -> refined (same shapes).

        Tokens per query: the aggregate then its R region tokens. `keep_multibox`
        (N, Q, R) bool drops region tokens from attention (the reference's
        multibox dropping); None keeps all of them (deterministic inference);
        in training mode a keep mask is drawn with the configured probability.
        The padding mask is always given, so every token attends to all other
        queries' tokens except dropped/padded tokens of its own query.
        """
        n, q, r, _ = multibox_features.shape
        if keep_multibox is None and self.training and self.drop_prob > 0:
            keep_multibox = torch.rand((n, q, r), device=box_features.device) > self.drop_prob
        valid = torch.ones(n, q, r + 1, dtype=torch.bool, device=box_features.device)
        if query_mask is not None:
            valid &= query_mask.bool()[..., None]
        if keep_multibox is not None:
            valid[..., 1:] &= keep_multibox.bool()
        tokens = torch.cat([box_features[:, :, None], multibox_features], dim=2).flatten(1, 2)
        sa_mask = combine_self_attention_masks(block_diagonal(q, r + 1, tokens.device), valid.flatten(1))
        out = self._run(tokens, image, sa_mask).view(n, q, r + 1, -1)
        return out[:, :, 0], out[:, :, 1:]

    def refine_regions(self, features: Tensor, image: ImageEncoding, mask: Tensor | None = None) -> Tensor:
        """Box-prompt path: features (N, M, d) -> (N, M, d).

        Without a mask each region attends only to itself; with a mask the
        reference rule makes all regions of an image attend to each other.
        """
        m = features.shape[1]
        block = torch.eye(m, dtype=torch.bool, device=features.device)
        sa_mask = combine_self_attention_masks(block, None if mask is None else mask.bool())
        return self._run(features, image, sa_mask)
