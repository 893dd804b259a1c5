"""Bad inputs of `chex data prepare` and `chex evaluate`, one table row per case.

Each row builds its input in a temporary folder and returns the command line; the row
states the exit code and a fragment of the one-line message (stderr). No row may end in
a traceback. The rows cover, from issue 10: raw tables with a missing column, an empty
file, a `.gz` that is not gzip, text that is not UTF-8, a cell that is not a number;
reports that are not UTF-8 (skipped and listed); images over the pixel-count limit and
truncated images (skipped and listed at prepare time, and at evaluation time);
prediction files that break the schema (binary, missing keys, wrong types, unknown
classes, NaN or infinite boxes and scores); unknown dataset names.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent / "data"))
import datasynth as ds  # noqa: E402

from chexcli.cli.main import run  # noqa: E402

MIMIC_META = "mimic-cxr-2.0.0-metadata.csv.gz"
MIMIC_SPLIT = "mimic-cxr-2.0.0-split.csv.gz"
VINDR_ANN = "vindr-cxr/1.0.0/annotations"


class Shared:
    """Inputs that several rows start from, built once per module."""

    def __init__(self, root: Path, request):
        self.root, self.request = root, request
        self._mimic = self._nih = None

    def mimic_jpg_done(self) -> Path:
        """A processed folder after `prepare mimic-cxr-jpg` (the other MIMIC steps need it)."""
        if self._mimic is None:
            from chexcli.data.prepare.dispatch import prepare

            raw = ds.make_mimic_jpg(self.root / "mimic-raw", corrupt=None)
            prepare("mimic-cxr-jpg", raw, self.root / "mimic-out", progress=False)
            self._mimic = self.root / "mimic-out"
        return self._mimic

    def nih_prepared(self) -> tuple[Path, Path]:
        """(raw, processed) NIH folders."""
        if self._nih is None:
            from chexcli.data.prepare.dispatch import prepare

            raw = ds.make_nih(self.root / "nih-raw", size=64)
            prepare("nih-cxr14", raw, self.root / "nih-out", progress=False)
            self._nih = raw, self.root / "nih-out"
        return self._nih


@pytest.fixture(scope="module")
def shared(tmp_path_factory, request) -> Shared:
    return Shared(tmp_path_factory.mktemp("shared"), request)


@dataclass
class Case:
    id: str
    make: Callable[[Path, Shared], list[str]]  # builds the input, returns the command line (after `chex`)
    exit_code: int
    fragment: str  # expected in stderr
    check: Callable[[Path], None] | None = None  # further checks of what was (not) written
    env: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- input makers
def _prepare(name: str, raw: Path, out: Path) -> list[str]:
    return ["data", "prepare", name, "--raw", str(raw), "--out", str(out), "--workers", "1"]


def mimic_jpg(edit: Callable[[Path], object]):
    def make(tmp: Path, shared: Shared) -> list[str]:
        raw = ds.make_mimic_jpg(tmp / "raw", corrupt=None)
        edit(raw)
        return _prepare("mimic-cxr-jpg", raw, tmp / "out")
    return make


def mimic_part(name: str, build: Callable[[Path], object]):
    """A later MIMIC step (reports, cig, mscxr) on a copy of the prepared image folder."""
    def make(tmp: Path, shared: Shared) -> list[str]:
        out = tmp / "out"
        shutil.copytree(shared.mimic_jpg_done(), out)
        build(tmp / "raw")
        return _prepare(name, tmp / "raw", out)
    return make


def vindr(edit: Callable[[Path], object]):
    def make(tmp: Path, shared: Shared) -> list[str]:
        raw, _ = ds.make_vindr(tmp / "raw", compressed_bad=False)
        edit(raw)
        return _prepare("vindr", raw, tmp / "out")
    return make


def nih(edit: Callable[[Path], object]):
    def make(tmp: Path, shared: Shared) -> list[str]:
        raw = ds.make_nih(tmp / "raw", size=64)
        edit(raw)
        return _prepare("nih", raw, tmp / "out")
    return make


def nih_image(raw: Path, name: str) -> Path:
    return next(raw.glob(f"images_00*/images/{name}"))


def reports_with_latin1(raw: Path) -> None:
    ds.make_mimic_reports(raw)
    bad = next(raw.glob("files/p10/p10000002/s50000002.txt"))
    bad.write_bytes(ds.REPORT_B.replace("opacity", "opacit\u00e9").encode("latin-1"))


def predictions(lines: list, task: str = "od_mscxr"):
    """A prediction file of JSON lines (dicts are dumped, str/bytes written as they are)."""
    def make(tmp: Path, shared: Shared) -> list[str]:
        path = tmp / "preds.jsonl"
        data = b""
        for line in lines:
            if isinstance(line, bytes):
                data += line
            elif isinstance(line, str):
                data += line.encode() + b"\n"
            else:
                data += json.dumps(line).encode() + b"\n"
        path.write_bytes(data)
        (tmp / "data").mkdir()
        return ["evaluate", "--task", task, "--predictions", str(path), "--data", str(tmp / "data"),
                "--out", str(tmp / "runs")]
    return make


def detection_record(**query) -> dict:
    q = {"type": "prompt", "prompt": "effusion", "class": "mscxr/Pleural Effusion",
         "detections": [{"box": [0.1, 0.1, 0.3, 0.3], "box_model": [0.2, 0.2, 0.2, 0.2], "score": 0.9}]}
    q.update(query)
    return {"image": "p1/s1/d1", "task": "od_mscxr", "box_format": "model", "queries": [q]}


def evaluate_with_damaged_image(tmp: Path, shared: Shared) -> list[str]:
    raw, out = shared.nih_prepared()
    raw2, out2 = tmp / "raw", tmp / "out"
    shutil.copytree(raw, raw2)
    shutil.copytree(out, out2)
    manifest = json.loads((out2 / "manifest.json").read_text())
    manifest["parts"]["nih-cxr14"]["raw"] = str(raw2)
    (out2 / "manifest.json").write_text(json.dumps(manifest))
    test = pd.read_csv(out2 / "nih_cxr.test.csv")
    ds.truncate(raw2 / test["path"][0], 0.8)  # damaged after prepare
    bundle = shared.request.getfixturevalue("tiny_bundle")
    return ["evaluate", "--task", "od_nih8", "--model", str(bundle), "--data", str(out2), "--out", str(tmp / "runs")]


# ----------------------------------------------------------------------------- checks
def no_run_folder(tmp: Path) -> None:
    assert not (tmp / "runs").exists()


def skipped_images(count: int, reason: str) -> Callable[[Path], None]:
    def check(tmp: Path) -> None:
        sk = pd.read_csv(tmp / "out" / "skipped_images.csv")
        assert len(sk) == count and all(reason in r for r in sk["reason"]), sk.to_dict("records")
        assert all("\n" not in r for r in sk["reason"])
    return check


def skipped_report(tmp: Path) -> None:
    sk = pd.read_csv(tmp / "out" / "skipped_reports.csv", dtype=str)
    assert sk["study_id"].tolist() == ["50000002"] and "not UTF-8" in sk["reason"][0]
    kept = json.loads((tmp / "out" / "reports_processed.json").read_text())
    assert sorted(kept) == ["50000001", "50000005"]  # the other reports are prepared


def evaluation_went_on(tmp: Path) -> None:
    run = tmp / "runs" / "run"
    sk = pd.read_csv(run / "test_od_nih8.skipped_images.csv")
    assert len(sk) == 1 and "truncated" in sk["reason"][0]
    assert "test_od_nih8/AP/mAP" in json.loads((run / "metrics.json").read_text())
    preds = (run / "test_od_nih8.predictions.jsonl").read_text().splitlines()
    assert len(preds) == len(pd.read_csv(tmp / "out" / "nih_cxr.test.csv")) - 1


NAN_BOX = detection_record(detections=[{"box_model": [float("nan"), 0.2, 0.2, 0.2], "score": 0.9}])
INF_SCORE = detection_record(detections=[{"box_model": [0.2, 0.2, 0.2, 0.2], "score": float("inf")}])

CASES = [
    # --- raw tables
    Case("mimic-metadata-missing-column", mimic_jpg(lambda r: ds.rewrite_csv(
        r / MIMIC_META, lambda df: df.drop(columns=["Rows"]))), 2, f"{MIMIC_META} lacks the column(s) 'Rows'"),
    Case("mimic-metadata-not-a-number", mimic_jpg(lambda r: ds.rewrite_csv(
        r / MIMIC_META, lambda df: df.assign(Columns=["300", "x3"] + list(df["Columns"][2:])))), 2,
        "line 3: column 'Columns' holds 'x3', not a number"),
    Case("mimic-split-empty", mimic_jpg(lambda r: (r / MIMIC_SPLIT).write_bytes(gzip.compress(b""))), 2,
         f"{MIMIC_SPLIT} is empty"),
    Case("mimic-split-header-only", mimic_jpg(lambda r: (r / MIMIC_SPLIT).write_bytes(
        gzip.compress(b"dicom_id,study_id,subject_id,split\n"))), 2, "has a header but no rows"),
    Case("mimic-gz-not-gzip", mimic_jpg(lambda r: (r / MIMIC_META).write_text("dicom_id,Rows\nx,1\n")), 2,
         f"{MIMIC_META} is not a complete gzip file"),
    Case("mimic-gz-truncated", mimic_jpg(lambda r: ds.truncate(r / MIMIC_SPLIT, 0.5)), 2,
         "is not a complete gzip file"),
    Case("mimic-metadata-not-utf8", mimic_jpg(lambda r: (r / MIMIC_META).write_bytes(
        gzip.compress("dicom_id,Rows,Columns,ViewPosition\n\u00e9,1,1,PA\n".encode("utf-16")))), 2, "is not UTF-8 text"),
    Case("mscxr-missing-column", mimic_part("mscxr", lambda raw: ds.rewrite_csv(
        next(ds.make_mscxr(raw).glob("*/MS_CXR_Local_Alignment_v1.0.0.csv")), lambda df: df.drop(columns=["x"]))),
        2, "MS_CXR_Local_Alignment_v1.0.0.csv lacks the column(s) 'x'"),
    Case("mscxr-box-not-a-number", mimic_part("ms-cxr", lambda raw: ds.rewrite_csv(
        next(ds.make_mscxr(raw).glob("*/MS_CXR_Local_Alignment_v1.0.0.csv")),
        lambda df: df.assign(w=["10"] * (len(df) - 1) + ["wide"]))), 2, "line 6: column 'w' holds 'wide'"),
    Case("cig-zip-not-a-zip", mimic_part("cig", lambda raw: (ds.make_imagenome(raw)[0] / "silver_dataset" /
                                                            "scene_graph.zip").write_bytes(b"PK? no")),
         2, "scene_graph.zip is not a readable zip archive"),
    Case("reports-zip-not-a-zip", mimic_part("mimic-cxr", lambda raw: (raw.mkdir(parents=True) or raw).joinpath(
        "mimic-cxr-reports.zip").write_bytes(b"garbage")), 2, "mimic-cxr-reports.zip is not a readable zip archive"),
    Case("report-not-utf8-skipped-and-listed", mimic_part("mimic-cxr", reports_with_latin1), 1,
         "1 report(s) could not be read and were skipped", check=skipped_report),
    Case("vindr-labels-missing-column", vindr(lambda r: ds.rewrite_csv(
        r / VINDR_ANN / "image_labels_train.csv", lambda df: df.drop(columns=["rad_id"]))), 2,
        "image_labels_train.csv lacks the column(s) 'rad_id'"),
    Case("vindr-labels-not-a-number", vindr(lambda r: ds.rewrite_csv(
        r / VINDR_ANN / "image_labels_test.csv", lambda df: df.assign(Cardiomegaly="yes"))), 2,
        "column 'Cardiomegaly' holds 'yes', not a number"),
    Case("vindr-annotations-empty", vindr(lambda r: (r / VINDR_ANN / "annotations_test.csv").write_bytes(b"")), 2,
         "annotations_test.csv is empty"),
    Case("nih-boxes-missing-column", nih(lambda r: ds.rewrite_csv(
        r / "BBox_List_2017.csv", lambda df: df.drop(columns=["h]"]))), 2, "BBox_List_2017.csv lacks the column(s) 'h]'"),
    Case("nih-boxes-not-a-number", nih(lambda r: ds.rewrite_csv(
        r / "BBox_List_2017.csv", lambda df: df.assign(w=["1", "2", "x", "4", "5", "6"]))), 2,
        "line 4: column 'w' holds 'x', not a number"),
    Case("nih-entries-empty", nih(lambda r: (r / "Data_Entry_2017.csv").write_bytes(b"")), 2,
         "Data_Entry_2017.csv is empty"),
    # --- images: pixel-count limit and damaged files (skipped and listed, the rest prepared)
    Case("nih-png-declaring-15000x15000", nih(lambda r: ds.png_declaring_size(
        nih_image(r, "00000003_000.png"), 15000, 15000)), 1, "1 image(s) could not be read and were skipped",
        check=skipped_images(1, "limit")),
    Case("nih-png-truncated", nih(lambda r: ds.truncate(nih_image(r, "00000005_000.png"), 0.5)), 1,
         "1 image(s) could not be read and were skipped", check=skipped_images(1, "truncated")),
    Case("mimic-jpeg-over-limit", mimic_jpg(lambda r: None), 1, "4 image(s) could not be read",
         check=skipped_images(4, "CHEX_MAX_IMAGE_PIXELS"), env={"CHEX_MAX_IMAGE_PIXELS": "100000"}),
    Case("vindr-dicom-over-limit", vindr(lambda r: None), 1, "4 image(s) could not be read",
         check=skipped_images(4, "CHEX_MAX_IMAGE_PIXELS"), env={"CHEX_MAX_IMAGE_PIXELS": "65000"}),
    Case("evaluate-image-damaged-after-prepare", evaluate_with_damaged_image, 1,
         "1 image(s) could not be read and were left out of the metrics", check=evaluation_went_on),
    # --- prediction files
    Case("predictions-binary", predictions([b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00"]), 2, "line 1 is not UTF-8 text",
         check=no_run_folder),
    Case("predictions-not-json", predictions([detection_record(), "{oops"]), 2, "line 2 is not JSON",
         check=no_run_folder),
    Case("predictions-missing-queries", predictions([{"image": "p1/s1/d1"}]), 2, "line 1: the record lacks the key "
         "'queries'", check=no_run_folder),
    Case("predictions-missing-detections", predictions([detection_record(detections=None) | {"queries": [
        {"prompt": "x", "class": "mscxr/Edema"}]}]), 2, "queries[0] lacks the key 'detections'", check=no_run_folder),
    Case("predictions-image-not-a-string", predictions([detection_record() | {"image": 7}]), 2,
         "image is a number, not a string", check=no_run_folder),
    Case("predictions-score-a-string", predictions([detection_record(detections=[
        {"box_model": [0.2, 0.2, 0.2, 0.2], "score": "high"}])]), 2,
        "queries[0].detections[0].score is a string, not a number", check=no_run_folder),
    Case("predictions-box-of-3", predictions([detection_record(detections=[
        {"box_model": [0.2, 0.2, 0.2], "score": 0.5}])]), 2, "queries[0].detections[0].box_model has 3 values, not 4"),
    Case("predictions-unknown-class", predictions([detection_record(), detection_record(**{"class": "Dragon"})]), 2,
         "line 2: queries[0].class 'Dragon' is not a class of od_mscxr", check=no_run_folder),
    Case("predictions-nan-box", predictions([NAN_BOX]), 2,
         "queries[0].detections[0].box_model[0] is nan, not a finite number", check=no_run_folder),
    Case("predictions-infinite-score", predictions([INF_SCORE]), 2, "score is inf, not a finite number",
         check=no_run_folder),
    Case("predictions-nan-probability", predictions([{"image": "a", "queries": [
        {"type": "box", "probs": [0.5] * 7 + [float("nan")]}]}], task="rc_mscxr"), 2, "probs[7] is nan"),
    Case("predictions-probs-wrong-length", predictions([{"image": "a", "queries": [
        {"type": "box", "probs": [0.5, 0.5]}]}], task="rc_mscxr"), 2, "queries[0].probs has 2 values, not 8"),
    Case("predictions-report-missing", predictions([{"image": "a", "queries": []}], task="rg_mimic"), 2,
         "the record lacks the key 'report'"),
    Case("predictions-other-task", predictions([detection_record() | {"task": "od_nih8"}]), 2, "use --task od_nih8"),
    Case("predictions-empty", predictions([]), 2, "holds no predictions", check=no_run_folder),
    # --- dataset names
    Case("prepare-unknown-name", lambda tmp, shared: _prepare("nihh", tmp, tmp / "out"), 2,
         "unknown dataset 'nihh'; choose one of: mimic, mimic-cxr-jpg"),
    Case("fetch-unknown-name", lambda tmp, shared: ["data", "fetch", "vindrr", "--to", str(tmp / "raw")], 2,
         "unknown dataset 'vindrr'"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, shared, monkeypatch, capsys):
    monkeypatch.delenv("CHEX_MAX_IMAGE_PIXELS", raising=False)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    args = case.make(tmp_path, shared)
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["chex", *args])
    try:
        run()
    except SystemExit as done:
        code = done.code
    except Exception as err:  # what a user would see as a traceback
        pytest.fail(f"traceback instead of a message: {type(err).__name__}: {err}")
    else:
        code = 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code == case.exit_code, err
    assert case.fragment in err, err
    message = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(message) == 1, err  # exactly one error line
    if case.check is not None:
        case.check(tmp_path)
