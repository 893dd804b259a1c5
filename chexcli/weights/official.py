"""Import the released ChEX checkpoint into a model bundle.

`import_official` takes the released zip as downloaded, the extracted
`chex_stage3` folder (`run_*/checkpoints/checkpoint_*.pth`, newest step) or a
single `.pth` (`chexcli.weights.sources`), loads it with
`torch.load(weights_only=True)` so pickled code is never run
(`chexcli.weights.archive`), derives every size from the state-dict shapes and
the stored `config_dict` (`chexcli.weights.derive`), checks every key and shape
and writes a bundle (`chexcli.model.bundle`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from chexcli.errors import ChexError
from chexcli.weights.archive import MAX_EXTRACT_BYTES, safe_torch_load
from chexcli.weights.common import Log, check_out, json_safe, now_utc, quiet
from chexcli.weights.derive import LM_HEAD, TXT, WTE, config_get, derive_config, shape_of
from chexcli.weights.sources import resolve_source
from chexcli.weights.tokenizers import (CLIP_VOCAB_NAME, OFFICIAL_LM, eos_id, find_clip_vocab, find_lm_tokenizer,
                                        load_clip_vocab, load_lm_tokenizer, looks_like_path, missing_lm_message)

TRAINING_KEYS = ("optimizer", "lr_scheduler", "amp", "step", "results", "best_results", "experiment_config")
PROMPT_DICT_KEYS = ("anatomy_prompts", "pathology_pos_prompts", "pathology_neg_prompts", "no_finding_prompts")
# GPT-2 attention buffers that some transformers versions store; not weights
_LM_BUFFER_RE = re.compile(r"^txt_decoder\.language_model\.transformer\.h\.\d+\.attn\.(?:bias|masked_bias)$")


def _yaml_config(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def split_checkpoint(obj: Any, what: str, model_config: Path | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, config_dict) of a loaded checkpoint; training entries are ignored."""
    if not isinstance(obj, dict):
        raise ChexError(f"{what} holds a {type(obj).__name__}, not a checkpoint dict with 'state_dict' and 'config_dict'")
    if "state_dict" in obj:
        state, config = obj["state_dict"], obj.get("config_dict")
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, config = obj, None
    else:
        raise ChexError(f"{what} has no 'state_dict' entry (top-level keys: {', '.join(map(str, list(obj)[:8]))})")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ChexError(f"{what}: 'state_dict' is not a mapping of names to tensors")
    if config is None:
        config = _yaml_config(model_config)
        if config is None:
            raise ChexError(f"{what} has no 'config_dict' and no model_config.yaml was found next to it; "
                            "import the checkpoint from its run folder or the release zip")
    if not isinstance(config, dict):
        raise ChexError(f"{what}: 'config_dict' is not a mapping")
    return dict(state), config


