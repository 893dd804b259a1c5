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
