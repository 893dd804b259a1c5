"""Prompt detector (token decoder) and box-prompt region encoder (docs/architecture.md#detector)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor, nn

from chexcli.boxes import hull_box
from chexcli.model.roi_pool import soft_roi_pool
from chexcli.model.config import ChexConfig
from chexcli.model.layers import MLP, DecoderBlock, Dropout, block_diagonal, combine_self_attention_masks


@dataclass
class ImageEncoding:
    """patch_features F (N, H, W, d), pos_embeddings E (N, H, W, d), global_features g (N, d)."""

    patch_features: Tensor
    pos_embeddings: Tensor
    global_features: Tensor

    def __len__(self) -> int:
        return self.patch_features.shape[0]

    def select(self, index) -> "ImageEncoding":
        return ImageEncoding(self.patch_features[index], self.pos_embeddings[index], self.global_features[index])


@dataclass
class DetectionOutput:
    """What the detector returns for Q queries with R regions each.

    boxes (N, Q, 4) hull box (zero when absent), box_mask (N, Q),
    boxes_weights (N, Q), boxes_present (N, Q), box_features (N, Q, d),
    multiboxes (N, Q, R, 4), multiboxes_weights (N, Q, R),
    multiboxes_present (N, Q, R), multiboxes_features (N, Q, R, d).
    All boxes are center format, normalised to the 224 x 224 network input.
    """

    boxes: Tensor
    box_mask: Tensor
    boxes_weights: Tensor
    boxes_present: Tensor
    box_features: Tensor
    multiboxes: Tensor
    multiboxes_weights: Tensor
    multiboxes_present: Tensor
    multiboxes_features: Tensor

    def replace(self, **changes) -> "DetectionOutput":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _Decoder(nn.Module):
    def __init__(self, cfg: ChexConfig):
        super().__init__()
        self.decoder_layers = nn.ModuleList(
            DecoderBlock(cfg.d_model, cfg.n_head, cfg.ff_hidden, cfg.dropout)
            for _ in range(cfg.detector.n_decoder_layers)
        )

    def forward(self, tokens: Tensor, memory: Tensor, sa_mask: Tensor | None) -> Tensor:
        for layer in self.decoder_layers:
            tokens = layer(tokens, memory, sa_mask)
        return tokens


class TokenDetector(nn.Module):
    """R tokens per query decode boxes and region features from the patch map."""

    def __init__(self, cfg: ChexConfig):
        super().__init__()
        d, r = cfg.d_model, cfg.detector.multiregions
        self.n_regions = r
        self.beta = cfg.detector.soft_roi_beta
        self.skip_roi_pool_prob = cfg.detector.skip_roi_pool_prob
        hidden = cfg.detector.predictor_hidden_dim or d
        p = cfg.dropout.hidden
        self.multiregion_tokens = nn.Parameter(torch.randn(r, d) / d ** 0.5)
        # the two heads whose outputs are probabilities / box coordinates have no dropout after
        # their last layer (the reference's layout; dropout there would perturb training boxes)
        self.multiregion_weight_mlp = MLP(d, 1, 2, hidden=hidden, dropout=p, dropout_last=False)
        self.decoder = _Decoder(cfg)
        self.bbox_predictor = nn.Sequential(nn.LayerNorm(d), MLP(d, 4, 2, hidden=hidden, dropout=p,
                                                                 dropout_last=False))
        self.patch_projector = nn.Sequential(nn.LayerNorm(d), MLP(d, d, 1, dropout=p))
        self.skip_con_dropout = Dropout(cfg.dropout.skip_connection)
        self.out_projector = nn.Sequential(
            nn.LayerNorm(d), MLP(d, d, 2, hidden=cfg.detector.out_project_hidden_dim or 4 * d, dropout=p)
        )

    def forward(self, image: ImageEncoding, queries: Tensor, query_mask: Tensor | None = None,
                skip_roi_pool: bool | None = True) -> DetectionOutput:
        """queries: (Q, d) shared by all images or (N, Q, d); query_mask: (N, Q) bool or None.

        With a query mask, self-attention follows the reference's combined-mask
        rule (all queries of an image see each other); without, each query's
        R tokens only see each other. `skip_roi_pool=None` is the random skip
        connection of training.
        """
        patches, pos = image.patch_features, image.pos_embeddings
        n, r = patches.shape[0], self.n_regions
        if queries.dim() == 2:
            queries = queries.unsqueeze(0).expand(n, -1, -1)
        q = queries.shape[1]
        if q == 0:
            raise ValueError("the detector needs at least one query")
        tokens = (queries[:, :, None, :] + self.multiregion_tokens).flatten(1, 2)  # (N, Q*R, d)
        valid = None if query_mask is None else query_mask.bool().repeat_interleave(r, dim=1)
        sa_mask = combine_self_attention_masks(block_diagonal(q, r, tokens.device), valid)
        memory = (patches + pos).flatten(1, 2)  # (N, P, d)
        tokens = self.decoder(tokens, memory, sa_mask)

        boxes = torch.sigmoid(self.bbox_predictor(tokens))  # (N, Q*R, 4)
        pooled = soft_roi_pool(self.patch_projector(patches), boxes, self.beta)
        mixed = self._skip_connection(tokens, pooled, skip_roi_pool)
        features = self.out_projector(mixed)
        if valid is not None:
            features = features * valid[..., None]
            boxes = boxes * valid[..., None]
        return self._aggregate(boxes.view(n, q, r, 4), features.view(n, q, r, -1),
                               None if valid is None else valid.view(n, q, r))

    def _skip_connection(self, tokens: Tensor, pooled: Tensor, skip_roi_pool: bool | None) -> Tensor:
        if skip_roi_pool is True:
            return (tokens + pooled) / 2
        if skip_roi_pool is False:
            return pooled
        use_skip = torch.rand(tokens.shape[:-1], device=tokens.device) < self.skip_roi_pool_prob
        return torch.where(use_skip[..., None], (self.skip_con_dropout(tokens) + pooled) / 2, pooled)

    def _aggregate(self, multiboxes: Tensor, features: Tensor, mask: Tensor | None) -> DetectionOutput:
        weights = torch.sigmoid(self.multiregion_weight_mlp(features)).squeeze(-1)  # (N, Q, R)
        if mask is None:
            mask = torch.ones_like(weights, dtype=torch.bool)
        present = mask & (weights > 0.5)
        norm = weights / weights.sum(dim=-1, keepdim=True).clamp(min=1.0)
        boxes_present = present.any(dim=-1)
        return DetectionOutput(
            boxes=hull_box(multiboxes) * boxes_present[..., None],
            box_mask=mask.any(dim=-1),
            boxes_weights=(norm * weights).sum(dim=-1),
            boxes_present=boxes_present,
            box_features=(norm[..., None] * features).sum(dim=-2),
            multiboxes=multiboxes,
            multiboxes_weights=weights * mask,
            multiboxes_present=present,
            multiboxes_features=features,
        )

    def encode_regions(self, image: ImageEncoding, boxes: Tensor, mask: Tensor | None = None) -> Tensor:
        """Box prompts: boxes (N, M, 4) center format -> region features (N, M, d).

        No token decoder and no skip connection: out_projector(soft ROI pool).
        Padded boxes (mask False) get zero features.
        """
        pooled = soft_roi_pool(self.patch_projector(image.patch_features), boxes, self.beta)
        features = self.out_projector(pooled)
        if mask is not None:
            features = features * mask[..., None]
        return features
