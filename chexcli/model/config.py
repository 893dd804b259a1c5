"""Model configuration: every size and switch of a ChEX model in one tree.

The defaults are the released stage-3 model (docs/architecture.md#model-sizes):
CLIP ViT-B/32 image tower, CLIP text tower (width 512), a 6-layer token
detector, a 3-layer post decoder and a prefix-tuned GPT-2 medium generator.
Other named sizes (`small`, `tiny`, ...) are in chexcli.model.presets.

Configurations are plain dataclasses, saved as JSON in a model bundle; a key a
bundle lacks (written by an older chexcli) takes its default here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


VISION_KINDS = ("vit", "cnn")
# MIMIC-CXR pixel statistics the image towers were trained with: x -> (x - mean) / std
PIXEL_MEAN = 0.505
PIXEL_STD = 0.248


@dataclass
class VisionConfig:
    """Image tower: the CLIP vision transformer (OpenAI layout, ``kind="vit"``, every released
    model) or a small convolutional tower (``kind="cnn"``, chexcli.model.conv_encoder) for models
    trained from random weights on a CPU, such as `chex demo`'s.

    For ``cnn``: log2(patch_size) stride-2 convolution stages of width/4, width/2, then width
    channels; ``layers`` and ``heads`` are not used."""

    kind: str = "vit"
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
    """Token detector (docs/architecture.md#detector)."""

    multiregions: int = 3
    n_decoder_layers: int = 6
    soft_roi_beta: float = 2.0
    skip_roi_pool_prob: float = 0.25  # training: share of region tokens whose pooled feature mixes in the token
    predictor_hidden_dim: int | None = None  # None -> d_model
    out_project_hidden_dim: int | None = None  # None -> 4 * d_model


@dataclass
class DropoutConfig:
    """Dropout rates of training mode (eval mode drops nothing); the defaults are the reference's.

    `scaled(f)` multiplies every rate (a recipe's `model.dropout_scale`)."""

    hidden: float = 0.3  # sublayer outputs and MLP layers: detector, post decoder, prefix MLP
    attention: float = 0.1  # attention probabilities of the detector and post-decoder blocks
    droppath: float = 0.2  # stochastic depth of the detector and post-decoder blocks
    skip_connection: float = 0.3  # the decoder token in the detector's training skip connection
    generator: float = 0.1  # GPT-2's embedding, attention, residual and MLP dropout

    def scaled(self, factor: float) -> "DropoutConfig":
        return DropoutConfig(**{f.name: getattr(self, f.name) * factor for f in dataclasses.fields(self)})


@dataclass
class GeneratorConfig:
    """Prefix-tuned GPT-2 sentence generator (docs/architecture.md#sentence-generator)."""

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
    post_decoder_multibox_drop: float = 0.1  # training: share of region tokens the post decoder drops
    generator: GeneratorConfig | None = field(default_factory=GeneratorConfig)
    max_generated_sentences: int = 32
    pixel_mean: float = PIXEL_MEAN
    pixel_std: float = PIXEL_STD
    dropout: DropoutConfig = field(default_factory=DropoutConfig)

    @property
    def ff_hidden(self) -> int:
        return self.ff_dim or 4 * self.d_model

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], prefix: str = "model") -> "ChexConfig":
        """Build and validate a configuration; ValueError names the offending key (`prefix.key`)."""
        if not isinstance(d, dict):
            raise ValueError(f"{prefix} must be an object, got {type(d).__name__}")
        sub = {"vision": VisionConfig, "text": TextConfig, "detector": DetectorConfig, "generator": GeneratorConfig,
               "dropout": DropoutConfig}
        kwargs: dict[str, Any] = {}
        for key, value in _known(cls, d, prefix).items():
            if key in sub and value is not None:
                if not isinstance(value, dict):
                    raise ValueError(f"{prefix}.{key} must be an object, got {type(value).__name__}")
                kwargs[key] = sub[key](**_known(sub[key], value, f"{prefix}.{key}"))
            else:
                kwargs[key] = value
        cfg = cls(**kwargs)
        cfg.validate(prefix)
        return cfg

    def validate(self, prefix: str = "model") -> None:
        """Check types and sizes (positive counts, widths divisible by heads, matching widths).

        Raises ValueError naming the first bad key, e.g. `model.vision.heads must be >= 1 (got 0)`.
        """
        _check_types(self, prefix)
        for key, minimum in _MINIMUMS.items():
            value = _lookup(self, key)
            if value is not None and value < minimum:
                raise ValueError(f"{prefix}.{key} must be >= {minimum} (got {value})")
        for width, heads in (("d_model", "n_head"), ("vision.width", "vision.heads"), ("text.width", "text.heads"),
                             ("generator.n_embd", "generator.n_head")):
            w, h = _lookup(self, width), _lookup(self, heads)
            if w is not None and w % h:
                raise ValueError(f"{prefix}.{width} ({w}) is not divisible by {prefix}.{heads} ({h})")
        if self.vision.kind not in VISION_KINDS:
            raise ValueError(f"{prefix}.vision.kind must be one of {', '.join(VISION_KINDS)} "
                             f"(got {self.vision.kind!r})")
        patch = self.vision.patch_size
        if self.vision.kind == "cnn" and (patch < 2 or patch & (patch - 1)):
            raise ValueError(f"{prefix}.vision.patch_size of a cnn image tower must be a power of two >= 2 "
                             f"(got {patch})")
        if self.vision.image_size % self.vision.patch_size:
            raise ValueError(f"{prefix}.vision.image_size ({self.vision.image_size}) is not a multiple of "
                             f"{prefix}.vision.patch_size ({self.vision.patch_size})")
        for key in ("vision.output_dim", "text.output_dim"):
            if _lookup(self, key) != self.d_model:
                raise ValueError(f"{prefix}.{key} ({_lookup(self, key)}) must equal {prefix}.d_model ({self.d_model})")
        if not 0 <= self.post_decoder_multibox_drop < 1:
            raise ValueError(f"{prefix}.post_decoder_multibox_drop must be in [0, 1) "
                             f"(got {self.post_decoder_multibox_drop})")
        for key in ("detector.skip_roi_pool_prob", *(f"dropout.{f.name}" for f in dataclasses.fields(DropoutConfig))):
            if _lookup(self, key) > 1:
                raise ValueError(f"{prefix}.{key} must be in [0, 1] (got {_lookup(self, key)})")


