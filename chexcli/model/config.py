"""Model configuration: every size and switch of a ChEX model in one tree.

The defaults are the released stage-3 model (ARCHITECTURE.md §11-12):
CLIP ViT-B/32 image tower, CLIP text tower (width 512), a 6-layer token
detector, a 3-layer post decoder and a prefix-tuned GPT-2 medium generator.
`ChexConfig.tiny()` is a few-layer model of width 32-64 for tests.

Configurations are plain dataclasses, saved as JSON in a model bundle.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class VisionConfig:
    """CLIP vision transformer (OpenAI layout)."""

    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12
    output_dim: int = 512

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass
class TextConfig:
    """CLIP text transformer (OpenAI layout), causal, end-of-text pooling."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    layers: int = 12
    heads: int = 8
    output_dim: int = 512


@dataclass
class DetectorConfig:
    """Token detector (ARCHITECTURE.md §5)."""

    multiregions: int = 3
    n_decoder_layers: int = 6
    soft_roi_beta: float = 2.0
    predictor_hidden_dim: int | None = None  # None -> d_model
    out_project_hidden_dim: int | None = None  # None -> 4 * d_model


@dataclass
class GeneratorConfig:
    """Prefix-tuned GPT-2 sentence generator (ARCHITECTURE.md §7)."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 1024
    n_layer: int = 24
    n_head: int = 16
    layer_norm_epsilon: float = 1e-5
    bos_token_id: int = 50256
    eos_token_id: int = 50256
    pad_token_id: int = 50256
    prefix_length_factor: int = 5
    prefix_hidden_dim: int | None = None  # None -> 4 * d_model
    position_offset: int = 0
    max_length: int = 128  # includes the start token


@dataclass
class ChexConfig:
    """Whole-model configuration (defaults: the released stage-3 model)."""

    d_model: int = 512
    n_head: int = 8
    ff_dim: int | None = None  # None -> 4 * d_model
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    n_post_decoder_layers: int = 3
    post_decoder_multibox_drop: float = 0.1
    generator: GeneratorConfig | None = field(default_factory=GeneratorConfig)
    max_generated_sentences: int = 32
    pixel_mean: float = 0.505
    pixel_std: float = 0.248

    @property
    def ff_hidden(self) -> int:
        return self.ff_dim or 4 * self.d_model

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ChexConfig":
        d = dict(d)
        sub = {"vision": VisionConfig, "text": TextConfig, "detector": DetectorConfig}
        kwargs: dict[str, Any] = {}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        for key, value in d.items():
            if key in sub and isinstance(value, dict):
                kwargs[key] = _build(sub[key], value)
            elif key == "generator":
                kwargs[key] = None if value is None else _build(GeneratorConfig, value)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def tiny(cls, clip_vocab_size: int = 49408, gpt2_vocab_size: int = 2048, eos_token_id: int = 0) -> "ChexConfig":
        """A small model with the same structure as the released one (for tests)."""
        return cls(
            d_model=32,
            n_head=4,
            vision=VisionConfig(image_size=224, patch_size=32, width=64, layers=2, heads=2, output_dim=32),
            text=TextConfig(context_length=77, vocab_size=clip_vocab_size, width=32, layers=2, heads=2, output_dim=32),
            detector=DetectorConfig(multiregions=3, n_decoder_layers=2),
            n_post_decoder_layers=1,
            generator=GeneratorConfig(
                vocab_size=gpt2_vocab_size,
                n_positions=256,
                n_embd=32,
                n_layer=2,
                n_head=2,
                bos_token_id=eos_token_id,
                eos_token_id=eos_token_id,
                pad_token_id=eos_token_id,
                max_length=32,
            ),
        )


def _build(cls, values: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return cls(**values)
