"""Bundle save/load: identical outputs, and one-line errors for broken bundles."""

import json
import shutil

import pytest
import torch

from chexcli.errors import ChexError
from chexcli.model.bundle import CONFIG_FILE, WEIGHTS_FILE, load_bundle, read_bundle_config, save_bundle
from chexcli.model.presets import tiny as tiny_config


@torch.inference_mode()
def _outputs(model):
    torch.manual_seed(5)
    x = torch.randn(1, 224, 224)
    prompts = model.encode_sentences(["left lung opacity"])
    det = model.detect_prompts(x, prompts)
    return det.boxes, det.box_features, model.generate_sentences(det.box_features, max_new_tokens=6)


def test_round_trip_gives_identical_outputs(tiny_model, tmp_path):
    folder = save_bundle(tiny_model, tmp_path / "b", provenance={"source": "test"})
    loaded = load_bundle(folder)
    a, b = _outputs(tiny_model), _outputs(loaded)
    # bit-identical in a fresh process; 1e-6 allows for kernels other tests may have initialised
    assert torch.allclose(a[0], b[0], atol=1e-6, rtol=0) and torch.allclose(a[1], b[1], atol=1e-6, rtol=0)
    assert a[2] == b[2]
    config = read_bundle_config(folder)
    assert config["provenance"]["source"] == "test"
    assert "cig_anat_synonym" in config["prompts"]["prompt_sets"]
    assert (folder / "clip_tokenizer").is_dir() and (folder / "gpt2_tokenizer").is_dir()


def test_save_refuses_to_overwrite(tiny_model, tiny_bundle):
    with pytest.raises(ChexError, match="already exists"):
        save_bundle(tiny_model, tiny_bundle)


def test_missing_bundle(tmp_path):
    with pytest.raises(ChexError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(ChexError, match="not a model bundle"):
        load_bundle(tmp_path)


def test_truncated_weights(tiny_bundle, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    data = (broken / WEIGHTS_FILE).read_bytes()
    (broken / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ChexError, match="truncated"):
        load_bundle(broken)
    (broken / WEIGHTS_FILE).unlink()
    with pytest.raises(ChexError, match="incomplete"):
        load_bundle(broken)


def test_mismatched_configuration(tiny_bundle, tmp_path):
    broken = tmp_path / "mismatch"
    shutil.copytree(tiny_bundle, broken)
    config = json.loads((broken / CONFIG_FILE).read_text())
    config["model"]["detector"]["n_decoder_layers"] = 3
    (broken / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ChexError, match="missing detector.decoder.decoder_layers.2"):
        load_bundle(broken)
    config["model"]["ff_dim"] = 48
    config["model"]["detector"]["n_decoder_layers"] = 2
    (broken / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ChexError, match="shape"):
        load_bundle(broken)
    (broken / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ChexError, match="not valid JSON"):
        load_bundle(broken)


def test_released_and_tiny_configurations_validate():
    from chexcli.model.config import ChexConfig

    for cfg in (ChexConfig(), tiny_config(), ChexConfig(generator=None, n_post_decoder_layers=0)):
        assert ChexConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("key, value, message", [
    ("n_head", 0, "model.n_head must be >= 1 (got 0)"),
    ("n_head", 3, "model.d_model (32) is not divisible by model.n_head (3)"),
    ("vision.patch_size", 30, "model.vision.image_size (224) is not a multiple of model.vision.patch_size (30)"),
    ("text.layers", -2, "model.text.layers must be >= 1"),
    ("text.context_length", 1, "model.text.context_length must be >= 2"),
    ("detector.multiregions", True, "model.detector.multiregions must be an integer, got True"),
    ("detector.soft_roi_beta", "2", "model.detector.soft_roi_beta must be a finite number"),
    ("post_decoder_multibox_drop", 1.0, "must be in [0, 1)"),
    ("generator.n_embd", 33, "model.generator.n_embd (33) is not divisible by model.generator.n_head (2)"),
    ("generator.max_length", 1, "model.generator.max_length must be >= 2"),
    ("generator", 5, "model.generator must be an object, got int"),
    ("detector.depth", 3, "unknown field model.detector.depth"),
])
def test_impossible_configuration_names_the_key(key, value, message):
    from chexcli.model.config import ChexConfig

    d = tiny_config().to_dict()
    node = d
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    with pytest.raises(ValueError) as err:
        ChexConfig.from_dict(d)
    assert message in str(err.value)


def test_missing_tokenizer_is_refused_only_when_needed(tiny_bundle, tmp_path):
    broken = tmp_path / "no_gpt2"
    shutil.copytree(tiny_bundle, broken)
    shutil.rmtree(broken / "gpt2_tokenizer")
    model = load_bundle(broken, needs=["prompts"])  # boxes and scores need no GPT-2 tokenizer
    assert model.decode is None
    with pytest.raises(ChexError, match="gpt2_tokenizer/ is missing, so no sentences"):
        load_bundle(broken, needs=["prompts", "sentences"])
    shutil.rmtree(broken / "clip_tokenizer")
    with pytest.raises(ChexError, match="clip_tokenizer/ is missing, so text prompts cannot be encoded"):
        load_bundle(broken, needs=["prompts"])
    assert load_bundle(broken).txt_encoder.tokenizer is None
