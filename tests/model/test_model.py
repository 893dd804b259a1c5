"""Behaviour of the composed model on a tiny random ChEX."""

import math

import pytest
import torch
from torch import nn

from chexcli.model.config import GeneratorConfig
from chexcli.model.generator import SentenceGenerator
from chexcli.model.gpt2 import GPT2LanguageModel


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.randn(2, 224, 224)


@torch.inference_mode()
def test_shapes_of_every_output(tiny_model, images):
    d, r = tiny_model.cfg.d_model, tiny_model.cfg.detector.multiregions
    enc = tiny_model.encode_image(images)
    assert enc.patch_features.shape == (2, 7, 7, d)
    assert enc.pos_embeddings.shape == (2, 7, 7, d)
    assert torch.equal(enc.pos_embeddings[0], enc.pos_embeddings[1])  # image independent
    prompts = tiny_model.encode_sentences(["left lung opacity", "heart", "pleural effusion"])
    out = tiny_model.detect_prompts(enc, prompts)
    assert out.boxes.shape == (2, 3, 4) and out.multiboxes.shape == (2, 3, r, 4)
    assert out.box_features.shape == (2, 3, d) and out.multiboxes_features.shape == (2, 3, r, d)
    assert out.boxes_weights.shape == out.box_mask.shape == out.boxes_present.shape == (2, 3)
    assert bool(((out.boxes >= 0) & (out.boxes <= 1)).all())
    # absent queries get the all-zero box
    assert bool((out.boxes[~out.boxes_present] == 0).all())
    regions = tiny_model.encode_regions(enc, torch.tensor([[[0.5, 0.5, 0.4, 0.4]]] * 2))
    assert regions.shape == (2, 1, d)


@torch.inference_mode()
def test_queries_are_independent_without_mask_and_coupled_with_one(tiny_model, images):
    enc = tiny_model.encode_image(images)
    prompts = tiny_model.encode_sentences(["left lung", "right lower lung opacity"])
    joint = tiny_model.detect_prompts(enc, prompts, use_post_decoder=False)
    alone = tiny_model.detect_prompts(enc, prompts[:1], use_post_decoder=False)
    assert torch.allclose(joint.multiboxes[:, :1], alone.multiboxes, atol=1e-6)
    masked = tiny_model.detect_prompts(enc, prompts, mask=torch.ones(2, dtype=torch.bool), use_post_decoder=False)
    assert not torch.allclose(masked.multiboxes, joint.multiboxes, atol=1e-5)
    # a padded query slot changes nothing for the others' own-block masking, and gets zeroed
    mask = torch.tensor([[True, False], [True, False]])
    padded = tiny_model.detect_prompts(enc, prompts, mask=mask, use_post_decoder=False)
    assert bool((padded.multiboxes[:, 1] == 0).all()) and not bool(padded.box_mask[:, 1].any())


@torch.inference_mode()
def test_inference_is_deterministic(tiny_model, images):
    prompts = tiny_model.encode_sentences(["cardiomegaly"])
    a = tiny_model.detect_prompts(images, prompts)
    b = tiny_model.detect_prompts(images, prompts)
    assert torch.equal(a.box_features, b.box_features)
    keep = torch.tensor([[[True, False, True]]]).expand(2, 1, 3)
    dropped = tiny_model.detect_prompts(images, prompts, keep_multibox=keep)
    assert torch.equal(dropped.boxes, a.boxes)  # boxes come from the detector
    assert not torch.allclose(dropped.box_features, a.box_features)


@torch.inference_mode()
def test_multiregion_weighting_and_aggregation(tiny_model):
    det = tiny_model.detector

    class FirstChannelLogit(nn.Module):
        def forward(self, x):
            return x[..., :1]

    original = det.multiregion_weight_mlp
    det.multiregion_weight_mlp = FirstChannelLogit()
    try:
        logit = lambda p: math.log(p / (1 - p))  # noqa: E731
        w = [[0.9, 0.6, 0.2], [0.3, 0.2, 0.1]]
        feats = torch.zeros(1, 2, 3, 4)
        for q in range(2):
            for r in range(3):
                feats[0, q, r, 0] = logit(w[q][r])
                feats[0, q, r, 1] = r + 1.0
        boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.2, 0.4], [0.5, 0.5, 0.1, 0.1]]).expand(1, 2, 3, 4)
        out = det._aggregate(boxes, feats, None)
    finally:
        det.multiregion_weight_mlp = original
    # query 0: weights sum to 1.7 > 1 -> normalised by 1.7
    assert out.boxes_weights[0, 0].item() == pytest.approx((0.81 + 0.36 + 0.04) / 1.7, rel=1e-5)
    assert out.box_features[0, 0, 1].item() == pytest.approx((0.9 * 1 + 0.6 * 2 + 0.2 * 3) / 1.7, rel=1e-5)
    assert bool(out.boxes_present[0, 0]) and out.multiboxes_present[0, 0].tolist() == [True, True, False]
    assert torch.allclose(out.boxes[0, 0], torch.tensor([0.45, 0.45, 0.5, 0.5]), atol=1e-6)
    # query 1: weights sum to 0.6 < 1 -> used as they are; nothing present -> zero box
    assert out.boxes_weights[0, 1].item() == pytest.approx(0.09 + 0.04 + 0.01, rel=1e-5)
    assert out.box_features[0, 1, 1].item() == pytest.approx(0.3 * 1 + 0.2 * 2 + 0.1 * 3, rel=1e-5)
    assert not bool(out.boxes_present[0, 1]) and bool((out.boxes[0, 1] == 0).all())


