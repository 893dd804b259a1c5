"""Which parameters a stage trains (docs/training.md#what-each-stage-trains).

`apply_freezing` sets `requires_grad` from the recipe's `model` section: the components in
`model.trainable`, and of the image tower only its last `image_encoder_trainable_blocks`
blocks (plus `ln_pre` with `train_ln_pre`). A text tower without trained parameters caches
its sentence embeddings.
"""

from __future__ import annotations

from typing import Any

from chexcli.errors import ChexError
from chexcli.model.chex import ChEX


def apply_freezing(model: ChEX, recipe: dict[str, Any]) -> list[str]:
    """requires_grad as the recipe says; returns the names of the trained parameters."""
    spec = recipe["model"]
    model.requires_grad_(False)
    for component in spec["trainable"]:
        if component == "img_encoder":
            backbone = model.img_encoder.backbone
            blocks = backbone.stages if model.cfg.vision.kind == "cnn" else backbone.transformer.resblocks
            k = int(spec.get("image_encoder_trainable_blocks", len(blocks)))
            for block in list(blocks)[max(0, len(blocks) - k):]:
                block.requires_grad_(True)
            if k >= len(blocks):
                backbone.requires_grad_(True)
            elif spec.get("train_ln_pre") and model.cfg.vision.kind == "vit":
                backbone.ln_pre.requires_grad_(True)
        elif component in ("detector", "post_decoder", "txt_decoder", "txt_encoder"):
            module = getattr(model, component)
            if module is None:
                raise ChexError(f"recipe model.trainable names {component}, which this model does not have")
            module.requires_grad_(True)
        else:
            raise ChexError(f"recipe model.trainable: unknown component {component!r}; use img_encoder, "
                            "detector, post_decoder, txt_decoder or txt_encoder")
    if spec.get("train_text_encoder"):
        model.txt_encoder.requires_grad_(True)
    model.txt_encoder.cache_enabled = not any(p.requires_grad for p in model.txt_encoder.parameters())
    return [n for n, p in model.named_parameters() if p.requires_grad]
