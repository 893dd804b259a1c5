"""Import a Hugging Face GPT-2 (such as `healx/gpt-2-pubmed-medium`) as a sentence-generator bundle.

The reference's txtgen run starts from a pretrained GPT-2 with a freshly initialised prefix MLP.
`import_gpt2` turns the GPT-2 into a bundle whose generator holds exactly those weights, so that
`chex train --stage txtgen --init-generator BUNDLE` starts where the paper's chain starts.

SOURCE is a folder with `config.json`, `model.safetensors` (or `pytorch_model.bin`, read with the
weights-only loader, so no pickled code runs) and the tokenizer files (`vocab.json` + `merges.txt`
or `tokenizer.json`), or a hub name, downloaded when the machine is online. The rest of the model
(image and text towers, detector, post decoder) comes from `--like BUNDLE` when given, else it is
freshly initialised at the paper's sizes; txtgen takes only the generator from this bundle.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from chexcli.errors import ChexError
from chexcli.hashing import sha256_file
from chexcli.model.config import ChexConfig, GeneratorConfig
from chexcli.weights.archive import safe_torch_load
from chexcli.weights.common import Log, check_out, check_sha, normalise_sha, now_utc, quiet
from chexcli.weights.tokenizers import eos_id, load_lm_tokenizer, looks_like_path

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HUB_FILES = ["config.json", "model.safetensors", "pytorch_model.bin", "vocab.json", "merges.txt", "tokenizer.json",
              "tokenizer_config.json", "special_tokens_map.json"]
# Hugging Face GPT-2 buffers that are not weights (causal masks of older transformers versions)
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def _fetch(name: str, log: Log) -> Path:
    """Download a hub repo's GPT-2 files; one line when offline or unknown."""
    log(f"downloading {name} from the Hugging Face hub ...")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=_HUB_FILES))
    except Exception:  # offline, unknown repo, gated: all the same to the user
        raise ChexError(f"cannot download {name!r} (offline, or no such repo on the hub); download config.json, "
                        "model.safetensors (or pytorch_model.bin), vocab.json and merges.txt into a folder and pass "
                        "that folder") from None


def resolve_source(source: str | Path, log: Log) -> Path:
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ChexError(f"{path} is a file; pass the folder that holds config.json, model.safetensors and the "
                            "tokenizer files (what save_pretrained writes)")
        return path
    name = str(source)
    if isinstance(source, Path) or looks_like_path(name):
        raise ChexError(f"{path} does not exist; pass a GPT-2 folder (config.json, model.safetensors, tokenizer "
                        "files) or a hub name such as healx/gpt-2-pubmed-medium")
    return _fetch(name, log)


def read_gpt2_config(folder: Path) -> dict[str, Any]:
    """config.json of a GPT-2, checked for what chexcli's GPT-2 module computes."""
    path = folder / "config.json"
    if not path.is_file():
        raise ChexError(f"{folder} has no config.json; pass the folder that save_pretrained wrote")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ChexError(f"{path} is not valid JSON ({err}); download it again") from None
    if not isinstance(config, dict) or config.get("model_type") != "gpt2":
        found = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise ChexError(f"{folder} holds a {found!r} model, not a GPT-2 (model_type gpt2); the sentence generator "
                        "is a GPT-2")
    n_embd = config.get("n_embd", 768)
    checks = {
        "activation_function": (config.get("activation_function", "gelu_new"), "gelu_new"),
        "n_inner": (config.get("n_inner") or 4 * n_embd, 4 * n_embd),
        "scale_attn_weights": (config.get("scale_attn_weights", True), True),
        "scale_attn_by_inverse_layer_idx": (config.get("scale_attn_by_inverse_layer_idx", False), False),
        "reorder_and_upcast_attn": (config.get("reorder_and_upcast_attn", False), False),
        "add_cross_attention": (config.get("add_cross_attention", False), False),
    }
    for key, (value, supported) in checks.items():
        if value != supported:
            raise ChexError(f"{path}: {key} = {value!r} is a GPT-2 variant chexcli does not compute (it supports "
                            f"{supported!r})")
    return config


