"""`chex train` end to end on tiny models and a small synthetic folder.

The four-stage chain (conftest `chain`) is shared; the resume and torchrun tests start
their own processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chexcli.cli.main import run
from chexcli.model.bundle import load_bundle
from tests.train.conftest import FAST, run_stage


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "bundle" / "model.safetensors"))


def _part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def cli(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        run([str(a) for a in args])
    out, err = capsys.readouterr()
    return exited.value.code or 0, out + err


# ------------------------------------------------------------------------------------------ the chain
def test_every_stage_exports_a_loadable_bundle(chain):
    for stage, run_dir in chain.items():
        model = load_bundle(run_dir / "bundle")
        assert model.provenance["stage"] == stage
        assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.pt").is_file()
        assert json.loads((run_dir / "state.json").read_text())["status"] == "finished"
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        kinds = [line["kind"] for line in lines]
        assert kinds[0] == "start" and kinds[-1] == "end" and "train" in kinds and "val" in kinds
        train = [line for line in lines if line["kind"] == "train"]
        assert all({"step", "lr", "loss", "grad_norm", "samples_per_s"} <= set(line) for line in train)
        assert all(torch.isfinite(torch.tensor(line["loss"])) for line in train)
        assert (run_dir / "bundle-best" / "model.safetensors").is_file()
    assert load_bundle(chain["1"] / "bundle").post_decoder is None
    assert load_bundle(chain["2"] / "bundle").post_decoder is not None
    assert load_bundle(chain["3"] / "bundle").txt_decoder is not None
    # stage 1 logs every loss term of docs/training.md#supervisors
    keys = set().union(*(json.loads(x) for x in (chain["1"] / "metrics.jsonl").read_text().splitlines()))
    for key in ("l_sent/global_contr", "l_sent/sent_contr", "l_anat/anat_det", "l_anat/anat_cls",
                "l_cls/patho_cls"):
        assert key in keys
    keys3 = set().union(*(json.loads(x) for x in (chain["3"] / "metrics.jsonl").read_text().splitlines()))
    assert {"l_sent/sent_mse", "l_sent/sent_gen", "l_anat/sent_mse", "l_anat/anat_gen"} <= keys3


def test_frozen_components_stay_bit_identical(chain):
    s1, s2, s3, tg = (_weights(chain[k]) for k in ("1", "2", "3", "txtgen"))
    for prefix in ("img_encoder.", "txt_encoder.", "detector."):
        assert _same(_part(s1, prefix), _part(s2, prefix)), prefix
        assert _same(_part(s2, prefix), _part(s3, prefix)), prefix
    assert _same(_part(s1, "txt_encoder."), _part(tg, "txt_encoder."))
    # what the stages train did change
    assert not _same(_part(s2, "post_decoder."), _part(s3, "post_decoder."))
    assert not _same(_part(tg, "txt_decoder."), _part(s3, "txt_decoder."))


def test_stage1_trains_only_the_top_blocks_and_not_ln_pre(synth, tmp_path):
    sets = ["model.image_encoder_trainable_blocks=1"]
    a = _weights(run_stage("1", synth, tmp_path, "a", steps=1, sets=sets))
    b = _weights(run_stage("1", synth, tmp_path, "b", steps=3, sets=sets))
    frozen = ("img_encoder.backbone.ln_pre.", "img_encoder.backbone.conv1.", "img_encoder.backbone.transformer.resblocks.0.",
              "img_encoder.backbone.positional_embedding", "txt_encoder.")
    for prefix in frozen:
        assert _same(_part(a, prefix), _part(b, prefix)), prefix
    assert not _same(_part(a, "img_encoder.backbone.transformer.resblocks.1."),
                     _part(b, "img_encoder.backbone.transformer.resblocks.1."))
    assert not _same(_part(a, "detector."), _part(b, "detector."))



def test_cached_frozen_encodings_train_what_encoding_every_update_trains(synth, tmp_path):
    """run.cache_frozen_encodings (chex demo's setting): same weights to float rounding."""
    sets = ["model.image_encoder_trainable_blocks=0", "data.augmentation=none", "model.dropout_scale=0"]
    plain = _weights(run_stage("1", synth, tmp_path, "plain", steps=4, batch=8, sets=sets))
    cached = _weights(run_stage("1", synth, tmp_path, "cached", steps=4, batch=8,
                                sets=sets + ["run.cache_frozen_encodings=true"]))
    assert plain.keys() == cached.keys()
    for name in plain:
        torch.testing.assert_close(cached[name], plain[name], rtol=1e-4, atol=1e-5, msg=name)
    assert not _same(_part(plain, "detector."), _part(_weights(run_stage("1", synth, tmp_path, "one", steps=1,
                                                                        batch=8, sets=sets)), "detector."))

# ------------------------------------------------------------------------------------------ losses go down
@pytest.mark.parametrize("stage", ["1", "txtgen", "2", "3"])
def test_each_stage_lowers_its_loss_on_a_fixed_batch(stage, chain, synth, tmp_path):
    from chexcli.data.dataset import collate
    from chexcli.train.data_setup import dataset_names, text_corpus, training_dataset
    from chexcli.train.freezing import apply_freezing
    from chexcli.train.model_setup import build_model
    from chexcli.train.objective import ChexObjective, TxtgenObjective
    from chexcli.train.recipe import resolve_recipe
    from chexcli.train.supervisors import LossWeights, SupervisionOptions

    recipe = resolve_recipe(stage, sets=["model.dropout_scale=0"])
    ds = training_dataset([synth], recipe["data"]["train"], 224, 0, True, True)
    init = {"1": None, "txtgen": chain["1"], "2": chain["1"], "3": chain["2"]}[stage]
    gen = chain["txtgen"] / "bundle" if stage == "3" else None
    torch.manual_seed(0)
    model = build_model(stage, init and init / "bundle", gen, "tiny", lambda: text_corpus(ds), tmp_path, print,
                        recipe["model"])
    model.train()
    apply_freezing(model, recipe)
    if stage == "txtgen":
        objective = TxtgenObjective(model, dropout=0.0)
    else:
        classes, anatomies, multi = dataset_names(ds)
        objective = ChexObjective(model, LossWeights(**recipe["loss"]), SupervisionOptions(**recipe["supervision"]),
                                  classes, anatomies, multi)
    batch = collate([ds[i] for i in range(6)])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-3)
    losses = []
    for _ in range(10):
        torch.manual_seed(1)  # the same subsampling and prompt draws every step
        loss, _ = objective(batch)
        losses.append(float(loss.detach()))
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert sum(losses[-3:]) / 3 < 0.97 * losses[0], losses


