"""`chex demo`: the quick run end to end through the CLI, and its input errors.

The full demo (about 10 minutes on 2 CPU cores) is marked slow and skipped by default;
`pytest -m slow` runs it, and so does .ci/run after the rest of the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

CHEX = [sys.executable, "-m", "chexcli"]


def _run(args: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    return subprocess.run(CHEX + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("demo")
    result = _run(["demo", "--quick", "--out", str(out / "runs")], out, timeout=600)
    return result, out / "runs"


def test_quick_demo_runs_every_step(quick_run):
    result, runs = quick_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    run_dir = runs / "demo"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["quick"] is True and Path(summary["run_dir"]) == run_dir
    assert [c["name"] for c in summary["checks"]][:3] == [
        "anatomy grounding (mean IoU)", "finding detection (AP@0.5)", "region sentences (fraction right)"]
    for stage in ("1", "txtgen", "2", "3"):
        assert (Path(summary["bundles"][stage]) / "model.safetensors").is_file()
    assert summary["bundle"] == summary["bundles"]["3"]
    for key in ("synthetic chest X-rays", "training", "evaluation", "chex predict"):
        assert any(key in label for label in summary["seconds"])
    text = (run_dir / "summary.txt").read_text()
    assert "chex predict" in text and "chex evaluate" in text and "quick run" in text


def test_quick_demo_writes_annotated_images_and_predictions(quick_run):
    result, runs = quick_run
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((runs / "demo" / "summary.json").read_text())
    assert summary["images"], "no annotated image"
    for path in map(Path, summary["images"]):
        with Image.open(path) as im:
            assert im.size[0] >= 256 and im.mode in ("RGB", "RGBA")
        lines = (path.parent / "predictions.jsonl").read_text().splitlines()
        record = json.loads(lines[0])
        assert [q["prompt"] for q in record["queries"] if q["type"] == "prompt"][0] == "cardiac silhouette"
        assert [q["type"] for q in record["queries"]][-1] == "box"


def test_quick_demo_bundle_predicts(quick_run, tmp_path):
    result, runs = quick_run
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((runs / "demo" / "summary.json").read_text())
    image = summary["images"][0]
    res = _run(["predict", image, "--model", summary["bundle"], "--prompt", "left lung", "--json", "--no-images"],
               tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    record = json.loads(res.stdout.splitlines()[0])
    assert record["queries"][0]["prompt"] == "left lung"


def test_second_demo_goes_to_a_new_run_folder(quick_run, tmp_path):
    """A run folder is never overwritten: the next run under the same --out is demo2 (checked
    without running it: the run-folder rule is shared with chex train and chex predict)."""
    from chexcli.runs import new_run_dir

    _, runs = quick_run
    assert (runs / "demo").is_dir()
    assert new_run_dir(runs, "demo").name == "demo2"


def test_demo_out_that_is_a_file_is_refused(tmp_path):
    out = tmp_path / "file.txt"
    out.write_text("x")
    res = _run(["demo", "--quick", "--out", str(out)], tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert len([ln for ln in res.stderr.splitlines() if ln.strip()]) == 1
    assert "is a file" in res.stderr
    assert out.read_text() == "x"


def test_demo_rejects_negative_seed(tmp_path):
    res = _run(["demo", "--seed", "-1", "--out", str(tmp_path / "r")], tmp_path, timeout=120)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_full_demo_beats_the_baselines(tmp_path):
    """The README's first command: trains through all four stages and passes every check."""
    res = _run(["demo", "--out", str(tmp_path / "runs")], tmp_path, timeout=1500)
    summary = json.loads((tmp_path / "runs" / "demo" / "summary.json").read_text())
    failed = [c for c in summary["checks"] if c["enforced"] and not c["passed"]]
    assert res.returncode == 0 and summary["passed"], (failed, res.stderr[-3000:])


def test_training_stages_run_on_at_most_the_plans_threads():
    import torch

    from chexcli.demo.run import FULL, _torch_threads

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with _torch_threads(FULL.stage_threads):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with _torch_threads(None):
            assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError):
            with _torch_threads(1):
                raise RuntimeError("a failing stage")
        assert torch.get_num_threads() == 2  # restored after a failure too
    finally:
        torch.set_num_threads(before)
