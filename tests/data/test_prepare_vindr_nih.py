import json

import numpy as np
import pandas as pd
import pytest

import datasynth as ds
from chexcli.data.images.cache import open_cache
from chexcli.data.prepare import vindr_boxes, vindr_images
from chexcli.data.prepare.dispatch import prepare
from chexcli.data.prepare.nih import split_boxes
from chexcli.data.processed.info import folder_info

V = ds.VINDR_IDS


@pytest.fixture(scope="module")
def vin(tmp_path_factory):
    t = tmp_path_factory.mktemp("vindr")
    _, arrs = ds.make_vindr(t / "raw")
    res = prepare("vindr-cxr", t / "raw", t / "out", workers=2, progress=False)
    return t, res, arrs


def test_vindr_rows_labels_splits(vin):
    t, res, _ = vin
    df = pd.read_csv(t / "out/vindrcxr.all.csv", index_col=0, dtype={"image_id": str})
    # the JPEG 2000 image without a decoder is skipped with a message naming the plugins
    assert res.skipped == 1
    sk = pd.read_csv(t / "out/skipped_images.csv")
    assert sk["sample_id"].tolist() == [V[5]] and "pylibjpeg" in sk["reason"][0]
    assert "\n" not in sk["reason"][0]
    assert V[5] not in df.index
    assert df.loc[V[0], "cls/vindrcxr/Cardiomegaly"] == 1  # 2 of 3 radiologists
    assert df.loc[V[0], "cls/vindrcxr/Nodule/Mass"] == 0  # 1 of 3
    assert df.loc[V[1], "cls/vindrcxr/No finding"] == 1
    assert df.loc[V[2], "cls/vindrcxr/Pleural effusion"] == 1  # test file has reordered columns
    # val/test: rows of the test label file permuted with RandomState(12345), first half -> val
    perm = np.random.RandomState(12345).permutation(4)
    order = [V[2:][i] for i in perm]
    expected = {i: ("validate" if k < 2 else "test") for k, i in enumerate(order)}
    got = {i: s for i, s in df["split"].items() if i in expected}
    assert got == {i: s for i, s in expected.items() if i != V[5]}
    assert list(df.index[:2]) == [V[0], V[1]]
    assert (df.loc[V[0], "H"], df.loc[V[0], "W"]) == (300, 200)


def test_vindr_box_fusion(vin):
    t, _, _ = vin
    df = pd.read_csv(t / "out/vindrcxr.all.csv", index_col=0, dtype={"image_id": str})
    boxes = json.loads(df.loc[V[0], "clsbbox"])
    by = {}
    for b in boxes:
        by.setdefault(b[4], []).append(b[:4])
    # two overlapping Cardiomegaly boxes -> their mean; Aortic enlargement boxes do not overlap
    assert np.allclose(by["vindrcxr/Cardiomegaly"], [[105, 205, 305, 265]], atol=1e-3)
    assert sorted(map(tuple, np.round(by["vindrcxr/Aortic enlargement"], 3))) == [(10, 10, 12, 12), (500, 500, 520, 520)]
    assert by["vindrcxr/Nodule/Mass"] == [[20, 30, 40, 50]]  # single box kept unchanged
    assert boxes[0][4] == "vindrcxr/Cardiomegaly" and boxes[-1][4] == "vindrcxr/Nodule/Mass"
    assert json.loads(df.loc[V[1], "clsbbox"]) == []
    assert json.loads(df.loc[V[2], "clsbbox"]) == [[5, 6, 50, 60, "vindrcxr/Pleural effusion"]]


def test_fuse_class_boxes_iou_threshold():
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [100, 100, 110, 110]], dtype=float)
    out = vindr_boxes.fuse_class_boxes(b)
    # visited in reverse order: [100..] alone; [5,0,15,10] then [0,0,10,10] (IoU 1/3 > 0.1) joins
    assert [k for _, k in out] == [1, 2]
    assert np.allclose(out[1][0], [2.5, 0, 12.5, 10])


def test_vindr_dicom_conversion_monochrome1_16bit(vin):
    t, _, arrs = vin
    a = arrs[V[0]].astype(np.float64)
    inv = a.max() - a  # MONOCHROME1
    u8 = ((inv - inv.min()) / (inv.max() - inv.min()) * 255).astype(np.uint8)
    expected = vindr_images.equalize_hist_uint8(u8)
    got = vindr_images.dicom_to_uint8(str(t / "raw/vindr-cxr/1.0.0/train" / f"{V[0]}.dicom"))
    assert got.shape == (300, 200) and np.array_equal(got, expected)
    # inverted: the top-left (stored 0) is brightest after MONOCHROME1 handling
    assert got[0, 0] == got.max()
    arr, index = open_cache(t / "out", 256)
    assert arr[index[V[0]]].shape == (256, 256)
    # equalisation spreads the histogram over the full range
    eq = vindr_images.equalize_hist_uint8(np.repeat(np.arange(50, 100, dtype=np.uint8), 10))
    assert eq.max() == 255 and eq.min() < 10


def test_vindr_info_complete(vin):
    t, _, _ = vin
    inf = folder_info(t / "out")
    assert inf["complete"] and inf["kind"] == "vindr"
    assert inf["datasets"]["vindrcxr"]["splits"]["train"] == 2


def test_nih_prepare(tmp_path):
    ds.make_nih(tmp_path / "raw", size=96)
    res = prepare("nih-cxr14", tmp_path / "raw", tmp_path / "out", progress=False)
    assert res.skipped == 0
    df = pd.read_csv(tmp_path / "out/nih_cxr.all.csv", index_col=0)
    train = df[df["split"] == "train"]
    # box images are not in the training list; Hernia-only image dropped; Edema|Effusion -> Effusion
    assert sorted(train.index) == ["00000005_000.png", "00000007_000.png"]
    assert json.loads(train.loc["00000007_000.png", "labels"]) == ["Effusion"]
    ev = df[df["split"] != "train"]
    assert len(ev) == 5
    # patient-disjoint val / test, deterministic
    val_p = {n[:-8] for n in ev[ev["split"] == "validate"].index}
    test_p = {n[:-8] for n in ev[ev["split"] == "test"].index}
    assert not val_p & test_p
    names = [r[0] for r in ds.NIH_BOX_ROWS]
    v, te = split_boxes(names)
    assert split_boxes(names) == (v, te) and set(ev[ev["split"] == "validate"].index) == set(v)
    assert json.loads(df.loc["00000001_000.png", "clsbbox"]) == [
        [10, 20, 40, 60, "nih/Atelectasis"], [100, 100, 150, 150, "nih/Infiltration"]]
    assert df.loc["00000001_000.png", "H"] == 96  # real size, not the assumed 1024
    assert folder_info(tmp_path / "out")["complete"]


def test_split_boxes_half_rule():
    names = [f"{p:08d}_{k:03d}.png" for p in range(10) for k in range(2)]
    v, t = split_boxes(names)
    assert len(v) >= 10 and set(v).isdisjoint(t) and len(v) + len(t) == 20
