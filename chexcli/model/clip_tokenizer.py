"""CLIP byte-level BPE tokenizer for the prompt encoder (docs/architecture.md#clip-tokenizer).

Built from OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` merge list (or a Hugging Face
``vocab.json`` + ``merges.txt`` folder). Vocabulary layout, for ``M`` merges:

* ids ``0 .. 255``: the 256 byte symbols (GPT-2 byte -> unicode map, in map order),
* ids ``256 .. 511``: the same symbols with the end-of-word marker ``</w>``,
* ids ``512 .. 511 + M``: one token per merge (concatenation of the pair),
* ``512 + M``: ``<|startoftext|>`` (SOT), ``513 + M``: ``<|endoftext|>`` (EOT).

With the official file (M = 48,894) SOT = 49406, EOT = 49407, 49,408 ids in all.
"""

from __future__ import annotations

import collections
import gzip
import html
import json
import logging
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import regex
import torch

from chexcli.errors import ChexError

logger = logging.getLogger(__name__)

SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
#: merges used from the official file (lines 2 .. 48,895)
MAX_MERGES = 48894
DEFAULT_CONTEXT_LENGTH = 77
#: file name of the vocabulary inside a saved bundle folder
BUNDLE_FILE = "clip_bpe_vocab.txt.gz"
_CACHE_LIMIT = 200_000

_PRETOKENIZE = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>"
    r"|'s|'t|'re|'ve|'m|'ll|'d"
    r"|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")


def byte_symbols() -> list[str]:
    """The 256 byte symbols in vocabulary order; entry i of the result is not byte i.

    Printable Latin-1 bytes (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) stand for
    themselves and come first, in byte order; the remaining 68 bytes follow in
    byte order and are represented by ``chr(256 + k)`` for the k-th of them.
    """
    return [ch for _, ch in _byte_table()]


def _byte_table() -> list[tuple[int, str]]:
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = [(b, chr(b)) for b in printable]
    taken = set(printable)
    extra = 0
    for b in range(256):
        if b not in taken:
            table.append((b, chr(256 + extra)))
            extra += 1
    return table


def byte_encoder() -> dict[int, str]:
    """Byte value -> the unicode character that represents it."""
    return {b: ch for b, ch in _byte_table()}


def normalize_text(text: str) -> str:
    """ftfy fix, HTML-unescape twice, collapse whitespace, strip, lower-case."""
    import ftfy

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    text = _WHITESPACE.sub(" ", text).strip()
    return text.lower()


def _read_merge_lines(lines: Iterable[str], limit: int | None) -> list[tuple[str, str]]:
    merges: list[tuple[str, str]] = []
    for line in lines:
        if limit is not None and len(merges) >= limit:
            break
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ChexError(f"malformed BPE merge line {line!r}: expected two symbols")
        merges.append((parts[0], parts[1]))
    return merges