@torch.inference_mode()
def test_box_prompts_are_independent_without_region_mask(tiny_model, images):
    boxes = torch.tensor([[[0.3, 0.5, 0.3, 0.6], [0.7, 0.5, 0.3, 0.6]]]).expand(2, 2, 4)
    both = tiny_model.encode_regions(images, boxes)
    one = tiny_model.encode_regions(images, boxes[:, 1:])
    assert torch.allclose(both[:, 1:], one, atol=1e-5)
    masked = tiny_model.encode_regions(images, boxes, mask=torch.ones(2, 2, dtype=torch.bool))
    assert not torch.allclose(masked, both, atol=1e-5)


def test_gpt2_matches_transformers():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GeneratorConfig(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    torch.manual_seed(0)
    ours = GPT2LanguageModel(cfg).eval()
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                    activation_function="gelu_new")).eval()
    missing, unexpected = hf.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all("lm_head" in k or "attn.bias" in k or "masked_bias" in k for k in missing)
    hf.tie_weights()
    ids = torch.tensor([[5, 17, 3, 90, 41, 2]])
    pos = torch.arange(6)[None]
    with torch.inference_mode():
        assert torch.allclose(ours(ids, pos), hf(ids).logits, atol=1e-5)


def test_cached_decoding_equals_full_forward():
    cfg = GeneratorConfig(vocab_size=50, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                          bos_token_id=0, eos_token_id=0, pad_token_id=0, max_length=12)
    torch.manual_seed(3)
    gen = SentenceGenerator(cfg, d_model=16).eval()
    with torch.no_grad():
        gen.language_model.transformer.wte.weight[0].mul_(0.0)  # make EOS unlikely
    feats = torch.randn(3, 16)
    out = gen.generate(feats)
    with torch.inference_mode():
        keys, values = gen.prefix(feats[:1])
        seq = [0] + out[0].ids
        from chexcli.model.gpt2 import KVCache

        cache = KVCache.from_prefix(keys, values, capacity=5 + len(seq))
        ids = torch.tensor([seq])
        logits = gen.language_model(ids, torch.arange(len(seq))[None], cache)
    assert logits[0, :-1].argmax(-1).tolist() == out[0].ids  # teacher forcing reproduces greedy ids
    assert len(out[0].ids) <= cfg.max_length - 1
    limited = gen.generate(feats, max_new_tokens=4)
    assert all(len(g.ids) <= 4 for g in limited)
    one_by_one = [gen.generate(feats[i:i + 1])[0].ids for i in range(3)]
    assert one_by_one == [g.ids for g in out]


def test_min_new_tokens_suppresses_end_of_text():
    cfg = GeneratorConfig(vocab_size=20, n_positions=64, n_embd=16, n_layer=1, n_head=2,
                          bos_token_id=0, eos_token_id=0, pad_token_id=0, max_length=30)
    torch.manual_seed(0)
    gen = SentenceGenerator(cfg, d_model=8).eval()
    with torch.no_grad():
        gen.language_model.transformer.wte.weight[0].mul_(50.0)  # EOS dominates
    feats = torch.randn(2, 8)
    assert all(g.ids == [] and g.ended_with_eos for g in gen.generate(feats))
    forced = gen.generate(feats, min_new_tokens=5, max_new_tokens=5)
    assert all(len(g.ids) == 5 for g in forced)


def test_prefix_layout_follows_position_layer_kv_head_dim_order():
    cfg = GeneratorConfig(vocab_size=20, n_positions=16, n_embd=8, n_layer=3, n_head=2,
                          bos_token_id=0, eos_token_id=0, pad_token_id=0, prefix_length_factor=2)
    gen = SentenceGenerator(cfg, d_model=4).eval()
    flat = torch.arange(2 * 3 * 2 * 2 * 4, dtype=torch.float32)[None]
    gen.prefix_proj = nn.Identity()
    keys, values = gen.prefix(flat)

    def idx(p, layer, kv, h, dd):
        return (((p * 3 + layer) * 2 + kv) * 2 + h) * 4 + dd

    assert keys[2][0, 1, 1, 3].item() == idx(1, 2, 0, 1, 3)
    assert values[0][0, 0, 1, 2].item() == idx(1, 0, 1, 0, 2)


def test_kv_cache_grows_without_changing_results():
    from chexcli.model.gpt2 import KVCache

    cfg = GeneratorConfig(vocab_size=40, n_positions=128, n_embd=16, n_layer=2, n_head=2,
                          bos_token_id=0, eos_token_id=0, pad_token_id=0, max_length=100)
    torch.manual_seed(2)
    gen = SentenceGenerator(cfg, d_model=8).eval()
    feats = torch.randn(2, 8)
    long = gen.generate(feats, min_new_tokens=70, max_new_tokens=70)  # beyond the initial 32 positions
    with torch.inference_mode():
        keys, values = gen.prefix(feats[:1])
        cache = KVCache.from_prefix(keys, values, capacity=5 + 71)  # preallocated: no growth
        seq = torch.tensor([[0] + long[0].ids])
        logits = gen.language_model(seq, torch.arange(seq.shape[1])[None], cache)
    logits = logits.clone()
    logits[..., cfg.eos_token_id] = float("-inf")  # as min_new_tokens did during decoding
    teacher = logits[0, :-1].argmax(-1).tolist()
    assert len(long[0].ids) == 70
    assert teacher == long[0].ids  # every greedy id reproduced: growing the cache kept its contents
    assert cache.keys[0].shape[2] == 76
