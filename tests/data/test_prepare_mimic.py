import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import datasynth as ds
from chexcli.data.images import cache, cache_loaders
from chexcli.data.prepare import report_text
from chexcli.data.processed.info import folder_info
from chexcli.data.prepare.dispatch import prepare

D = [r[0] for r in ds.MIMIC_IMAGES]
REPORT_DS = "mimic-cxr-frontal-report"
CIG_DS = "mimic-cxr-frontal-report-cig_anatboxes-cig_anatlabels-cig_anatphrases"
CIG_EVAL = "mimic-cxr-frontal-cig_anatboxes-cig_anatlabels-cig_anatphrases"
MSCXR_DS = "mimic-cxr-frontal-mscxr_boxesonly-mscxr_valtotest-mscxr_traintoval"


@pytest.fixture(scope="module")
def mimic(tmp_path_factory):
    t = tmp_path_factory.mktemp("mimic")
    ds.make_mimic_jpg(t / "raw/mimic-cxr-jpg_2-0-0")
    ds.make_mimic_reports(t / "raw/mimic-cxr_2-0-0", as_zip=True)
    ds.make_imagenome(t / "raw/chest-imagenome-dataset-1.0.0")
    ds.make_mscxr(t / "raw/ms-cxr_0-1")
    res = prepare("mimic", t / "raw", t / "out", workers=2, progress=False)
    return t, res


def table(t, name, split="all"):
    return pd.read_csv(t / "out" / f"{name}.{split}.csv", dtype={"dicom_id": str}, index_col=0)


def test_frontal_rows_splits_and_skips(mimic):
    t, res = mimic
    # frontal PA/AP only; the corrupt JPEG is reported and skipped, the rest goes on
    assert res.skipped == 1
    skipped = pd.read_csv(t / "out/skipped_images.csv")
    assert list(skipped["sample_id"]) == [f"10000004/50000004/{ds.CORRUPT_DICOM}"]
    rep = table(t, REPORT_DS)
    # study 50000003 has neither findings nor impression -> no report -> dropped
    assert list(rep.index) == [D[0], D[2], D[5]]
    assert list(rep["split"]) == ["train", "validate", "train"]
    assert json.loads(rep.loc[D[0], "report_sentences"]) == ds.REPORT_A_SENTENCES
    assert json.loads(rep.loc[D[2], "report_sentences"]) == ds.REPORT_B_SENTENCES
    assert (t / "out" / f"{REPORT_DS}.val.csv").exists() and not (t / "out" / f"{REPORT_DS}.test.csv").exists()
    assert list(table(t, REPORT_DS, "val").index) == [D[2]]
    assert "split" not in table(t, REPORT_DS, "train").columns
    assert list(rep.loc[D[0], ["H", "W", "view"]]) == [400, 300, "PA"]


def test_image_cache_uint8_resize_and_crop(mimic):
    t, _ = mimic
    arr, index = cache.open_cache(t / "out", 256)
    assert arr.dtype == np.uint8 and arr.shape == (5, 256, 256)
    # cache rows: frontal images in metadata order (the lateral image is not cached)
    assert list(index) == [f"{s}/{st}/{d}" for d, s, st, v, *_ in ds.MIMIC_IMAGES if v in ("PA", "AP")]
    # image 1 is 300 x 400 (W x H): shorter side -> 256, longer -> round(400*256/300) = 341,
    # crop offset (341 - 256) // 2 = 42 rows
    full = Image.fromarray(ds.gradient(300, 400)).resize((256, 341), Image.Resampling.BOX)
    expected = np.asarray(full)[42:42 + 256]
    got = arr[index[f"10000001/50000001/{D[0]}"]]
    assert np.abs(got.astype(int) - expected.astype(int)).mean() < 4.0  # JPEG + draft decoding


def test_imagenome_boxes_labels_sentences(mimic):
    t, _ = mimic
    cig = table(t, CIG_DS)
    # image 3: duplicate box -> dropped; image 4: < 5 boxes; image 6: no report for ...? it has
    assert list(cig.index) == [D[0], D[5]]
    boxes = json.loads(cig.loc[D[0], "anat_boxes"])
    assert boxes["right lung"] == [10, 20, 110, 220]
    assert boxes["right upper lung zone"] == [0, 0, 300, 400]  # clipped to the image
    assert "left upper lung zone" not in boxes  # width 0 -> invalid
    labels = json.loads(cig.loc[D[0], "anat_labels"])
    assert labels["right lung"] == ["abnormal", "af/lung opacity", "disease/pneumonia", "af/atelectasis"]
    assert labels["left lung"] == ["normal"]
    sents = json.loads(cig.loc[D[0], "anat_sentences"])
    assert sents == {"right lung": ["Right lung opacity."], "left lung": ["Left lung is clear."]}
    ev = table(t, CIG_EVAL)
    assert list(ev.index) == [D[0], D[5]]
    inter = pd.read_csv(t / "out/chest_imagenome.csv", index_col=0)
    assert bool(inter.loc[D[2], "anat_has_duplicate_box"])
    assert json.loads(inter.loc[D[2], "anat_boxes"])["right lung"] == [5, 20, 110, 250]


