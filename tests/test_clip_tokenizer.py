"""CLIP BPE tokenizer: tiny vocabularies, HF folder loading, bundle round trip, parity fixture."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest
import torch

from chexcli.errors import ChexError
from chexcli.model.clip_tokenizer import BUNDLE_FILE, ClipTokenizer, byte_encoder, byte_symbols

PARITY = Path(__file__).resolve().parents[1].parent / "shared/reference/parity"
VOCAB_FILE = PARITY / "clip_bpe/bpe_simple_vocab_16e6.txt.gz"
needs_vocab = pytest.mark.skipif(not VOCAB_FILE.is_file(), reason=f"parity fixture absent: {VOCAB_FILE}")

TEXTS = [
    "Left lung opacity",
    "Pleural effusion in the left lower lung",
    "The heart size is enlarged; cardiomegaly.",
    "No pleural effusion or pneumothorax.",
    "Lungs are clear. Heart size normal.",
]


@pytest.fixture(scope="module")
def full() -> ClipTokenizer:
    if not VOCAB_FILE.is_file():
        pytest.skip(f"parity fixture absent: {VOCAB_FILE}")
    return ClipTokenizer.from_pretrained_file(VOCAB_FILE)


def write_hf_folder(folder: Path, tok: ClipTokenizer) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(tok.encoder), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in tok.merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_byte_map_is_a_bijection_with_printables_first():
    enc = byte_encoder()
    assert len(enc) == 256 and len(set(enc.values())) == 256
    assert enc[ord("a")] == "a" and enc[ord("!")] == "!"
    assert enc[ord(" ")] == chr(256 + 32)  # bytes 0..32 are the first non-printables
    syms = byte_symbols()
    assert syms[0] == "!" and syms[93] == "~" and syms[94] == "¡"
    assert " " not in syms


def test_tiny_vocabulary_layout_and_size():
    tok = ClipTokenizer.build_tiny(TEXTS, n_merges=40)
    assert len(tok.merges) == 40
    assert tok.vocab_size == 512 + 40 + 2
    assert tok.sot_token_id == 552 and tok.eot_token_id == 553
    assert tok.encoder["a"] == byte_symbols().index("a")
    assert tok.encoder["a</w>"] == 256 + byte_symbols().index("a")
    a, b = tok.merges[0]
    assert tok.encoder[a + b] == 512


def test_tiny_merges_are_learned_and_used():
    tok = ClipTokenizer.build_tiny(TEXTS, n_merges=60)
    toks = tok.tokenize("pleural effusion")
    assert len(toks) < len("pleuraleffusion")  # some merges applied
    assert "".join(toks).replace("</w>", " ").strip() == "pleural effusion"
    assert toks[-1].endswith("</w>")
    assert tok.decode(tok.encode("Pleural effusion.")) == "pleural effusion . "


def test_build_tiny_stops_when_pairs_run_out():
    tok = ClipTokenizer.build_tiny(["ab"], n_merges=10)
    assert tok.merges == [("a", "b</w>")]
    assert tok.vocab_size == 512 + 1 + 2
    with pytest.raises(ChexError):
        ClipTokenizer.build_tiny(["ab"], n_merges=-1)


def test_normalisation_and_pretokenisation():
    tok = ClipTokenizer([])
    # lower-case, whitespace collapse, html unescape twice
    assert tok.tokenize("  A \t\n B  ") == ["a</w>", "b</w>"]
    assert tok.tokenize("x &amp;amp; y") == ["x</w>", "&</w>", "y</w>"]
    # digits are single pieces, punctuation runs stay together, contractions split off
    assert tok.tokenize("12") == ["1</w>", "2</w>"]
    assert tok.tokenize("?!") == ["?", "!</w>"]
    assert tok.tokenize("don't") == ["d", "o", "n</w>", "'", "t</w>"]
    # special tokens survive as single ids
    assert tok.encode("<|endoftext|>") == [tok.eot_token_id]
    assert tok.encode("a <|startoftext|>") == [tok.encoder["a</w>"], tok.sot_token_id]


def test_non_ascii_round_trip():
    tok = ClipTokenizer.build_tiny(TEXTS, n_merges=10)
    text = "naïve café ☃ 北京"
    assert tok.decode(tok.encode(text)) == "naïve café ☃ 北京 "


def test_call_pads_and_truncates(caplog):
    tok = ClipTokenizer.build_tiny(TEXTS, n_merges=30)
    ids = tok(["left lung", ""])
    assert ids.dtype == torch.long and ids.shape == (2, 77)
    n = len(tok.encode("left lung"))
    assert ids[0, 0] == tok.sot_token_id and ids[0, n + 1] == tok.eot_token_id
    assert torch.all(ids[0, n + 2 :] == 0)
    assert ids[1, :2].tolist() == [tok.sot_token_id, tok.eot_token_id]
    long_text = " ".join(["z"] * 100)
    with caplog.at_level(logging.WARNING, logger="chexcli.model.clip_tokenizer"):
        out = tok(long_text)
    assert out.shape == (1, 77)
    assert out[0, -1] == tok.eot_token_id and out[0, 0] == tok.sot_token_id
    assert out[0, 1:76].tolist() == [tok.encoder["z</w>"]] * 75
    assert any("truncated" in r.getMessage() for r in caplog.records)
    assert tok("abc", context_length=5).shape == (1, 5)
    with pytest.raises(ChexError):
        tok.encode(3)


def test_hf_folder_gives_same_ids(tmp_path):
    tok = ClipTokenizer.build_tiny(TEXTS, n_merges=50)
    write_hf_folder(tmp_path / "hf", tok)
    hf = ClipTokenizer.from_hf_folder(tmp_path / "hf")
    assert hf.merges == tok.merges and hf.vocab_size == tok.vocab_size
    for text in TEXTS + ["unseen words, 42!"]:
        assert hf.encode(text) == tok.encode(text)
    assert torch.equal(hf(TEXTS), tok(TEXTS))


def test_hf_folder_errors(tmp_path):
    with pytest.raises(ChexError, match="merges.txt"):
        (tmp_path / "a").mkdir()
        (tmp_path / "a" / "vocab.json").write_text("{}")
        ClipTokenizer.from_hf_folder(tmp_path / "a")
    tok = ClipTokenizer.build_tiny(TEXTS, n_merges=5)
    write_hf_folder(tmp_path / "b", tok)
    vocab = json.loads((tmp_path / "b" / "vocab.json").read_text())
    key = next(iter(vocab))
    vocab[key] += 1
    (tmp_path / "b" / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ChexError, match="does not match"):
        ClipTokenizer.from_hf_folder(tmp_path / "b")


def test_save_load_round_trip_tiny(tmp_path):
    tok = ClipTokenizer.build_tiny(TEXTS, n_merges=25)
    path = tok.save(tmp_path / "bundle")
    assert path == tmp_path / "bundle" / BUNDLE_FILE
    again = ClipTokenizer.load(tmp_path / "bundle")
    assert again.merges == tok.merges
    assert torch.equal(again(TEXTS), tok(TEXTS))
    with pytest.raises(ChexError, match=BUNDLE_FILE):
        ClipTokenizer.load(tmp_path / "nowhere")


def test_bad_vocab_files(tmp_path):
    with pytest.raises(ChexError, match="not found"):
        ClipTokenizer.from_pretrained_file(tmp_path / "missing.txt.gz")
    notgz = tmp_path / "plain.txt.gz"
    notgz.write_text("not gzip")
    with pytest.raises(ChexError):
        ClipTokenizer.from_pretrained_file(notgz)
    bad = tmp_path / "bad.txt.gz"
    with gzip.open(bad, "wt") as fh:
        fh.write("#version\na b c\n")
    with pytest.raises(ChexError, match="malformed"):
        ClipTokenizer.from_pretrained_file(bad)


# ---------------------------------------------------------------- official vocabulary / parity fixture
@needs_vocab
def test_official_vocabulary_layout(full):
    assert len(full.merges) == 48894
    assert full.vocab_size == 49408
    assert full.sot_token_id == 49406 and full.eot_token_id == 49407
    assert full.encoder["<|startoftext|>"] == 49406
    assert full.encoder["<|endoftext|>"] == 49407


@needs_vocab
def test_parity_prompt_token_ids(full):
    expected_json = json.loads((PARITY / "expected/outputs.json").read_text())["prompts"]
    expected = torch.load(PARITY / "expected/outputs.pt", weights_only=True)["prompts/clip_token_ids"]
    ids = full(expected_json["flattened"])
    assert ids.dtype == expected.dtype == torch.long
    assert torch.equal(ids, expected)
    nonzero = [[i for i in row if i != 0] for row in ids.tolist()]
    assert nonzero == expected_json["clip_token_ids_nonzero"]


@needs_vocab
def test_official_bundle_copies_file(full, tmp_path):
    path = full.save(tmp_path)
    assert path.read_bytes() == VOCAB_FILE.read_bytes()
    again = ClipTokenizer.load(tmp_path)
    assert again.vocab_size == 49408
    assert again.encode("Opacity in the right lower lung") == full.encode("Opacity in the right lower lung")


@needs_vocab
def test_official_matches_transformers_clip_tokenizer(full, tmp_path):
    """Cross-check byte map + BPE against transformers' independent CLIP tokenizer.

    Only for text that ftfy / HTML unescaping leave alone (HF normalises differently).
    """
    transformers = pytest.importorskip("transformers")
    write_hf_folder(tmp_path / "hf", full)
    assert ClipTokenizer.from_hf_folder(tmp_path / "hf").encoder == full.encoder
    hf = transformers.CLIPTokenizer.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    for text in [
        "Opacity in the right lower lung",
        "Héllo   World!! 123 don't ☃ Ünïcödé",
        "naïve café — quoted ½ 北京 😀 tab\there Ω ß µm² 10.5cm",
        "Pneumothorax; s/p CABG (sternotomy wires) #3 @ 50%",
    ]:
        assert full.encode(text) == hf(text, add_special_tokens=False)["input_ids"], text
