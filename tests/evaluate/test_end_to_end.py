"""Every task kind end to end on a tiny model and a tiny processed folder; re-scoring; the CLI."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from chexcli.evaluate.records import read_predictions
from chexcli.evaluate.runner import evaluate_task
from chexcli.evaluate.tasks import load_task


@pytest.fixture(autouse=True)
def no_java(monkeypatch):
    """METEOR (12 s of JVM start) is covered in tests/metrics; here it is skipped."""
    monkeypatch.setattr("chexcli.metrics.text.shutil.which", lambda name: None)


def _schema_ok(folder, name) -> int:
    """The prediction file chex evaluate wrote passes the schema check of --predictions; its record count."""
    return len(read_predictions(folder / f"test_{name}.predictions.jsonl", load_task(name)))


def _short(name, **extra):
    over = {"max_length": 6} if name.startswith(("rc_re", "rg")) else {}
    over.update(extra)
    return load_task(name, over)


def test_detection_tune_bootstrap_and_rescore(tmp_path, processed, tiny_model):
    task = load_task("od_mscxr")
    run = evaluate_task(task, tmp_path, "test", processed, model=tiny_model, n_bootstrap=5, tune=True)
    m = run.scores.metrics
    assert {"AP/mAP/mean", "AP/mAP/std", "AP/mAP/point", "AP/mAP/ci_low", "AP/mAP/ci_high", "coco/AP"} <= set(m)
    assert 0 <= m["AP/mAP/point"] <= 1
    assert len(run.settings["box_scale_factors"]) == 8  # tuned per class
    pred = tmp_path / "test_od_mscxr.predictions.jsonl"
    lines = pred.read_text().splitlines()
    assert len(lines) == 4 and _schema_ok(tmp_path, "od_mscxr") == 4
    rec = json.loads(lines[0])
    q = rec["queries"][0]
    assert rec["box_format"] == "model" and len(rec["queries"]) == 8
    assert {"type", "prompt", "prompt_source", "box", "box_model", "score", "present", "regions", "detections"} <= set(q)
    csv = (tmp_path / "test_od_mscxr_bootstrap.csv").read_text().splitlines()
    assert len(csv) == 6 and csv[0].startswith("AP/mAP")
    # --predictions round trip: identical point estimates and replicates, without the model
    (tmp_path / "r").mkdir()
    again = evaluate_task(load_task("od_mscxr"), tmp_path / "r", "test", processed, predictions=pred, n_bootstrap=5)
    assert again.scores.metrics == m
    # re-post-processing from the raw candidates with the tuned settings gives the same detections
    tuned = load_task("od_mscxr", run.settings)
    (tmp_path / "s").mkdir()
    same = evaluate_task(tuned, tmp_path / "s", "test", processed, predictions=pred, resettle=True)
    assert same.scores.metrics["AP/mAP"] == m["AP/mAP/point"]


def test_grounding(tmp_path, processed, tiny_model):
    run = evaluate_task(load_task("sg_mscxr"), tmp_path, "test", processed, model=tiny_model)
    m = run.scores.metrics
    assert {"AP/mAP", "AP/AP@0.5", "IoU", "mIoU", "bIoU", "phrase/mIoU", "phrase/Acc@0.5"} <= set(m)
    assert m["bIoU"] >= m["mIoU"]
    rec = json.loads((tmp_path / "test_sg_mscxr.predictions.jsonl").read_text().splitlines()[0])
    assert sorted(q["prompt"] for q in rec["queries"]) == ["left basal atelectasis", "right effusion"]
    assert _schema_ok(tmp_path, "sg_mscxr") == 4


def test_region_classification(tmp_path, processed, tiny_model):
    a = evaluate_task(load_task("rc_mscxr"), tmp_path, "test", processed, model=tiny_model).scores.metrics
    assert {"auroc", "acc", "mcc", "auroc_cls/mscxr-Lung_Opacity"} <= set(a)
    b = evaluate_task(load_task("rc_cig"), tmp_path, "test", processed, model=tiny_model,
                      n_bootstrap=1).scores.metrics
    assert "loc_auroc/weighted/mean" in b and "nonloc_mcc_macro/point" in b
    assert b["stats/count_per_sample/std"] >= 0
    assert (tmp_path / "test_rc_cig_cls_bootstrap.csv").is_file()
    assert len((tmp_path / "test_rc_cig_cls_bootstrap.csv").read_text().splitlines()) == 251  # fixed 250
    assert _schema_ok(tmp_path, "rc_mscxr") == 4 and _schema_ok(tmp_path, "rc_cig") == 3


def test_region_explanation_with_tiny_chexbert(tmp_path, processed, tiny_model):
    class FixedLabeler:  # a stand-in labeler: "effusion" in the text -> Pleural Effusion positive
        def label(self, texts):
            out = np.zeros((len(texts), 14), dtype=np.int64)
            for i, t in enumerate(texts):
                out[i, 9] = 1 if "effusion" in t.lower() else 0
            return out

    run = evaluate_task(_short("rc_re_mscxr"), tmp_path, "test", processed, model=tiny_model,
                        labeler=FixedLabeler())
    m = run.scores.metrics
    assert "micro_f1_14" in m and "ex_f1_14" in m and "auroc" in m
    assert "METEOR" not in m and any("METEOR skipped" in n for n in run.scores.notes)
    rec = json.loads((tmp_path / "test_rc_re_mscxr.predictions.jsonl").read_text().splitlines()[0])
    assert all(isinstance(q["sentence"], str) for q in rec["queries"]) and len(rec["queries"]) == 2
    cig = evaluate_task(_short("rc_re_cig"), tmp_path, "test", processed, model=tiny_model)
    assert "loc_auroc/weighted" in cig.scores.metrics
    assert any("CheXbert" in n for n in cig.scores.notes)
    assert _schema_ok(tmp_path, "rc_re_mscxr") == 4 and _schema_ok(tmp_path, "rc_re_cig") == 3


def test_report_generation(tmp_path, processed, tiny_model):
    run = evaluate_task(_short("rg_mimic"), tmp_path, "test", processed, model=tiny_model, n_bootstrap=1)
    m = run.scores.metrics
    assert {"BLEU-1/mean", "BLEU-4/point", "Rouge-L/std", "CIDEr-D/ci_low"} <= set(m)
    rec = json.loads((tmp_path / "test_rg_mimic.predictions.jsonl").read_text().splitlines()[0])
    assert len(rec["queries"]) == 29 and isinstance(rec["report"], str)
    kept = [q["sentence"] for q in rec["queries"] if q["kept"]]
    assert rec["report"] == " ".join(kept)
    assert all(q["selected"] for q in rec["queries"][:14])  # every pathology query yields a sentence
    assert _schema_ok(tmp_path, "rg_mimic") == 3


def test_cli_evaluate_and_rescore(tmp_path, processed, tiny_bundle):
    from chexcli.cli.main import app

    runner = CliRunner()
    out = tmp_path / "runs"
    res = runner.invoke(app, ["evaluate", "--task", "od_mscxr", "--model", str(tiny_bundle), "--data",
                              str(processed), "--out", str(out), "--bootstrap", "3"])
    assert res.exit_code == 0, res.output
    assert "AP/mAP" in res.output
    run = out / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert "test_od_mscxr/AP/mAP/point" in metrics
    assert json.loads((run / "settings.json").read_text())["od_mscxr"]["nms_threshold"] == 0.25
    res = runner.invoke(app, ["evaluate", "--task", "od_mscxr", "--predictions",
                              str(run / "test_od_mscxr.predictions.jsonl"), "--data", str(processed),
                              "--out", str(out), "--bootstrap", "3", "--settings", str(run / "settings.json")])
    assert res.exit_code == 0, res.output
    again = json.loads((out / "run2" / "metrics.json").read_text())
    assert again == metrics


def test_cli_errors(tmp_path, processed, tiny_bundle):
    from chexcli.cli.main import run

    import subprocess
    import sys

    def chex(*args):
        return subprocess.run([sys.executable, "-m", "chexcli", *args], capture_output=True, text=True)

    r = chex("evaluate", "--task", "od_mscxr", "--data", str(processed))
    assert r.returncode == 2 and "exactly one of --model" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    r = chex("evaluate", "--task", "od_mscxr", "--predictions", str(bad), "--data", str(processed),
             "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "not JSON" in r.stderr and not (tmp_path / "o").exists()
    assert run  # the entry point exists
