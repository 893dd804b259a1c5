"""--dtype float16/int8: the generator runs with compact weights; boxes and scores stay exactly float32."""

import copy

import pytest
import torch

from chexcli.errors import ChexError
from chexcli.model.quantize import apply_dtype


@pytest.mark.parametrize("dtype, tolerance", [("int8", 0.05), ("float16", 0.002)])
@torch.inference_mode()
def test_compact_generator_keeps_boxes_and_generates(tiny_model, dtype, tolerance):
    quant = apply_dtype(copy.deepcopy(tiny_model), dtype)
    torch.manual_seed(0)
    x = torch.randn(1, 224, 224)
    prompts = tiny_model.encode_sentences(["left lung opacity", "heart"])
    a = tiny_model.detect_prompts(x, prompts)
    b = quant.detect_prompts(x, prompts)
    assert torch.equal(a.boxes, b.boxes) and torch.equal(a.box_features, b.box_features)
    lm_a, lm_b = tiny_model.txt_decoder.language_model, quant.txt_decoder.language_model
    ids = torch.tensor([[1, 5, 9, 2]])
    pos = torch.arange(4)[None]
    ref, got = lm_a(ids, pos), lm_b(ids, pos)
    assert (got - ref).abs().mean() < tolerance * ref.std()  # close on average, not equal
    assert not torch.equal(got, ref)
    out = quant.generate(a.box_features[0], max_new_tokens=4)
    assert len(out) == 2 and all(len(g.ids) <= 4 for g in out)


def test_unknown_dtype(tiny_model):
    with pytest.raises(ChexError, match="unknown dtype"):
        apply_dtype(tiny_model, "fp8")


@pytest.mark.parametrize("dtype", ["float16", "int8"])
@torch.inference_mode()
def test_loading_a_bundle_compact_equals_converting_after_loading(tiny_bundle, dtype):
    from chexcli.model.bundle import load_bundle

    streamed = load_bundle(tiny_bundle, dtype=dtype)
    converted = apply_dtype(load_bundle(tiny_bundle), dtype)
    assert not any(p.is_meta for p in streamed.parameters())
    feats = torch.randn(3, streamed.cfg.d_model)
    assert [g.ids for g in streamed.generate(feats, max_new_tokens=5)] == \
        [g.ids for g in converted.generate(feats, max_new_tokens=5)]


def test_chunked_rows_equal_one_block(monkeypatch):
    from chexcli.model import quantize

    torch.manual_seed(0)
    w, b, x = torch.randn(10, 6), torch.randn(10), torch.randn(2, 6)
    whole = quantize.CompactLinear(lambda a, c: w[a:c], 10, b, "float16")
    monkeypatch.setattr(quantize, "CHUNK_ROWS", 3)
    chunked = quantize.CompactLinear(lambda a, c: w[a:c], 10, b, "float16")
    assert len(chunked.chunks) == 4
    assert torch.allclose(whole(x), chunked(x), atol=1e-6)
    assert torch.allclose(chunked(x), x @ w.t() + b, atol=1e-2)
