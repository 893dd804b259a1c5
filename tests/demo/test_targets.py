"""chexcli.demo.targets: what `chex predict` shows on the synthetic test split, measured as a user would."""

import json
import math

import numpy as np
import pytest
import torch

from chexcli.demo import targets as T
from chexcli.demo.checks import sentence_is_right


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from chexcli.data.prepare.synthetic import prepare_synthetic

    out = tmp_path_factory.mktemp("targets_synth") / "data"
    prepare_synthetic(out, n=80, seed=1, progress=False)
    return out


@pytest.fixture(scope="module")
def model(tiny_bundle):
    from chexcli.model.bundle import load_bundle

    torch.set_num_threads(1)
    return load_bundle(tiny_bundle).eval()


def test_load_split_joins_the_truth_and_the_anatomy_table(synth):
    df = T.load_split(synth, "test", None)
    assert len(df) > 0 and set(df.columns) >= {"sample_id", "findings", "anat_boxes", "anat_labels"}
    for _, row in df.iterrows():
        for f in row["findings"]:
            assert f["regions"][0] in row["anat_boxes"]  # a finding's most specific anatomy has a box
            assert sentence_is_right(f["sentence"], f["kind"], f["regions"][0])  # truth is right by the rule
    assert len(T.load_split(synth, "test", 3)) == 3


def test_best_candidate_is_the_highest_weight_region():
    from chexcli.predict import QueryResult, Region

    q = QueryResult(type="prompt", prompt="x", prompt_source="sentence", box=None, box_model=[0] * 4, score=0.1,
                    present=False, regions=[Region([0, 0, 1, 1], [0] * 4, 0.2, False),
                                            Region([5, 5, 9, 9], [0] * 4, 0.4, False)])
    assert T.best_candidate(q) == [5, 5, 9, 9]


def test_measures_of_a_tiny_model_are_complete_and_in_range(model, synth):
    m = T.measure_targets(model, synth, max_images=8, batch_size=3, max_new_tokens=3)
    assert m["images"] == 8
    assert set(m["presence_auroc"]) == set(T.FINDING_PROMPTS)
    assert all(math.isnan(v) or 0.0 <= v <= 1.0 for v in m["presence_auroc"].values())
    df = T.load_split(synth, "test", 8)
    n_findings = sum(len(f) for f in df["findings"])
    assert m["anatomy_sentences"]["regions"] == m["box_sentences"]["regions"] == n_findings > 0
    assert 0.0 <= m["box_sentences"]["right"] <= 1.0 and 0.0 <= m["normal_clean"] <= 1.0
    assert 0.0 <= m["anatomy_best_iou"] <= 1.0 and m["anatomy_pairs"] == sum(len(b) for b in df["anat_boxes"])
    json.dumps(m)  # JSON-ready
    assert "AUROC" in T.summary_line(m)


def test_a_model_without_a_generator_gets_boxes_and_scores_only(model, synth, monkeypatch):
    monkeypatch.setattr(model, "txt_decoder", None)
    m = T.measure_targets(model, synth, max_images=4, batch_size=4)
    assert math.isnan(m["box_sentences"]["right"]) and m["box_sentences"]["regions"] == 0
    assert np.isfinite(m["anatomy_best_iou"])