class ClipTokenizer:
    """CLIP BPE tokenizer: ``encode(text)`` and ``tokenizer(texts) -> (B, 77)`` ids."""

    def __init__(
        self,
        merges: Sequence[tuple[str, str]],
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        source_file: str | Path | None = None,
    ):
        if context_length < 2:
            raise ChexError(f"CLIP context length must be at least 2, got {context_length}")
        self.merges: list[tuple[str, str]] = [(str(a), str(b)) for a, b in merges]
        self.context_length = int(context_length)
        self.source_file = Path(source_file) if source_file is not None else None

        self._byte_encoder = byte_encoder()
        self._byte_decoder = {ch: b for b, ch in self._byte_encoder.items()}
        symbols = byte_symbols()
        tokens = symbols + [s + END_OF_WORD for s in symbols]
        tokens += [a + b for a, b in self.merges]
        tokens += [SOT_TOKEN, EOT_TOKEN]
        self._id_to_token = tokens
        # later duplicates win, like building a dict from (token, id) pairs
        self.encoder: dict[str, int] = {tok: i for i, tok in enumerate(tokens)}
        self.bpe_ranks: dict[tuple[str, str], int] = {}
        for rank, pair in enumerate(self.merges):
            self.bpe_ranks.setdefault(pair, rank)
        self.sot_token_id = len(tokens) - 2
        self.eot_token_id = len(tokens) - 1
        self._special = {SOT_TOKEN: self.sot_token_id, EOT_TOKEN: self.eot_token_id}
        self._cache: dict[str, list[str]] = {}
        self._text_ids: dict[str, list[int]] = {}  # text -> encode(text); training re-tokenises the same prompts

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained_file(
        cls, path: str | Path, context_length: int = DEFAULT_CONTEXT_LENGTH
    ) -> "ClipTokenizer":
        """Load OpenAI's gzip merge list (first line is a header; at most 48,894 merges used)."""
        path = Path(path)
        if not path.is_file():
            raise ChexError(f"CLIP BPE vocabulary file not found: {path}")
        try:
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise ChexError(f"cannot read CLIP BPE vocabulary {path} (expected gzip text): {exc}") from exc
        lines = text.split("\n")
        merges = _read_merge_lines(lines[1:], MAX_MERGES)
        if not merges:
            raise ChexError(f"CLIP BPE vocabulary {path} holds no merges")
        return cls(merges, context_length=context_length, source_file=path)

    @classmethod
    def from_hf_folder(
        cls, folder: str | Path, context_length: int = DEFAULT_CONTEXT_LENGTH
    ) -> "ClipTokenizer":
        """Load a Hugging Face CLIP tokenizer folder (``vocab.json`` + ``merges.txt``).

        The merges define the tokenizer; ``vocab.json`` must assign exactly the ids
        that the merge list implies (it does for openai/clip-vit-* folders).
        """
        folder = Path(folder)
        vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
        missing = [p.name for p in (vocab_path, merges_path) if not p.is_file()]
        if missing:
            raise ChexError(f"CLIP tokenizer folder {folder} lacks {' and '.join(missing)}")
        try:
            vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
            lines = merges_path.read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ChexError(f"cannot read CLIP tokenizer files in {folder}: {exc}") from exc
        if lines and lines[0].startswith("#version"):
            lines = lines[1:]
        if not isinstance(vocab, dict):
            raise ChexError(f"{vocab_path} is not a JSON object of token -> id")
        # a vocabulary sized for fewer merges than merges.txt lists limits the merges used
        n_merges = max(0, len(vocab) - 514)
        tok = cls(_read_merge_lines(lines, n_merges), context_length=context_length)
        if vocab != tok.encoder:
            bad = next(
                (f"{k!r} -> {v}" for k, v in vocab.items() if tok.encoder.get(k) != v),
                f"{len(vocab)} entries instead of {len(tok.encoder)}",
            )
            raise ChexError(f"{vocab_path} does not match {merges_path.name} ({bad})")
        return tok

    @classmethod
    def build_tiny(
        cls,
        texts: Iterable[str],
        n_merges: int,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
    ) -> "ClipTokenizer":
        """Learn up to ``n_merges`` merges from ``texts`` (for tests and tiny models).

        Plain BPE learning on the pre-tokenised words: repeatedly merge the most
        frequent adjacent pair (ties: lexicographically smallest pair). The result
        has ``512 + n_merges + 2`` ids unless the texts run out of pairs first.
        """
        if n_merges < 0:
            raise ChexError(f"n_merges must be >= 0, got {n_merges}")
        enc = byte_encoder()
        counts: collections.Counter[tuple[str, ...]] = collections.Counter()
        for text in texts:
            for piece in _PRETOKENIZE.findall(normalize_text(text)):
                if piece in (SOT_TOKEN, EOT_TOKEN):
                    continue
                chars = [enc[b] for b in piece.encode("utf-8")]
                chars[-1] += END_OF_WORD
                counts[tuple(chars)] += 1
        words = dict(counts)
        merges: list[tuple[str, str]] = []
        while len(merges) < n_merges:
            pair_counts: collections.Counter[tuple[str, str]] = collections.Counter()
            for word, c in words.items():
                for pair in zip(word, word[1:]):
                    pair_counts[pair] += c
            if not pair_counts:
                break
            best = min(pair_counts, key=lambda p: (-pair_counts[p], p))
            merges.append(best)
            words = {_merge_pair(w, best): c for w, c in words.items()}
        return cls(merges, context_length=context_length)

    # ------------------------------------------------------------------ saving
    def save(self, folder: str | Path) -> Path:
        """Write the vocabulary into ``folder/clip_bpe_vocab.txt.gz``; returns that path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / BUNDLE_FILE
        if self.source_file is not None and self.source_file.is_file():
            if self.source_file.resolve() != target.resolve():
                shutil.copyfile(self.source_file, target)
        else:
            body = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges)
            with gzip.open(target, "wt", encoding="utf-8") as fh:
                fh.write(body)
        return target

    @classmethod
    def load(cls, folder: str | Path, context_length: int = DEFAULT_CONTEXT_LENGTH) -> "ClipTokenizer":
        """Load a tokenizer saved by :meth:`save`."""
        path = Path(folder) / BUNDLE_FILE
        if not path.is_file():
            raise ChexError(f"no CLIP tokenizer in {folder}: {BUNDLE_FILE} is missing")
        return cls.from_pretrained_file(path, context_length=context_length)

    # ------------------------------------------------------------------ encoding
    @property
    def vocab_size(self) -> int:
        return len(self._id_to_token)

    def __len__(self) -> int:
        return self.vocab_size

    def bpe(self, word: str) -> list[str]:
        """BPE tokens of one byte-encoded pre-token (``</w>`` on its last symbol)."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        symbols = list(word[:-1]) + [word[-1] + END_OF_WORD]
        ranks = self.bpe_ranks
        while len(symbols) > 1:
            best_rank, best = None, None
            for pair in zip(symbols, symbols[1:]):
                r = ranks.get(pair)
                if r is not None and (best_rank is None or r < best_rank):
                    best_rank, best = r, pair
            if best is None:
                break
            symbols = list(_merge_pair(symbols, best))
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[word] = symbols
        return symbols

    def tokenize(self, text: str) -> list[str]:
        """BPE token strings of ``text`` (no SOT/EOT added)."""
        out: list[str] = []
        for piece in _PRETOKENIZE.findall(normalize_text(text)):
            if piece in self._special:
                out.append(piece)
                continue
            word = "".join(self._byte_encoder[b] for b in piece.encode("utf-8"))
            out.extend(self.bpe(word))
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without SOT/EOT."""
        if not isinstance(text, str):
            raise ChexError(f"CLIP tokenizer expects text, got {type(text).__name__}")
        ids = self._text_ids.get(text)
        if ids is None:
            enc = self.encoder
            ids = [enc[t] for t in self.tokenize(text)]
            if len(self._text_ids) >= _CACHE_LIMIT:
                self._text_ids.clear()
            self._text_ids[text] = ids
        return list(ids)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (SOT/EOT dropped; word ends become spaces)."""
        parts: list[str] = []
        for i in ids:
            i = int(i)
            if i in (self.sot_token_id, self.eot_token_id):
                continue
            if not 0 <= i < len(self._id_to_token):
                raise ChexError(f"CLIP token id {i} outside the vocabulary (0..{len(self) - 1})")
            parts.append(self._id_to_token[i])
        text = "".join(parts).replace(END_OF_WORD, " ")
        # the byte map never uses a plain space, so spaces are unambiguous word ends
        data = bytes(0x20 if c == " " else self._byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace")

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None
    ) -> torch.LongTensor:
        """``(B, context_length)`` ids: ``[SOT] + ids + [EOT]``, zero padded.

        Over-long sequences keep their first ``context_length - 1`` ids and end
        with EOT (a warning is logged), as the reference does.
        """
        if isinstance(texts, str):
            texts = [texts]
        n = self.context_length if context_length is None else int(context_length)
        if n < 2:
            raise ChexError(f"CLIP context length must be at least 2, got {n}")
        rows: list[list[int]] = []
        for text in texts:
            ids = [self.sot_token_id] + self.encode(text) + [self.eot_token_id]
            if len(ids) > n:
                logger.warning(
                    "text truncated to %d CLIP tokens (%d needed): %.60r", n, len(ids), text
                )
                ids = ids[:n]
                ids[-1] = self.eot_token_id
            rows.append(ids + [0] * (n - len(ids)))
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), n)


def _merge_pair(symbols: Sequence[str], pair: tuple[str, str]) -> tuple[str, ...]:
    """Replace every non-overlapping occurrence of ``pair`` (left to right) by its join."""
    first, second = pair
    out: list[str] = []
    i, n = 0, len(symbols)
    while i < n:
        if i < n - 1 and symbols[i] == first and symbols[i + 1] == second:
            out.append(first + second)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)
