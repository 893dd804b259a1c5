"""`chex demo`'s image tower pretraining (chexcli.demo.pretrain): targets, training, the bundle."""

import pytest
import torch

from chexcli.demo.pretrain import (cell_coverage, cell_targets, load_training_targets, pretrain_bundle,
                                   pretrain_image_tower)
from chexcli.model.bundle import load_bundle, read_bundle_config


def test_cell_coverage_is_the_share_of_each_cell_inside_the_box():
    whole_first_cell = torch.tensor([[0.25, 0.25, 0.5, 0.5]])  # center format, grid 2
    assert torch.equal(cell_coverage(whole_first_cell, 2)[0], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    half_width = torch.tensor([[0.375, 0.25, 0.25, 0.5]])
    assert torch.allclose(cell_coverage(half_width, 2)[0], torch.tensor([[0.5, 0.0], [0.0, 0.0]]))
    everything = torch.tensor([[0.5, 0.5, 1.0, 1.0]])
    assert torch.allclose(cell_coverage(everything, 7)[0], torch.ones(7, 7))
    outside = torch.tensor([[1.5, 1.5, 0.2, 0.2]])
    assert cell_coverage(outside, 7).sum() == 0


def test_cell_targets_put_anatomy_then_findings_per_cell():
    data = {"anat_boxes": torch.tensor([[[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]]]),
            "anat_present": torch.tensor([[True, False]]),
            "findings": torch.tensor([[0.0, 0.75, 0.25, 0.5, 0.5, 2.0]]),  # image 0, class 2, top right cell
            "n_classes": torch.tensor(3)}
    t = cell_targets(data, torch.tensor([0]), grid=2)
    assert t.shape == (1, 2, 2, 2 + 3)
    assert t[0, 0, 0, 0] == 1 and t[0, :, :, 1].sum() == 0  # an absent anatomy has no target
    assert t[0, 0, 1, 4] == 1 and t[0, :, :, 2:4].sum() == 0 and t[0, :, :, 4].sum() == 1


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from chexcli.data.prepare.synthetic import prepare_synthetic

    out = tmp_path_factory.mktemp("synthetic") / "data"
    prepare_synthetic(out, n=40, seed=3, workers=1, progress=False)
    return out


def test_training_targets_match_the_tables(synthetic):
    data = load_training_targets(synthetic)
    n = len(data["x"])
    assert n > 0 and data["x"].dtype == torch.float16 and data["x"].shape[1:] == (224, 224)
    assert data["anat_boxes"].shape == (n, 29, 4) and data["anat_labels"].shape[:2] == (n, 29)
    assert data["findings"].shape[1] == 6 and int(data["n_classes"]) == 22
    assert ((data["findings"][:, 0] >= 0) & (data["findings"][:, 0] < n)).all()


def test_pretraining_lowers_the_loss_and_writes_a_stage_one_init(synthetic, tmp_path):
    from chexcli.train.options import TrainOptions
    from chexcli.train.trainer import train

    torch.manual_seed(0)
    out = pretrain_bundle(synthetic, tmp_path / "pre" / "bundle", "tiny-cnn", updates=2, batch_size=4,
                          progress=False, echo=lambda _: None)
    provenance = read_bundle_config(out)["provenance"]
    assert provenance["stage"] == "pretrain" and provenance["updates"] == 2
    model = load_bundle(out)
    assert model.cfg.vision.kind == "cnn"
    losses = pretrain_image_tower(model, load_training_targets(synthetic), updates=60, batch_size=8, lr=3e-3)
    assert sum(losses[-10:]) < 0.7 * sum(losses[:10])

    run = train(TrainOptions(stage="1", data=[synthetic], init=out, out=tmp_path / "runs", name="s1",
                             sets=["model.image_encoder_trainable_blocks=0", "data.workers=0"], max_steps=2,
                             batch_size=4, val_every=0, seed=0, device="cpu", progress=False), echo=lambda *_: None)
    stage1 = load_bundle(run / "bundle")
    pre = load_bundle(out)
    for (name, a), b in zip(pre.img_encoder.state_dict().items(), stage1.img_encoder.state_dict().values()):
        assert torch.equal(a, b), f"stage 1 changed the frozen tower's {name}"  # batch-norm statistics too


def test_prompt_groups_hold_each_string_once():
    from chexcli.demo.pretrain import prompt_groups

    class Model:
        prompts = {"prompt_sets": {"anat": {"left lung": ["Left lung", "Left lung field"]},
                                   "vindr": {"v/Pneumothorax": ["Pneumothorax"]},
                                   "cig": {"c/pneumothorax": ["Pneumothorax"], "c/edema": ["Edema"]},
                                   "neg": {"v/Pneumothorax": ["No pneumothorax"]}},
                   "model_prompt_assembly": {"anatomy_prompts": ["anat"], "pathology_pos_prompts": ["vindr", "cig"],
                                             "pathology_neg_prompts": ["neg"]}}

    assert prompt_groups(Model()) == [["Left lung", "Left lung field"], ["Pneumothorax"], ["Edema"],
                                      ["No pneumothorax"]]


def test_text_pretraining_moves_prompt_names_apart(tiny_bundle):
    from chexcli.demo.pretrain import prompt_groups, pretrain_text_tower

    torch.manual_seed(0)
    model = load_bundle(tiny_bundle)
    groups = prompt_groups(model)[:24]

    def closest_other() -> float:
        with torch.no_grad():
            e = torch.nn.functional.normalize(torch.stack([model.encode_sentences(g).mean(0) for g in groups]), dim=-1)
        sim = e @ e.t()
        return float(sim.fill_diagonal_(-1).max())

    before = closest_other()
    losses = pretrain_text_tower(model, groups, updates=40)
    assert losses[-1] < 0.5 * losses[0]
    assert closest_other() < before
    assert not model.txt_encoder.training and model.txt_encoder.cache_enabled  # the cache is cleared, not stale