# Smallest allowed value of every number (counts >= 1 unless zero means "none").
_MINIMUMS: dict[str, float] = {
    "d_model": 1, "n_head": 1, "ff_dim": 1, "n_post_decoder_layers": 0, "max_generated_sentences": 1,
    "pixel_std": 1e-12, "post_decoder_multibox_drop": 0,
    **{f"vision.{k}": 1 for k in ("image_size", "patch_size", "width", "layers", "heads", "output_dim")},
    **{f"text.{k}": 1 for k in ("vocab_size", "width", "layers", "heads", "output_dim")},
    "text.context_length": 2,
    **{f"detector.{k}": 1 for k in ("multiregions", "n_decoder_layers", "predictor_hidden_dim",
                                     "out_project_hidden_dim")},
    "detector.soft_roi_beta": 1e-12, "detector.skip_roi_pool_prob": 0,
    **{f"dropout.{k}": 0 for k in ("hidden", "attention", "droppath", "skip_connection", "generator")},
    **{f"generator.{k}": 1 for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head",
                                      "prefix_length_factor", "prefix_hidden_dim")},
    **{f"generator.{k}": 0 for k in ("bos_token_id", "eos_token_id", "pad_token_id", "position_offset")},
    "generator.layer_norm_epsilon": 1e-30, "generator.max_length": 2,
}


def _known(cls, values: dict[str, Any], prefix: str) -> dict[str, Any]:
    """`values` after refusing keys that `cls` does not have."""
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown field {prefix}.{unknown[0]}" + (f" (+{len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    return values


def _lookup(cfg: "ChexConfig", key: str):
    value: Any = cfg
    for part in key.split("."):
        value = None if value is None else getattr(value, part)
    return value


def _check_types(obj, prefix: str) -> None:
    """Every field holds its annotated type: int (not bool), float (finite, int allowed), optional None, or a section."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}.{f.name}"
        kind, optional = str(f.type).split("|")[0].strip(), "None" in str(f.type)
        if value is None and optional:
            continue
        if kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
            wanted = "an integer"
        elif kind == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            wanted = "a finite number"
        elif kind == "str":
            ok = isinstance(value, str)
            wanted = "a string"
        else:  # a nested section
            ok = dataclasses.is_dataclass(value)
            wanted = "an object"
            if ok:
                _check_types(value, key)
        if not ok:
            raise ValueError(f"{key} must be {wanted}, got {value!r}"[:200])
