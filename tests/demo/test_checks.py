"""chexcli.demo.checks: the demo's checks against baselines on a small synthetic folder."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from chexcli.data.names import anatomy_names
from chexcli.demo import checks as C

ANAT = anatomy_names("cig_default")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one torch thread is faster, and much faster on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from chexcli.data.prepare.synthetic import prepare_synthetic

    out = tmp_path_factory.mktemp("demo_synth") / "data"
    prepare_synthetic(out, n=60, seed=0, progress=False)
    return out


@pytest.fixture(scope="module")
def model(tiny_bundle):
    from chexcli.model.bundle import load_bundle

    return load_bundle(tiny_bundle).eval()


# ------------------------------------------------------------------------------------------ hand cases
def test_paired_iou_hand_values():
    a = np.array([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]])
    b = np.array([[0.5, 0.5, 0.2, 0.2], [0.6, 0.5, 0.2, 0.2], [0.9, 0.9, 0.1, 0.1]])
    assert np.allclose(C.paired_iou(a, b), [1.0, 0.02 / 0.06, 0.0])


def test_best_constant_box_picks_the_majority_box():
    common, stray = [0.3, 0.3, 0.2, 0.2], [0.8, 0.8, 0.1, 0.1]
    box = C.best_constant_box([common, common, stray])
    assert np.allclose(box, common)  # mean IoU 2/3; the mean box overlaps neither well
    assert np.allclose(C.best_constant_box([stray] * 4), stray)
    assert np.allclose(C.best_constant_box(np.zeros((0, 4))), 0)
    # two small and two large concentric boxes: a small one has the best mean IoU (0.695, hits 2 boxes),
    # the mean box hits all four (IoU 0.59 and 0.66, mean 0.626)
    boxes = [[0.5, 0.5, 0.2, 0.2]] * 2 + [[0.5, 0.5, 0.32, 0.32]] * 2
    assert np.allclose(C.best_constant_box(boxes), [0.5, 0.5, 0.2, 0.2])
    assert np.allclose(C.best_constant_box(boxes, criterion="hits"), [0.5, 0.5, 0.26, 0.26])


def test_average_precision_hand_values():
    # ranks: TP, FP, TP of 3 GT: P = 1, 1/2, 2/3 at R = 1/3, 1/3, 2/3 -> 1/3 * 1 + 1/3 * 2/3
    assert C.average_precision([0.9, 0.8, 0.7], [True, False, True], 3) == pytest.approx(1 / 3 + 2 / 9)
    assert C.average_precision([0.9, 0.8], [True, True], 2) == pytest.approx(1.0)
    assert C.average_precision([0.9, 0.8], [False, True], 1) == pytest.approx(0.5)
    assert C.average_precision([0.5], [True], 0) == 0.0
    # tied scores are one block whatever their order: P = 2/4, R = 2/2
    for hits in ([True, False, False, True], [False, False, True, True], [True, True, False, False]):
        assert C.average_precision([1.0] * 4, hits, 2) == pytest.approx(0.5)


@pytest.mark.parametrize("sentence,kind,region,right", [
    ("There is a small nodule in the left upper lung zone.", "nodule", "left upper lung zone", True),
    ("Left upper lung zone mass.", "nodule", "left upper lung zone", True),
    ("There is a small nodule in the right upper lung zone.", "nodule", "left upper lung zone", False),  # side
    ("Nodule in the left and right upper lung zones.", "nodule", "left upper lung zone", False),  # both sides
    ("The left upper lung zone is clear.", "nodule", "left upper lung zone", False),  # no finding word
    ("No nodule in the left upper lung zone.", "nodule", "left upper lung zone", False),  # negated
    ("There is an opacity in the left upper lung zone.", "nodule", "left upper lung zone", False),  # other kind
    ("There is a small nodule in the left lower lung zone.", "nodule", "left upper lung zone", False),  # zone
    ("There is a small nodule in the left lung.", "nodule", "left upper lung zone", False),  # zone missing
    ("Left mid lung zone opacity.", "opacity", "left mid lung zone", True),
    ("Patchy opacities in the right lower lung zone.", "opacity", "right lower lung zone", True),
    ("Dense consolidation in the right lower lung zone.", "consolidation", "right lower lung zone", True),
    ("Small right pleural effusion.", "effusion", "right costophrenic angle", True),
    ("Small left pleural effusion.", "effusion", "right costophrenic angle", False),
    ("There is no pleural effusion.", "effusion", "right costophrenic angle", False),
    ("A small pneumothorax is seen at the left apex.", "pneumothorax", "left apical zone", True),
    ("Small left pneumothorax.", "pneumothorax", "left apical zone", True),  # apical zone: zone optional
    ("Small left pneumothorax in the lower lung zone.", "pneumothorax", "left apical zone", False),
    ("The cardiac silhouette is enlarged.", "cardiomegaly", "cardiac silhouette", True),
    ("Moderate cardiomegaly.", "cardiomegaly", "cardiac silhouette", True),
    ("The heart is not enlarged.", "cardiomegaly", "cardiac silhouette", False),
    ("", "cardiomegaly", "cardiac silhouette", False),
])
def test_sentence_rule(sentence, kind, region, right):
    assert C.sentence_is_right(sentence, kind, region) is right


def test_affirmed_kinds_ignores_negated_findings():
    assert C.affirmed_kinds("No focal consolidation is seen in either lung.") == set()
    assert C.affirmed_kinds("The heart is not enlarged.") == set()
    assert C.affirmed_kinds("Small left pleural effusion with a nodule.") == {"effusion", "nodule"}


def test_ground_truth_sentences_are_right_by_the_rule():
    from chexcli.data.synthetic.sampling import sample_scene
    from chexcli.data.synthetic.report import finding_regions, scene_text

    n = 0
    for i in range(300):
        sc = sample_scene(0, i)
        text = scene_text(sc, np.random.default_rng([0, i, 2]), ANAT)
        for f, s in zip(sc.findings, text.finding_sentences):
            assert C.sentence_is_right(s, f.kind, finding_regions(f)[0]), (s, f.kind)
            n += 1
        for r in ANAT:
            if text.anat_labels[r] == ["normal"]:
                assert not any(C.affirmed_kinds(s) for s in text.anat_sentences[r])
    assert n > 100


def _grounding(v):
    return {"mean_iou": v, "pairs": 10, "images": 2, "per_anatomy": {"spine": v}}


def _detection(v):
    return {"ap50": v, "per_class": {"Cardiomegaly": v}, "gt_boxes": {"Cardiomegaly": 3}, "images": 5}


def _sentences(v):
    return {"right": v, "right_count": 1, "regions": 2, "normal_without_finding": 1.0, "normal_regions": 3}


def test_check_rows_apply_the_thresholds():
    g, d, s = _grounding, _detection, _sentences
    assert C.grounding_check(g(0.6), g(0.45)).passed
    assert not C.grounding_check(g(0.6), g(0.55)).passed  # needs baseline + 0.1
    assert not C.grounding_check(g(0.49), g(0.1)).passed  # needs 0.5
    assert C.detection_check(d(0.5), d(0.2)).passed
    assert not C.detection_check(d(0.49), d(0.2)).passed  # needs baseline + 0.3
    assert not C.detection_check(d(float("nan")), d(0.0)).passed
    assert C.sentence_check_row(s(0.61), s(0.1)).passed
    assert not C.sentence_check_row(s(0.6), s(0.0)).passed  # more than 60 %
    assert not C.sentence_check_row(s(0.7), s(0.55)).passed  # clearly above: + 0.2


# ------------------------------------------------------------------------------------------ on a synthetic folder
def test_perfect_predictions_score_one(synth):
    g = C.anatomy_grounding(None, synth, predict_boxes=lambda b: b["target_anat_boxes"])
    assert g["mean_iou"] == pytest.approx(1.0) and g["images"] == 6 and g["pairs"] > 6 * 20

    def perfect(batch, classes):
        from chexcli.data.names import class_names

        ids = [class_names("vindrcxr_loc").index(c) for c in classes]
        boxes, scores = np.zeros((len(batch["x"]), len(classes), 4)), np.zeros((len(batch["x"]), len(classes)))
        for i, t in enumerate(batch["target_cls_boxes"]):
            for row in t.numpy():
                j = ids.index(int(row[4]))
                boxes[i, j], scores[i, j] = row[:4], 1.0
        return boxes, scores

    det = C.finding_detection(None, synth, predict=perfect)
    assert det["per_class"] and det["ap50"] == pytest.approx(1.0)

    def echo(batch, regions):
        return [[batch["target_anat_sentences"][i][ANAT.index(r)][0] for r in rs] for i, rs in enumerate(regions)]

    s = C.sentence_check(None, synth, describe=echo)
    assert s["regions"] > 0 and s["right"] == 1.0 and s["reference_right"] == 1.0
    assert s["normal_regions"] > 0 and s["normal_without_finding"] == 1.0


def test_baselines_on_the_synthetic_folder(synth):
    base = C.constant_box_baseline(synth)
    assert set(base) == set(ANAT)
    train_boxes, present = C.anatomy_targets(synth, "train")
    k = ANAT.index("cardiac silhouette")
    fitted = C.paired_iou(np.array(base["cardiac silhouette"]), train_boxes[present[:, k], k]).mean()
    mean_box = train_boxes[present[:, k], k].mean(axis=0)
    assert fitted >= C.paired_iou(mean_box, train_boxes[present[:, k], k]).mean() - 1e-12
    g = C.anatomy_baseline_iou(base, synth)
    assert 0.2 < g["mean_iou"] < 0.9

    det_base = C.constant_box_detection_baseline(synth)
    assert det_base and all(name.startswith("vindrcxr/") for name in det_base)
    det = C.detection_baseline_ap(det_base, synth)
    classes, gts = C.class_targets(synth, "test")
    for c, ap in det["per_class"].items():  # constant score: one block, AP = recall x precision
        j = classes.index(f"vindrcxr/{c}")
        box = np.array(det_base.get(f"vindrcxr/{c}", [0, 0, 0, 0]))
        hits = sum(bool((C.paired_iou(box, g[g[:, 4] == j, :4]) >= 0.5).any()) for g in gts)
        n_gt = sum(int((g[:, 4] == j).sum()) for g in gts)
        assert ap == pytest.approx(hits / n_gt * hits / len(gts))

    sentences = C.most_frequent_sentence_baseline(synth)
    assert set(sentences) == set(ANAT) and sentences["trachea"] == "The trachea is midline."
    s = C.sentence_baseline(sentences, synth)
    assert 0.0 <= s["right"] <= 1.0 and s["normal_without_finding"] == 1.0


def test_model_functions_and_run_checks(model, synth):
    g = C.anatomy_grounding(model, synth, max_images=4, batch_size=3)
    assert g["images"] == 4 and 0.0 <= g["mean_iou"] <= 1.0 and set(g["per_anatomy"]) <= set(ANAT)
    det = C.finding_detection(model, synth)
    assert all(0.0 <= v <= 1.0 for v in det["per_class"].values())
    s = C.sentence_check(model, synth, max_regions=3, max_normal_regions=2, max_new_tokens=4)
    assert s["regions"] <= 3 and s["normal_regions"] <= 2
    assert all(isinstance(e["generated"], str) for e in s["examples"])

    checks = C.run_checks(model, synth, quick=False, max_images=4, max_new_tokens=4)
    assert [c.name for c in checks][:3] == ["anatomy grounding (mean IoU)", "finding detection (AP@0.5)",
                                           "region sentences (fraction right)"]
    ground = checks[0]
    assert ground.enforced and not ground.passed and ground.status == "FAIL"  # a random model grounds nothing
    assert checks[3].informational and not checks[3].enforced
    assert [c.name for c in checks][4:] == ["finding presence (lowest AUROC)", "box-prompt sentences (fraction right)",
                                           "anatomy best candidate (mean IoU)", "anatomy prompts drawn as present"]
    assert all(c.informational and not c.enforced for c in checks[4:])
    assert set(checks[6].results["measured"]) <= set(ANAT) and 0.0 <= checks[6].value <= 1.0
    assert 0.0 <= checks[7].value <= 1.0 and "fewest" in checks[7].detail
    table = C.format_table(checks)
    assert "FAIL" in table and "threshold" in table and "best constant box" in table
    data = json.loads(json.dumps(C.to_json(checks), allow_nan=False))
    assert data[0]["status"] == "FAIL" and data[0]["results"]["measured"]["images"] == 4

    quick = C.run_checks(model, synth, quick=True, max_images=3, max_new_tokens=4)
    assert not any(c.enforced for c in quick)
    assert quick[0].status == "fail (not enforced)" and "PASS" not in C.format_table(quick)
    assert math.isfinite(quick[0].value)


def test_prompt_boxes_fall_back_to_the_hull_of_the_regions():
    from chexcli.model.detector import DetectionOutput

    multi = torch.tensor([[[[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.2, 0.2]]]])  # (1, 1, 2, 4)
    z = torch.zeros(1, 1)
    out = DetectionOutput(boxes=torch.zeros(1, 1, 4), box_mask=z.bool(), boxes_weights=z, boxes_present=z.bool(),
                          box_features=torch.zeros(1, 1, 2), multiboxes=multi, multiboxes_weights=torch.zeros(1, 1, 2),
                          multiboxes_present=torch.zeros(1, 1, 2, dtype=torch.bool),
                          multiboxes_features=torch.zeros(1, 1, 2, 2))
    assert torch.allclose(C.prompt_boxes(out), torch.tensor([[[0.45, 0.45, 0.5, 0.5]]]))
    present = out.replace(boxes=torch.tensor([[[0.5, 0.5, 0.1, 0.1]]]),
                          boxes_present=torch.ones(1, 1, dtype=torch.bool))
    assert torch.allclose(C.prompt_boxes(present), torch.tensor([[[0.5, 0.5, 0.1, 0.1]]]))


def test_presence_auroc_ranks_images_with_the_finding_above_those_without():
    assert C.presence_auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert C.presence_auroc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    assert C.presence_auroc([0.5, 0.9, 0.5], [True, False, False]) == 0.25  # one tie counts half
    assert math.isnan(C.presence_auroc([0.3, 0.4], [True, True]))  # no image without the finding
