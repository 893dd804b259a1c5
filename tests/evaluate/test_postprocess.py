"""Box operators, synonym removal and task configs by hand."""

import numpy as np
import pytest
import torch

from chexcli.errors import ChexError
from chexcli.evaluate.postprocess import detection_scores, nms, scale_boxes, top1_boxfusion
from chexcli.evaluate.report import synonym_removal
from chexcli.evaluate.tasks import TASKS, load_task, resolve_names


def test_nms_class_aware_strict():
    boxes = [[0.5, 0.5, 0.2, 0.2], [0.52, 0.5, 0.2, 0.2], [0.52, 0.5, 0.2, 0.2], [0.8, 0.8, 0.1, 0.1]]
    # IoU(0, 1) = 0.18 * 0.2 / (0.08 - 0.036) = 0.818
    keep = nms(boxes, [0.9, 0.8, 0.7, 0.6], [0, 0, 1, 0], threshold=0.5)
    assert list(keep) == [0, 2, 3]  # box 1 suppressed by box 0; box 2 is another class
    assert list(nms(boxes, [0.9, 0.8, 0.7, 0.6], [0, 0, 1, 0], threshold=0.9)) == [0, 1, 2, 3]


def test_top1_boxfusion_and_scale():
    b, s, lab = top1_boxfusion([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.2, 0.2], [0.5, 0.5, 0.1, 0.1]],
                               [0.2, 0.7, 0.4], [1, 1, 0])
    np.testing.assert_allclose(b, [[0.5, 0.5, 0.1, 0.1], [0.45, 0.45, 0.5, 0.5]])
    np.testing.assert_allclose(s, [0.4, 0.7])
    assert list(lab) == [0, 1]
    # scale keeps the center, then clips at the border
    np.testing.assert_allclose(scale_boxes([[0.5, 0.5, 0.2, 0.4], [0.1, 0.5, 0.4, 0.2]], 2.0),
                               [[0.5, 0.5, 0.4, 0.8], [0.25, 0.5, 0.5, 0.4]])


def test_detection_scores_modes():
    w, lg = np.array([0.5]), np.array([0.2])
    assert detection_scores(w, lg, True, False, None)[0] == 0.5
    assert detection_scores(w, lg, False, True, None)[0] == pytest.approx(1 / (1 + np.exp(-0.2)))
    assert detection_scores(w, lg, True, True, 0.1)[0] == pytest.approx(0.5 / (1 + np.exp(-2.0)))


def test_synonym_removal():
    e = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [-1.0, 0.0]])
    # sentences 0 and 1 are near-identical (s ~ 1): the one with lower preference goes
    assert synonym_removal(e, [0.9, 0.1, 0.5, 0.5]) == [0, 2, 3]
    assert synonym_removal(e, [0.1, 0.9, 0.5, 0.5]) == [1, 2, 3]
    assert synonym_removal(e, [0.5, 0.5, 0.5, 0.5]) == [0, 2, 3]  # tie drops j
    # soft band: s = (cos 25deg + 1) / 2 = 0.953 > 0.95 -> always; 0.92 only above max_sentences
    ang = np.deg2rad(47.0)  # s = (cos + 1) / 2 = 0.841 -> kept
    e2 = torch.tensor([[1.0, 0.0], [np.cos(ang), np.sin(ang)]])
    assert synonym_removal(e2, [1, 0]) == [0, 1]
    ang = np.deg2rad(33.0)  # s = 0.919: in the soft band
    e3 = torch.tensor([[1.0, 0.0], [np.cos(ang), np.sin(ang)]])
    assert synonym_removal(e3, [1, 0], max_sentences=10) == [0, 1]
    assert synonym_removal(e3, [1, 0], max_sentences=1) == [0]


def test_task_configs():
    for t in TASKS:
        cfg = load_task(t)
        assert cfg.name == t and cfg.headline
    assert load_task("od_vindrcxr").settings["softmax_temperature"] == 0.5
    assert load_task("od_nih8").settings["postprocess"] == "top1_boxfusion"
    assert load_task("sg_mscxr").settings["nms_threshold"] == 0.25
    assert load_task("rg_mimic", {"synonyme_soft_removal_thres": 0.8}).settings["synonym_soft_removal_thres"] == 0.8
    assert resolve_names("all") == list(TASKS)
    with pytest.raises(ChexError, match="unknown task"):
        resolve_names("od_x")
    with pytest.raises(ChexError, match="does not exist"):
        load_task("od_nih8", {"nope": 1})


def test_region_sentence_extras_corpora():
    from chexcli.evaluate.scoring import RegionSentenceExtras

    class CountingMeteor:  # "score" = number of pairs, to check which corpora are built
        def score(self, hyps, refs):
            assert len(hyps) == len(refs)
            return float(len(hyps))

    # image 0: 3 regions (one with an empty reference -> dropped), image 1: 1 region
    extras = RegionSentenceExtras(["a", "b", "c", "d"], ["x", "", "z", "w"], [3, 1],
                                  [True, False, False, True], CountingMeteor())
    out = extras.compute()
    # matched pairs 3; mismatched: image 0 has 2 kept pairs -> 2 * 1, image 1 -> 0
    assert out["METEOR_ratio"] == 3 / 2
    assert out["METEOR_normal/normal"] == 2.0 and out["METEOR_normal/abnormal"] == 1.0
    assert extras.compute([0, 0])["METEOR_ratio"] == 4 / 4
