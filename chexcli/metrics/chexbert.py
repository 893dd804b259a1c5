"""Clinical efficacy with the CheXbert labeler (docs/evaluation.md#chexbert).

The labeler is BERT (base, uncased) with 14 linear heads on the [CLS]
state: 13 four-way heads {0 blank, 1 positive, 2 negative, 3 uncertain}
and a two-way head {0, 1} for No Finding; label = argmax of each head.
Weights come from a user-provided `chexbert.pth` (the CheXbert authors'
checkpoint) and the `bert-base-uncased` WordPiece `vocab.txt`; neither is
downloaded. Unlike the reference the checkpoint is loaded once, checked
key by key (B16), runs on any device, and labels are cached by text.

Scores on (prediction, reference) label pairs, unit-weighted for
bootstrapping: `micro_{prec,rec,f1}_{5,14}`, `macro_{prec,rec,f1}_{5,14}`,
`cls_f1/<condition>` (optional), `ex_{prec,rec,f1}_14` (per example; 0/0 is
NaN and skipped).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from chexcli.errors import ChexError

CONDITIONS: tuple[str, ...] = (
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices", "No Finding",
)
FIVE: tuple[str, ...] = ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion")
FIVE_IDX = np.array(sorted(CONDITIONS.index(c) for c in FIVE))  # in CONDITIONS order
NO_FINDING = CONDITIONS.index("No Finding")
MAX_TOKENS = 512
BATCH_SIZE = 18
# strings that the reference's CSV round trip (pandas read_csv) turns into NaN, i.e. an empty input
_PANDAS_NA = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
              "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
MISSING_MESSAGE = ("CheXbert clinical-efficacy metrics skipped: pass --chexbert DIR with chexbert.pth "
                   "(CheXbert weights) and vocab.txt (bert-base-uncased WordPiece vocabulary)")


class CheXbert(nn.Module):
    """BERT encoder + 14 label heads. input_ids, attention_mask (B, L) -> logits list of 14 (B, 4|2)."""

    def __init__(self, config):
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel(config)
        hidden = config.hidden_size
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.linear_heads = nn.ModuleList([nn.Linear(hidden, 4) for _ in range(13)] + [nn.Linear(hidden, 2)])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        cls = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        cls = self.dropout(cls)
        return [head(cls) for head in self.linear_heads]


def _config_from_state(state: dict[str, torch.Tensor]):
    """A BertConfig matching the tensor shapes (bert-base for the real checkpoint)."""
    from transformers import BertConfig

    vocab, hidden = state["bert.embeddings.word_embeddings.weight"].shape
    layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"bert\.encoder\.layer\.(\d+)\.", k)))
    inter = state["bert.encoder.layer.0.intermediate.dense.weight"].shape[0]
    max_pos = state["bert.embeddings.position_embeddings.weight"].shape[0]
    types = state["bert.embeddings.token_type_embeddings.weight"].shape[0]
    heads = hidden // 64 if hidden % 64 == 0 else 1
    return BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=inter, max_position_embeddings=max_pos, type_vocab_size=types)


def _find_files(path: str | Path) -> tuple[Path, Path]:
    p = Path(path).expanduser()
    if p.is_dir():
        weights, vocab = p / "chexbert.pth", p / "vocab.txt"
    else:
        weights, vocab = p, p.parent / "vocab.txt"
    if not weights.is_file():
        raise ChexError(f"CheXbert weights not found at {weights}: provide chexbert.pth (CheXbert checkpoint)")
    if not vocab.is_file():
        raise ChexError(f"CheXbert vocabulary not found at {vocab}: put the bert-base-uncased vocab.txt next to "
                        "chexbert.pth")
    return weights, vocab


def preprocess(text: str) -> str:
    """The reference's text cleaning before tokenisation."""
    return re.sub(r"\s+", " ", str(text).strip().replace("\n", " ")).strip()


