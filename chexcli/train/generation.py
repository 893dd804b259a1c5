"""Training the sentence generator on region features (TRAINING.md §7.4.4 and §8).

Targets are tokenised as `<|endoftext|>` text `<|endoftext|>`, right-padded to
the longest target. Two reference quirks are fixed by default (see
docs/deviations.md): padding is not scored (`include_padding=False`), and a
text longer than `max_length` is cut so that it keeps its end token.
"""

from __future__ import annotations

import weakref
from collections import Counter

import torch
from torch import Tensor

from chexcli.train.losses import generation_loss
from chexcli.train.recipe import SAMPLING_MODES


# tokenizer -> {text: token ids}: training decodes the same few thousand sentences every update
_TOKEN_CACHE: "weakref.WeakKeyDictionary[object, dict[str, tuple[int, ...]]]" = weakref.WeakKeyDictionary()
_TOKEN_CACHE_LIMIT = 200_000  # texts per tokenizer


def _token_ids(tokenizer, text: str) -> tuple[int, ...]:
    """The tokenizer's ids of `text` without special tokens, remembered per tokenizer."""
    try:
        known = _TOKEN_CACHE.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced: no cache
        known = {}
    ids = known.get(text)
    if ids is None:
        body = tokenizer.encode(text, add_special_tokens=False) if hasattr(tokenizer, "encode") else tokenizer(text)
        ids = tuple(body)
        if len(known) < _TOKEN_CACHE_LIMIT:
            known[text] = ids
    return ids


def encode_targets(tokenizer, texts: list[str], bos_id: int, eos_id: int, pad_id: int, max_length: int = 128,
                   keep_end_token: bool = True) -> tuple[Tensor, Tensor]:
    """texts (M) -> ids (M, L) and token mask (M, L), L <= max_length."""
    rows = []
    for text in texts:
        seq = [bos_id, *_token_ids(tokenizer, text), eos_id]
        if len(seq) > max_length:
            seq = seq[: max_length - 1] + [eos_id] if keep_end_token else seq[:max_length]
        rows.append(seq)
    length = max((len(r) for r in rows), default=1)
    ids = torch.tensor([r + [pad_id] * (length - len(r)) for r in rows], dtype=torch.long).view(len(rows), length)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    return ids, mask


def subsample_rows(m: int, limit: int, device, texts: list[str] | None = None, mode: str = "uniform") -> Tensor:
    """Indices of at most `limit` of m rows, drawn without replacement (torch RNG).

    ``uniform`` (the reference): every row equally likely. ``balanced``: every distinct text
    of ``texts`` gets the same total probability (row weight 1 / count of its text), so a
    rare target sentence ("There is a nodule in the left upper lung zone.") is drawn as often
    as one that a third of the regions share ("The lungs are clear.").
    """
    if mode not in SAMPLING_MODES:
        raise ValueError(f"generation sampling must be one of {', '.join(SAMPLING_MODES)} (got {mode!r})")
    if mode == "balanced" and texts is None:
        raise ValueError("balanced generation sampling needs the target texts")
    if m <= limit:
        return torch.arange(m, device=device)
    weights = torch.ones(m)
    if mode == "balanced":
        counts = Counter(texts)
        weights = torch.tensor([1.0 / counts[t] for t in texts])
    return torch.multinomial(weights, limit, replacement=False).sort().values.to(device)


def sentence_generation_loss(model, features: Tensor, texts: list[str], max_sentences: int = 32,
                             include_padding: bool = False, keep_end_token: bool = True,
                             sampling: str = "uniform") -> Tensor:
    """features (M, d) region features, texts (M) targets -> mean token cross-entropy.

    At most `max_sentences` random rows are decoded (the reference's cap per call), drawn as
    `subsample_rows` does with ``sampling``.
    """
    if features.shape[0] == 0:
        return features.sum() * 0.0
    gen = model.txt_decoder
    cfg = gen.cfg
    keep = subsample_rows(features.shape[0], max_sentences, features.device, texts, sampling)
    chosen = [texts[i] for i in keep.tolist()]
    ids, mask = encode_targets(model.gpt2_tokenizer, chosen, cfg.bos_token_id, cfg.eos_token_id,
                               cfg.pad_token_id, cfg.max_length, keep_end_token)
    ids, mask = ids.to(features.device), mask.to(features.device)
    logits = gen.teacher_forcing_logits(features[keep], ids, mask)
    return generation_loss(logits, ids, mask, include_padding=include_padding)
