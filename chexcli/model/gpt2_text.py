"""GPT-2 tokenizer helpers for the sentence generator (docs/architecture.md#gpt-2-and-its-tokenizer).

* :func:`load_gpt2_tokenizer` loads a byte-level BPE tokenizer from local files only.
* :func:`decode_generated` turns generated id rows into sentences exactly like the
  reference (transformers 4.37): special tokens skipped, legacy clean-up of spaces
  before punctuation applied, invalid UTF-8 byte pieces -> U+FFFD, no stripping.
* :func:`build_tiny_gpt2_tokenizer` trains a tiny tokenizer of the same kind for tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

from chexcli.errors import ChexError

EOS_TOKEN = "<|endoftext|>"

#: transformers' legacy ``clean_up_tokenization`` replacements, applied in this order
CLEAN_UP_REPLACEMENTS: tuple[tuple[str, str], ...] = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def clean_up_tokenization(text: str) -> str:
    """The legacy clean-up of spaces before punctuation and contractions."""
    for old, new in CLEAN_UP_REPLACEMENTS:
        text = text.replace(old, new)
    return text


def _model_max_length(folder: Path) -> int:
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        try:
            value = json.loads(cfg.read_text(encoding="utf-8")).get("model_max_length")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            value = None
        if isinstance(value, int) and 0 < value < 10**9:
            return value
    return 1024


def _backend_from_vocab_merges(vocab_path: Path, merges_path: Path):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    bpe = models.BPE.from_file(str(vocab_path), str(merges_path))
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.add_special_tokens([AddedToken(EOS_TOKEN, special=True, normalized=False)])
    return tok


def load_gpt2_tokenizer(folder: str | Path):
    """Load the GPT-2 byte-level BPE tokenizer of ``folder`` (local files only).

    Uses ``tokenizer.json`` when present, else ``vocab.json`` + ``merges.txt``.
    ``<|endoftext|>`` becomes bos, eos, unk and pad token. Returns a
    ``transformers.PreTrainedTokenizerFast``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ChexError(f"GPT-2 tokenizer folder not found: {folder}")
    tok_json = folder / "tokenizer.json"
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    from transformers import PreTrainedTokenizerFast

    try:
        if tok_json.is_file():
            from tokenizers import Tokenizer

            backend = Tokenizer.from_file(str(tok_json))
        elif vocab.is_file() and merges.is_file():
            backend = _backend_from_vocab_merges(vocab, merges)
        else:
            raise ChexError(
                f"GPT-2 tokenizer folder {folder} needs vocab.json + merges.txt or tokenizer.json"
            )
    except ChexError:
        raise
    except Exception as exc:  # tokenizers raises plain Exceptions on malformed files
        raise ChexError(f"cannot read the GPT-2 tokenizer in {folder}: {exc}") from exc
    if backend.token_to_id(EOS_TOKEN) is None:
        raise ChexError(f"GPT-2 tokenizer in {folder} has no {EOS_TOKEN} token")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=_model_max_length(folder),
        padding_side="right",
        clean_up_tokenization_spaces=True,
    )


def _special_ids(tokenizer) -> set[int]:
    ids: set[int] = set()
    for name in ("eos_token_id", "bos_token_id", "pad_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            ids.add(value)
    ids.update(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None and hasattr(tokenizer, "get_added_tokens_decoder"):
        backend = tokenizer  # a raw tokenizers.Tokenizer
    if backend is not None:
        for i, added in backend.get_added_tokens_decoder().items():
            if added.special:
                ids.add(int(i))
    return ids


def _rows(ids_batch) -> list[list[int]]:
    if hasattr(ids_batch, "tolist"):  # torch tensor / numpy array
        ids_batch = ids_batch.tolist()
    ids_batch = list(ids_batch)
    if ids_batch and not hasattr(ids_batch[0], "__len__"):
        return [[int(i) for i in ids_batch]]  # one flat row
    return [[int(i) for i in (row.tolist() if hasattr(row, "tolist") else row)] for row in ids_batch]


def decode_generated(tokenizer, ids_batch: Sequence[Sequence[int]] | object) -> list[str]:
    """Decode generated id rows as the reference does (one string per row).

    Every special id (bos/eos/pad, ``<|endoftext|>``) is dropped, the remaining
    byte-level pieces are joined and decoded (invalid UTF-8 -> U+FFFD), then the
    legacy clean-up of spaces is applied whatever the installed transformers'
    default. Nothing is stripped. A single flat id list gives a one-element list.
    """
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if not hasattr(backend, "decode"):
        raise ChexError("decode_generated needs a tokenizers-backed GPT-2 tokenizer")
    special = _special_ids(tokenizer)
    size = backend.get_vocab_size(with_added_tokens=True)
    out = []
    for row in _rows(ids_batch):
        keep = []
        for i in row:
            if i in special:
                continue
            if not 0 <= i < size:
                raise ChexError(f"token id {i} outside the GPT-2 vocabulary (0..{size - 1})")
            keep.append(i)
        text = backend.decode(keep, skip_special_tokens=True)
        out.append(clean_up_tokenization(text))
    return out


def build_tiny_gpt2_tokenizer(texts: Iterable[str], vocab_size: int, folder: str | Path):
    """Train a byte-level BPE tokenizer (single special token ``<|endoftext|>`` = id 0).

    Writes ``tokenizer.json``, ``vocab.json``, ``merges.txt``, ``tokenizer_config.json``
    and ``special_tokens_map.json`` into ``folder`` and returns
    :func:`load_gpt2_tokenizer` of it. ``vocab_size`` counts the 256 byte symbols and
    the special token (minimum 257).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if vocab_size < 257:
        raise ChexError(f"tiny GPT-2 vocabulary needs at least 257 entries, got {vocab_size}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.save(str(folder / "tokenizer.json"))
    tok.model.save(str(folder))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "add_prefix_space": False,
                "bos_token": EOS_TOKEN,
                "eos_token": EOS_TOKEN,
                "unk_token": EOS_TOKEN,
                "clean_up_tokenization_spaces": True,
                "model_max_length": 1024,
                "tokenizer_class": "GPT2Tokenizer",
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN}, indent=2),
        encoding="utf-8",
    )
    return load_gpt2_tokenizer(folder)
