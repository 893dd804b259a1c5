"""Find and load the two tokenizers a bundle needs: CLIP's BPE vocabulary and the GPT-2 tokenizer of the generator."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chexcli.errors import ChexError
from chexcli.weights.common import search_folders

CLIP_VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"
OFFICIAL_LM = "healx/gpt-2-pubmed-medium"


def load_clip_vocab(path: str | Path, context_length: int = 77):
    """CLIP tokenizer from the .txt.gz merge list, a folder holding it, or a HF CLIP tokenizer folder."""
    from chexcli.model.clip_tokenizer import ClipTokenizer

    path = Path(path).expanduser()
    if path.is_file():
        return ClipTokenizer.from_pretrained_file(path, context_length=context_length)
    if path.is_dir():
        for cand in (path / CLIP_VOCAB_NAME, *sorted(path.glob("*.txt.gz"))):
            if cand.is_file():
                return ClipTokenizer.from_pretrained_file(cand, context_length=context_length)
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            return ClipTokenizer.from_hf_folder(path, context_length=context_length)
        raise ChexError(f"{path} holds neither {CLIP_VOCAB_NAME} nor a Hugging Face CLIP tokenizer "
                        "(vocab.json + merges.txt); pass --clip-vocab with one of them")
    raise ChexError(f"CLIP vocabulary {path} not found; pass --clip-vocab {CLIP_VOCAB_NAME} "
                    "(shipped with OpenAI CLIP and CheXzero) or a Hugging Face CLIP tokenizer folder")


def find_clip_vocab(near: Path) -> Path | None:
    for folder in search_folders(near):
        for cand in (folder / "clip_bpe" / CLIP_VOCAB_NAME, folder / CLIP_VOCAB_NAME):
            if cand.is_file():
                return cand
    return None


def _is_tokenizer_folder(folder: Path) -> bool:
    return folder.is_dir() and ((folder / "tokenizer.json").is_file()
                                or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()))


def _read_lm_config(folder: Path) -> dict[str, Any] | None:
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ChexError(f"{path} is not valid JSON ({err}); fix or remove it") from None
    return data if isinstance(data, dict) else None


def missing_lm_message(name: str) -> str:
    return (f"cannot get the GPT-2 tokenizer {name!r} (offline or not on the hub); download vocab.json and merges.txt "
            f"(and config.json) from the Hugging Face hub repo {OFFICIAL_LM} into a folder and pass --lm-tokenizer FOLDER")


def looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else is meant as a local path."""
    return name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or "\\" in name or name.endswith((".json", ".txt"))


@dataclass
class LmTokenizer:
    tokenizer: Any
    config: dict[str, Any] | None
    origin: str


def load_lm_tokenizer(spec: str | Path, hub_ok: bool = True) -> LmTokenizer:
    """GPT-2 tokenizer (+ its config.json if present) from a folder, or from the hub by name when online."""
    from chexcli.model.gpt2_text import load_gpt2_tokenizer

    path = Path(spec).expanduser()
    if path.exists():
        if not _is_tokenizer_folder(path):
            raise ChexError(f"{path} is not a GPT-2 tokenizer folder: it needs vocab.json + merges.txt or tokenizer.json "
                            f"(from the hub repo {OFFICIAL_LM})")
        return LmTokenizer(load_gpt2_tokenizer(path), _read_lm_config(path), str(path.resolve()))
    name = str(spec)
    if not hub_ok or isinstance(spec, Path) or looks_like_path(name):
        raise ChexError(f"GPT-2 tokenizer folder {name} not found; " + missing_lm_message(OFFICIAL_LM).split("; ", 1)[1])
    try:
        from transformers import AutoConfig, AutoTokenizer

        hub_tok = AutoTokenizer.from_pretrained(name)
    except Exception:  # offline, unknown repo, missing files: all the same to the user
        raise ChexError(missing_lm_message(name)) from None
    config = None
    try:
        config = AutoConfig.from_pretrained(name).to_dict()
    except Exception:
        config = None
    with tempfile.TemporaryDirectory(prefix="chex-lm-tok-") as tmp:
        hub_tok.save_pretrained(tmp)
        tok = load_gpt2_tokenizer(tmp)  # read into memory; the folder may go
    return LmTokenizer(tok, config, f"hub:{name}")


def find_lm_tokenizer(url: str | None, near: Path) -> Path | None:
    """Resolve a relative `language_model_url` (like the fixture's 'gpt2_tiny') against SOURCE's folders."""
    if not url:
        return None
    p = Path(url).expanduser()
    if p.is_absolute():
        return p if _is_tokenizer_folder(p) else None
    for folder in search_folders(near):
        if _is_tokenizer_folder(folder / url):
            return folder / url
    return None


def eos_id(tokenizer) -> int | None:
    value = getattr(tokenizer, "eos_token_id", None)
    return int(value) if isinstance(value, int) else None
