"""`chex predict` end to end on a tiny bundle: outputs, run folders, and every error path."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from chexcli.cli.predict import parse_box
from chexcli.errors import ChexError


def chex(*args, cwd):
    return subprocess.run([sys.executable, "-m", "chexcli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 260), dtype=np.uint8), "L").save(d / "a.png")
    Image.fromarray(rng.integers(0, 255, (200, 240, 3), dtype=np.uint8), "RGB").save(d / "b.jpg")
    Image.fromarray(rng.integers(0, 65535, (256, 256), dtype=np.uint16)).save(d / "c16.png")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(d / "d.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = 240, 220
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = rng.integers(0, 4095, (240, 220), dtype=np.uint16).tobytes()
    ds.save_as(d / "d.dcm", enforce_file_format=True)
    (d / "broken.png").write_bytes(b"not an image")
    return d


def test_prints_writes_and_never_overwrites(tiny_bundle, images, tmp_path):
    args = [images / "a.png", images / "b.jpg", images / "c16.png", images / "d.dcm", "--model", tiny_bundle,
            "--prompt", "left lung opacity", "--prompt", "cardiomegaly", "--box", "20,30,120,150",
            "--max-new-tokens", "5"]
    r = chex("predict", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "prompt 'left lung opacity'" in r.stdout and "sentence:" in r.stdout
    run = tmp_path / "runs/predict/run"
    records = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert [rec["image"].rsplit("/", 1)[-1] for rec in records] == ["a.png", "b.jpg", "c16.png", "d.dcm"]
    first = records[0]
    assert (first["width"], first["height"]) == (260, 300)
    kinds = [q["type"] for q in first["queries"]]
    assert kinds == ["prompt", "prompt", "box"]
    assert first["queries"][1]["prompt_source"].startswith("pathology:")
    assert first["queries"][2]["box"] == [20.0, 30.0, 120.0, 150.0]
    assert all(isinstance(q["sentence"], str) for q in first["queries"])
    assert len(first["queries"][0]["regions"]) == 3
    for name in ("a.png", "b.png", "c16.png", "d.png"):
        png = Image.open(run / name)
        assert png.mode == "RGB" and png.height > 200
    r2 = chex("predict", *args, "--json", cwd=tmp_path)
    assert r2.returncode == 0
    assert (tmp_path / "runs/predict/run2/predictions.jsonl").exists()
    lines = r2.stdout.strip().splitlines()
    assert len(lines) == 4 and [json.loads(x) for x in lines] == records  # deterministic, stdout is pure JSON


def test_int8_dtype(tiny_bundle, images, tmp_path):
    r = chex("predict", images / "a.png", "--model", tiny_bundle, "--prompt", "heart", "--dtype", "int8",
             "--json", "--max-new-tokens", "3", "--no-images", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert isinstance(json.loads(r.stdout)["queries"][0]["sentence"], str)


def test_normalized_box_format(tiny_bundle, images, tmp_path):
    r = chex("predict", images / "a.png", "--model", tiny_bundle, "--box", "0.1,0.1,0.5,0.6",
             "--box-format", "normalized", "--json", "--max-new-tokens", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    q = json.loads(r.stdout)["queries"][0]
    assert q["box"] == pytest.approx([0.1, 0.1, 0.5, 0.6])


def test_unreadable_image_is_skipped_exit_1(tiny_bundle, images, tmp_path):
    r = chex("predict", images / "broken.png", images / "a.png", tmp_path / "missing.png", "--model", tiny_bundle,
             "--prompt", "heart", "--json", "--max-new-tokens", "3", cwd=tmp_path)
    assert r.returncode == 1
    assert len(r.stdout.strip().splitlines()) == 1  # only the good image
    assert "broken.png" in r.stderr and "missing.png" in r.stderr and "Traceback" not in r.stderr
    failed = (tmp_path / "runs/predict/run/failed.txt").read_text()
    assert "broken.png" in failed


@pytest.mark.parametrize("extra, message", [
    (["--prompt", "x", "--box", "10,10,5,20"], "x2 > x1"),
    (["--prompt", "x", "--box", "1,2,3"], "four numbers"),
    ([], "no query"),
    (["--prompt", "x", "--device", "tpu"], "unknown --device"),
    (["--prompt", "x", "--dtype", "fp8"], "unknown --dtype"),
    (["--box", "500,500,600,600"], "outside"),
    (["--box", "0,0,20,20"], "centre square"),  # a 260x300 image loses 20 px rows at the top
] + ([] if torch.cuda.is_available() else [(["--prompt", "x", "--device", "cuda"], "CUDA is not available")]))
def test_bad_input_exit_2(tiny_bundle, images, tmp_path, extra, message):
    r = chex("predict", images / "a.png", "--model", tiny_bundle, *extra, cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_missing_and_bad_model_exit_2(images, tmp_path):
    r = chex("predict", images / "a.png", "--model", tmp_path / "nope", "--prompt", "x", cwd=tmp_path)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/config.json").write_text("{}")
    r = chex("predict", images / "a.png", "--model", tmp_path / "bad", "--prompt", "x", cwd=tmp_path)
    assert r.returncode == 2 and "not a chexcli bundle" in r.stderr
    assert not (tmp_path / "runs").exists()  # nothing written for a bad model


def test_parse_box():
    assert parse_box("1, 2,3,4.5") == (1.0, 2.0, 3.0, 4.5)
    with pytest.raises(ChexError):
        parse_box("nan,1,2,3")


def test_report(tiny_bundle, images, tmp_path):
    r = chex("predict", images / "a.png", "--model", tiny_bundle, "--report", "--json", "--max-new-tokens", "3",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert isinstance(rec["report"], str) and rec["queries"] == []
    queries = rec["report_queries"]
    assert len(queries) == 29  # 14 CheXpert pathologies + 15 anatomies
    assert all(q["selected"] for q in queries[:14])  # every pathology query gets a sentence
    kept = [q["sentence"] for q in queries if q["kept"]]
    assert rec["report"] == " ".join(kept)
    assert (tmp_path / "runs/predict/run/a.png").exists()


def test_literal_prompts_are_embedded_as_typed(tiny_bundle, images, tmp_path):
    r = chex("predict", images / "a.png", "--model", tiny_bundle, "--prompt", "cardiomegaly", "--literal",
             "--no-sentences", "--json", "--name", "lit", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    q = json.loads(r.stdout)["queries"][0]
    assert q["prompt_source"] == "sentence" and q["sentence"] is None
    assert json.loads((tmp_path / "runs/predict/lit/args.json").read_text())["literal"] is True


def test_folder_picks_up_extensionless_dicom(images, tmp_path):
    from chexcli.cli.predict import expand_inputs

    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "1.2.840.113619.2.55").write_bytes((images / "d.dcm").read_bytes())
    (folder / "IM0001").write_bytes((images / "d.dcm").read_bytes())
    (folder / "notes").write_text("x" * 200)
    (folder / "a.png").write_bytes((images / "a.png").read_bytes())
    assert [p.name for p in expand_inputs([str(folder)])] == ["1.2.840.113619.2.55", "IM0001", "a.png"]
    with pytest.raises(ChexError, match="file not found"):
        expand_inputs([str(tmp_path / "missing.png")])
    assert len(expand_inputs([str(tmp_path / "missing.png"), str(folder)])) == 4  # reported per image later
