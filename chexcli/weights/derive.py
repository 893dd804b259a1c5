"""Derive a ChexConfig from an official state dict's tensor shapes and its stored config_dict (docs/architecture.md#official-checkpoint)."""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from chexcli.errors import ChexError
from chexcli.model.config import ChexConfig, DetectorConfig, GeneratorConfig, TextConfig, VisionConfig

# key prefixes of the official state dict
IMG = "img_encoder.backbone."
TXT = "txt_encoder."
LM = "txt_decoder.language_model."
LM_HEAD = LM + "lm_head.weight"
WTE = LM + "transformer.wte.weight"
PREFIX = "txt_decoder.prefix_proj.layers."


def shape_of(state: dict[str, torch.Tensor], key: str, what: str) -> tuple[int, ...]:
    if key not in state:
        raise ChexError(f"{what} lacks {key}; it is not a complete ChEX/CLIP checkpoint")
    return tuple(state[key].shape)


def count_layers(state: dict[str, torch.Tensor], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = {int(m.group(1)) for k in state if (m := pat.match(k))}
    if idx and idx != set(range(len(idx))):
        raise ChexError(f"layers under {prefix}* are not numbered 0..{len(idx) - 1}: {sorted(idx)}")
    return len(idx)


def derive_vision(state: dict[str, torch.Tensor], prefix: str = IMG, what: str = "checkpoint") -> VisionConfig:
    """CLIP vision sizes as CLIP's build_model derives them (heads = width // 64)."""
    width, channels, patch, patch2 = shape_of(state, prefix + "conv1.weight", what)
    rows = shape_of(state, prefix + "positional_embedding", what)[0]
    grid = math.isqrt(max(rows - 1, 0))
    if grid * grid != rows - 1 or patch != patch2:
        raise ChexError(f"{what}: {prefix}positional_embedding has {rows} rows, not a square grid + 1")
    return VisionConfig(image_size=grid * patch, patch_size=patch, width=width,
                        layers=count_layers(state, prefix + "transformer.resblocks."), heads=max(1, width // 64),
                        output_dim=shape_of(state, prefix + "proj", what)[1])


def derive_text(state: dict[str, torch.Tensor], prefix: str = TXT, what: str = "checkpoint") -> TextConfig:
    """CLIP text sizes (heads = width // 64, at least 1)."""
    vocab, width = shape_of(state, prefix + "token_embedding.weight", what)
    return TextConfig(context_length=shape_of(state, prefix + "positional_embedding", what)[0], vocab_size=vocab,
                      width=width, layers=count_layers(state, prefix + "transformer.resblocks."),
                      heads=max(1, width // 64), output_dim=shape_of(state, prefix + "text_projection", what)[1])


# values of the reference configuration that chexcli's model implements (others would compute differently)
_SUPPORTED: list[tuple[tuple[str, ...], Any]] = [
    (("act",), "gelu"),
    (("layer_scale",), True),
    (("img_encoder", "add_cls_features"), False),
    (("img_encoder", "use_pretrained_projection"), True),
    (("img_encoder", "additional_projection_layers"), 0),
    (("img_encoder", "normalize_projected"), False),
    (("txt_encoder", "n_projection_layers"), 0),
    (("detector", "multiregion_sa"), True),
    (("detector", "decoder_sa"), False),
    (("detector", "decoder_ff"), True),
    (("detector", "shortcut_tokens"), False),
    (("detector", "use_pos_embeddings"), True),
    (("detector", "shortcut_pos_embeddings"), False),
    (("detector", "predictor_hidden_layers"), 1),
    (("detector", "patch_project_layers"), 1),
    (("detector", "out_project_layers"), 2),
    (("txt_decoder", "n_projection_layers"), 2),
    (("txt_decoder", "shared_projection"), False),
]
_SUPPORTED_IF_POST = [
    (("post_decoder_patches",), True),
    (("post_decoder_cls",), True),
    (("post_decoder_gate",), True),
]


def config_get(config: dict[str, Any], path: tuple[str, ...], default: Any = None) -> Any:
    node: Any = config
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _check_supported(config: dict[str, Any], has_post: bool, has_generator: bool, what: str) -> None:
    checks = _SUPPORTED + (_SUPPORTED_IF_POST if has_post else [])
    for path, want in checks:
        if path[0] == "txt_decoder" and not has_generator:
            continue
        value = config_get(config, path, want)
        if value != want:
            raise ChexError(f"{what}: config_dict sets {'.'.join(path)} = {value!r}; chexcli implements only "
                            f"{want!r} (the released ChEX configuration)")


def _position_offset(value: Any, prefix_len: int, what: str) -> int:
    if value is None or value == 0:
        return 0
    if value == "one" or value == 1:
        return 1
    if value == "prefix":
        return prefix_len
    raise ChexError(f"{what}: unknown txt_decoder.position_offset {value!r} (expected null, 'one' or 'prefix')")


def derive_config(state: dict[str, torch.Tensor], config_dict: dict[str, Any], lm_config: dict[str, Any] | None = None,
                  eos_token_id: int | None = None, what: str = "checkpoint") -> ChexConfig:
    """The ChexConfig of an official checkpoint: sizes from shapes, switches from `config_dict`.

    `lm_config` is the GPT-2 config.json (for n_head and layer-norm epsilon; default
    n_embd // 64); `eos_token_id` the tokenizer's <|endoftext|> id (default: the LM
    config's, else the last vocabulary id as in GPT-2).
    """
    vision = derive_vision(state, IMG, what)
    text = derive_text(state, TXT, what)
    if "d_model" not in config_dict or "n_head" not in config_dict:
        raise ChexError(f"{what}: config_dict lacks d_model / n_head; is this a ChEX checkpoint?")
    d, n_head = int(config_dict["d_model"]), int(config_dict["n_head"])
    r, d_tok = shape_of(state, "detector.multiregion_tokens", what)
    for name, value in (("detector.multiregion_tokens width", d_tok), ("CLIP vision output", vision.output_dim),
                        ("CLIP text output", text.output_dim)):
        if value != d:
            raise ChexError(f"{what}: {name} is {value}, but config_dict.d_model is {d}")
    if d % n_head:
        raise ChexError(f"{what}: d_model {d} is not divisible by n_head {n_head}")
    n_det = count_layers(state, "detector.decoder.decoder_layers.")
    n_post = count_layers(state, "post_decoder.post_decoder_layers.")
    cfg_post = config_dict.get("n_post_decoder_layers")
    if cfg_post is not None and int(cfg_post) != n_post:
        raise ChexError(f"{what}: config_dict.n_post_decoder_layers is {cfg_post} but the state dict has {n_post} "
                        "post-decoder layers")
    ff_key = ("detector.decoder.decoder_layers.0.ff_block.layers.0.weight" if n_det
              else "post_decoder.post_decoder_layers.0.ff_block.layers.0.weight")
    ff = state[ff_key].shape[0] if ff_key in state else 4 * d
    hidden = shape_of(state, "detector.bbox_predictor.1.layers.0.weight", what)[0]
    out_hidden = shape_of(state, "detector.out_projector.1.layers.0.weight", what)[0]
    det_cfg = config_dict.get("detector") or {}
    detector = DetectorConfig(multiregions=r, n_decoder_layers=n_det,
                              soft_roi_beta=float(det_cfg.get("soft_roi_beta", 2.0)),
                              predictor_hidden_dim=None if hidden == d else hidden,
                              out_project_hidden_dim=None if out_hidden == 4 * d else out_hidden)
    has_generator = any(k.startswith("txt_decoder.") for k in state)
    _check_supported(config_dict, n_post > 0, has_generator, what)
    generator = None
    if has_generator:
        generator = derive_generator(state, config_dict, d, lm_config, eos_token_id, what)
    cfg = ChexConfig(
        d_model=d, n_head=n_head, ff_dim=None if ff == 4 * d else ff, vision=vision, text=text, detector=detector,
        n_post_decoder_layers=n_post,
        post_decoder_multibox_drop=float(config_dict.get("post_decoder_multibox_drop") or 0.0),
        generator=generator,
    )
    if config_dict.get("max_generated_sentences") is not None:
        cfg.max_generated_sentences = int(config_dict["max_generated_sentences"])
    return cfg


def derive_generator(state: dict[str, torch.Tensor], config_dict: dict[str, Any], d_model: int,
                     lm_config: dict[str, Any] | None, eos_token_id: int | None, what: str) -> GeneratorConfig:
    """GPT-2 + prefix sizes from shapes; prefix/offset/length switches from config_dict.txt_decoder."""
    lm_config = lm_config or {}
    vocab, n_embd = shape_of(state, WTE, what)
    n_positions = shape_of(state, LM + "transformer.wpe.weight", what)[0]
    n_layer = count_layers(state, LM + "transformer.h.")
    n_head = int(lm_config.get("n_head") or max(1, n_embd // 64))
    if n_embd % n_head:
        raise ChexError(f"{what}: GPT-2 width {n_embd} is not divisible by {n_head} heads (from the LM config)")
    for key, want in (("n_embd", n_embd), ("n_layer", n_layer), ("vocab_size", vocab)):
        if key in lm_config and lm_config[key] is not None and int(lm_config[key]) != want:
            raise ChexError(f"{what}: the GPT-2 config.json says {key} = {lm_config[key]}, the checkpoint has {want}; "
                            "pass the tokenizer/config folder of the language model this checkpoint was trained with")
    td = config_dict.get("txt_decoder") or {}
    factor = int(td.get("prefix_length_factor") or 5)
    prefix_hidden = shape_of(state, PREFIX + "0.weight", what)[0]
    prefix_out = shape_of(state, PREFIX + "3.weight", what)[0]
    if prefix_out != factor * 2 * n_layer * n_embd:
        raise ChexError(f"{what}: prefix projection has {prefix_out} outputs, expected prefix_length_factor {factor} x 2 x "
                        f"{n_layer} layers x {n_embd} = {factor * 2 * n_layer * n_embd}")
    gen_kwargs = td.get("generation_kwargs") or {}
    max_length = int(gen_kwargs.get("max_length") or td.get("max_length") or 128)
    if eos_token_id is None:
        eos_token_id = lm_config.get("eos_token_id")
        eos_token_id = int(eos_token_id) if isinstance(eos_token_id, int) else vocab - 1
    return GeneratorConfig(
        vocab_size=vocab, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        layer_norm_epsilon=float(lm_config.get("layer_norm_epsilon") or 1e-5),
        bos_token_id=eos_token_id, eos_token_id=eos_token_id, pad_token_id=eos_token_id,
        prefix_length_factor=factor, prefix_hidden_dim=None if prefix_hidden == 4 * d_model else prefix_hidden,
        position_offset=_position_offset(td.get("position_offset"), factor, what), max_length=max_length,
    )
