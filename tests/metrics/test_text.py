"""NLG metrics: normalisation, hand-computed BLEU/ROUGE-L, the reference's METEOR example."""

import pytest

from chexcli.metrics.text import METEOR_NO_JAVA, TextMetrics, clean_pairs, java_available, make_meteor, normalize

PREDS = ["The heart is mildly enlarged.", "There is no pleural effusion."]
REFS = ["The heart is normal in size.", "No pleural effusion."]


def test_normalize():
    assert normalize("  Heart normal.\nLungs\tclear.\r ") == "Heart normal . Lungs clear ."
    assert normalize("A,  b") == "A, b"  # commas stay, case kept


def test_clean_pairs_drops_empty_references():
    hyps, refs, keep = clean_pairs(["a.", "b", ""], ["x.", "  ", "y"])
    assert hyps == ["a .", ""] and refs == ["x .", "y"] and list(keep) == [0, 2]


def test_bleu_rouge_hand_computed():
    out = TextMetrics(PREDS, REFS, ["BLEU-1", "Rouge-L"]).compute()
    # unigram matches 4 + 3 ("No" != "no") of 12 tokens; 12 >= 11 reference tokens: no brevity penalty
    assert out["BLEU-1"] == pytest.approx(7 / 12, abs=1e-9)
    # ROUGE-L: LCS 4 of 6/7 tokens and 3 of 6/4 tokens, beta 1.2
    def f(lcs, h, r, b=1.2):
        p, rc = lcs / h, lcs / r
        return (1 + b * b) * p * rc / (rc + b * b * p)
    assert out["Rouge-L"] == pytest.approx((f(4, 6, 7) + f(3, 6, 4)) / 2)
    assert out["Rouge-L"] == pytest.approx(0.615, abs=5e-4)


def test_identical_texts_and_empty_corpus():
    out = TextMetrics(["a b c d e ."], ["a b c d e ."], ["BLEU-4", "Rouge-L"]).compute()
    assert out["BLEU-4"] == pytest.approx(1.0, abs=1e-6) and out["Rouge-L"] == pytest.approx(1.0)
    empty = TextMetrics(["x"], [""], ["BLEU-1", "Rouge-L", "CIDEr-D"]).compute()
    assert empty == {"BLEU-1": 0.0, "Rouge-L": 0.0, "CIDEr-D": 0.0}


def test_units_resample_corpus():
    m = TextMetrics(PREDS, REFS, ["BLEU-1"], units=[2])
    assert m.compute([0, 0])["BLEU-1"] == pytest.approx(7 / 12, abs=1e-9)  # doubling keeps the ratio


@pytest.mark.skipif(not java_available(), reason="needs Java for METEOR")
def test_meteor_is_corpus_level():
    notes = []
    meteor = make_meteor(notes)
    try:
        out = TextMetrics(PREDS, REFS, ["METEOR"], meteor=meteor).compute()
    finally:
        meteor.close()
    assert out["METEOR"] == pytest.approx(0.336, abs=5e-4)  # not the mean 0.374 of sentence scores
    assert notes == []


def test_meteor_skipped_without_java(monkeypatch):
    monkeypatch.setattr("chexcli.metrics.text.shutil.which", lambda name: None)
    notes = []
    assert make_meteor(notes) is None
    assert notes == [METEOR_NO_JAVA]
    out = TextMetrics(PREDS, REFS, ["BLEU-1", "METEOR"], meteor=None).compute()
    assert "METEOR" not in out  # skipped, never a silent 0
