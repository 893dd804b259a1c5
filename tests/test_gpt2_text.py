"""GPT-2 tokenizer helpers: offline loading, reference decoding, tiny tokenizer training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from chexcli.errors import ChexError
from chexcli.model.gpt2_text import (
    EOS_TOKEN,
    build_tiny_gpt2_tokenizer,
    clean_up_tokenization,
    decode_generated,
    load_gpt2_tokenizer,
)

PARITY = Path(__file__).resolve().parents[1].parent / "shared/reference/parity"
GPT2_TINY = PARITY / "gpt2_tiny"
needs_fixture = pytest.mark.skipif(
    not (GPT2_TINY / "tokenizer.json").is_file(), reason=f"parity fixture absent: {GPT2_TINY}"
)

CORPUS = [
    "The heart size is normal. The lungs are clear.",
    "No pleural effusion or pneumothorax.",
    "There is a small left pleural effusion, with basilar atelectasis.",
    "Mild cardiomegaly? It's stable; there's no focal consolidation.",
] * 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_gpt2_tokenizer(CORPUS, vocab_size=300, folder=tmp_path_factory.mktemp("gpt2"))


def test_clean_up_replacements():
    assert clean_up_tokenization("a . b ? c ! d , e ' f") == "a. b? c! d, e'f"
    assert clean_up_tokenization("do n't I 'm it 's we 've they 're") == "don't I'm it's we've they're"
    assert clean_up_tokenization("  keeps  spaces ") == "  keeps  spaces "


def test_tiny_tokenizer_layout(tiny):
    assert len(tiny) == 300
    assert tiny.convert_tokens_to_ids(EOS_TOKEN) == 0
    assert tiny.eos_token_id == tiny.bos_token_id == tiny.pad_token_id == 0
    ids = tiny("The lungs are clear.")["input_ids"]
    assert 0 not in ids and len(ids) < len("The lungs are clear.")


def test_tiny_tokenizer_files_and_reload(tmp_path):
    tok = build_tiny_gpt2_tokenizer(CORPUS, vocab_size=280, folder=tmp_path / "t")
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / "t" / name).is_file(), name
    # vocab.json + merges.txt alone give the same ids and text
    (tmp_path / "vm").mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tmp_path / "t" / name, tmp_path / "vm" / name)
    alt = load_gpt2_tokenizer(tmp_path / "vm")
    text = "The heart size is normal, no effusion."
    assert alt(text)["input_ids"] == tok(text)["input_ids"]
    assert alt.eos_token_id == 0 and alt.pad_token_id == 0
    assert decode_generated(alt, [tok(text)["input_ids"]]) == [text]


def test_decode_skips_specials_and_cleans(tiny):
    ids = tiny("The heart size is normal . No effusion , it ' s stable !")["input_ids"]
    rows = [[0] + ids + [0, 0, 0], [0, 0]]
    assert decode_generated(tiny, rows) == ["The heart size is normal. No effusion, it's stable!", ""]
    assert decode_generated(tiny, torch.tensor([[0] + ids[:3] + [0]])) == [tiny.decode(ids[:3])]
    assert decode_generated(tiny, ids) == decode_generated(tiny, [ids])  # a flat row
    assert decode_generated(tiny, []) == []
    with pytest.raises(ChexError):
        decode_generated(tiny, [[99999]])


def test_decode_no_strip_and_invalid_utf8(tiny):
    space = tiny.convert_tokens_to_ids("Ġ")  # byte 0x20
    lead = tiny.convert_tokens_to_ids("ã")  # byte 0xE3: a 3-byte UTF-8 lead byte
    assert decode_generated(tiny, [[0, space, lead, space, 0]]) == [" \ufffd "]
    # a complete multi-byte sequence split over pieces still decodes
    snow = [tiny.convert_tokens_to_ids(c) for c in "âĺĥ"]  # U+2603 = E2 98 83
    assert decode_generated(tiny, [snow]) == ["\u2603"]


def test_load_errors(tmp_path):
    with pytest.raises(ChexError, match="not found"):
        load_gpt2_tokenizer(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "vocab.json").write_text("{}")
    with pytest.raises(ChexError, match="vocab.json \\+ merges.txt or tokenizer.json"):
        load_gpt2_tokenizer(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{not json")
    with pytest.raises(ChexError, match="cannot read"):
        load_gpt2_tokenizer(tmp_path / "broken")
    with pytest.raises(ChexError):
        build_tiny_gpt2_tokenizer(CORPUS, vocab_size=100, folder=tmp_path / "small")


# ---------------------------------------------------------------- parity fixture
def _records(sections=("generate_detected", "generate_regions")):
    data = json.loads((PARITY / "expected/outputs.json").read_text())
    for section in sections:
        for variant, entry in data[section].items():
            flat = [s for image in entry["sentences"] for s in image]
            assert len(flat) == len(entry["records"])
            yield f"{section}/{variant}", entry["records"], flat


@needs_fixture
def test_parity_fixture_tokenizer_loads():
    tok = load_gpt2_tokenizer(GPT2_TINY)
    assert len(tok) == 2048
    assert tok.eos_token_id == tok.bos_token_id == tok.pad_token_id == 0
    assert tok.model_max_length == 1024


@needs_fixture
def test_parity_decoding_matches_reference_sentences():
    tok = load_gpt2_tokenizer(GPT2_TINY)
    n = 0
    n_fffd = 0
    for name, records, sentences in _records():
        got = decode_generated(tok, [r["output_ids"] for r in records])
        assert got == sentences, name
        assert decode_generated(tok, [r["generated_ids"] for r in records]) == sentences, name
        n += len(sentences)
        n_fffd += sum("\ufffd" in s for s in sentences)
    assert n == 94
    assert n_fffd > 0  # the fixture exercises invalid UTF-8 pieces


@needs_fixture
def test_parity_decoding_from_vocab_and_merges(tmp_path):
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(GPT2_TINY / name, tmp_path / name)
    tok = load_gpt2_tokenizer(tmp_path)
    assert len(tok) == 2048 and tok.eos_token_id == 0
    for name, records, sentences in _records(("generate_detected",)):
        assert decode_generated(tok, [r["output_ids"] for r in records]) == sentences, name
