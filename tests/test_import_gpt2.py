"""`chex weights import-gpt2`: a Hugging Face GPT-2 becomes the generator that txtgen starts from.

The GPT-2 here is a tiny one written by transformers' `save_pretrained` (no network); the
imported generator must compute the same logits as `GPT2LMHeadModel` on the same ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from chexcli.cli.main import run
from chexcli.model.bundle import load_bundle, read_bundle_config
from chexcli.model.gpt2_text import build_tiny_gpt2_tokenizer
from chexcli.model.tiny import TINY_CORPUS

transformers = pytest.importorskip("transformers")


def write_gpt2(folder: Path, safetensors: bool = True, vocab: int | None = None, seed: int = 0) -> Path:
    """A tiny GPT-2 (2 layers, width 32) and its tokenizer, as save_pretrained writes them."""
    tok = build_tiny_gpt2_tokenizer(TINY_CORPUS, vocab_size=300, folder=folder)
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=vocab or len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # non-zero biases and layer norms, so a wrong mapping cannot hide
        for name, p in model.named_parameters():
            if "ln_" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    if not safetensors:  # the older format: a pickled state dict (newer transformers only write safetensors)
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


def cli(args: list, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        run([str(a) for a in args])
    out, err = capsys.readouterr()
    return exited.value.code or 0, out + err


@pytest.mark.parametrize("safetensors", [True, False])
def test_imported_generator_computes_gpt2s_logits(tmp_path, tiny_bundle, capsys, safetensors):
    src = write_gpt2(tmp_path / "gpt2", safetensors=safetensors)
    code, out = cli(["weights", "import-gpt2", src, "--out", tmp_path / "bundle", "--like", tiny_bundle], capsys)
    assert code == 0, out
    model = load_bundle(tmp_path / "bundle")
    reference = transformers.GPT2LMHeadModel.from_pretrained(src).eval()
    ids = torch.tensor([[0, 5, 17, 42, 99, 3], [0, 250, 1, 2, 7, 8]])
    positions = torch.arange(ids.shape[1])[None].expand_as(ids)
    lm = model.txt_decoder.language_model.eval()
    with torch.no_grad():
        ours = lm(ids, positions, mask=torch.ones(6, 6, dtype=torch.bool).tril())
        theirs = reference(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
    config = read_bundle_config(tmp_path / "bundle")
    prov = config["provenance"]
    assert prov["kind"] == "hf-gpt2" and prov["sha256_of"] == ("model.safetensors" if safetensors else
                                                                "pytorch_model.bin")
    assert config["model"]["generator"]["n_layer"] == 2 and config["model"]["generator"]["eos_token_id"] == 0
    # the other components are the --like bundle's, the tokenizer is the GPT-2's
    like = load_bundle(tiny_bundle)
    assert torch.equal(model.detector.multiregion_tokens, like.detector.multiregion_tokens)
    assert model.gpt2_tokenizer.encode("The lungs are clear.") == \
        transformers.AutoTokenizer.from_pretrained(src).encode("The lungs are clear.")


def test_txtgen_starts_from_the_import_with_a_fresh_prefix(tmp_path, tiny_bundle, capsys):
    """txtgen's generator is the GPT-2 (weights equal) plus the import's freshly initialised prefix MLP."""
    from chexcli.train.model_setup import build_model

    src = write_gpt2(tmp_path / "gpt2")
    assert cli(["weights", "import-gpt2", src, "--out", tmp_path / "g", "--like", tiny_bundle, "--seed", "3"],
               capsys)[0] == 0
    model = build_model("txtgen", Path(tiny_bundle), tmp_path / "g", "tiny", lambda: [], tmp_path / "work", print)
    reference = transformers.GPT2LMHeadModel.from_pretrained(src)
    ours = model.txt_decoder.language_model.state_dict()
    for name, tensor in reference.state_dict().items():
        if name == "lm_head.weight" or name.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        assert torch.equal(ours[name], tensor), name
    imported = load_bundle(tmp_path / "g").txt_decoder.prefix_proj.state_dict()
    assert all(torch.equal(v, model.txt_decoder.prefix_proj.state_dict()[k]) for k, v in imported.items())
    # a different seed gives a different fresh prefix: it is initialised, not copied from anywhere
    assert cli(["weights", "import-gpt2", src, "--out", tmp_path / "g2", "--like", tiny_bundle, "--seed", "4"],
               capsys)[0] == 0
    other = load_bundle(tmp_path / "g2").txt_decoder.prefix_proj.layers[0].weight
    assert not torch.equal(other, model.txt_decoder.prefix_proj.layers[0].weight)


def test_stage3_refuses_a_gpt2_import_as_its_generator(tmp_path, tiny_bundle, capsys):
    from chexcli.errors import ChexError
    from chexcli.train.model_setup import build_model

    src = write_gpt2(tmp_path / "gpt2")
    assert cli(["weights", "import-gpt2", src, "--out", tmp_path / "g", "--like", tiny_bundle], capsys)[0] == 0
    with pytest.raises(ChexError, match="gpt2 bundle"):
        build_model("3", Path(tiny_bundle), tmp_path / "g", "tiny", lambda: [], tmp_path / "work", print)


def _bad_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("damage, message", [
    ("missing", "does not exist"),
    ("no_config", "no config.json"),
    ("bert", "not a GPT-2"),
    ("activation", "activation_function"),
    ("no_weights", "no model.safetensors"),
    ("corrupt", "not a readable safetensors"),
    ("small_vocab", "tokenizer"),
    ("wrong_shape", "shape"),
    ("hub_offline", "cannot download"),
])
def test_bad_sources_get_one_line_and_exit_2(tmp_path, tiny_bundle, capsys, damage, message, monkeypatch):
    src = tmp_path / "gpt2"
    if damage != "missing":
        write_gpt2(src)
    if damage == "no_config":
        (src / "config.json").unlink()
    elif damage == "bert":
        _bad_config(src, model_type="bert")
    elif damage == "activation":
        _bad_config(src, activation_function="relu")
    elif damage == "no_weights":
        (src / "model.safetensors").unlink()
    elif damage == "corrupt":
        (src / "model.safetensors").write_bytes(b"not a safetensors file at all")
    elif damage == "small_vocab":  # a model of 280 tokens read with a tokenizer of 300
        write_gpt2(src, vocab=280)
    elif damage == "wrong_shape":
        _bad_config(src, n_positions=128)
    arg: object = src
    if damage == "hub_offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        arg = "no-such-org/no-such-gpt2"
    capsys.readouterr()  # the set-up's own output
    code, out = cli(["weights", "import-gpt2", arg, "--out", tmp_path / "bundle", "--like", tiny_bundle], capsys)
    assert code == 2, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in out, out
    assert not (tmp_path / "bundle").exists() or not any((tmp_path / "bundle").iterdir())
