import numpy as np
import pytest
import torch

import datasynth as ds
from chexcli.data.dataset import ChexDataset, MixedDataset, collate, to_center, to_relative
from chexcli.data.prepare.dispatch import prepare
from chexcli.data.transforms import EvalTransform, Targets, TrainTransform, swap_left_right

D = [r[0] for r in ds.MIMIC_IMAGES]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    t = tmp_path_factory.mktemp("dsets")
    ds.make_mimic_jpg(t / "raw/mimic-cxr-jpg_2-0-0")
    ds.make_mimic_reports(t / "raw/mimic-cxr_2-0-0")
    ds.make_imagenome(t / "raw/chest-imagenome-dataset-1.0.0")
    ds.make_mscxr(t / "raw/ms-cxr_0-1")
    prepare("mimic", t / "raw", t / "mimic", progress=False)
    ds.make_vindr(t / "vraw", compressed_bad=False)
    prepare("vindr-cxr", t / "vraw", t / "vindr", progress=False)
    ds.make_nih(t / "nraw", size=128)
    prepare("nih-cxr14", t / "nraw", t / "nih", progress=False)
    return t


def test_to_relative_cached_and_uncached():
    # H=400, W=300: S=300, cy=50 -> y shifted by 50, all divided by 300, clipped
    b = to_relative([30, 20, 150, 350], 400, 300, cached=True)
    assert np.allclose(b, [[0.1, 0.0, 0.5, 1.0]])
    b = to_relative([100, 30, 250, 60], 300, 400, cached=True)  # W > H: cx = 50
    assert np.allclose(b, [[50 / 300, 0.1, 200 / 300, 0.2]])
    assert np.allclose(to_relative([10, 20, 30, 40], 100, 200, cached=False), [[0.05, 0.2, 0.15, 0.4]])
    assert np.allclose(to_center([[0.1, 0.2, 0.5, 0.6]]), [[0.3, 0.4, 0.4, 0.4]])


def test_every_configuration_feeds_a_batch(folders):
    t = folders
    cases = [("mimiccxr_reports", "mimic", "train"), ("mimiccxr_reports_cig_multiboxclssent", "mimic", "train"),
             ("cig_boxclssent", "mimic", "train"), ("mscxr_boxsent", "mimic", "test"),
             ("vindrcxr_boxes", "vindr", "train"), ("vindrcxr_boxes_top15", "vindr", "test"),
             ("nih8_boxes", "nih", "test")]
    for cfg, folder, split in cases:
        for tr in ("eval", "train"):
            d = ChexDataset(t / folder, cfg, split, transform=tr)
            b = collate([d[i] for i in range(len(d))])
            assert b["x"].shape == (len(d), 224, 224) and b["x"].dtype == torch.float32
            assert len(b["sample_id"]) == len(d)
    d = ChexDataset(t / "mimic", "mimiccxr_reports_cig_multiboxclssent", "train")
    s = d[0]
    assert s["sample_id"] == f"10000001/50000001/{D[0]}"
    assert s["sentences"] == ds.REPORT_A_SENTENCES
    assert s["target_anat_boxes"].shape == (29, 4) and s["target_anat_cls_labels"].shape == (29, 53)
    assert s["target_anat_multiboxes"].shape == (5, 2, 4)


def test_eval_boxes_and_labels_hand_computed(folders):
    d = ChexDataset(folders / "mimic", "cig_boxclssent", "train", transform="eval")
    s = d[0]  # D[0]: H=400, W=300 -> S=300, cy=50
    rl = d.anat_names.index("right lung")
    # [10, 20, 110, 220] -> [1/30, 0, 11/30, 170/300] -> centre format
    x1, y1, x2, y2 = 10 / 300, 0.0, 110 / 300, 170 / 300
    assert torch.allclose(s["target_anat_boxes"][rl], torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]), atol=1e-6)
    assert s["target_anat_present_masks"].sum() == 6  # 6 valid box names of the scene graph
    assert not s["target_anat_present_masks"][d.anat_names.index("left upper lung zone")]
    lab = s["target_anat_cls_labels"]
    assert lab[rl, d.class_index["cig/af/lung opacity"]] == 1 and lab[rl, d.class_index["cig/disease/pneumonia"]] == 1
    assert lab.sum() == 3  # lung opacity, atelectasis, pneumonia in the right lung (abnormal/normal are no classes)
    assert s["target_anat_sentences"][rl] == ["Right lung opacity."]
    ms = ChexDataset(folders / "mimic", "mscxr_boxsent", "val", transform="eval")[0]
    # D[0] boxes: pneumonia [10,20,40,60] -> y clipped to [0, 10/300]; edema [5,5,15,15] lies
    # entirely in the cropped-away top 50 rows -> removed
    assert ms["target_cls_box_sentences"] == ["Right lower lobe pneumonia"] * 2
    assert ms["grounded_sentences"] == ["Right lower lobe pneumonia"]
    assert ms["target_sentence_boxes"][0].shape == (2, 5)
    assert torch.allclose(ms["target_cls_boxes"][1], torch.tensor([125 / 300, 100 / 300, 50 / 300, 60 / 300, 6.0]), atol=1e-5)


