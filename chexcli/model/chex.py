"""ChEX: the composition of image encoder, prompt encoder, detector, post decoder and generator.

Parameter names are those of the official checkpoint (`img_encoder.backbone.*`,
`txt_encoder.*`, `detector.*`, `txt_decoder.*`, `post_decoder.*`), so an
imported state dict loads by name.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import torch
from torch import Tensor, nn

from chexcli.boxes import clip_boxes as clip_to_image
from chexcli.model.clip import VisionTransformer
from chexcli.model.config import ChexConfig
from chexcli.model.conv_encoder import ConvTower
from chexcli.model.detector import DetectionOutput, ImageEncoding, TokenDetector
from chexcli.model.generator import Generated, SentenceGenerator
from chexcli.model.gpt2_text import decode_generated
from chexcli.model.post_decoder import PostDecoder
from chexcli.model.prompt_encoder import PromptEncoder


class ImageEncoder(nn.Module):
    """Image tower -> patch features, their positions and the global feature.

    `backbone` is CLIP's ViT (``vision.kind: vit``; the patch positions are its projected
    positional embeddings, the global feature its class token) or the convolutional tower of
    chexcli.model.conv_encoder (``cnn``; fixed sine-cosine positions, mean-pooled global feature).
    """

    def __init__(self, cfg: ChexConfig):
        super().__init__()
        self.kind = cfg.vision.kind
        self.backbone = ConvTower(cfg.vision) if self.kind == "cnn" else VisionTransformer(cfg.vision)

    def forward(self, x: Tensor) -> ImageEncoding:
        """x: (N, S, S) single-channel (repeated to 3 channels for the ViT) or (N, 3, S, S)."""
        size = self.backbone.cfg.image_size
        if x.dim() == 3:
            x = x[:, None]
        if x.dim() != 4 or x.shape[-1] != size or x.shape[-2] != size or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images of {size}x{size}, got shape {tuple(x.shape)}")
        n, g = x.shape[0], self.backbone.cfg.grid
        if self.kind == "cnn":
            patches = self.backbone(x.mean(dim=1, keepdim=True))  # (N, g, g, d)
            pos = self.backbone.positions.to(patches.dtype).reshape(1, g, g, -1).expand(n, -1, -1, -1)
            return ImageEncoding(patches, pos, patches.mean(dim=(1, 2)))
        tokens = self.backbone(x.expand(-1, 3, -1, -1))  # (N, 1 + P, d)
        patches = tokens[:, 1:].reshape(n, g, g, -1)
        pos = self.backbone.projected_patch_positions().reshape(1, g, g, -1).expand(n, -1, -1, -1)
        return ImageEncoding(patches, pos, tokens[:, 0])


class ChEX(nn.Module):
    """The ChEX model. Build from a `ChexConfig`; load weights with `chexcli.model.bundle`.

    Besides its weights, a model carries what a bundle stores with them
    (docs/architecture.md#bundle): the CLIP tokenizer of its prompt encoder
    (`clip_tokenizer(texts, context_length) -> (B, L)` ids), the GPT-2 tokenizer of its
    sentence generator (`gpt2_tokenizer`; `decode(ids_batch) -> list[str]` when there is
    one), `prompts`, the prompt/name data of `prompts_and_names.yaml` (prompt sets, class
    and anatomy name lists), and `provenance`, where its weights come from (a JSON object).
    """

    def __init__(self, cfg: ChexConfig, clip_tokenizer=None, gpt2_tokenizer=None, prompts: dict[str, Any] | None = None,
                 provenance: dict[str, Any] | None = None):
        super().__init__()
        self.cfg = cfg
        placeholders = (prompts or {}).get("template_placeholders", {})
        self.img_encoder = ImageEncoder(cfg)
        self.txt_encoder = PromptEncoder(cfg.text, clip_tokenizer, placeholders)
        self.detector = TokenDetector(cfg)
        self.txt_decoder = SentenceGenerator(cfg.generator, cfg.d_model, cfg.dropout) if cfg.generator else None
        self.post_decoder = PostDecoder(cfg) if cfg.n_post_decoder_layers > 0 else None
        self.gpt2_tokenizer = gpt2_tokenizer
        self.prompts = prompts or {}
        self.provenance: dict[str, Any] = dict(provenance or {})

    @property
    def decode(self) -> Callable[[list[list[int]]], list[str]] | None:
        """Generated GPT-2 ids -> sentences; None without a GPT-2 tokenizer."""
        return None if self.gpt2_tokenizer is None else partial(decode_generated, self.gpt2_tokenizer)

    @property
    def device(self) -> torch.device:
        return self.detector.multiregion_tokens.device

    # --- encoders -------------------------------------------------------------------------
    def encode_image(self, x: Tensor) -> ImageEncoding:
        """x: (N, 224, 224) preprocessed images -> ImageEncoding."""
        return self.img_encoder(x)

    def encode_sentences(self, texts: list[str]) -> Tensor:
        """texts (B) -> (B, d) CLIP embeddings (cached per string)."""
        return self.txt_encoder.encode_sentences(texts)

    def encode_prompts(self, prompt_dict: dict[str, list[str]], names: list[str]) -> tuple[Tensor, Tensor]:
        """Mean synonym embedding per name: (C, d), mask (C)."""
        return self.txt_encoder.encode_prompts(prompt_dict, names)

    def encode_pos_neg_prompts(self, names: list[str], pos_dict, neg_dict=None, mode: str = "neg",
                               no_finding: list[str] | None = None) -> tuple[Tensor, Tensor]:
        return self.txt_encoder.encode_pos_neg_prompts(names, pos_dict, neg_dict, mode, no_finding)

    def _encoding(self, image: Tensor | ImageEncoding) -> ImageEncoding:
        return image if isinstance(image, ImageEncoding) else self.encode_image(image)

    # --- queries --------------------------------------------------------------------------
    def detect_prompts(self, image: Tensor | ImageEncoding, prompts: Tensor, mask: Tensor | None = None,
                       clip_boxes: bool = True, use_post_decoder: bool = True, skip_roi_pool: bool | None = True,
                       keep_multibox: Tensor | None = None) -> DetectionOutput:
        """Detect text prompts: prompts (Q, d) or (N, Q, d); mask (Q) or (N, Q) bool.

        Boxes and weights come from the detector; the post decoder (if used)
        refines only the features. `keep_multibox` (N, Q, R) reproduces the
        reference's random multibox dropping when given; None keeps every token.
        """
        enc = self._encoding(image)
        n = len(enc)
        if mask is not None and mask.dim() == 1:
            mask = mask[None].expand(n, -1)
        out = self.detector(enc, prompts, mask, skip_roi_pool=skip_roi_pool)
        if clip_boxes:
            out = out.replace(boxes=clip_to_image(out.boxes), multiboxes=clip_to_image(out.multiboxes))
        if use_post_decoder and self.post_decoder is not None:
            box_feats, multi_feats = self.post_decoder.refine_detections(
                out.box_features, out.multiboxes_features, enc, out.box_mask, keep_multibox)
            out = out.replace(box_features=box_feats, multiboxes_features=multi_feats)
        return out

    def encode_regions(self, image: Tensor | ImageEncoding, boxes: Tensor, mask: Tensor | None = None,
                       use_post_decoder: bool = True) -> Tensor:
        """Box prompts: boxes (N, M, 4) center format, mask (N, M) -> features (N, M, d)."""
        enc = self._encoding(image)
        feats = self.detector.encode_regions(enc, boxes, mask)
        if use_post_decoder and self.post_decoder is not None:
            feats = self.post_decoder.refine_regions(feats, enc, mask)
        return feats

    # --- sentences ------------------------------------------------------------------------
    def generate(self, features: Tensor, max_new_tokens: int | None = None, min_new_tokens: int = 0,
                 chunk_size: int | None = None) -> list[Generated]:
        """features (M, d) -> greedy token ids per region, in chunks of `max_generated_sentences`."""
        if self.txt_decoder is None:
            raise RuntimeError("this model has no sentence generator")
        chunk = chunk_size or max(1, self.cfg.max_generated_sentences)
        out: list[Generated] = []
        for start in range(0, features.shape[0], chunk):
            out += self.txt_decoder.generate(features[start:start + chunk], max_new_tokens, min_new_tokens)
        return out

    def describe(self, features: Tensor, **kwargs) -> list[str]:
        """features (M, d) -> M sentences."""
        if self.decode is None:
            raise RuntimeError("this model has no sentence tokenizer")
        return self.decode([g.ids for g in self.generate(features, **kwargs)])

    def generate_sentences(self, features: Tensor, mask: Tensor | None = None, **kwargs) -> list[list[str]]:
        """features (N, S, d) with mask (N, S) -> per image the sentences of its masked slots, in order."""
        n, s = features.shape[:2]
        if mask is None:
            mask = torch.ones(n, s, dtype=torch.bool, device=features.device)
        sentences = iter(self.describe(features[mask.bool()], **kwargs))
        return [[next(sentences) for _ in range(int(row.sum()))] for row in mask.bool()]
