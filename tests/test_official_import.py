"""`chex weights import` / `import-chexzero` / `info`: official checkpoint layout, safety checks, derived sizes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from chexcli.errors import ChexError
from chexcli.model.bundle import load_bundle, read_bundle_config
from chexcli.model.clip_tokenizer import ClipTokenizer
from chexcli.model.config import ChexConfig, DetectorConfig, GeneratorConfig, TextConfig, VisionConfig
from chexcli.model.gpt2_text import build_tiny_gpt2_tokenizer
from chexcli.weights.chexzero import import_chexzero
from chexcli.weights.derive import derive_config
from chexcli.weights.info import bundle_info
from chexcli.weights.official import import_official
from chexcli.model.tiny import TINY_CORPUS, build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT.parent / "shared" / "reference" / "parity"
LM_HEAD = "txt_decoder.language_model.lm_head.weight"
WTE = "txt_decoder.language_model.transformer.wte.weight"
RUN = "chex_stage3/run_2024-03-01_12-00-00/checkpoints"


def _config_dict(url: str = "lm_tiny") -> dict:
    """The parts of the reference's stage-3 config_dict that the importer reads (plus some it ignores)."""
    return {
        "MODIFYABLE_ATTRIBUTES": [], "model_module": "model", "model_class": "ChEX",
        "d_model": 32, "act": "gelu", "attention_dropout": 0.1, "dropout": 0.3, "droppath_prob": 0.2,
        "layer_scale": True, "layer_scale_init": 0.1, "n_head": 4,
        "img_encoder": {"model_path": "~/models/third_party/chexzero/x.pt", "add_cls_features": False,
                        "use_pretrained_projection": True, "additional_projection_layers": 0},
        "txt_encoder": {"n_projection_layers": 0},
        "detector": {"multiregions": 3, "n_decoder_layers": 2, "multiregion_sa": True, "decoder_sa": False,
                     "predictor_hidden_layers": 1, "patch_project_layers": 1, "out_project_layers": 2,
                     "soft_roi_beta": 2.0},
        "txt_decoder": {"language_model_url": url, "prefix_length_factor": 5, "n_projection_layers": 2,
                        "shared_projection": False, "max_length": 128, "position_offset": None,
                        "generation_kwargs": {"do_sample": False, "max_length": 32, "num_beams": 1, "use_cache": True}},
        "n_post_decoder_layers": 1, "post_decoder_patches": True, "post_decoder_cls": True,
        "post_decoder_droppath": True, "post_decoder_gate": True, "post_decoder_multibox_drop": 0.1,
        "anatomy_prompts": {"left lung": ["Left lung"], "right lung": ["Right lung"]},
        "pathology_pos_prompts": {"pleural effusion": ["Pleural effusion"]},
        "pathology_neg_prompts": {"pleural effusion": ["No pleural effusion"]},
        "no_finding_prompts": [],
        "max_generated_sentences": 32,
    }


def _tiny_config(clip_vocab: int, gpt2_vocab: int) -> ChexConfig:
    """Tiny sizes that follow CLIP's head rule (width // 64), GPT-2 with 2 heads of 32 (as config.json says)."""
    return ChexConfig(
        d_model=32, n_head=4,
        vision=VisionConfig(image_size=224, patch_size=32, width=64, layers=2, heads=1, output_dim=32),
        text=TextConfig(context_length=77, vocab_size=clip_vocab, width=64, layers=1, heads=1, output_dim=32),
        detector=DetectorConfig(multiregions=3, n_decoder_layers=2),
        n_post_decoder_layers=1,
        generator=GeneratorConfig(vocab_size=gpt2_vocab, n_positions=256, n_embd=64, n_layer=2, n_head=2,
                                  bos_token_id=0, eos_token_id=0, pad_token_id=0, max_length=32),
    )