class CheXbertLabeler:
    """Labels texts with CheXbert; `label(texts) -> (n, 14)` int labels, cached by text."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        from transformers import BertTokenizer

        weights, vocab = _find_files(path)
        try:
            ckpt = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as ex:  # not a (safe) torch checkpoint
            raise ChexError(f"cannot read CheXbert weights {weights}: {type(ex).__name__}; "
                            "provide the original chexbert.pth") from None
        state = ckpt.get("model_state_dict", ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(state, dict) or not state:
            raise ChexError(f"{weights} holds no state dict: provide the original chexbert.pth")
        state = {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.endswith(("position_ids", "token_type_ids"))}
        try:
            config = _config_from_state(state)
        except (KeyError, ValueError) as ex:
            raise ChexError(f"{weights} is not a CheXbert checkpoint (missing {ex}): provide chexbert.pth") from None
        model = CheXbert(config)
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            bad = (result.missing_keys + result.unexpected_keys)[:3]
            raise ChexError(f"{weights} does not match the CheXbert layout (e.g. {bad}): provide chexbert.pth")
        self.model = model.to(device).eval()
        self.device = device
        self.tokenizer = BertTokenizer(str(vocab), do_lower_case=True)
        self.cache: dict[str, np.ndarray] = {}

    def _ids(self, text: str) -> list[int]:
        tok = self.tokenizer
        if text in _PANDAS_NA:
            return [tok.cls_token_id, tok.sep_token_id]
        pieces = tok.tokenize(text)
        if not pieces:
            return [tok.cls_token_id, tok.sep_token_id]
        ids = [tok.cls_token_id] + tok.convert_tokens_to_ids(pieces) + [tok.sep_token_id]
        if len(ids) > MAX_TOKENS:
            ids = ids[:MAX_TOKENS - 1] + [tok.sep_token_id]
        return ids

    @torch.inference_mode()
    def label(self, texts: Sequence[str]) -> np.ndarray:
        """(n, 14) int labels in CONDITIONS order (raw, before the empty-text rule)."""
        clean = [preprocess(t or "") for t in texts]
        todo = sorted({t for t in clean if t not in self.cache})
        for b in range(0, len(todo), BATCH_SIZE):
            chunk = todo[b:b + BATCH_SIZE]
            ids = [self._ids(t) for t in chunk]
            width = max(len(i) for i in ids)
            input_ids = torch.zeros(len(ids), width, dtype=torch.long)
            mask = torch.zeros(len(ids), width, dtype=torch.long)
            for r, row in enumerate(ids):
                input_ids[r, :len(row)] = torch.tensor(row)
                mask[r, :len(row)] = 1
            logits = self.model(input_ids.to(self.device), mask.to(self.device))
            labels = torch.stack([lg.argmax(dim=1) for lg in logits], dim=1).cpu().numpy()
            for t, lab in zip(chunk, labels):
                self.cache[t] = lab.astype(np.int64)
        if not clean:
            return np.zeros((0, len(CONDITIONS)), dtype=np.int64)
        return np.stack([self.cache[t] for t in clean])


def apply_empty_rule(labels: np.ndarray, texts: Sequence[str]) -> np.ndarray:
    """Empty texts become "No Finding positive, everything else 0"."""
    labels = labels.copy()
    for i, t in enumerate(texts):
        if not str(t or "").strip():
            labels[i] = 0
            labels[i, NO_FINDING] = 1
    return labels


def _prf(tp, fp, fn):
    """Precision, recall, F1 arrays with undefined ratios -> 0 (sklearn zero_division)."""
    p = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 0.0)
    r = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1e-300), 0.0)
    d = 2 * tp + fp + fn
    f = np.where(d > 0, 2 * tp / np.maximum(d, 1e-300), 0.0)
    return p, r, f


class ClinicalEfficacy:
    """CheXbert P/R/F1 over resampling units.

    pred_labels, ref_labels: (n, 14) raw CheXbert labels of the pairs (empty
    texts already mapped by `apply_empty_rule`); units: pairs per unit
    (consecutive; a unit is also the example of the `ex_*` scores);
    per_class: add `cls_f1/<condition>`.
    """

    def __init__(self, pred_labels: np.ndarray, ref_labels: np.ndarray, units: Sequence[int] | None = None,
                 per_class: bool = False):
        pred_labels, ref_labels = np.asarray(pred_labels), np.asarray(ref_labels)
        n = len(pred_labels)
        units = [1] * n if units is None else list(units)
        if sum(units) != n:
            raise ValueError("units must add up to the number of pairs")
        self.n_units, self.per_class = len(units), per_class
        starts = np.cumsum([0] + units)[:-1]

        def unit_sum(x):
            return np.add.reduceat(x.astype(np.float64), starts, axis=0) if n and len(units) else \
                np.zeros((len(units),) + x.shape[1:])

        p14, r14 = pred_labels == 1, ref_labels == 1
        p5 = np.isin(pred_labels[:, FIVE_IDX], (1, 3)) if n else np.zeros((0, 5), bool)
        r5 = np.isin(ref_labels[:, FIVE_IDX], (1, 3)) if n else np.zeros((0, 5), bool)
        self.counts = {}
        for k, (p, r) in {"14": (p14, r14), "5": (p5, r5)}.items():
            self.counts[k] = (unit_sum(p & r), unit_sum(p & ~r), unit_sum(~p & r))  # each (U, k)
        tp, fp, fn = (c.sum(axis=1) for c in self.counts["14"])
        with np.errstate(divide="ignore", invalid="ignore"):
            prec = tp / (tp + fp)
            rec = tp / (tp + fn)
            f1 = 2 * prec * rec / (prec + rec)
        self.example = {"ex_prec_14": prec, "ex_rec_14": rec, "ex_f1_14": f1}

    def compute(self, idx=None) -> dict[str, float]:
        from chexcli.metrics.classification import unit_weights

        w = unit_weights(idx, self.n_units)
        out: dict[str, float] = {}
        for k in ("5", "14"):
            tp, fp, fn = (w @ c for c in self.counts[k])  # (k,)
            mp, mr, mf = _prf(tp.sum(), fp.sum(), fn.sum())
            out[f"micro_prec_{k}"], out[f"micro_rec_{k}"], out[f"micro_f1_{k}"] = float(mp), float(mr), float(mf)
            cp, cr, cf = _prf(tp, fp, fn)
            out[f"macro_prec_{k}"], out[f"macro_rec_{k}"], out[f"macro_f1_{k}"] = (
                float(cp.mean()), float(cr.mean()), float(cf.mean()))
            if k == "14" and self.per_class:
                for name, v in zip(CONDITIONS, cf):
                    out[f"cls_f1/{name}"] = float(v)
        for key, vals in self.example.items():
            ok = ~np.isnan(vals) & (w > 0)
            out[key] = float((w[ok] * vals[ok]).sum() / w[ok].sum()) if ok.any() else float("nan")
        return out
