"""Named model sizes, one registry: `--model-config paper|small|tiny|tiny-cnn` or a YAML file.

Each preset builds a `ChexConfig` for given vocabulary sizes (a model trained from random
weights learns its tokenizers from the training text, so their sizes are only known then) and
says how large those learnt tokenizers should be.

=========  ====================================================================================
paper      the released model (docs/architecture.md#model-sizes)
small      width 128: trains on a laptop
tiny       width 32, two layers per tower: tests
tiny-cnn   `tiny` with the convolutional image tower of chexcli.model.conv_encoder
demo-cnn   width 64 with a wider convolutional tower: the model `chex demo` trains
=========  ====================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from chexcli.errors import ChexError
from chexcli.model.config import ChexConfig, DetectorConfig, GeneratorConfig, TextConfig, VisionConfig


def paper(clip_vocab_size: int = 49408, gpt2_vocab_size: int = 50257, eos_token_id: int = 50256) -> ChexConfig:
    """The released stage-3 model (every `ChexConfig` default)."""
    return _with_vocabularies(ChexConfig(), clip_vocab_size, gpt2_vocab_size, eos_token_id)


def small(clip_vocab_size: int = 49408, gpt2_vocab_size: int = 2048, eos_token_id: int = 0) -> ChexConfig:
    """Width 128, a few layers per component: trains on a laptop."""
    return ChexConfig(
        d_model=128, n_head=4,
        vision=VisionConfig(image_size=224, patch_size=32, width=192, layers=4, heads=4, output_dim=128),
        text=TextConfig(context_length=77, vocab_size=clip_vocab_size, width=128, layers=2, heads=4, output_dim=128),
        detector=DetectorConfig(multiregions=3, n_decoder_layers=3),
        n_post_decoder_layers=2,
        generator=GeneratorConfig(vocab_size=gpt2_vocab_size, n_positions=128, n_embd=128, n_layer=2, n_head=4,
                                  max_length=48, bos_token_id=eos_token_id, eos_token_id=eos_token_id,
                                  pad_token_id=eos_token_id),
    )


def tiny(clip_vocab_size: int = 49408, gpt2_vocab_size: int = 2048, eos_token_id: int = 0) -> ChexConfig:
    """Width 32-64, two layers per tower: the structure of the released model, for tests."""
    return ChexConfig(
        d_model=32,
        n_head=4,
        vision=VisionConfig(image_size=224, patch_size=32, width=64, layers=2, heads=2, output_dim=32),
        text=TextConfig(context_length=77, vocab_size=clip_vocab_size, width=32, layers=2, heads=2, output_dim=32),
        detector=DetectorConfig(multiregions=3, n_decoder_layers=2),
        n_post_decoder_layers=1,
        generator=GeneratorConfig(vocab_size=gpt2_vocab_size, n_positions=256, n_embd=32, n_layer=2, n_head=2,
                                  bos_token_id=eos_token_id, eos_token_id=eos_token_id, pad_token_id=eos_token_id,
                                  max_length=32),
    )


def tiny_cnn(clip_vocab_size: int = 49408, gpt2_vocab_size: int = 2048, eos_token_id: int = 0) -> ChexConfig:
    """`tiny` with the small convolutional image tower (`chex demo`)."""
    cfg = tiny(clip_vocab_size, gpt2_vocab_size, eos_token_id)
    cfg.vision.kind = "cnn"
    return cfg


def demo_cnn(clip_vocab_size: int = 49408, gpt2_vocab_size: int = 2048, eos_token_id: int = 0) -> ChexConfig:
    """Width 64, two layers per component, a convolutional tower of 32-128 channels (`chex demo`)."""
    return ChexConfig(
        d_model=64,
        n_head=4,
        vision=VisionConfig(image_size=224, patch_size=32, width=128, layers=2, heads=2, output_dim=64, kind="cnn"),
        text=TextConfig(context_length=77, vocab_size=clip_vocab_size, width=64, layers=2, heads=2, output_dim=64),
        detector=DetectorConfig(multiregions=3, n_decoder_layers=2),
        n_post_decoder_layers=1,
        generator=GeneratorConfig(vocab_size=gpt2_vocab_size, n_positions=256, n_embd=64, n_layer=2, n_head=2,
                                  bos_token_id=eos_token_id, eos_token_id=eos_token_id, pad_token_id=eos_token_id,
                                  max_length=32),
    )


@dataclass(frozen=True)
class Preset:
    """A named size: `build(clip_vocab_size, gpt2_vocab_size, eos_token_id)`, and the sizes of the
    tokenizers learnt from the training text when a model of it starts from random weights."""

    build: Callable[[int, int, int], ChexConfig]
    clip_merges: int
    gpt2_vocab: int


PRESETS: dict[str, Preset] = {
    "paper": Preset(paper, clip_merges=4000, gpt2_vocab=8000),
    "small": Preset(small, clip_merges=800, gpt2_vocab=1000),
    "tiny": Preset(tiny, clip_merges=800, gpt2_vocab=1000),
    "tiny-cnn": Preset(tiny_cnn, clip_merges=800, gpt2_vocab=1000),
    "demo-cnn": Preset(demo_cnn, clip_merges=800, gpt2_vocab=1000),
}
FILE_PRESET = Preset(paper, clip_merges=4000, gpt2_vocab=8000)  # the tokenizer sizes of a YAML file's model


def preset(name: str) -> Preset:
    """The preset `name`, or the tokenizer sizes of a model given as a YAML file."""
    return PRESETS.get(name, FILE_PRESET)


def model_config(name: str, clip_vocab_size: int, gpt2_vocab_size: int, eos_token_id: int) -> ChexConfig:
    """The configuration of a preset name or of a YAML file of `ChexConfig` fields."""
    if name in PRESETS:
        return PRESETS[name].build(clip_vocab_size, gpt2_vocab_size, eos_token_id)
    path = Path(name)
    if not path.is_file():
        raise ChexError(f"--model-config {name!r}: use {', '.join(PRESETS)} or a YAML file of model sizes")
    try:
        cfg = ChexConfig.from_dict(yaml.safe_load(path.read_text()) or {})
    except (yaml.YAMLError, TypeError, ValueError) as err:
        raise ChexError(f"--model-config {path}: invalid model configuration ({str(err).splitlines()[0]})") from None
    return _with_vocabularies(cfg, clip_vocab_size, gpt2_vocab_size, eos_token_id)


def _with_vocabularies(cfg: ChexConfig, clip_vocab_size: int, gpt2_vocab_size: int, eos_token_id: int) -> ChexConfig:
    cfg.text.vocab_size = clip_vocab_size
    if cfg.generator is not None:
        g = cfg.generator
        g.vocab_size = gpt2_vocab_size
        g.bos_token_id = g.eos_token_id = g.pad_token_id = eos_token_id
    return cfg


__all__ = ["PRESETS", "Preset", "model_config", "paper", "preset", "small", "tiny", "tiny_cnn"]
