"""Prepare-time input handling: short dataset names, absolute raw paths in manifests, NIH image
verification (and its reuse on a rerun), reports that are not UTF-8, raw CSV checks."""

import json
import zipfile

import pandas as pd
import pytest

import datasynth as ds
from chexcli.data.prepare import nih_images, reports
from chexcli.data.prepare.dispatch import prepare
from chexcli.data.prepare.raw_files import read_raw_csv
from chexcli.data.processed.layout import NIH_VERIFIED
from chexcli.data.sources import get_source, resolve_name
from chexcli.errors import ChexError


@pytest.mark.parametrize("typed, canonical", [
    ("nih", "nih-cxr14"), ("NIH", "nih-cxr14"), ("vindr", "vindr-cxr"), ("cig", "chest-imagenome"),
    ("imagenome", "chest-imagenome"), ("mscxr", "ms-cxr"), ("MS_CXR", "ms-cxr"), ("mimic-jpg", "mimic-cxr-jpg"),
    ("mimic-reports", "mimic-cxr"), ("mimic", "mimic"), ("vindr-cxr", "vindr-cxr"), (" nih-cxr14 ", "nih-cxr14"),
])
def test_short_names(typed, canonical):
    assert resolve_name(typed) == canonical


def test_short_names_for_fetch_and_unknown_names():
    assert get_source("vindr").name == "vindr-cxr" and get_source("cig").name == "chest-imagenome"
    with pytest.raises(ChexError, match="unknown dataset 'mimic'"):
        get_source("mimic")  # prepare-only name: fetch its four parts
    with pytest.raises(ChexError, match=r"short names: nih, vindr, cig"):
        resolve_name("nih8")


def test_manifest_records_absolute_raw_paths(tmp_path, monkeypatch):
    ds.make_nih(tmp_path / "raw", size=48)
    ds.make_mimic_jpg(tmp_path / "mimic", corrupt=None)
    ds.make_mscxr(tmp_path / "mscxr")
    monkeypatch.chdir(tmp_path)
    prepare("nih", "raw", "out", progress=False)
    prepare("mimic-jpg", "mimic", "mout", progress=False)
    prepare("mscxr", "mscxr", "mout", progress=False)
    for out in ("out", "mout"):
        parts = json.loads((tmp_path / out / "manifest.json").read_text())["parts"]
        for part, entry in parts.items():
            assert entry["raw"].startswith(str(tmp_path)), (part, entry["raw"])


def test_nih_verification_is_reused_and_changed_files_rechecked(tmp_path, monkeypatch):
    raw = ds.make_nih(tmp_path / "raw", size=48)
    res = prepare("nih", raw, tmp_path / "out", progress=False)
    assert res.skipped == 0
    verified = pd.read_csv(tmp_path / "out" / NIH_VERIFIED, keep_default_na=False)
    assert len(verified) == 7 and set(verified["H"]) == {48} and not verified["reason"].any()

    calls = []
    real = nih_images.verify_image
    monkeypatch.setattr(nih_images, "verify_image", lambda path: calls.append(path) or real(path))
    prepare("nih", raw, tmp_path / "out", progress=False)
    assert calls == []  # nothing decoded again
    bad = next(raw.glob("images_00*/images/00000007_000.png"))
    ds.truncate(bad, 0.6)
    res = prepare("nih", raw, tmp_path / "out", progress=False)
    assert calls == [str(bad)] and res.skipped == 1
    table = pd.read_csv(tmp_path / "out" / "nih_cxr.all.csv", index_col=0)
    assert "00000007_000.png" not in table.index and len(table) == 6


def test_reports_not_utf8_in_zip_are_listed(tmp_path):
    ds.make_mimic_reports(tmp_path, as_zip=True)
    zpath = tmp_path / "mimic-cxr-reports.zip"
    with zipfile.ZipFile(zpath, "a") as zf:
        zf.writestr("files/p10/p10000009/s50000009.txt", "IMPRESSION: caf\u00e9 opacity.".encode("cp1252"))
    skipped = []
    out = reports.prepare_reports(tmp_path, progress=False, skipped=skipped)
    assert sorted(out) == ["50000001", "50000002", "50000005"]
    assert [s[0] for s in skipped] == ["50000009"] and "not UTF-8 text (byte 0xe9" in skipped[0][2]
    assert skipped[0][1].endswith("mimic-cxr-reports.zip/files/p10/p10000009/s50000009.txt")


def test_read_raw_csv_keeps_whole_numbers_and_allows_empty_cells(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id, x ,y\na,1,2.5\nb,3,\n")
    df = read_raw_csv(path, ["id", "x", "y"], dtype={"id": str}, numeric=["x"], numeric_or_empty=["y"])
    assert list(df.columns) == ["id", "x", "y"] and df["x"].dtype == "int64" and df["x"].tolist() == [1, 3]
    assert df["y"].iloc[0] == 2.5 and pd.isna(df["y"].iloc[1])
    with pytest.raises(ChexError, match=r"t.csv line 3: column 'y' is empty, not a number"):
        read_raw_csv(path, ["y"], numeric=["y"])
    path.write_text("id,x\na,inf\n")
    with pytest.raises(ChexError, match=r"line 2: column 'x' holds inf, not a number"):
        read_raw_csv(path, ["x"], numeric=["x"])
    with pytest.raises(ChexError, match=r"lacks the column\(s\) 'z'"):
        read_raw_csv(path, ["id", "z"])


def test_prepare_refuses_formats_outside_the_allow_list_by_name(tmp_path):
    from PIL import Image

    raw = ds.make_nih(tmp_path / "raw", size=48)
    tiff = next(raw.glob("images_00*/images/00000007_000.png"))
    Image.open(tiff).save(tiff, format="TIFF")  # a TIFF under a .png name: the content decides
    res = prepare("nih", raw, tmp_path / "out", progress=False)
    assert res.skipped == 1
    verified = pd.read_csv(tmp_path / "out" / NIH_VERIFIED, keep_default_na=False)
    reason = verified.set_index(verified.columns[0]).loc["00000007_000.png", "reason"]
    assert "TIFF images are not supported (supported: PNG, JPEG, DICOM)" in reason