def _checkpoint(model, config_dict, **extra) -> dict:
    state = dict(model.state_dict())
    state[LM_HEAD] = state[WTE]  # the official file stores the tied head under both names
    return {"config_dict": config_dict, "state_dict": state,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}, "lr_scheduler": {"last_epoch": 3},
            "amp": None, "step": 5, "results": {"val/loss": 0.5}, "best_results": {}, "experiment_config": {"name": "x"},
            **extra}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """models/chex_stage3/run_*/checkpoints/{2,5,best}.pth, clip_bpe/ and lm_tiny/ next to models/, and a zip."""
    root = tmp_path_factory.mktemp("official")
    lm_dir = root / "lm_tiny"
    clip_vocab = ClipTokenizer.build_tiny(TINY_CORPUS, n_merges=200).vocab_size
    gpt2_vocab = len(build_tiny_gpt2_tokenizer(TINY_CORPUS, vocab_size=300, folder=lm_dir))
    cfg = _tiny_config(clip_vocab, gpt2_vocab)
    model = build_tiny_model(seed=1, tokenizer_dir=lm_dir, config=cfg)
    (lm_dir / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 64, "n_head": 2, "n_layer": 2,
                                                    "vocab_size": gpt2_vocab, "eos_token_id": 0}))
    clip_file = model.txt_encoder.tokenizer.save(root / "clip_bpe")
    clip_file.rename(root / "clip_bpe" / "bpe_simple_vocab_16e6.txt.gz")

    ckpt_dir = root / "models" / RUN
    ckpt_dir.mkdir(parents=True)
    good = _checkpoint(model, _config_dict())
    torch.save(good, ckpt_dir / "checkpoint_000000005.pth")
    broken = _checkpoint(model, _config_dict())
    del broken["state_dict"]["detector.multiregion_tokens"]  # importing an older/best file would fail
    torch.save(broken, ckpt_dir / "checkpoint_000000002.pth")
    torch.save(broken, ckpt_dir / "checkpoint_best.pth")
    (ckpt_dir.parent / "model_config.yaml").write_text("d_model: 32\n")

    zip_path = root / "chex_stage3.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted((root / "models").rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(root / "models").as_posix())
    return {"root": root, "model": model, "cfg": cfg, "ckpt": ckpt_dir / "checkpoint_000000005.pth",
            "folder": root / "models" / "chex_stage3", "zip": zip_path, "lm": lm_dir,
            "clip": root / "clip_bpe" / "bpe_simple_vocab_16e6.txt.gz", "good": good}


@torch.inference_mode()
def _outputs(model):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 224, 224, generator=g)
    emb = model.encode_sentences(["left lung opacity", "the heart size is normal"])
    det = model.detect_prompts(x, emb)
    boxes = torch.tensor([[[0.5, 0.5, 0.3, 0.4]], [[0.3, 0.6, 0.2, 0.2]]])
    regions = model.encode_regions(x, boxes)
    gens = model.generate(det.box_features.flatten(0, 1), max_new_tokens=6)
    return [det.boxes, det.multiboxes_weights, det.box_features, regions], [g.ids for g in gens]


def _assert_same(a, b):
    tensors_a, ids_a = _outputs(a)
    tensors_b, ids_b = _outputs(b)
    for ta, tb in zip(tensors_a, tensors_b):
        assert torch.equal(ta, tb)
    assert ids_a == ids_b


@pytest.mark.parametrize("kind", ["pth", "folder", "zip"])
def test_import_gives_the_source_model(tree, tmp_path, kind):
    source = {"pth": tree["ckpt"], "folder": tree["folder"], "zip": tree["zip"]}[kind]
    out = import_official(source, tmp_path / "bundle")
    model = load_bundle(out)
    assert model.cfg == tree["cfg"]
    _assert_same(tree["model"], model)
    prov = read_bundle_config(out)["provenance"]
    assert prov["sha256"] == _sha(tree["ckpt"] if kind != "zip" else tree["zip"])
    assert prov["checkpoint"].endswith("checkpoint_000000005.pth")
    assert prov["config_dict"]["txt_decoder"]["language_model_url"] == "lm_tiny"
    assert prov["imported"] and prov["source"] == str(source.resolve())
    assert not list(tmp_path.glob(".chex-import-*")), "temporary extraction folder left behind"


def test_explicit_tokenizers_prompts_and_sizes(tree, tmp_path):
    lone = tmp_path / "elsewhere" / "ckpt.pth"
    lone.parent.mkdir()
    shutil.copy(tree["ckpt"], lone)
    with pytest.raises(ChexError, match="--clip-vocab"):
        import_official(lone, tmp_path / "b0")
    out = import_official(lone, tmp_path / "b1", clip_vocab=tree["clip"].parent, lm_tokenizer=str(tree["lm"]))
    config = read_bundle_config(out)
    dicts = config["prompts"]["model_prompt_dicts"]
    assert dicts["anatomy_prompts"]["left lung"] == ["Left lung"] and "pathology_neg_prompts" in dicts
    assert "prompt_sets" in config["prompts"]  # the packaged prompts stay
    gen = config["model"]["generator"]
    assert (gen["n_head"], gen["n_embd"], gen["max_length"], gen["position_offset"]) == (2, 64, 32, 0)
    _assert_same(tree["model"], load_bundle(out))