def _bright_box_image(box, size=256):
    img = np.zeros((size, size), np.float32)
    x1, y1, x2, y2 = (np.array(box) * size).round().astype(int)
    img[y1:y2, x1:x2] = 1.0
    return img


@pytest.mark.parametrize("seed", range(12))
def test_train_transform_moves_all_boxes_with_the_image(seed):
    box = [0.30, 0.25, 0.62, 0.70]
    img = _bright_box_image(box)
    t = Targets(anat_boxes=np.array([box, [0, 0, 0, 0]]), anat_present=np.array([True, False]),
                multi_boxes=np.array([[box, box]]), multi_present=np.array([[True, True]]),
                cls_boxes=np.array([box]), cls_ids=np.array([3]))
    tr = TrainTransform(224, swap_laterality=False, normalize=False)
    x, out = tr(img, t, np.random.default_rng(seed))
    x = x.numpy()
    thr = (x.max() + x.min()) / 2
    ys, xs = np.nonzero(x > thr)
    seen = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / 224
    assert out.anat_present[0] and not out.anat_present[1]
    for b in (out.anat_boxes[0], out.multi_boxes[0, 0], out.multi_boxes[0, 1], out.cls_boxes[0]):
        assert np.abs(np.asarray(b) - seen).max() < 0.04, (b, seen)
    assert out.cls_ids.tolist() == [3]


def test_min_visibility_drops_boxes_cropped_away():
    t = Targets(cls_boxes=np.array([[0.0, 0.0, 0.02, 0.02], [0.2, 0.2, 0.8, 0.8]]), cls_ids=np.array([0, 1]),
                cls_extra=["a", "b"])
    tr = TrainTransform(224, normalize=False)
    tr._random_resized_crop(torch.zeros(256, 256), t, np.random.default_rng(0))
    from chexcli.data.transforms import _apply_geometry

    _apply_geometry(t, lambda b: b + 0.5)  # shift half out: the small box vanishes, the large keeps 9%..
    assert t.cls_extra == [] or all(e in ("a", "b") for e in t.cls_extra)
    t2 = Targets(cls_boxes=np.array([[0.5, 0.5, 0.9, 0.9], [0.9, 0.9, 1.5, 1.5]]), cls_ids=np.array([0, 1]))
    _apply_geometry(t2, lambda b: b)
    # second box keeps (0.1*0.1)/(0.6*0.6) = 2.8 % of its area -> dropped
    assert t2.cls_ids.tolist() == [0]


def test_flip_swaps_laterality(folders):
    from chexcli.data import transforms as T

    class FlipOnly(T.TrainTransform):
        def __call__(self, img, t, rng):
            x = torch.from_numpy(np.asarray(img, np.float32)).flip(1)
            T._apply_geometry(t, lambda b: np.stack([1 - b[:, 2], b[:, 1], 1 - b[:, 0], b[:, 3]], 1))
            t.flipped = True
            if self.swap_laterality:
                self._swap(t)
            return T._resize(x, 224), t

    names = ChexDataset(folders / "mimic", "mimiccxr_reports_cig_multiboxclssent", "train").anat_names
    ref = ChexDataset(folders / "mimic", "mimiccxr_reports_cig_multiboxclssent", "train", transform="eval")[0]
    for swap in (True, False):
        d = ChexDataset(folders / "mimic", "mimiccxr_reports_cig_multiboxclssent", "train", swap_laterality=swap,
                        transform=FlipOnly(224, swap_laterality=swap, anatomy_names=names))
        s = d[0]
        rl, ll = names.index("right lung"), names.index("left lung")
        mirrored = ref["target_anat_boxes"][rl].clone()
        mirrored[0] = 1 - mirrored[0]
        slot = ll if swap else rl
        assert torch.allclose(s["target_anat_boxes"][slot], mirrored, atol=1e-5)
        if swap:
            assert s["target_anat_sentences"][ll] == ["Left lung opacity."]
            assert s["target_anat_sentences"][rl] == ["Right lung is clear."]
            assert s["target_anat_cls_labels"][ll].sum() == 3 and s["target_anat_cls_labels"][rl].sum() == 0
            # multi-box "lungs" = (right, left) members: the flipped right lung is now the left member
            assert torch.allclose(s["target_anat_multiboxes"][0, 1], mirrored, atol=1e-5)
        else:
            assert s["target_anat_sentences"][rl] == ["Right lung opacity."]
    assert swap_left_right("Left lower lobe; RIGHT apex; leftover") == "Right lower lobe; LEFT apex; leftover"


