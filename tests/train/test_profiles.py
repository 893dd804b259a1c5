"""`chex train --profile reference`: every training deviation a recipe key controls, switched back."""

from __future__ import annotations

import pytest
import torch
import yaml

from chexcli.errors import ChexError
from chexcli.train.recipe import STAGES, load_profile, resolve_recipe
from tests.train.conftest import run_stage


@pytest.mark.parametrize("stage", STAGES)
def test_reference_profile_sets_its_keys_and_nothing_else(stage):
    default = resolve_recipe(stage)
    reference = resolve_recipe(stage, profile="reference")
    assert default["profile"] == "default" and reference["profile"] == "reference"
    changed = {(section, key) for section in default if isinstance(default[section], dict)
               for key in default[section] if default[section][key] != reference[section][key]}
    profile = load_profile("reference")
    wanted = {(section, key) for section, values in profile.items() for key, value in values.items()
              if section in default and key in default[section] and default[section][key] != value}
    assert changed == wanted
    assert reference["optim"]["schedule_lag"] == 1 and reference["optim"]["fused"] is False
    assert reference["data"]["swap_laterality"] is False and reference["data"]["augment_multiboxes"] is False
    gen = reference["txtgen"] if stage == "txtgen" else reference["supervision"]
    assert gen["generation_include_padding"] is True and gen["generation_keep_end_token"] is False
    if stage == "1":
        assert reference["model"]["train_ln_pre"] is True
    if stage == "txtgen":
        assert reference["txtgen"]["prefix_activation"] == "relu"


def test_set_and_config_still_override_the_profile(tmp_path):
    recipe = resolve_recipe("1", sets=["optim.schedule_lag=0"], profile="reference")
    assert recipe["optim"]["schedule_lag"] == 0 and recipe["model"]["train_ln_pre"] is True
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": {"train_ln_pre": False}}))
    assert resolve_recipe("1", config, profile="reference")["model"]["train_ln_pre"] is False


@pytest.mark.parametrize("call, message", [
    (lambda: resolve_recipe("1", profile="paper"), "--profile 'paper'"),
    (lambda: resolve_recipe("1", sets=["profile=reference"]), "chosen with --profile"),
    (lambda: resolve_recipe("txtgen", sets=["txtgen.prefix_activation=tanh"]), "prefix_activation"),
    (lambda: resolve_recipe("1", sets=["optim.schedule_lag=-1"]), "schedule_lag"),
    (lambda: resolve_recipe("1", sets=["optim.fused=maybe"]), "optim.fused"),
])
def test_bad_profile_settings_are_one_line_errors(call, message):
    with pytest.raises(ChexError, match=message.replace("(", r"\(")):
        call()


def test_txtgen_prefix_activation_relu_trains_the_prefix_with_relu(tmp_path):
    from chexcli.model.tiny import build_tiny_model
    from chexcli.train.objective import TxtgenObjective

    batch = {"sentences": [["The lungs are clear.", "No pleural effusion."], ["Heart size is normal."]]}
    losses = {}
    for act in ("gelu", "relu"):
        model = build_tiny_model(seed=0, tokenizer_dir=tmp_path / act)
        objective = TxtgenObjective(model, dropout=0.0, copies=(1, 1), prefix_activation=act)
        assert type(model.txt_decoder.prefix_proj.layers[1]).__name__ == ("GELU" if act == "gelu" else "ReLU")
        torch.manual_seed(0)
        losses[act] = float(objective(batch)[0].detach())
    assert losses["gelu"] != losses["relu"]


def test_unfused_adamw_is_pytorchs_default():
    from chexcli.train.trainer import make_optimizer

    params = [torch.nn.Parameter(torch.zeros(3))]
    assert make_optimizer(params, 0.0, torch.device("cpu")).defaults["fused"] is True
    assert not make_optimizer(params, 0.0, torch.device("cpu"), fused=False).defaults["fused"]


def test_a_reference_run_records_its_profile_and_resume_keeps_it(synth, tmp_path, capsys):
    from chexcli.cli.main import run

    run_dir = run_stage("1", synth, tmp_path, "ref", steps=2, profile="reference")
    recipe = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert recipe["profile"] == "reference" and recipe["model"]["train_ln_pre"] is True
    lines = [yaml.safe_load(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["lr"] for line in lines if line["kind"] == "train"][:2] == [0.0, 0.0]  # one update behind
    with pytest.raises(SystemExit) as exited:
        run(["train", "--resume", str(run_dir), "--profile", "default"])
    assert exited.value.code == 2 and "change its configuration" in capsys.readouterr().err