LMC = {"n_head": 2, "eos_token_id": 0}


def test_derive_config_rules(tree):
    state = dict(tree["good"]["state_dict"])
    cd = _config_dict()
    cfg = derive_config(state, cd, LMC)
    assert cfg == tree["cfg"]
    fallback = derive_config(state, cd).generator  # no LM config: n_embd // 64 heads, eos = last id as in GPT-2
    assert (fallback.n_head, fallback.eos_token_id) == (1, 299)
    cd["txt_decoder"]["position_offset"] = "prefix"
    assert derive_config(state, cd, LMC).generator.position_offset == 5
    cd["txt_decoder"]["position_offset"] = "one"
    assert derive_config(state, cd, LMC).generator.position_offset == 1
    cd["txt_decoder"]["prefix_length_factor"] = 4
    with pytest.raises(ChexError, match="prefix projection"):
        derive_config(state, cd, LMC)
    cd = _config_dict()
    cd["act"] = "relu"
    with pytest.raises(ChexError, match="act"):
        derive_config(state, cd, LMC)


class Payload:
    """A class the weights-only unpickler must refuse."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


class Plain:
    pass


def test_refuses_pickled_code(tree, tmp_path):
    for i, obj in enumerate([Payload(), Plain()]):
        bad = tmp_path / f"bad{i}.pth"
        torch.save(_checkpoint(tree["model"], _config_dict(), extra_object=obj), bad)
        with pytest.raises(ChexError, match="pickled code or objects") as err:
            import_official(bad, tmp_path / f"b{i}", clip_vocab=tree["clip"], lm_tokenizer=str(tree["lm"]))
        assert ("system" in str(err.value)) if i == 0 else ("Plain" in str(err.value))
        assert "\n" not in str(err.value)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(ChexError, match="not a readable PyTorch checkpoint"):
        import_official(garbage, tmp_path / "g", clip_vocab=tree["clip"])
    script = tmp_path / "script.pt"
    with zipfile.ZipFile(script, "w") as zf:
        for name in ("m/data.pkl", "m/constants.pkl", "m/code/__torch__.py", "m/version"):
            zf.writestr(name, b"x")
    with pytest.raises(ChexError, match="TorchScript"):
        import_official(script, tmp_path / "s", clip_vocab=tree["clip"])


def _evil_zip(tree, path: Path, member: str, symlink: bool = False) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.write(tree["ckpt"], "chex_stage3/run_1/checkpoints/checkpoint_000000009.pth")
        info = zipfile.ZipInfo(member)
        if symlink:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd" if symlink else "owned")
    return path


@pytest.mark.parametrize("member,message", [
    ("../evil", "path traversal"),
    ("chex_stage3/../../evil", "path traversal"),
    ("/tmp/evil_abs", "absolute path"),
    ("link", "symbolic link"),
])
def test_zip_unsafe_members_refused(tree, tmp_path, member, message):
    (tmp_path / "dl").mkdir()
    src = _evil_zip(tree, tmp_path / "dl" / "evil.zip", member, symlink=member == "link")
    with pytest.raises(ChexError, match=message):
        import_official(src, tmp_path / "out" / "b", clip_vocab=tree["clip"], lm_tokenizer=str(tree["lm"]))
    assert not (tmp_path / "evil").exists() and not (tmp_path / "out" / "b").exists()
    assert not list((tmp_path / "out").glob(".chex-import-*"))


def test_zip_size_cap(tree, tmp_path):
    with pytest.raises(ChexError, match="allowed"):
        import_official(tree["zip"], tmp_path / "b", max_extract_bytes=10_000)


def _variant(tree, tmp_path, name, edit):
    ckpt = _checkpoint(tree["model"], _config_dict())
    ckpt["state_dict"] = dict(ckpt["state_dict"])
    edit(ckpt)
    path = tmp_path / f"{name}.pth"
    torch.save(ckpt, path)
    return path


def test_wrong_checkpoints_named(tree, tmp_path):
    d = 32
    cases = {
        "missing": (lambda c: c["state_dict"].pop("detector.out_projector.0.bias"),
                    "missing detector.out_projector.0.bias"),
        "shape": (lambda c: c["state_dict"].__setitem__("detector.patch_projector.1.layers.0.bias", torch.zeros(d + 1)),
                  "detector.patch_projector.1.layers.0.bias has shape"),
        "unexpected": (lambda c: c["state_dict"].__setitem__("detector.extra_head.weight", torch.zeros(2)),
                       "unexpected detector.extra_head.weight"),
        "untied": (lambda c: c["state_dict"].__setitem__(LM_HEAD, c["state_dict"][WTE].clone() + 1e-3), "lm_head"),
        "no_state": (lambda c: c.pop("state_dict"), "no 'state_dict'"),
        "partial": (lambda c: [c["state_dict"].pop(k) for k in list(c["state_dict"]) if k.startswith("txt_encoder.")],
                    "txt_encoder"),
        "d_model": (lambda c: c["config_dict"].__setitem__("d_model", 48), "d_model"),
    }
    for name, (edit, message) in cases.items():
        path = _variant(tree, tmp_path, name, edit)
        with pytest.raises(ChexError, match=message):
            import_official(path, tmp_path / f"b_{name}", clip_vocab=tree["clip"], lm_tokenizer=str(tree["lm"]))
        assert not (tmp_path / f"b_{name}").exists()


def test_expect_sha256(tree, tmp_path):
    with pytest.raises(ChexError, match="SHA-256"):
        import_official(tree["zip"], tmp_path / "b", expect_sha256="0" * 64)
    with pytest.raises(ChexError, match="64 hexadecimal"):
        import_official(tree["zip"], tmp_path / "b", expect_sha256="abc")
    out = import_official(tree["zip"], tmp_path / "ok", expect_sha256=_sha(tree["zip"]).upper())
    assert read_bundle_config(out)["provenance"]["sha256"] == _sha(tree["zip"])


def test_missing_lm_tokenizer_offline(tree, tmp_path, monkeypatch):
    import transformers

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    path = _variant(tree, tmp_path, "hub", lambda c: c["config_dict"]["txt_decoder"].__setitem__(
        "language_model_url", "healx/gpt-2-pubmed-medium"))
    with pytest.raises(ChexError, match=r"vocab\.json and merges\.txt.*healx/gpt-2-pubmed-medium"):
        import_official(path, tmp_path / "b", clip_vocab=tree["clip"])
    with pytest.raises(ChexError, match="not found"):
        import_official(path, tmp_path / "b", clip_vocab=tree["clip"], lm_tokenizer=str(tmp_path / "no" / "such" / "dir"))
    with pytest.raises(ChexError, match="already exists"):
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "x").write_text("x")
        import_official(path, tmp_path / "full", clip_vocab=tree["clip"], lm_tokenizer=str(tree["lm"]))


def _openai_clip_state(model) -> dict:
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("img_encoder.backbone."):
            state["visual." + key[len("img_encoder.backbone."):]] = value.clone()
        elif key.startswith("txt_encoder."):
            state[key[len("txt_encoder."):]] = value.clone()
    state["logit_scale"] = torch.tensor(4.6)
    return state


def test_import_chexzero(tree, tmp_path):
    src = tree["model"]
    path = tmp_path / "best_64_5e-05_original_22000_0.864.pt"
    torch.save(_openai_clip_state(src), path)
    base = ChexConfig(d_model=32, n_head=4, detector=DetectorConfig(n_decoder_layers=1), n_post_decoder_layers=1,
                      generator=GeneratorConfig(vocab_size=512, n_positions=64, n_embd=64, n_layer=1, n_head=2))
    out = import_chexzero(path, tmp_path / "init", clip_vocab=tree["clip"], config=base)
    model = load_bundle(out)
    assert model.cfg.vision == tree["cfg"].vision and model.cfg.text == tree["cfg"].text
    assert model.decode is None and model.txt_decoder is not None  # no sentence tokenizer given
    got, want = model.state_dict(), src.state_dict()
    for key in want:
        if key.startswith(("img_encoder.", "txt_encoder.")):
            assert torch.equal(got[key], want[key]), key
    with torch.inference_mode():
        x = torch.randn(1, 224, 224)
        assert torch.equal(model.encode_image(x).patch_features, src.encode_image(x).patch_features)
        assert torch.equal(model.encode_sentences(["left lung"]), src.encode_sentences(["left lung"]))
    prov = read_bundle_config(out)["provenance"]
    assert prov["kind"] == "chexzero-init" and prov["sha256"] == _sha(path)

    nested = tmp_path / "nested.pt"
    torch.save({"state_dict": _openai_clip_state(src), "epoch": 3}, nested)
    stage1 = ChexConfig(d_model=32, n_head=4, detector=DetectorConfig(n_decoder_layers=1), n_post_decoder_layers=0,
                        generator=None)
    out1 = import_chexzero(nested, tmp_path / "s1", clip_vocab=tree["clip"], lm_tokenizer=str(tree["lm"]), config=stage1)
    assert load_bundle(out1).txt_decoder is None
    bad = tmp_path / "bad.pt"
    state = _openai_clip_state(src)
    state["visual.proj"] = torch.zeros(64, 16)
    torch.save(state, bad)
    with pytest.raises(ChexError, match="text embedding|d_model"):
        import_chexzero(bad, tmp_path / "bad", clip_vocab=tree["clip"], config=base)


def _chex(*args, env_extra=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "chexcli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_cli_exit_codes(tree, tmp_path):
    out = tmp_path / "cli_bundle"
    res = _chex("weights", "import", str(tree["zip"]), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert _sha(tree["zip"]) in res.stderr
    res = _chex("weights", "info", str(out), "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    unique = sum(p.numel() for p in tree["model"].parameters())
    assert info["parameters"]["total_unique"] == unique
    assert info["config"]["generator"]["n_head"] == 2 and info["provenance"]["sha256"] == _sha(tree["zip"])
    assert info == json.loads(json.dumps(bundle_info(out)))
    from typer.testing import CliRunner

    from chexcli.cli.main import app

    runner = CliRunner()
    res = runner.invoke(app, ["weights", "info", str(out)])  # rich output, in-process
    assert res.exit_code == 0 and "total_unique" in res.output and "prefix_projection" in res.output
    res = runner.invoke(app, ["weights", "info", str(tmp_path / "nothing")])
    assert isinstance(res.exception, ChexError) and "does not exist" in str(res.exception)

    res = _chex("weights", "import", str(tree["zip"]), "--out", str(tmp_path / "x"), "--expect-sha256", "f" * 64)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and lines[-1].startswith("error: SHA-256") and "Traceback" not in res.stderr
    evil = _evil_zip(tree, tmp_path / "evil.zip", "../evil")
    res = _chex("weights", "import", str(evil), "--out", str(tmp_path / "y"))
    assert res.returncode == 2 and "path traversal" in res.stderr


@pytest.mark.skipif(not (FIXTURE / "models").is_dir(), reason="parity fixture not available")
def test_real_fixture_checkpoint(tmp_path):
    ckpt = next((FIXTURE / "models" / "chex_tiny").glob("run_*/checkpoints/checkpoint_*.pth"))
    out = import_official(FIXTURE / "models" / "chex_tiny", tmp_path / "fixture")
    cfg = ChexConfig.from_dict(read_bundle_config(out)["model"])
    assert (cfg.d_model, cfg.n_head) == (64, 4)
    assert (cfg.vision.width, cfg.vision.layers, cfg.vision.heads, cfg.vision.patch_size, cfg.vision.image_size) == \
        (128, 2, 2, 32, 224)
    assert (cfg.text.width, cfg.text.heads, cfg.text.layers, cfg.text.context_length, cfg.text.vocab_size) == \
        (64, 1, 2, 77, 49408)
    assert (cfg.detector.n_decoder_layers, cfg.detector.multiregions, cfg.n_post_decoder_layers) == (2, 3, 1)
    gen = cfg.generator
    assert (gen.n_embd, gen.n_head, gen.n_layer, gen.vocab_size, gen.n_positions) == (64, 2, 2, 2048, 1024)
    assert (gen.position_offset, gen.prefix_length_factor, gen.eos_token_id, gen.max_length) == (0, 5, 0, 128)
    assert cfg.post_decoder_multibox_drop == pytest.approx(0.1) and cfg.max_generated_sentences == 32
    config = read_bundle_config(out)
    assert config["provenance"]["sha256"] == _sha(ckpt)
    assert "anatomy_prompts" in config["prompts"]["model_prompt_dicts"]
    model = load_bundle(out)
    assert model.decode is not None and model.txt_encoder.tokenizer is not None
