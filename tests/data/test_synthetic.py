"""The synthetic data source: determinism, schema, geometry, findings, reports, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from chexcli.data.dataset import ChexDataset
from chexcli.data.names import anatomy_names
from chexcli.data.prepare.synthetic import prepare_synthetic
from chexcli.data.processed.layout import MIMIC_CIG, MIMIC_MSCXR, MIMIC_REPORTS_CIG, SYNTHETIC_TRUTH, VINDR
from chexcli.data.synthetic.corpus import synthetic_corpus
from chexcli.data.synthetic.drawing import render
from chexcli.data.synthetic.generator import generate
from chexcli.data.synthetic.sampling import sample_scene
from chexcli.data.synthetic.scene import P_FINDINGS

N, SEED = 40, 0
CONFIGS = [("mimiccxr_reports", "train"), ("mimiccxr_reports_cig_multiboxclssent", "train"),
           ("cig_boxclssent", "val"), ("cig_boxclssent", "test"), ("mscxr_boxsent", "val"),
           ("mscxr_boxsent", "test"), ("vindrcxr_boxes", "train"), ("vindrcxr_boxes_top15", "test")]
WORDS = {"nodule": "nodule", "opacity": "opacity", "consolidation": "consolidation", "effusion": "effusion",
         "pneumothorax": "pneumothorax", "cardiomegaly": ("enlarged", "cardiomegaly")}


def chex(*args):
    return subprocess.run([sys.executable, "-m", "chexcli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "a"
    prepare_synthetic(out, n=N, seed=SEED, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def truth(folder):
    df = pd.read_csv(folder / SYNTHETIC_TRUTH, dtype={"dicom_id": str}, keep_default_na=False)
    df["findings"] = df["findings"].map(json.loads)
    return df


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "manifest.json"}


def test_same_seed_same_bytes_in_parallel_and_other_seed_differs(folder, tmp_path):
    prepare_synthetic(tmp_path / "b", n=N, seed=SEED, workers=2, progress=False)
    assert _files(folder) == _files(tmp_path / "b")
    img, rec = generate(SEED, 7)  # one image alone = its row in the folder (resumable, parallel)
    assert np.array_equal(np.load(folder / "images_256.npy")[7], img)
    prepare_synthetic(tmp_path / "c", n=N, seed=SEED + 1, workers=1, progress=False)
    assert not np.array_equal(np.load(folder / "images_256.npy"), np.load(tmp_path / "c" / "images_256.npy"))


def test_every_configuration_loads_with_boxes_inside_the_image(folder):
    for config, split in CONFIGS:
        ds = ChexDataset(folder, config, split, transform="eval")
        assert len(ds) > 0, (config, split)
        for i in range(len(ds)):
            s = ds[i]
            assert s["x"].shape == (224, 224)
            for key in ("target_anat_boxes", "target_cls_boxes"):
                if key in s and len(s[key]):
                    b = s[key][:, :4].numpy()
                    assert (b >= 0).all() and (b <= 1).all()
                    assert (b[:, 0] - b[:, 2] / 2 >= -1e-6).all() and (b[:, 0] + b[:, 2] / 2 <= 1 + 1e-6).all()
            if "target_anat_boxes" in s:
                assert s["target_anat_present_masks"].all()  # all 29 anatomies, every image
                assert all(s["target_anat_sentences"])  # a sentence for every anatomy
    splits = {sp: len(ChexDataset(folder, "cig_boxclssent", sp)) for sp in ("train", "val", "test")}
    assert splits == {"train": 32, "val": 4, "test": 4}


def test_anatomy_boxes_vary_and_follow_the_radiological_convention(folder):
    df = pd.read_csv(folder / f"{MIMIC_CIG}.all.csv", keep_default_na=False)
    boxes = [json.loads(c) for c in df["anat_boxes"]]
    assert all(set(b) == set(anatomy_names("cig_default")) for b in boxes)
    for name in ("right lung", "cardiac silhouette", "trachea"):
        arr = np.array([b[name] for b in boxes])
        assert len({tuple(r) for r in arr}) == len(arr)  # no two images share a box
        assert arr[:, 0].std() > 4 and arr[:, 2].std() > 4
    heart_right_of_midline = []
    for b in boxes:
        cx = {k: (v[0] + v[2]) / 2 for k, v in b.items()}
        cy = {k: (v[1] + v[3]) / 2 for k, v in b.items()}
        assert cx["right lung"] < cx["trachea"] < cx["left lung"]  # patient's right on the image left
        assert cx["right atrium"] < cx["cardiac silhouette"] and cx["right clavicle"] < cx["left clavicle"]
        heart_right_of_midline.append(cx["cardiac silhouette"] - (cx["right lung"] + cx["left lung"]) / 2)
        assert cy["right upper lung zone"] < cy["right mid lung zone"] < cy["right lower lung zone"]
        assert cy["abdomen"] > cy["cardiac silhouette"] and b["right apical zone"][1] == b["right lung"][1]
    assert np.mean(heart_right_of_midline) > 5  # the heart lies mostly on the image right


def test_finding_boxes_are_where_the_image_changed(truth):
    checked = 0
    for i in range(N):
        sc = sample_scene(SEED, i)
        with_f, without = render(sc, SEED, i), render(sc, SEED, i, with_findings=False)
        assert [f["box"] for f in truth["findings"][i]] == with_f.findings
        for f, box in zip(sc.findings, with_f.findings):
            if f.kind == "cardiomegaly":  # drawn by the heart's geometry
                continue
            alone = render(_only(sc, f), SEED, i)
            diff = np.abs(alone.image.astype(int) - without.image.astype(int)) > 20
            changed = np.argwhere(diff)
            y1, x1 = changed.min(0)
            y2, x2 = changed.max(0) + 1
            assert _iou(box, [x1, y1, x2, y2]) > 0.6, (i, f.kind, box, [x1, y1, x2, y2])
            checked += 1
    assert checked >= 5


def test_nodules_and_opacities_sit_in_the_zone_their_sentence_names():
    # the region feature of a zone pools its neighbours too (soft ROI pooling), so a finding
    # spread across two zones would teach "clear" for a zone that shows it; 300 images give
    # ~90 of each kind (generator version 7 drew opacities down to 59 % inside their zone)
    inside = {"nodule": [], "opacity": []}
    for i in range(300):
        _, rec = generate(SEED + 5, i)
        for f in rec["findings"]:
            if f["kind"] in inside:
                zone = rec["anat_boxes"][f["regions"][0]]
                inside[f["kind"]].append(_overlap(f["box"], zone) / _area(f["box"]))
    for kind, shares in inside.items():
        assert len(shares) >= 50 and min(shares) >= 0.7, (kind, len(shares), min(shares))


def _only(sc, finding):
    import copy

    one = copy.copy(sc)
    one.findings = [finding]
    return one


def _overlap(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return ix * iy


def _area(a):
    return (a[2] - a[0]) * (a[3] - a[1])


def _iou(a, b):
    inter = _overlap(a, b)
    return inter / (_area(a) + _area(b) - inter)


def test_reports_name_the_finding_and_its_place(folder, truth):
    df = pd.read_csv(folder / f"{MIMIC_REPORTS_CIG}.all.csv", keep_default_na=False)
    kinds = set()
    for (_, row), findings in zip(df.iterrows(), truth["findings"]):
        report = json.loads(row["report_sentences"])
        regions = json.loads(row["anat_sentences"])
        labels = json.loads(row["anat_labels"])
        assert len(report) == len(set(report)) >= 8
        for f in findings:
            kinds.add(f["kind"])
            text = f["sentence"].lower()
            word = WORDS[f["kind"]]
            assert any(w in text for w in ((word,) if isinstance(word, str) else word)), text
            if f["side"]:
                assert f["side"] in text
            if f["kind"] in ("nodule", "opacity", "consolidation"):
                assert f"{f['side']} {f['zone']} lung zone" in text
            assert f["sentence"] in report
            for region in f["regions"]:
                assert f["sentence"] in regions[region] and "abnormal" in labels[region]
        if not findings:
            assert all(v == ["normal"] for v in labels.values())
            assert "The lungs are clear." in report or "No focal consolidation is seen in either lung." in report
    assert len(kinds) >= 5
    n_normal = sum(not f for f in truth["findings"])
    p_normal = P_FINDINGS[0]  # share of images without a finding
    assert (p_normal - 0.15) * N <= n_normal <= (p_normal + 0.15) * N


def test_region_labels_and_finding_classes_use_the_real_names(folder):
    from chexcli.data.names import class_names

    cig = set(class_names("cig_all"))
    df = pd.read_csv(folder / f"{MIMIC_CIG}.all.csv", keep_default_na=False)
    for cell in df["anat_labels"]:
        for labs in json.loads(cell).values():
            assert labs[0] in ("normal", "abnormal") and all(f"cig/{x}" in cig for x in labs[1:])
    vindr = pd.read_csv(folder / "vindrcxr.all.csv", keep_default_na=False)
    known = set(class_names("vindrcxr_loc"))
    for cell, no_finding in zip(vindr["clsbbox"], vindr["cls/vindrcxr/No finding"]):
        boxes = json.loads(cell)
        assert all(b[4] in known for b in boxes) and bool(no_finding) == (not boxes)
    ms = pd.read_csv(folder / f"{MIMIC_MSCXR}.all.csv", keep_default_na=False)
    assert set(ms["split"]) <= {"validate", "test"}
    for cell, phrases in zip(ms["clsbbox"], ms["clsbboxphrases"]):
        assert len(json.loads(cell)) == len(json.loads(phrases)) >= 1
        assert all(b[4] in class_names("ms_cxr") for b in json.loads(cell))


def test_info_complete_and_corpus(folder):
    from chexcli.data.processed.info import folder_info

    inf = folder_info(folder)
    assert inf["complete"] and inf["kind"] == "synthetic" and inf["image_caches"][0]["images"] == N
    assert inf["datasets"][VINDR]["splits"] == {"train": 32, "val": 4, "test": 4}
    r = chex("data", "info", folder)
    assert r.returncode == 0, r.stderr
    corpus = synthetic_corpus(folder)
    assert len(corpus) == len(set(corpus))
    assert "The lungs are clear." in corpus and "left upper lung zone" in corpus
    assert "Enlarged cardiac silhouette" in corpus  # prompt texts are in


def test_cli_prepare_rerun_and_refusals(tmp_path):
    out = tmp_path / "syn"
    r = chex("data", "prepare", "synthetic", "--n", N, "--out", out, "--workers", 1)
    assert r.returncode == 0, r.stderr
    before = _files(out)
    r = chex("data", "prepare", "synthetic", "--n", N, "--out", out)
    assert r.returncode == 0 and "nothing to do" in r.stderr
    assert _files(out) == before
    r = chex("data", "prepare", "synthetic", "--n", N + 1, "--out", out)
    assert r.returncode == 2 and "--n 40 --seed 0" in r.stderr and "Traceback" not in r.stderr
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    r = chex("data", "prepare", "synthetic", "--n", N, "--out", other)
    assert r.returncode == 2 and "not empty" in r.stderr
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_reports_do_not_depend_on_the_python_hash_seed(tmp_path):
    """The same --n and --seed give the same bytes in every process: nothing iterates a set of strings
    (whose order follows PYTHONHASHSEED) when it writes a report."""
    import os
    import subprocess
    import sys

    tables = []
    for hash_seed in ("1", "7"):
        out = tmp_path / f"hash{hash_seed}"
        subprocess.run([sys.executable, "-m", "chexcli", "data", "prepare", "synthetic", "--n", "150", "--seed", "0",
                        "--out", str(out)], check=True, capture_output=True,
                       env={**os.environ, "PYTHONHASHSEED": hash_seed})
        tables.append({p.name: p.read_bytes() for p in out.glob("*.csv")})
    assert tables[0] == tables[1] and any("report" in name for name in tables[0])