def test_reference_mode_multiboxes_not_augmented(folders):
    d = ChexDataset(folders / "mimic", "mimiccxr_reports_cig_multiboxclssent", "train", transform="train",
                    augment_multiboxes=False, swap_laterality=False)
    ev = ChexDataset(folders / "mimic", "mimiccxr_reports_cig_multiboxclssent", "train", transform="eval")
    # before the transform the multi-boxes are the cached-coordinate boxes (eval: 256 -> 224 keeps relative)
    assert torch.allclose(d[0]["target_anat_multiboxes"], ev[0]["target_anat_multiboxes"], atol=1e-6)


def test_mixed_dataset_spaces_and_balance(folders):
    mimic = ChexDataset(folders / "mimic", "mimiccxr_reports_cig_multiboxclssent", "train", transform="train")
    vin = ChexDataset(folders / "vindr", "vindrcxr_boxes", "train", transform="eval")
    m = MixedDataset([mimic, vin], balance=[False, True])
    assert len(m.classes) == 75 and m.offsets == [0, 53]
    assert m.repeats == [1, 1] and len(m) == 4
    b = collate([m[i] for i in range(len(m))])
    assert b["dataset_index"].tolist() == [0, 0, 1, 1]
    assert b["has_anatomy_bboxes"][:2].all() and not b["has_anatomy_bboxes"][2:].any()
    assert b["has_class_bboxes"][2:, 53:].all() and not b["has_class_bboxes"][:, :53].any()
    assert b["has_anatomy_class_labels"][0, :, :53].all() and not b["has_anatomy_class_labels"][0, :, 53:].any()
    assert b["target_cls_labels"][2, 53 + vin.class_index["vindrcxr/Cardiomegaly"]] == 1
    assert b["class_ids_with_boxes"].tolist() == list(range(53, 75))
    assert b["sentences"][2] is None and b["has_sentences"].tolist() == [True, True, False, False]
    big = MixedDataset([mimic, ChexDataset(folders / "vindr", "vindrcxr_boxes", "test")], balance=[False, True])
    assert big.repeats == [1, 1]
    small = MixedDataset([ChexDataset(folders / "nih", "nih8_boxes", "val"), vin], balance=[False, True])
    assert small.repeats[1] == round(len(small.datasets[0]) / len(vin))


def test_collate_without_boxes_has_empty_padding(folders):
    d = ChexDataset(folders / "vindr", "vindrcxr_boxes_top15", "test")
    s = [d[i] for i in range(len(d)) if len(d[i]["target_cls_boxes"]) == 0]
    b = collate(s)
    assert b["target_cls_boxes_padded"].shape == (len(s), 15, 0, 5)
    assert b["target_cls_boxes_mask"].shape == (len(s), 15, 0)


def test_augmentation_is_deterministic_per_seed_and_epoch(folders):
    d = ChexDataset(folders / "mimic", "cig_boxclssent", "train", transform="train", seed=3)
    a, b = d[0]["x"], d[0]["x"]
    assert torch.equal(a, b)
    d.set_epoch(1)
    assert not torch.equal(a, d[0]["x"])


def test_eval_transform_centre_crop_boxes():
    img = np.zeros((100, 200), np.float32)
    t = Targets(cls_boxes=np.array([[0.5, 0.2, 0.75, 0.6]]), cls_ids=np.array([0]))
    x, out = EvalTransform(50, normalize=False)(img, t)
    assert x.shape == (50, 50)
    # crop x from 50..150 px: 100 px -> (0.5*200-50)/100 = 0.5, (150-50)/100 = 1.0
    assert np.allclose(out.cls_boxes, [[0.5, 0.2, 1.0, 0.6]])