def import_official(source: str | Path, out: str | Path, clip_vocab: str | Path | None = None,
                    lm_tokenizer: str | Path | None = None, expect_sha256: str | None = None, *,
                    log: Log | None = None, max_extract_bytes: int = MAX_EXTRACT_BYTES) -> Path:
    """Import an official ChEX checkpoint (zip / chex_stage3 folder / .pth) into a bundle at `out`.

    Returns the bundle folder; its config.json records the provenance (source,
    SHA-256 of SOURCE -- of the chosen .pth for a folder --, import date and the
    original config_dict).
    """
    from chexcli.model.bundle import default_prompts, load_weights, save_bundle
    from chexcli.model.chex import ChEX

    log = log or quiet
    out = Path(out).expanduser()
    check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    src = resolve_source(source, expect_sha256, tmp_parent=out.parent, max_bytes=max_extract_bytes, log=log)
    try:
        log(f"SHA-256 {src.sha256}")
        what = f"{src.source} ({src.member})" if src.kind == "zip" else str(src.checkpoint)
        log("loading the checkpoint (weights only) ...")
        state, config_dict = split_checkpoint(safe_torch_load(src.checkpoint, what), what, src.model_config)
        for key in [k for k in state if _LM_BUFFER_RE.match(k)]:
            del state[key]

        # tokenizers
        text_ctx = shape_of(state, TXT + "positional_embedding", what)[0]
        vocab_path = Path(clip_vocab).expanduser() if clip_vocab is not None else find_clip_vocab(src.source)
        if vocab_path is None:
            raise ChexError(f"the CLIP vocabulary is needed: pass --clip-vocab {CLIP_VOCAB_NAME} (shipped with OpenAI "
                            "CLIP and CheXzero) or a Hugging Face CLIP tokenizer folder")
        clip_tok = load_clip_vocab(vocab_path, context_length=text_ctx)
        clip_rows = shape_of(state, TXT + "token_embedding.weight", what)[0]
        if clip_tok.vocab_size != clip_rows:
            raise ChexError(f"the CLIP vocabulary {vocab_path} has {clip_tok.vocab_size} tokens but the checkpoint's text "
                            f"tower has {clip_rows}; pass the matching {CLIP_VOCAB_NAME}")
        has_generator = any(k.startswith("txt_decoder.") for k in state)
        lm = None
        if has_generator:
            url = config_get(config_dict, ("txt_decoder", "language_model_url"))
            if lm_tokenizer is not None:
                lm = load_lm_tokenizer(lm_tokenizer)
            else:
                local = find_lm_tokenizer(url, src.source)
                if local is not None:
                    lm = load_lm_tokenizer(local)
                elif url and not looks_like_path(str(url)):
                    log(f"GPT-2 tokenizer: trying the hub ({url}) ...")
                    lm = load_lm_tokenizer(str(url))
                else:
                    raise ChexError("the GPT-2 tokenizer is needed: " + missing_lm_message(str(url or OFFICIAL_LM))
                                    .split("; ", 1)[1])
        cfg = derive_config(state, config_dict, lm.config if lm else None, eos_id(lm.tokenizer) if lm else None, what)
        if lm is not None and len(lm.tokenizer) > cfg.generator.vocab_size:
            raise ChexError(f"the GPT-2 tokenizer ({lm.origin}) has {len(lm.tokenizer)} tokens, more than the checkpoint's "
                            f"{cfg.generator.vocab_size}; pass the tokenizer of {OFFICIAL_LM}")

        # tied head
        if LM_HEAD in state:
            head = state.pop(LM_HEAD)
            wte = state.get(WTE)
            same = wte is not None and head.shape == wte.shape and (
                (head.data_ptr() == wte.data_ptr() and head.stride() == wte.stride()) or torch.equal(head, wte))
            if not same:
                raise ChexError(f"{what}: {LM_HEAD} differs from {WTE}; chexcli's GPT-2 ties them as the official "
                                "model does, so this checkpoint cannot be imported")

        prompts = default_prompts()
        model_dicts = {k: json_safe(config_dict[k]) for k in PROMPT_DICT_KEYS if config_dict.get(k)}
        if model_dicts:
            prompts["model_prompt_dicts"] = model_dicts
        with torch.device("meta"):
            model = ChEX(cfg, clip_tok, prompts=prompts)
        load_weights(model, state, source=what)
        model.gpt2_tokenizer = lm.tokenizer if lm else None
        provenance = {
            "kind": "official-chex",
            "source": str(src.source.resolve()),
            "source_kind": src.kind,
            "checkpoint": src.member or src.source.name,
            "sha256": src.sha256,
            "sha256_of": "checkpoint file" if src.kind == "folder" else "source file",
            "imported": now_utc(),
            "tokenizers": {"clip": str(vocab_path.resolve()) if vocab_path.exists() else str(vocab_path),
                           "gpt2": lm.origin if lm else None},
            "config_dict": json_safe(config_dict),
        }
        log(f"writing bundle {out} ...")
        save_bundle(model, out, provenance=provenance)
        del model, state
    finally:
        src.cleanup()
    log(f"imported {src.source} -> {out}")
    return out
