"""Generation-target sampling, the per-step prompt-bank memo, the CLIP id cache and the skip knob."""

from __future__ import annotations

import pytest
import torch

from chexcli.model.clip_tokenizer import ClipTokenizer
from chexcli.model.presets import tiny as tiny_config
from chexcli.train.generation import subsample_rows
from chexcli.train.prompts import PromptBank


def _share_of_rare(mode: str, draws: int = 400) -> float:
    texts = ["The lungs are clear."] * 90 + [f"Nodule {k}." for k in range(10)]
    torch.manual_seed(0)
    rare = 0
    for _ in range(draws):
        keep = subsample_rows(len(texts), 10, "cpu", texts, mode)
        assert keep.tolist() == sorted(set(keep.tolist())) and len(keep) == 10  # sorted, no repeats
        rare += int((keep >= 90).sum())
    return rare / (10 * draws)


def test_uniform_sampling_follows_the_rows_and_balanced_the_distinct_texts():
    uniform, balanced = _share_of_rare("uniform"), _share_of_rare("balanced")
    assert 0.07 < uniform < 0.13  # 10 of 100 rows
    assert balanced > 0.6  # 10 of 11 distinct texts, without replacement
    assert subsample_rows(5, 10, "cpu", ["a"] * 5, "balanced").tolist() == [0, 1, 2, 3, 4]


def test_unknown_sampling_mode_is_refused():
    with pytest.raises(ValueError, match="uniform, balanced"):
        subsample_rows(5, 2, "cpu", ["a"] * 5, "rare")
    with pytest.raises(ValueError, match="uniform, balanced"):  # also when every row would be kept
        subsample_rows(2, 5, "cpu", ["a"] * 2, "rare")
    with pytest.raises(ValueError, match="needs the target texts"):
        subsample_rows(5, 2, "cpu", None, "balanced")


class _CountingModel:
    def __init__(self):
        self.calls = 0
        self.scale = 1.0

    def encode_sentences(self, texts):
        self.calls += 1
        return torch.stack([torch.full((3,), self.scale * len(t)) for t in texts])


def test_prompt_bank_embeds_the_synonym_mean_once_per_step():
    bank = PromptBank(["a", "b"], [{"a": ["x", "xxx"], "b": ["yy"]}], {})
    model = _CountingModel()
    first = bank.embed(model, randomize=False)
    assert torch.equal(first, torch.tensor([[2.0] * 3, [2.0] * 3]))
    model.scale = 10.0  # the text tower changed, but within one step the memo is used
    assert torch.equal(bank.embed(model, randomize=False), first) and model.calls == 1
    bank.new_step()
    assert torch.equal(bank.embed(model, randomize=False), 10 * first) and model.calls == 2
    bank.embed(model, randomize=True)
    bank.embed(model, randomize=True)
    assert model.calls == 4  # random synonyms are drawn per call, never memoised


def test_clip_id_cache_returns_fresh_lists():
    tok = ClipTokenizer.build_tiny(["left lung opacity", "right lung"], n_merges=20)
    ids = tok.encode("left lung")
    ids.append(999)
    assert tok.encode("left lung") == ids[:-1]
    batch = tok(["left lung", "left lung", ""], context_length=8)
    assert batch.shape == (3, 8) and torch.equal(batch[0], batch[1])
    assert tok([], context_length=8).shape == (0, 8)


def test_dropout_and_skip_settings_come_from_the_recipe():
    from chexcli.model.chex import ChEX
    from chexcli.train.model_setup import regularised

    cfg = tiny_config(clip_vocab_size=64, gpt2_vocab_size=64)
    model = ChEX(regularised(cfg, {"skip_roi_pool_prob": 1.0, "dropout_scale": 0.5}))
    assert model.detector.skip_roi_pool_prob == 1.0
    assert model.detector.skip_con_dropout.p == 0.3 * 0.5
    assert model.txt_decoder.language_model.transformer.drop.p == 0.1 * 0.5
    model = ChEX(regularised(cfg, {}))
    assert model.detector.skip_roi_pool_prob == 0.25  # the reference's
    assert model.post_decoder.drop_prob == 0.1 and model.detector.skip_con_dropout.p == 0.3
