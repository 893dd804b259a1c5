"""The convolutional image tower (`vision.kind: cnn`, the `tiny-cnn` preset of `chex demo`)."""

import pytest
import torch

from chexcli.errors import ChexError
from chexcli.model.bundle import load_bundle, save_bundle
from chexcli.model.config import ChexConfig
from chexcli.model.conv_encoder import ConvTower, sincos_positions, stage_channels
from chexcli.model.presets import tiny as tiny_config
from chexcli.model.tiny import build_tiny_model
from chexcli.model.presets import model_config
from chexcli.train.freezing import apply_freezing


def _cnn_config(base: ChexConfig, **vision) -> ChexConfig:
    d = base.to_dict()
    d["vision"].update(kind="cnn", **vision)
    return ChexConfig.from_dict(d)


@pytest.fixture(scope="module")
def cnn_model(tiny_model, tmp_path_factory):
    return build_tiny_model(seed=1, tokenizer_dir=tmp_path_factory.mktemp("tok"), config=_cnn_config(tiny_model.cfg))


def test_stage_channels_follow_width_and_stride():
    cfg = tiny_config().vision
    cfg.kind = "cnn"
    assert stage_channels(cfg) == [16, 32, 64, 64, 64]  # five stride-2 stages for patches of 32
    cfg.patch_size, cfg.image_size = 8, 64
    assert stage_channels(cfg) == [16, 32, 64]


def test_tower_gives_the_vit_interface(cnn_model):
    torch.manual_seed(0)
    enc = cnn_model.encode_image(torch.randn(3, 224, 224))
    assert enc.patch_features.shape == (3, 7, 7, 32)
    assert enc.pos_embeddings.shape == (3, 7, 7, 32)
    assert torch.allclose(enc.pos_embeddings[0].reshape(49, 32), sincos_positions(7, 32))
    assert torch.allclose(enc.global_features, enc.patch_features.mean(dim=(1, 2)))
    three = cnn_model.encode_image(torch.randn(2, 224, 224)[:, None].expand(-1, 3, -1, -1).contiguous())
    assert three.patch_features.shape == (2, 7, 7, 32)
    with pytest.raises(ValueError, match="224x224"):
        cnn_model.encode_image(torch.randn(1, 2, 224, 224))


def test_a_small_bright_spot_changes_only_nearby_cells(cnn_model):
    """Convolutions are local: a spot in one cell moves that cell's feature, not a far one's."""
    x = torch.zeros(1, 224, 224)
    spotted = x.clone()
    spotted[0, 100:110, 100:110] = 3.0  # cell (3, 3)
    with torch.no_grad():
        a, b = cnn_model.encode_image(x).patch_features, cnn_model.encode_image(spotted).patch_features
    change = (a - b).abs().sum(-1)[0]
    assert change[3, 3] > 0 and change[0, 0] == 0 and change[6, 6] == 0


def test_bundle_round_trip_keeps_outputs_and_batch_norm_statistics(cnn_model, tmp_path):
    with torch.no_grad():
        cnn_model.img_encoder.backbone.stages[0][1].running_mean.fill_(0.25)
    folder = save_bundle(cnn_model, tmp_path / "cnn")
    loaded = load_bundle(folder)
    assert loaded.cfg.vision.kind == "cnn"
    assert torch.equal(loaded.img_encoder.backbone.stages[0][1].running_mean,
                       cnn_model.img_encoder.backbone.stages[0][1].running_mean)
    x = torch.randn(2, 224, 224)
    prompts = cnn_model.encode_sentences(["left lung"])
    with torch.no_grad():
        a = cnn_model.eval().detect_prompts(x, prompts)
        b = loaded.detect_prompts(x, prompts)
    assert torch.allclose(a.boxes, b.boxes, atol=1e-6) and torch.allclose(a.box_features, b.box_features, atol=1e-6)


def test_frozen_tower_keeps_its_statistics_in_training(cnn_model):
    tower: ConvTower = cnn_model.img_encoder.backbone
    cnn_model.requires_grad_(True)
    cnn_model.train()
    assert tower.training and tower.stages[0][1].training
    cnn_model.img_encoder.requires_grad_(False)
    cnn_model.train()
    assert not tower.training and not tower.stages[0][1].training
    before = tower.stages[0][1].running_mean.clone()
    cnn_model.encode_image(torch.randn(2, 224, 224) + 5)
    assert torch.equal(before, tower.stages[0][1].running_mean)
    cnn_model.requires_grad_(False)
    cnn_model.eval()


@pytest.mark.parametrize("blocks, trained_stages", [(0, []), (2, [3, 4]), (5, [0, 1, 2, 3, 4])])
def test_freezing_counts_stages_as_blocks(cnn_model, blocks, trained_stages):
    recipe = {"model": {"trainable": ["img_encoder", "detector"], "image_encoder_trainable_blocks": blocks,
                        "train_ln_pre": True}}
    names = apply_freezing(cnn_model, recipe)
    stages = sorted({int(n.split(".")[3]) for n in names if n.startswith("img_encoder.backbone.stages.")})
    assert stages == trained_stages
    assert any(n.startswith("img_encoder.backbone.proj") for n in names) == (blocks >= 5)
    assert any(n.startswith("detector.") for n in names)
    cnn_model.requires_grad_(False)


def test_positions_are_added_to_the_patch_features(cnn_model):
    """A uniform image gives every inner cell the same convolution output, so the cells differ
    exactly by their sine-cosine positions (a box pooled anywhere knows its place)."""
    with torch.no_grad():
        feats = cnn_model.encode_image(torch.zeros(1, 224, 224)).patch_features[0]  # (7, 7, 32)
    content = feats - sincos_positions(7, 32).view(7, 7, 32)
    inner = content[1:-1, 1:-1].reshape(-1, 32)  # cells whose 3x3 windows see no padding
    assert torch.allclose(inner, inner[:1].expand_as(inner), atol=1e-5)
    assert not torch.allclose(feats[1, 1], feats[1, 2], atol=1e-3)


def test_preset_and_config_validation():
    cfg = model_config("tiny-cnn", clip_vocab_size=300, gpt2_vocab_size=300, eos_token_id=0)
    assert cfg.vision.kind == "cnn" and model_config("tiny", 300, 300, 0).vision.kind == "vit"
    d = cfg.to_dict()
    d["vision"]["kind"] = "resnet"
    with pytest.raises(ValueError, match="vision.kind must be one of vit, cnn"):
        ChexConfig.from_dict(d)
    d["vision"].update(kind="cnn", patch_size=28)
    with pytest.raises(ValueError, match="power of two"):
        ChexConfig.from_dict(d)
    old = cfg.to_dict()
    del old["vision"]["kind"]  # bundles written before the option load as the ViT
    assert ChexConfig.from_dict(old).vision.kind == "vit"


def test_unknown_preset_names_tiny_cnn():
    with pytest.raises(ChexError, match="tiny-cnn"):
        model_config("huge", 300, 300, 0)