# ------------------------------------------------------------------------------------------ resume
def _train_cmd(data: Path, out: Path, name: str, steps: int = 6) -> list[str]:
    sets = [x for s in FAST for x in ("--set", s)]
    return [sys.executable, "-m", "chexcli", "train", "--stage", "1", "--data", str(data), "--model-config", "tiny",
            "--out", str(out), "--name", name, "--max-steps", str(steps), "--batch-size", "4",
            "--checkpoint-every", "2", "--val-every", "0", "--device", "cpu", "--no-progress", *sets]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.mark.parametrize("kill_after", [0, 2])
def test_sigkill_then_resume_equals_an_uninterrupted_run(synth, tmp_path, kill_after):
    """kill_after: the run is killed once its checkpoint holds this many updates (0: before any checkpoint)."""
    env = _env()
    straight = subprocess.run(_train_cmd(synth, tmp_path, "straight"), env=env, capture_output=True, text=True,
                              timeout=600)
    assert straight.returncode == 0, straight.stderr
    proc = subprocess.Popen(_train_cmd(synth, tmp_path, "killed"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "killed"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        state = run_dir / "state.json"
        if kill_after == 0 and (run_dir / "model" / "config.json").is_file():
            break
        if kill_after and state.is_file() and (run_dir / "checkpoints" / "last.pt").is_file():
            if json.loads(state.read_text()).get("step", 0) >= kill_after:
                break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "bundle").exists()
    resumed = subprocess.run([sys.executable, "-m", "chexcli", "train", "--resume", str(run_dir), "--no-progress",
                              "--device", "cpu"], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    a = (tmp_path / "straight" / "bundle" / "model.safetensors").read_bytes()
    b = (run_dir / "bundle" / "model.safetensors").read_bytes()
    assert a == b
    kinds = [json.loads(x)["kind"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert kinds.count("start") <= 1 and "resume" in kinds  # the resumed run appended to its log
    again = subprocess.run([sys.executable, "-m", "chexcli", "train", "--resume", str(run_dir), "--no-progress"],
                           env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "already finished" in again.stderr


def test_two_torchrun_processes_equal_one_process_with_the_same_global_batch(synth, tmp_path):
    env = _env()
    base = _train_cmd(synth, tmp_path, "x", steps=3)[3:]  # without `python -m chexcli`

    def with_opts(name: str, batch: int, accumulation: int) -> list[str]:
        args = list(base)
        args[args.index("--name") + 1] = name
        args[args.index("--batch-size") + 1] = str(batch)
        return args + ["--set", f"optim.accumulation_steps={accumulation}"]

    one = subprocess.run([sys.executable, "-m", "chexcli", *with_opts("one", 4, 2)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          "-m", "chexcli", *with_opts("two", 8, 1)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert two.returncode == 0, two.stderr
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    log = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert log[0]["processes"] == 2 and [x["step"] for x in log if x["kind"] == "train"] == [1, 2, 3]


# ------------------------------------------------------------------------------------------ CLI
def test_trained_bundle_predicts_with_chex_predict(chain, synth, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    images = np.load(synth / "images_256.npy", mmap_mode="r")
    Image.fromarray(np.asarray(images[0])).save(tmp_path / "cxr.png")
    code, text = cli(["predict", tmp_path / "cxr.png", "--model", chain["3"] / "bundle", "--prompt", "left lung",
                      "--box", "20,20,120,140", "--json", "--out", tmp_path / "pred"], capsys)
    assert code == 0, text
    record = json.loads(next(line for line in text.splitlines() if line.startswith("{")))
    assert [q["type"] for q in record["queries"]] == ["prompt", "box"]
    assert all(isinstance(q["sentence"], str) for q in record["queries"])
    assert list((tmp_path / "pred").rglob("*.png"))


@pytest.mark.parametrize("args, message", [
    (["--stage", "1", "--data", "{missing}"], "is not a folder"),
    (["--stage", "1", "--data", "{empty}"], "not a prepared folder"),
    (["--stage", "4", "--data", "{synth}"], "--stage '4'"),
    (["--stage", "1", "--data", "{synth}", "--set", "optim.lrr=1"], "unknown recipe key 'optim.lrr'"),
    (["--stage", "1", "--data", "{synth}", "--set", "optim.lr"], "expected key=value"),
    (["--stage", "1", "--data", "{synth}", "--device", "cuda"], "CUDA is not available"),
    (["--stage", "3", "--data", "{synth}", "--init", "{s1}", "--init-generator", "{tg}"], "is a 1 bundle"),
    (["--stage", "2", "--data", "{synth}"], "stage 2 needs --init"),
    (["--stage", "2", "--data", "{synth}", "--init", "{missing}"], "is not a bundle folder"),
    (["--stage", "1", "--data", "{synth}", "--set", "data.train=[nih8_boxes]"], "nih8_boxes"),
    (["--stage", "1", "--data", "{synth}", "--name", "../x"], "plain folder name"),
    (["--stage", "1", "--data", "{synth}", "--set", "supervision.generation_sampling=rare"], "uniform or balanced"),
    (["--stage", "1", "--data", "{synth}", "--set", "model.skip_roi_pool_prob=1.5"], "in [0, 1]"),
    (["--resume", "{empty}"], "not a chex train run folder"),
])
def test_bad_training_inputs_fail_with_one_line(args, message, chain, synth, tmp_path, capsys, monkeypatch):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    subs = {"{missing}": str(tmp_path / "nope"), "{empty}": str(tmp_path / "empty"), "{synth}": str(synth),
            "{s1}": str(chain["1"] / "bundle"), "{tg}": str(chain["txtgen"] / "bundle")}
    args = [subs.get(a, a) for a in args]
    if "--resume" not in args:
        args += ["--batch-size", "2", "--set", "optim.accumulation_steps=1"]
    code, text = cli(["train", *args, "--out", tmp_path / "runs", "--model-config", "tiny", "--no-progress"], capsys)
    assert code == 2, text
    assert message in text and "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, text
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())


def test_resume_with_changed_options_is_refused(chain, capsys):
    code, text = cli(["train", "--resume", chain["2"], "--set", "optim.lr=0.5"], capsys)
    assert code == 2 and "change its configuration" in text


def test_full_disk_while_checkpointing_is_one_line_and_leaves_no_partial_file(synth, tmp_path, capsys, monkeypatch):
    import chexcli.train.checkpoint as ckpt

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full)
    code, text = cli(["train", "--stage", "1", "--data", synth, "--model-config", "tiny", "--out", tmp_path,
                      "--name", "full", "--max-steps", "2", "--batch-size", "4", "--checkpoint-every", "1",
                      "--val-every", "0", "--no-progress", *[x for s in FAST for x in ("--set", s)]], capsys)
    assert code == 2 and "No space left on device" in text and "Traceback" not in text
    files = [p.name for p in (tmp_path / "full").rglob("*")]
    assert "last.pt" not in files and not [f for f in files if f.endswith(".tmp")]
    assert "bundle" not in files
