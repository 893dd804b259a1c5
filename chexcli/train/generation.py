"""Training the sentence generator on region features (docs/training.md#sentence-generation-targets, docs/training.md#txtgen).

Targets are tokenised as `<|endoftext|>` text `<|endoftext|>`, right-padded to
the longest target. Two reference quirks are fixed by default (see
docs/deviations.md): padding is not scored (`include_padding=False`), and a
text longer than `max_length` is cut so that it keeps its end token.
"""

from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F
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


@dataclass
class GenerationCall:
    """One call of the sentence generator in training: region features (M, d) and their target texts."""

    features: Tensor
    texts: list[str]


def generation_call(features: Tensor, texts: list[str], max_sentences: int = 32,
                    sampling: str = "uniform") -> GenerationCall:
    """The rows one call decodes: at most `max_sentences` of them (the reference's cap per call),
    drawn as `subsample_rows` does with ``sampling``."""
    if features.shape[0] == 0:
        return GenerationCall(features, [])
    keep = subsample_rows(features.shape[0], max_sentences, features.device, texts, sampling)
    return GenerationCall(features[keep], [texts[i] for i in keep.tolist()])


def teacher_forcing_loss(lm, hidden: Tensor, ids: Tensor, token_mask: Tensor, include_padding: bool = False) -> Tensor:
    """Next-token cross-entropy from GPT-2 hidden states (M, L, n_embd) of targets ids (M, L).

    include_padding=True: every position is scored (the reference; `generation_loss`). False: only
    positions whose next token is real, and only those go through the output head (the padding's
    logits are never computed), averaged over them; the same value as `generation_loss`.
    """
    if include_padding:
        return generation_loss(lm.logits(hidden), ids, token_mask, include_padding=True)
    rows, targets = scored_positions(hidden, ids, token_mask)
    if rows.shape[0] == 0:
        return hidden.sum() * 0.0
    return F.cross_entropy(lm.logits(rows).float(), targets)


def scored_positions(hidden: Tensor, ids: Tensor, token_mask: Tensor) -> tuple[Tensor, Tensor]:
    """The positions whose next token is real: their hidden states (N_scored, n_embd) and the
    next tokens (N_scored) they predict, from hidden (M, L, n_embd), ids and token_mask (M, L)."""
    scored = token_mask[:, 1:].bool()
    return hidden[:, :-1][scored], ids[:, 1:][scored]


def generation_losses(model, calls: list[GenerationCall], include_padding: bool = False,
                      keep_end_token: bool = True) -> list[Tensor]:
    """Mean token cross-entropy of each call, all calls in one generator pass.

    Each call is tokenised and padded on its own (to its longest target) and its loss is what it
    would be alone; only the matrix products are shared (`SentenceGenerator.teacher_forcing_hidden`).
    When padding is not scored it is not computed either, and the scored positions of every call
    go through the output head together (the tied 50,257 x 1,024 weight read once, one gradient).
    """
    gen = model.txt_decoder
    cfg = gen.cfg
    losses: list[Tensor | None] = [None] * len(calls)
    todo = []
    for j, call in enumerate(calls):
        if call.features.shape[0] == 0:
            losses[j] = call.features.sum() * 0.0
            continue
        ids, mask = encode_targets(model.gpt2_tokenizer, call.texts, cfg.bos_token_id, cfg.eos_token_id,
                                   cfg.pad_token_id, cfg.max_length, keep_end_token)
        todo.append((j, call.features, ids.to(call.features.device), mask.to(call.features.device)))
    if not todo:
        return losses
    hidden = gen.teacher_forcing_hidden([(f, ids, mask) for _, f, ids, mask in todo],
                                        drop_padding=not include_padding)
    if include_padding:
        for (j, _, ids, mask), h in zip(todo, hidden):
            losses[j] = teacher_forcing_loss(gen.language_model, h, ids, mask, include_padding=True)
        return losses
    # only scored positions go through the output head, every call's in one product
    scored = [scored_positions(h, ids, mask) for (_, _, ids, mask), h in zip(todo, hidden)]
    logits = gen.language_model.logits(torch.cat([rows for rows, _ in scored])).float()
    for (j, *_), h, (rows, targets), part in zip(todo, hidden, scored, logits.split([r.shape[0] for r, _ in scored])):
        losses[j] = F.cross_entropy(part, targets) if rows.shape[0] else h.sum() * 0.0
    return losses