def read_gpt2_weights(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The GPT-2 state dict in `GPT2LMHeadModel` names (`transformer.*`), and the file it came from."""
    found = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
    if found is None:
        if any(folder.glob("*.index.json")):
            raise ChexError(f"{folder} holds a sharded checkpoint; save it as one model.safetensors first")
        raise ChexError(f"{folder} has no model.safetensors or pytorch_model.bin; download the weights into it")
    if found.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(found))
        except (SafetensorError, OSError) as err:
            raise ChexError(f"{found} is not a readable safetensors file ({err}); download it again") from None
    else:
        state = safe_torch_load(found)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ChexError(f"{found} is not a GPT-2 state dict (a mapping of names to tensors)")
    state = {k: v for k, v in state.items() if not k.endswith(_BUFFER_SUFFIXES)}
    if not any(k.startswith("transformer.") for k in state):  # saved from GPT2Model: no "transformer." prefix
        state = {("lm_head.weight" if k == "lm_head.weight" else f"transformer.{k}"): v for k, v in state.items()}
    head = state.pop("lm_head.weight", None)
    wte = state.get("transformer.wte.weight")
    if wte is None:
        raise ChexError(f"{found} has no transformer.wte.weight; it is not a GPT-2 checkpoint")
    if head is not None and not torch.equal(head, wte):
        raise ChexError(f"{found}: the output head is not tied to the token embedding; chexcli's generator ties them")
    return state, found


def generator_config(config: dict[str, Any], eos: int) -> GeneratorConfig:
    """The generator's sizes from a GPT-2 config.json; prefix and decoding settings are the reference's
    (5 prefix positions per region, position ids from 0, 128 tokens)."""
    return GeneratorConfig(vocab_size=int(config["vocab_size"]), n_positions=int(config.get("n_positions", 1024)),
                           n_embd=int(config.get("n_embd", 768)), n_layer=int(config.get("n_layer", 12)),
                           n_head=int(config.get("n_head", 12)),
                           layer_norm_epsilon=float(config.get("layer_norm_epsilon", 1e-5)),
                           bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)


def import_gpt2(source: str | Path, out: str | Path, like: str | Path | None = None, *, seed: int = 0,
                expect_sha256: str | None = None, log: Log | None = None) -> Path:
    """A Hugging Face GPT-2 -> bundle whose generator is that GPT-2 with a fresh (seeded) prefix MLP.

    `like`: a bundle whose other components and sizes the new bundle copies (e.g. the CheXzero bundle
    of the run); without it they are freshly initialised at the paper's sizes. Returns the folder.
    """
    from chexcli.model.bundle import default_prompts, load_bundle, save_bundle
    from chexcli.model.chex import ChEX

    log = log or quiet
    out = Path(out).expanduser()
    check_out(out)
    if expect_sha256 is not None:
        normalise_sha(expect_sha256)
    folder = resolve_source(source, log)
    config = read_gpt2_config(folder)
    state, weights_file = read_gpt2_weights(folder)
    log("computing SHA-256 ...")
    digest = sha256_file(weights_file)
    check_sha(digest, expect_sha256, weights_file)
    lm = load_lm_tokenizer(folder, hub_ok=False)
    eos = eos_id(lm.tokenizer)
    if eos is None:
        raise ChexError(f"the tokenizer in {folder} has no end-of-text token; GPT-2's is <|endoftext|>")
    if len(lm.tokenizer) > int(config["vocab_size"]):
        raise ChexError(f"the tokenizer in {folder} has {len(lm.tokenizer)} tokens but the model's vocabulary has "
                        f"{config['vocab_size']}; the tokenizer files belong to another model")
    gen = generator_config(config, eos)

    base = load_bundle(like) if like is not None else None
    cfg = dataclasses.replace(base.cfg if base is not None else ChexConfig(), generator=gen)
    log("initialising the model ...")
    torch.manual_seed(seed)
    model = ChEX(cfg, base.txt_encoder.tokenizer if base is not None else None, prompts=default_prompts())
    if base is not None:
        others = {k: v for k, v in base.state_dict().items() if not k.startswith("txt_decoder.")}
        model.load_state_dict(others, strict=False)  # same sizes: only the generator is left out
    expected = model.txt_decoder.language_model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        first = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}"
        raise ChexError(f"{weights_file} does not match its config.json as a GPT-2: {first}")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ChexError(f"{weights_file}: {key} has shape {tuple(state[key].shape)}, config.json implies "
                            f"{tuple(tensor.shape)}")
    with torch.no_grad():
        model.txt_decoder.language_model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    model.gpt2_tokenizer = lm.tokenizer
    provenance = {
        "kind": "hf-gpt2",
        "source": str(source) if not Path(str(source)).expanduser().exists() else str(folder.resolve()),
        "sha256": digest,
        "sha256_of": weights_file.name,
        "imported": now_utc(),
        "initialised": {"from_source": ["txt_decoder.language_model"],
                        "from_like": [] if base is None else ["img_encoder", "txt_encoder", "detector"]
                        + (["post_decoder"] if model.post_decoder is not None else []),
                        "fresh": ["txt_decoder.prefix_proj"]
                        + ([] if base is not None else ["img_encoder", "txt_encoder", "detector", "post_decoder"]),
                        "seed": seed},
        "like": str(Path(like).resolve()) if like is not None else None,
        "tokenizers": {"gpt2": str(folder.resolve())},
    }
    log(f"writing bundle {out} ...")
    save_bundle(model, out, provenance=provenance)
    return out
