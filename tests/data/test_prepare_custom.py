"""`chex data prepare custom`: a table of one's own images, reports and boxes -> a processed folder
that training, evaluation and prediction read (docs/custom-data.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from chexcli.cli.main import run
from chexcli.data.dataset import ChexDataset
from chexcli.data.processed.layout import CUSTOM_FINDINGS, MIMIC_REPORTS_CIG
from tests.data.customsynth import NEW_FINDING, custom_rows, write_csv_table, write_jsonl_table


def cli(args: list, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        run([str(a) for a in args])
    out, err = capsys.readouterr()
    return exited.value.code or 0, out + err


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from chexcli.data.prepare.synthetic import prepare_synthetic

    out = tmp_path_factory.mktemp("synth") / "data"
    prepare_synthetic(out, n=20, seed=0, progress=False)
    return out


@pytest.fixture(scope="module")
def table(synth, tmp_path_factory) -> tuple[Path, Path, list[dict]]:
    """(CSV table, images folder, rows) of 20 synthetic images."""
    root = tmp_path_factory.mktemp("custom")
    rows = custom_rows(synth, root / "images")
    return write_csv_table(rows, root / "cases.csv"), root / "images", rows


def test_csv_and_jsonl_tables_prepare_the_same_folder(table, tmp_path, capsys):
    csv_table, images, rows = table
    code, text = cli(["data", "prepare", "custom", "--table", csv_table, "--images", images,
                      "--out", tmp_path / "a"], capsys)
    assert code == 0, text
    assert f"new finding names (the model learns them in stage 1 with custom_boxes): {NEW_FINDING}" in text
    jsonl = write_jsonl_table(rows, tmp_path / "cases.jsonl")
    code, text = cli(["data", "prepare", "custom", "--table", jsonl, "--images", images, "--out", tmp_path / "b"],
                     capsys)
    assert code == 0, text
    for f in sorted((tmp_path / "a").glob("*.csv")):
        assert f.read_text() == (tmp_path / "b" / f.name).read_text(), f.name
    record = json.loads((tmp_path / "a" / "custom_findings.json").read_text())
    assert record["new"] == [NEW_FINDING] and f"custom/{NEW_FINDING}" in record["class_names"]
    assert record["known"]["Cardiomegaly"] == "vindrcxr/Cardiomegaly"
    # the tables load with the configurations training and evaluation use
    boxes = ChexDataset(tmp_path / "a", "custom_boxes", "train")
    assert boxes.classes == record["class_names"]
    sample = next(boxes[i] for i in range(len(boxes)) if len(boxes[i]["target_cls_boxes"]))
    assert sample["target_cls_labels"].sum() >= 1
    reports = ChexDataset(tmp_path / "a", "mimiccxr_reports_cig_multiboxclssent", "train")
    first = reports[0]
    assert first["sentences"] and first["target_anat_present_masks"].all()
    assert any(first["target_anat_sentences"])
    # boxes stay in the image's pixels; a box linked by index names its sentence
    df = pd.read_csv(tmp_path / "a" / f"{CUSTOM_FINDINGS}.all.csv", keep_default_na=False)
    phrases = [p for cell in df["clsbboxphrases"] for p in json.loads(cell)]
    assert phrases and all(p.endswith(".") for p in phrases)
    assert len(pd.read_csv(tmp_path / "a" / f"{MIMIC_REPORTS_CIG}.all.csv")) == 20


def test_bad_rows_are_listed_one_per_line_and_nothing_is_written(table, tmp_path, capsys):
    _, images, _ = table
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "image,split,report,finding,anatomy,x1,y1,x2,y2,sentence\n"
        "cases/synth0-000000.png,train,Heart size is normal. No effusion.,,,,,,,\n"
        "cases/synth0-000000.png,,,Round lesion,,50,60,40,90,\n"  # x2 < x1
        "cases/synth0-000001.png,training,,,,,,,,\n"  # unknown split
        "cases/synth0-000001.png,,,,left lungs,10,10,80,90,\n"  # unknown anatomy
        "cases/missing.png,test,,,,,,,,\n"  # no such file
        "cases/synth0-000000.png,,,Cardiomegaly,,10,10,300,90,\n"  # outside the 256 x 256 image
        "cases/synth0-000000.png,,,Cardiomegaly,,10,10,90,90,5\n"  # sentence index out of range
        "cases/synth0-000002.png,test,,Nodule/Mass,,10,10,90,90,\n",  # '/' in the name
        encoding="utf-8")
    out = tmp_path / "out"
    code, text = cli(["data", "prepare", "custom", "--table", bad, "--images", images, "--out", out], capsys)
    assert code == 2, text
    lines = text.strip().splitlines()
    expected = [f"{bad}:3: box: 50,60,40,90 is empty or reversed", f"{bad}:4: split: unknown split 'training'",
                f"{bad}:5: anatomy: unknown anatomy 'left lungs'; did you mean 'left lung'?",
                f"{bad}:6: image: file not found", f"{bad}:7: box: 10,10,300,90 is outside the image (256 x 256",
                f"{bad}:8: sentence: index 5 but the image has 2 sentence(s)",
                f"{bad}:9: finding: 'Nodule/Mass' contains '/'"]
    for start in expected:
        assert sum(line.startswith(start) for line in lines) == 1, (start, text)
    assert lines[-1].startswith(f"error: {bad}: 7 problems; nothing was written")
    assert not out.exists()


def test_a_missing_column_is_named_and_unknown_columns_are_refused(table, tmp_path, capsys):
    _, images, _ = table
    bad = tmp_path / "bad.csv"
    bad.write_text("image,fnding\ncases/synth0-000000.png,Cardiomegaly\n", encoding="utf-8")
    code, text = cli(["data", "prepare", "custom", "--table", bad, "--images", images, "--out", tmp_path / "o"],
                     capsys)
    assert code == 2
    assert f"{bad}:1: fnding: unknown column (did you mean finding?)" in text
    assert f"{bad}:1: split: missing column" in text
    assert not (tmp_path / "o").exists()


def test_out_holding_other_files_is_refused_and_a_custom_folder_is_replaced(table, tmp_path, capsys):
    csv_table, images, _ = table
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, text = cli(["data", "prepare", "custom", "--table", csv_table, "--images", images, "--out", other], capsys)
    assert code == 2 and "holds no custom folder" in text and (other / "notes.txt").is_file()
    out = tmp_path / "out"
    for _ in range(2):
        code, text = cli(["data", "prepare", "custom", "--table", csv_table, "--images", images, "--out", out],
                         capsys)
        assert code == 0, text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_custom_table_round_trips_through_train_evaluate_and_predict(table, tmp_path, tiny_bundle, capsys):
    """Stage 1 from a bundle learns the new finding name, the bundle records it, predict resolves it,
    evaluate scores the folder; stage 2 carries the name on."""
    from chexcli.model.bundle import load_bundle

    csv_table, images, _ = table
    data = tmp_path / "data"
    assert cli(["data", "prepare", "custom", "--table", csv_table, "--images", images, "--out", data], capsys)[0] == 0
    fast = ["--max-steps", "2", "--batch-size", "4", "--val-every", "0", "--set", "data.workers=0",
            "--out", tmp_path / "runs", "--no-progress"]
    code, text = cli(["train", "--stage", "1", "--data", data, "--init", tiny_bundle, "--name", "s1",
                      "--set", "data.train=[mimiccxr_reports_cig_multiboxclssent,custom_boxes]", *fast], capsys)
    assert code == 0, text
    bundle = tmp_path / "runs" / "s1" / "bundle"
    prompts = load_bundle(bundle).prompts
    assert prompts["prompt_sets"]["custom_pos"][f"custom/{NEW_FINDING}"] == [NEW_FINDING]
    assert "custom_pos" in prompts["model_prompt_assembly"]["pathology_pos_prompts"]

    code, text = cli(["predict", images / "cases" / "synth0-000009.png", "--model", bundle, "--prompt",
                      NEW_FINDING.lower(), "--no-sentences", "--json", "--out", tmp_path / "pred"], capsys)
    assert code == 0, text
    record = json.loads(next(line for line in text.splitlines() if line.startswith("{")))
    assert record["queries"][0]["prompt_source"] == f"pathology:custom/{NEW_FINDING}"

    code, text = cli(["evaluate", "--task", "od_mscxr", "--data", data, "--model", bundle,
                      "--out", tmp_path / "eval"], capsys)
    assert code == 0, text
    assert (tmp_path / "eval" / "run" / "metrics.json").is_file() or list((tmp_path / "eval").rglob("*.json"))

    code, text = cli(["train", "--stage", "2", "--data", data, "--init", bundle, "--name", "s2", *fast], capsys)
    assert code == 0, text
    carried = load_bundle(tmp_path / "runs" / "s2" / "bundle").prompts
    assert carried["prompt_sets"]["custom_pos"] == prompts["prompt_sets"]["custom_pos"]
