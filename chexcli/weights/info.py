"""Summarise a bundle (sizes, parameter counts per component, provenance) without loading its tensors."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from chexcli.errors import ChexError


_COMPONENTS = (
    ("img_encoder", "img_encoder."),
    ("txt_encoder", "txt_encoder."),
    ("detector", "detector."),
    ("post_decoder", "post_decoder."),
    ("txt_decoder_lm", "txt_decoder.language_model."),
    ("prefix_projection", "txt_decoder.prefix_proj."),
)


def _safetensors_shapes(path: Path) -> dict[str, tuple[list[int], str]]:
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                raise ValueError("file too short")
            (size,) = struct.unpack("<Q", head)
            if size > 100 * 1024**2:
                raise ValueError("header too large")
            header = json.loads(fh.read(size))
    except (OSError, ValueError, json.JSONDecodeError) as err:
        raise ChexError(f"{path} is unreadable or truncated ({err}); re-create the bundle") from None
    return {k: (v["shape"], v["dtype"]) for k, v in header.items() if k != "__metadata__"}


def bundle_info(folder: str | Path) -> dict[str, Any]:
    """Format, configuration summary, parameter counts per component and provenance of a bundle."""
    from chexcli.model.bundle import CLIP_DIR, GPT2_DIR, read_bundle

    folder = Path(folder)
    config, cfg, weights = read_bundle(folder)
    shapes = _safetensors_shapes(weights)
    counts = {name: 0 for name, _ in _COMPONENTS}
    other = 0
    dtypes: dict[str, int] = {}
    for key, (shape, dtype) in shapes.items():
        n = math.prod(shape)
        dtypes[dtype] = dtypes.get(dtype, 0) + n
        for name, prefix in _COMPONENTS:
            if key.startswith(prefix):
                counts[name] += n
                break
        else:
            other += n
    if other:
        counts["other"] = other
    counts["total_unique"] = sum(counts.values())
    gen = cfg.generator
    summary = {
        "d_model": cfg.d_model, "n_head": cfg.n_head,
        "vision": {"image_size": cfg.vision.image_size, "patch_size": cfg.vision.patch_size, "width": cfg.vision.width,
                   "layers": cfg.vision.layers, "heads": cfg.vision.heads, "output_dim": cfg.vision.output_dim},
        "text": {"width": cfg.text.width, "layers": cfg.text.layers, "heads": cfg.text.heads,
                 "context_length": cfg.text.context_length, "vocab_size": cfg.text.vocab_size},
        "detector": {"layers": cfg.detector.n_decoder_layers, "multiregions": cfg.detector.multiregions},
        "post_decoder": {"layers": cfg.n_post_decoder_layers, "multibox_drop": cfg.post_decoder_multibox_drop},
        "generator": None if gen is None else {
            "n_embd": gen.n_embd, "n_layer": gen.n_layer, "n_head": gen.n_head, "vocab_size": gen.vocab_size,
            "n_positions": gen.n_positions, "prefix_length_factor": gen.prefix_length_factor,
            "position_offset": gen.position_offset, "max_length": gen.max_length},
    }
    prov = dict(config.get("provenance") or {})
    prov.pop("config_dict", None)  # large; still in config.json
    return {
        "bundle": str(folder),
        "format": config.get("format"),
        "format_version": config.get("format_version"),
        "config": summary,
        "parameters": counts,
        "dtypes": dtypes,
        "size_bytes": weights.stat().st_size,
        "tokenizers": {"clip": (folder / CLIP_DIR).is_dir(), "gpt2": (folder / GPT2_DIR).is_dir()},
        "provenance": prov,
    }