def test_mscxr_splits_and_boxes(mimic):
    t, _ = mimic
    ms = table(t, MSCXR_DS)
    # D[0] is MIMIC train -> val; D[2] validate -> test; D[3] test -> test
    assert dict(ms["split"]) == {D[0]: "validate", D[2]: "test", D[3]: "test"}
    assert json.loads(ms.loc[D[0], "clsbbox"]) == [
        [10, 20, 40, 60, "mscxr/Pneumonia"], [100, 120, 150, 180, "mscxr/Pneumonia"], [5, 5, 15, 15, "mscxr/Edema"]]
    assert json.loads(ms.loc[D[0], "clsbboxphrases"]) == ["Right lower lobe pneumonia"] * 2 + ["Mild edema"]
    assert not (t / "out" / f"{MSCXR_DS}.train.csv").exists()


def test_manifest_and_info(mimic):
    t, _ = mimic
    inf = folder_info(t / "out")
    assert inf["complete"] and inf["schema_version"] == 1 and inf["kind"] == "mimic"
    assert inf["datasets"][REPORT_DS]["splits"] == {"train": 2, "val": 1}
    assert inf["datasets"][CIG_DS]["classes"]["cig/af/lung opacity"] == {"train": 1}
    assert inf["image_caches"][0]["skipped"] == 1 and inf["image_caches"][0]["bytes"] > 5 * 256 * 256
    assert set(inf["parts"]["mimic-cxr-jpg"]["source_digests"]) == {
        "mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-split.csv.gz"}


def test_interrupted_prepare_is_detected_and_resumed(tmp_path, monkeypatch):
    ds.make_mimic_jpg(tmp_path / "raw", corrupt=None)
    calls = []
    real = cache_loaders.load_cached_image

    def flaky(path, side):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(path, side)

    monkeypatch.setattr(cache, "load_cached_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare("mimic-cxr-jpg", tmp_path / "raw", tmp_path / "out", workers=1, progress=False)
    inf = folder_info(tmp_path / "out")
    assert not inf["complete"]
    assert any("did not finish" in p for p in inf["problems"])
    state = np.load(tmp_path / "out/images_256_state.npy")
    assert (state[:, 0] == 1).sum() == 2
    calls.clear()
    monkeypatch.setattr(cache, "load_cached_image", real)
    res = prepare("mimic-cxr-jpg", tmp_path / "raw", tmp_path / "out", workers=1, progress=False)
    assert res.skipped == 0 and folder_info(tmp_path / "out")["complete"]
    assert (np.load(tmp_path / "out/images_256_state.npy")[:, 0] == 1).all()


def test_cli_exit_codes(mimic, tmp_path):
    from typer.testing import CliRunner

    from chexcli.cli.main import app

    t, _ = mimic
    r = CliRunner().invoke(app, ["data", "info", str(t / "out"), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["complete"] is True
    r = CliRunner().invoke(app, ["data", "info", str(tmp_path)])
    assert r.exit_code != 0


def test_report_text_rules():
    assert report_text.normalise_section_name(" FINDINGS AND IMPRESSION") == "impression"
    assert report_text.normalise_section_name("NDICATION") == "impression"  # sic
    assert report_text.normalise_section_name("PA AND LATERAL VIEWS") == "findings"
    assert report_text.normalise_section_name("CLINICAL NOTE") == "clinical note"
    assert report_text.remove_substrings("Since 2012 exam, IMPRESSION stable.") == "Since 20exam, stable."
    assert report_text.clean_sentence("the   heart.  . .\n\n is  ok") == "The heart.is ok"
    assert report_text.report_sentences(ds.REPORT_A, "s50913680") is None  # skip list
    assert report_text.split_sentences("No effusion. Dr. Smith was called. E.g. this.\n\nNext para") == [
        "No effusion.", "Dr. Smith was called.", "E.g. this.", "Next para"]
