"""Turn CheXzero's CLIP weights (OpenAI state-dict layout) into an initial bundle.

The image and prompt encoders are filled from the file; the detector, post
decoder and generator are freshly initialised (seeded).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from chexcli.errors import ChexError
from chexcli.hashing import sha256_file
from chexcli.model.config import ChexConfig
from chexcli.weights.archive import safe_torch_load
from chexcli.weights.common import Log, check_out, check_sha, normalise_sha, now_utc, quiet
from chexcli.weights.derive import IMG, TXT, derive_text, derive_vision, shape_of
from chexcli.weights.tokenizers import CLIP_VOCAB_NAME, eos_id, find_clip_vocab, load_clip_vocab, load_lm_tokenizer


_CLIP_TEXT_KEYS = ("token_embedding.", "positional_embedding", "ln_final.", "text_projection", "transformer.")
_CLIP_EXTRA_KEYS = {"logit_scale", "input_resolution", "context_length", "vocab_size"}


def _clip_state(obj: Any, what: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ChexError(f"{what} is not a CLIP state dict (expected tensors named visual.*, transformer.*, "
                        "token_embedding.weight, ...)")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if not any(k.startswith("visual.") for k in state):
        raise ChexError(f"{what} has no visual.* weights; is it a CheXzero / OpenAI CLIP checkpoint?")
    return state


def chexzero_config(state: dict[str, torch.Tensor], base: ChexConfig | None = None,
                    lm_config: dict[str, Any] | None = None, eos_token_id: int | None = None,
                    what: str = "CheXzero file") -> ChexConfig:
    """A ChexConfig whose CLIP towers match a CheXzero state dict (rest: `base`, default stage-3 sizes)."""
    vision = derive_vision(state, "visual.", what)
    text = derive_text(state, "", what)
    cfg = dataclasses.replace(base or ChexConfig(), vision=vision, text=text)
    if vision.output_dim != text.output_dim:
        raise ChexError(f"{what}: image embedding {vision.output_dim} and text embedding {text.output_dim} differ")
    if base is None:
        cfg.d_model = vision.output_dim
    elif cfg.d_model != vision.output_dim:
        raise ChexError(f"{what}: CLIP embedding width {vision.output_dim} differs from the configuration's "
                        f"d_model {cfg.d_model}")
    if cfg.generator is not None:
        gen = dataclasses.replace(cfg.generator)
        lm_config = lm_config or {}
        for key in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "layer_norm_epsilon"):
            if lm_config.get(key) is not None:
                setattr(gen, key, type(getattr(gen, key))(lm_config[key]))
        if eos_token_id is not None:
            gen.bos_token_id = gen.eos_token_id = gen.pad_token_id = eos_token_id
        cfg.generator = gen
    return cfg


def import_chexzero(path: str | Path, out: str | Path, clip_vocab: str | Path | None = None,
                    lm_tokenizer: str | Path | None = None, config: ChexConfig | None = None, *,
                    seed: int = 0, expect_sha256: str | None = None, log: Log | None = None) -> Path:
    """CheXzero CLIP weights (OpenAI layout) -> initial bundle: CLIP towers filled, the rest freshly initialised.

    `config` gives the non-CLIP sizes (default: the released stage-3 model with
    GPT-2 medium; pass one with `generator=None, n_post_decoder_layers=0` for
    stage 1). The GPT-2 tokenizer is optional: without it the bundle has no
    sentence tokenizer (it loads, but cannot describe regions).
    """
    from chexcli.model.bundle import default_prompts, save_bundle
    from chexcli.model.chex import ChEX

    log = log or quiet
    src = Path(path).expanduser()
    out = Path(out).expanduser()
    check_out(out)
    if not src.is_file():
        raise ChexError(f"{src} does not exist; pass the CheXzero weights file best_64_5e-05_original_22000_0.864.pt")
    if expect_sha256 is not None:
        normalise_sha(expect_sha256)
    log("computing SHA-256 ...")
    digest = sha256_file(src)
    log(f"SHA-256 {digest}")
    check_sha(digest, expect_sha256, src)
    state = _clip_state(safe_torch_load(src), str(src))

    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("visual."):
            mapped[IMG + key[len("visual."):]] = value
        elif key.startswith(_CLIP_TEXT_KEYS):
            mapped[TXT + key] = value
        elif key not in _CLIP_EXTRA_KEYS:
            raise ChexError(f"{src}: unexpected key {key} for an OpenAI-layout CLIP state dict")

    vocab_path = Path(clip_vocab).expanduser() if clip_vocab is not None else find_clip_vocab(src)
    if vocab_path is None:
        raise ChexError(f"the CLIP vocabulary is needed: pass --clip-vocab {CLIP_VOCAB_NAME} (shipped with OpenAI CLIP "
                        "and CheXzero) or a Hugging Face CLIP tokenizer folder")
    text_ctx = shape_of(state, "positional_embedding", str(src))[0]
    clip_tok = load_clip_vocab(vocab_path, context_length=text_ctx)
    lm = load_lm_tokenizer(lm_tokenizer) if lm_tokenizer is not None else None
    cfg = chexzero_config(state, config, lm.config if lm else None, eos_id(lm.tokenizer) if lm else None, str(src))
    if clip_tok.vocab_size != cfg.text.vocab_size:
        raise ChexError(f"the CLIP vocabulary {vocab_path} has {clip_tok.vocab_size} tokens but the text tower has "
                        f"{cfg.text.vocab_size}; pass the matching {CLIP_VOCAB_NAME}")
    if lm is not None and cfg.generator is not None and len(lm.tokenizer) > cfg.generator.vocab_size:
        raise ChexError(f"the GPT-2 tokenizer ({lm.origin}) has {len(lm.tokenizer)} tokens, more than the generator's "
                        f"vocabulary of {cfg.generator.vocab_size}")

    log("initialising the model ...")
    torch.manual_seed(seed)
    model = ChEX(cfg, clip_tok, prompts=default_prompts())
    expected = {k: v for k, v in model.state_dict().items() if k.startswith((IMG, TXT))}
    missing = [k for k in expected if k not in mapped]
    unexpected = [k for k in mapped if k not in expected]
    if missing or unexpected:
        first = (f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}")
        raise ChexError(f"{src} does not match a CLIP model: {first}")
    for key, tensor in expected.items():
        if tuple(mapped[key].shape) != tuple(tensor.shape):
            raise ChexError(f"{src}: {key} has shape {tuple(mapped[key].shape)}, expected {tuple(tensor.shape)}")
    with torch.no_grad():
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in mapped.items()}, strict=False)
    model.gpt2_tokenizer = lm.tokenizer if lm else None
    provenance = {
        "kind": "chexzero-init",
        "source": str(src.resolve()),
        "sha256": digest,
        "sha256_of": "source file",
        "imported": now_utc(),
        "initialised": {"from_source": ["img_encoder", "txt_encoder"],
                        "fresh": [n for n, present in (("detector", True), ("post_decoder", model.post_decoder is not None),
                                                       ("txt_decoder", model.txt_decoder is not None)) if present],
                        "seed": seed},
        "tokenizers": {"clip": str(vocab_path), "gpt2": lm.origin if lm else None},
    }
    log(f"writing bundle {out} ...")
    save_bundle(model, out, provenance=provenance)
    return out
