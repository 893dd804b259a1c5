"""Predictor on several images with prompts and box prompts: each result carries its own query's
feature and sentence (regression: the features were ordered all prompts first, then all boxes,
while the results run image by image, so with boxes on several images sentences landed on the
wrong queries)."""

import numpy as np

from chexcli.model.bundle import load_bundle
from chexcli.predict import Predictor


def test_results_of_a_batch_equal_each_image_alone(tiny_bundle):
    model = load_bundle(tiny_bundle)
    rng = np.random.default_rng(0)
    images = [rng.random((96, 90), dtype=np.float32) for _ in range(3)]
    boxes = [[[5, 5, 40, 40]], [], [[10, 20, 60, 70], [0, 0, 30, 30]]]
    prompts = ["left lung", "cardiomegaly"]
    predictor = Predictor(model, max_new_tokens=4, return_features=True)
    together = predictor.predict(images, ["a", "b", "c"], prompts=prompts, boxes=boxes)
    for image, image_boxes, name, batched in zip(images, boxes, "abc", together):
        alone = predictor.predict([image], [name], prompts=prompts, boxes=[image_boxes])[0]
        assert [q.type for q in batched.queries] == ["prompt", "prompt"] + ["box"] * len(image_boxes)
        for q_batch, q_alone in zip(batched.queries, alone.queries):
            np.testing.assert_allclose(q_batch.features, q_alone.features, atol=1e-4)
            assert q_batch.sentence == q_alone.sentence


def test_a_pathology_name_answers_to_each_word_of_a_slashed_class():
    from chexcli.predict import name_forms, resolve_prompt

    assert {"nodule", "mass", "nodule/mass"} <= name_forms("vindrcxr/Nodule/Mass")
    assert "af" not in name_forms("cig/af/pleural effusion") and "pleural effusion" in name_forms("cig/af/pleural effusion")

    class Model:
        prompts = {"prompt_sets": {"pos": {"vindrcxr/Nodule/Mass": ["Mass or nodule"]}},
                   "model_prompt_assembly": {"pathology_pos_prompts": ["pos"]}}

    assert resolve_prompt(Model(), "Nodule") == ("pathology:vindrcxr/Nodule/Mass", ["Mass or nodule"])
    assert resolve_prompt(Model(), "a nodule") == ("sentence", ["a nodule"])
