"""CheXbert clinical efficacy: hand-made labels, and a tiny random BERT as labeler."""

import numpy as np
import pytest
import torch

from chexcli.errors import ChexError
from chexcli.metrics.chexbert import (CONDITIONS, FIVE_IDX, NO_FINDING, CheXbert, CheXbertLabeler,
                                      ClinicalEfficacy, apply_empty_rule)

CARDIO, EDEMA, OPACITY = CONDITIONS.index("Cardiomegaly"), CONDITIONS.index("Edema"), CONDITIONS.index("Lung Opacity")


def labels(**cells):
    row = np.zeros(14, dtype=np.int64)
    for idx, v in cells.items():
        row[int(idx[1:])] = v
    return row


def test_five_conditions_order():
    assert [CONDITIONS[i] for i in FIVE_IDX] == ["Cardiomegaly", "Edema", "Consolidation", "Atelectasis",
                                                 "Pleural Effusion"]


def test_scores_hand_computed():
    # pair 0: pred Cardiomegaly=1, Edema=3 (uncertain); ref Cardiomegaly=1, Edema=1
    # pair 1: pred Lung Opacity=1; ref No Finding=1
    pred = np.stack([labels(**{f"c{CARDIO}": 1, f"c{EDEMA}": 3}), labels(**{f"c{OPACITY}": 1})])
    ref = np.stack([labels(**{f"c{CARDIO}": 1, f"c{EDEMA}": 1}), labels(**{f"c{NO_FINDING}": 1})])
    out = ClinicalEfficacy(pred, ref, per_class=True).compute()
    # 14 (positive = 1): TP = cardio; FP = opacity; FN = edema, no finding
    assert out["micro_prec_14"] == pytest.approx(1 / 2)
    assert out["micro_rec_14"] == pytest.approx(1 / 3)
    assert out["micro_f1_14"] == pytest.approx(2 / 5)
    # per condition F1: cardio 1, everything else 0 -> macro 1/14
    assert out["macro_f1_14"] == pytest.approx(1 / 14)
    assert out["cls_f1/Cardiomegaly"] == 1.0 and out["cls_f1/Edema"] == 0.0
    # 5 (positive = 1 or 3, five conditions): TP cardio, edema; nothing else
    assert out["micro_f1_5"] == pytest.approx(1.0)
    assert out["macro_f1_5"] == pytest.approx(2 / 5)
    # examples: pair 0 P=1 R=1/2 F1=2/3; pair 1 P=0 R=0 F1=0/0 -> NaN, skipped
    assert out["ex_prec_14"] == pytest.approx(0.5)
    assert out["ex_rec_14"] == pytest.approx(0.25)
    assert out["ex_f1_14"] == pytest.approx(2 / 3)
    grouped = ClinicalEfficacy(pred, ref, units=[2]).compute()  # one example with both texts
    assert grouped["ex_f1_14"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    assert "cls_f1/Edema" not in grouped


def test_resampled_weights():
    pred = np.stack([labels(**{f"c{CARDIO}": 1}), labels(**{f"c{EDEMA}": 1})])
    ref = np.stack([labels(**{f"c{CARDIO}": 1}), labels(**{f"c{CARDIO}": 1})])
    m = ClinicalEfficacy(pred, ref)
    # units [0, 0, 1]: TP 2, FP 1, FN 1
    assert m.compute(np.array([0, 0, 1]))["micro_f1_14"] == pytest.approx(4 / 6)
    out = m.compute(np.array([0, 0, 1]))
    assert out["ex_prec_14"] == pytest.approx(2 / 3)  # precisions 1, 1, 0
    assert out["ex_f1_14"] == pytest.approx(1.0)  # F1 of unit 1 is 0/0 -> NaN, skipped


def test_empty_rule():
    out = apply_empty_rule(np.full((2, 14), 2), ["text", "  "])
    assert list(out[0]) == [2] * 14
    assert out[1, NO_FINDING] == 1 and out[1].sum() == 1


VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "heart", "is", "normal", "no", "effusion", ".",
         "pleural", "enlarged", "size", "there", "in", "mild", "##ly", "edema"]


@pytest.fixture
def tiny_chexbert(tmp_path):
    from transformers import BertConfig

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=48, max_position_embeddings=600)
    model = CheXbert(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 1.0)
    state = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({"model_state_dict": state, "epoch": 1}, tmp_path / "chexbert.pth")
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return tmp_path, model.eval()


def test_tiny_labeler_matches_model_and_caches(tiny_chexbert):
    folder, model = tiny_chexbert
    lab = CheXbertLabeler(folder)
    texts = ["The heart is normal.", "No pleural effusion.", "mildly enlarged heart", "", "The heart is normal."]
    out = lab.label(texts)
    assert out.shape == (5, 14) and out.dtype == np.int64
    assert (out[:, :13] <= 3).all() and (out[:, 13] <= 1).all()
    assert (out[0] == out[4]).all() and len(lab.cache) == 4
    # same labels as running the model on one text at a time ([CLS] pieces [SEP])
    tok = lab.tokenizer
    ids = [tok.cls_token_id] + tok.convert_tokens_to_ids(tok.tokenize("no pleural effusion.")) + [tok.sep_token_id]
    with torch.no_grad():
        logits = model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    assert [int(lg.argmax()) for lg in logits] == list(out[1])
    long = lab._ids(" ".join(["heart"] * 600))
    assert len(long) == 512 and long[-1] == tok.sep_token_id and long[0] == tok.cls_token_id
    assert lab._ids("") == lab._ids("None") == [tok.cls_token_id, tok.sep_token_id]


def test_labeler_errors(tmp_path, tiny_chexbert):
    with pytest.raises(ChexError, match="chexbert.pth"):
        CheXbertLabeler(tmp_path / "nothing")
    folder, _ = tiny_chexbert
    torch.save({"model_state_dict": {"module.foo": torch.zeros(1)}}, tmp_path / "bad.pth")
    with pytest.raises(ChexError, match="not a CheXbert checkpoint"):
        CheXbertLabeler(tmp_path / "bad.pth")
