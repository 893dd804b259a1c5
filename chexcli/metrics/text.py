"""Natural-language-generation metrics through pycocoevalcap (docs/evaluation.md#nlg-metrics).

Input handling as the reference: texts are stripped, pairs with an empty
reference are dropped, then both sides are normalised like Nicolson et al.
("." -> " .", newlines/tabs -> spaces, carriage returns removed, runs of
spaces collapsed; no lower-casing, no PTB tokenisation, so no Java is
needed except for METEOR).

Scores: `BLEU-1..4` (corpus BLEU, "closest" reference length), `Rouge-L`
(mean sentence ROUGE-L, beta 1.2), `METEOR` (METEOR 1.5 corpus score; needs
Java), `CIDEr-D` (pycocoevalcap CIDEr-D with IDF from the evaluated
references; our substitute for the reference's missing `CIDEr-MIMIC`).

METEOR without Java is *skipped* (its keys are absent) and a note says so;
it is never reported as 0 (the reference's silent 0.0, bug B13).
"""

from __future__ import annotations

import re
import shutil
from typing import Sequence

import numpy as np

BLEU_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4")
METEOR_NO_JAVA = ("METEOR skipped: no Java runtime found (install one, e.g. "
                  "`apt-get install default-jre-headless`, to get METEOR)")


def normalize(text: str) -> str:
    """Reference (Nicolson) normalisation of a stripped text."""
    text = text.strip().replace(".", " .").replace("\n", " ").replace("\t", " ").replace("\r", "")
    return re.sub(" +", " ", text)


def java_available() -> bool:
    return shutil.which("java") is not None


class MeteorScorer:
    """One METEOR 1.5 jar process (pycocoevalcap), reused for many corpora."""

    def __init__(self):
        from pycocoevalcap.meteor.meteor import Meteor

        self._meteor = Meteor()

    def score(self, hyps: Sequence[str], refs: Sequence[str]) -> float:
        """Corpus METEOR of normalised (hyp, ref) pairs; 0 for an empty corpus."""
        if not hyps:
            return 0.0
        gts = {i: [r] for i, r in enumerate(refs)}
        res = {i: [h] for i, h in enumerate(hyps)}
        score, _ = self._meteor.compute_score(gts, res)
        return float(score)

    def close(self) -> None:
        m = getattr(self, "_meteor", None)
        if m is not None:
            try:
                m.meteor_p.stdin.close()
                m.meteor_p.kill()
                m.meteor_p.wait()
            except Exception:
                pass
            m.__class__.__del__ = lambda self: None  # already closed
            self._meteor = None


def make_meteor(notes: list[str] | None = None) -> MeteorScorer | None:
    """A METEOR scorer, or None (with a note) when Java is missing."""
    if not java_available():
        if notes is not None and METEOR_NO_JAVA not in notes:
            notes.append(METEOR_NO_JAVA)
        return None
    return MeteorScorer()


def clean_pairs(preds: Sequence[str], refs: Sequence[str]) -> tuple[list[str], list[str], np.ndarray]:
    """Strip, drop empty references, normalise. Returns (hyps, refs, kept index)."""
    keep = [i for i, r in enumerate(refs) if r is not None and str(r).strip()]
    hyps = [normalize(str(preds[i] or "")) for i in keep]
    rs = [normalize(str(refs[i])) for i in keep]
    return hyps, rs, np.asarray(keep, dtype=np.int64)


def nlg_scores(hyps: Sequence[str], refs: Sequence[str], keys: Sequence[str],
               meteor: MeteorScorer | None = None) -> dict[str, float]:
    """Requested scores of already cleaned pairs (one corpus)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    out: dict[str, float] = {}
    want = set(keys)
    empty = len(hyps) == 0
    gts = {i: [r] for i, r in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    if want & set(BLEU_KEYS):
        scores = [0.0] * 4 if empty else Bleu(4).compute_score(gts, res, verbose=0)[0]
        for k, v in zip(BLEU_KEYS, scores):
            if k in want:
                out[k] = float(v)
    if "Rouge-L" in want:
        out["Rouge-L"] = 0.0 if empty else float(Rouge().compute_score(gts, res)[0])
    if "CIDEr-D" in want:
        out["CIDEr-D"] = 0.0 if empty else float(Cider().compute_score(gts, res)[0])
    if "METEOR" in want and meteor is not None:
        out["METEOR"] = meteor.score(hyps, refs)
    return out


class TextMetrics:
    """NLG scores over resampling units.

    preds, refs: one text per pair; units: pairs per unit (consecutive;
    None: every pair is a unit). keys: which scores (see module doc).
    The corpus of a resample is the pairs of the drawn units, in draw order.
    """

    def __init__(self, preds: Sequence[str], refs: Sequence[str], keys: Sequence[str],
                 units: Sequence[int] | None = None, meteor: MeteorScorer | None = None):
        if len(preds) != len(refs):
            raise ValueError("preds and refs must have the same length")
        units = [1] * len(preds) if units is None else list(units)
        if sum(units) != len(preds):
            raise ValueError("units must add up to the number of pairs")
        self.keys = [k for k in keys if k != "METEOR" or meteor is not None]
        self.meteor = meteor
        starts = np.cumsum([0] + units)
        self.unit_pairs: list[list[tuple[str, str]]] = []
        for u in range(len(units)):
            p, r, _ = clean_pairs(preds[starts[u]:starts[u + 1]], refs[starts[u]:starts[u + 1]])
            self.unit_pairs.append(list(zip(p, r)))
        self.n_units = len(units)

    def compute(self, idx=None) -> dict[str, float]:
        idx = range(self.n_units) if idx is None else idx
        pairs = [pair for u in idx for pair in self.unit_pairs[int(u)]]
        return nlg_scores([p for p, _ in pairs], [r for _, r in pairs], self.keys, self.meteor)
