"""The frozen-tower encoding cache of training and the generation-target token cache."""

from __future__ import annotations

import pytest
import torch

from chexcli.model.config import ChexConfig
from chexcli.model.layers import DropPath, MultiheadAttention
from chexcli.model.presets import tiny as tiny_config
from chexcli.model.tiny import build_tiny_model
from chexcli.train.encoding_cache import FrozenEncodingCache, image_digest, is_frozen, shared_cache, tower_digest
from chexcli.train.generation import encode_targets
from chexcli.train.freezing import apply_freezing


@pytest.fixture(scope="module")
def cnn_model(tmp_path_factory):
    d = tiny_config().to_dict()
    d["vision"]["kind"] = "cnn"
    return build_tiny_model(seed=2, tokenizer_dir=tmp_path_factory.mktemp("tok"), config=ChexConfig.from_dict(d))


def _frozen(model):
    apply_freezing(model, {"model": {"trainable": ["detector", "post_decoder"], "image_encoder_trainable_blocks": 0,
                                     "train_text_encoder": False}})
    model.train()
    return model


def test_the_cache_returns_what_the_tower_computes_and_encodes_each_image_once(cnn_model):
    model = _frozen(cnn_model)
    assert is_frozen(model.img_encoder)
    torch.manual_seed(0)
    images = torch.randn(5, 224, 224)
    cache = FrozenEncodingCache()
    first = cache.encode(model, images[[0, 1, 2]])
    second = cache.encode(model, images[[2, 3, 2, 0]])  # image 2 (twice) and 0 known, 3 new
    with torch.no_grad():
        direct = model.encode_image(images[[2, 3, 2, 0]])
    for got, want in ((second.patch_features, direct.patch_features), (second.pos_embeddings, direct.pos_embeddings),
                      (second.global_features, direct.global_features)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert first.patch_features.shape[0] == 3
    assert (cache.misses, cache.hits, len(cache)) == (3 + 1, 3, 4)


def test_a_changed_pixel_is_a_new_entry_and_a_full_cache_still_answers(cnn_model):
    model = _frozen(cnn_model)
    torch.manual_seed(1)
    image = torch.randn(1, 224, 224)
    moved = image.clone()
    moved[0, 100, 100] += 1e-3
    assert image_digest(image[0]) != image_digest(moved[0])
    assert image_digest(image[0]) != image_digest(image[0].double())  # dtype is part of the key
    cache = FrozenEncodingCache(max_bytes=1)  # nothing fits: every image is encoded, none kept
    a = cache.encode(model, image)
    b = cache.encode(model, image)
    torch.testing.assert_close(a.patch_features, b.patch_features)
    assert len(cache) == 0 and cache.misses == 2 and cache.bytes == 0


def test_runs_with_the_same_frozen_tower_share_one_cache(cnn_model):
    """chex demo's stages 1, 2 and 3 load the same pretrained tower: the later stages find the
    images stage 1 encoded; a tower with other weights starts a new cache."""
    model = _frozen(cnn_model)
    torch.manual_seed(2)
    images = torch.randn(3, 224, 224)
    first = shared_cache(model.img_encoder, model.device)
    first.encode(model, images)
    again = shared_cache(model.img_encoder, model.device)  # a later run: same weights, same device
    assert again is first
    before = again.hits
    again.encode(model, images)
    assert again.hits == before + 3
    other = _frozen(build_tiny_model(seed=5, tokenizer_dir=None, config=cnn_model.cfg))
    assert tower_digest(other.img_encoder) != tower_digest(model.img_encoder)
    fresh = shared_cache(other.img_encoder, other.device)
    assert fresh is not first and len(fresh) == 0
    assert shared_cache(model.img_encoder, "meta") is not fresh  # another device, another cache


def test_trainable_or_stochastic_towers_are_not_frozen(cnn_model):
    model = _frozen(cnn_model)
    assert is_frozen(model.img_encoder)
    model.img_encoder.train()  # a frozen ConvTower keeps itself in eval mode...
    assert is_frozen(model.img_encoder)
    torch.nn.Module.train(model.img_encoder.backbone)  # ...forced: batch norm statistics would move
    assert not is_frozen(model.img_encoder)
    model.img_encoder.eval()
    next(model.img_encoder.parameters()).requires_grad_(True)
    assert not is_frozen(model.img_encoder)
    next(model.img_encoder.parameters()).requires_grad_(False)
    drop = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1)).requires_grad_(False)
    assert not is_frozen(drop.train()) and is_frozen(drop.eval())
    assert is_frozen(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.0)).requires_grad_(False).train())
    attention = MultiheadAttention(8, 2, dropout=0.1).requires_grad_(False)
    assert not is_frozen(attention.train()) and is_frozen(attention.eval())
    assert not is_frozen(DropPath(0.2).train()) and is_frozen(DropPath(0.0).train())


def test_token_cache_gives_the_tokenizer_ids(tiny_model):
    tok = tiny_model.gpt2_tokenizer
    texts = ["The lungs are clear.", "There is a small nodule in the left upper lung zone.", "The lungs are clear.", ""]
    ids, mask = encode_targets(tok, texts, 0, 0, 0)
    again, mask2 = encode_targets(tok, texts, 0, 0, 0)
    assert torch.equal(ids, again) and torch.equal(mask, mask2)
    for row, text in enumerate(texts):
        body = tok.encode(text, add_special_tokens=False)
        n = len(body) + 2
        assert ids[row, :n].tolist() == [0, *body, 0]
        assert mask[row].tolist() == [True] * n + [False] * (ids.shape[1] - n)
    short, _ = encode_targets(tok, texts[1:2], 7, 8, 9, max_length=4)
    assert short.tolist() == [[7, *tok.encode(texts[1], add_special_tokens=False)[:2], 8]]  # keeps its end token
    empty, empty_mask = encode_targets(tok, [], 0, 0, 0)
    assert empty.shape == (0, 1) and empty_mask.shape == (0, 1)


def test_digests_from_the_data_loader_key_the_same_entries(cnn_model, synth):
    """A training set with image_digests computes each image's key in the loader worker: the
    batch's x_digest equals what the cache would compute, so the training process need not hash."""
    from chexcli.data.dataset import collate
    from chexcli.train.data_setup import training_dataset

    model = _frozen(cnn_model)
    plain = training_dataset([synth], ["mimiccxr_reports_cig_multiboxclssent"], 224, 0, True, True, "none")
    assert "x_digest" not in plain[0]
    digesting = training_dataset([synth], ["mimiccxr_reports_cig_multiboxclssent"], 224, 0, True, True, "none",
                                 image_digests=True)
    batch = collate([digesting[i] for i in range(4)])
    assert batch["x_digest"] == [image_digest(x) for x in batch["x"]]
    cache = FrozenEncodingCache()
    first = cache.encode(model, batch["x"])  # keys computed here
    second = cache.encode(model, batch["x"], batch["x_digest"])  # keys from the loader: all hits
    assert (cache.misses, cache.hits) == (4, 4)
    torch.testing.assert_close(first.patch_features, second.patch_features)
    with pytest.raises(ValueError, match="3 image digests for 4 images"):
        cache.encode(model, batch["x"], batch["x_digest"][:3])
