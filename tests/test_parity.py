"""Parity with the reference implementation on the parity fixture (docs/architecture.md, parity/README.md).

The fixture is a tiny checkpoint in the official format plus what the
reference computed from it. It lives in `shared/reference/parity` next to the
repository (CI has it at ../shared); the whole module is skipped without it.
The checkpoint goes through `chex weights import` like a user's would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "parity"
pytestmark = pytest.mark.skipif(not (FIXTURE / "expected" / "outputs.pt").exists(),
                                reason=f"parity fixture not found at {FIXTURE}")

ATOL = 1e-4
NEAR_TIE = 5e-3  # generation steps whose top-1/top-2 logit margin is below this may flip


@pytest.fixture(scope="module")
def expected():
    return torch.load(FIXTURE / "expected" / "outputs.pt", weights_only=True)


@pytest.fixture(scope="module")
def expected_json():
    return json.loads((FIXTURE / "expected" / "outputs.json").read_text())


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from chexcli.weights.official import import_official

    checkpoint = next((FIXTURE / "models" / "chex_tiny").glob("run_*/checkpoints/checkpoint_*.pth"))
    return import_official(checkpoint, tmp_path_factory.mktemp("parity") / "chex_tiny",
                           clip_vocab=FIXTURE / "clip_bpe" / "bpe_simple_vocab_16e6.txt.gz",
                           lm_tokenizer=FIXTURE / "gpt2_tiny")


@pytest.fixture(scope="module")
def model(bundle):
    from chexcli.model.bundle import load_bundle

    return load_bundle(bundle)


@pytest.fixture(scope="module")
def image_paths():
    return sorted((FIXTURE / "images").glob("*.png"))


@pytest.fixture(scope="module")
def encoding(model, expected):
    with torch.inference_mode():
        return model.encode_image(expected["pre/x_direct"])


@pytest.fixture(scope="module")
def class_embeddings(model, expected_json):
    prompts = expected_json["prompts"]
    with torch.inference_mode():
        emb, _ = model.encode_prompts(prompts["synonyms"], prompts["names"])
    return emb


def close(actual, reference, atol=ATOL):
    actual, reference = actual.detach().float().cpu(), reference.float()
    assert actual.shape == reference.shape
    err = (actual - reference).abs().max().item() if actual.numel() else 0.0
    assert err <= atol, f"max abs error {err:.3g} > {atol}"


def thresholded_equal(actual, reference_bool, reference_score, threshold=0.5, margin=1e-4):
    """Booleans from a threshold must agree where the reference score is not within noise of it."""
    safe = (reference_score.float() - threshold).abs() > margin
    assert torch.equal(actual.cpu()[safe], reference_bool[safe])


def test_preprocessing(expected, image_paths):
    from chexcli.data.images.readers import read_image
    from chexcli.model.preprocess import preprocess_image

    x = torch.stack([preprocess_image(read_image(p))[0] for p in image_paths])
    close(x, expected["pre/x_direct"], atol=5e-5)


def test_prompt_tokens_and_embeddings(model, expected, expected_json, class_embeddings):
    flat = expected_json["prompts"]["flattened"]
    assert torch.equal(model.txt_encoder.tokenize(flat), expected["prompts/clip_token_ids"])
    with torch.inference_mode():
        close(model.encode_sentences(flat), expected["prompts/flat_prompt_features"])
    close(class_embeddings, expected["prompts/class_embeddings"])


def test_image_encoder(encoding, expected, model):
    close(encoding.patch_features, expected["img/patch_features"])
    close(encoding.pos_embeddings, expected["img/pos_embeddings"])
    close(encoding.global_features, expected["img/global_features"])
    with torch.inference_mode():
        enc256 = model.encode_image(expected["pre/x_memmap256"])
    close(enc256.patch_features, expected["img_memmap256/patch_features"])


VARIANTS = {
    "nopost_nomask": dict(use_post_decoder=False),
    "nopost_mask": dict(use_post_decoder=False, mask=torch.ones(4, dtype=torch.bool)),
    "nopost_nomask_noclip": dict(use_post_decoder=False, clip_boxes=False),
    "post_nodrop_nomask": dict(),
    "post_refdrop_nomask": dict(),
}


def _detect(model, encoding, class_embeddings, expected, variant):
    kwargs = dict(VARIANTS[variant])
    if variant == "post_refdrop_nomask":
        kwargs["keep_multibox"] = expected["detect/post_refdrop_nomask/keep_multibox_tokens"]
    with torch.inference_mode():
        return model.detect_prompts(encoding, class_embeddings, **kwargs)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_text_prompt_detection(model, encoding, class_embeddings, expected, variant):
    out = _detect(model, encoding, class_embeddings, expected, variant)
    ref = lambda f: expected[f"detect/{variant}/{f}"]  # noqa: E731
    for field in ("boxes", "boxes_weights", "box_features", "multiboxes", "multiboxes_weights", "multiboxes_features"):
        close(getattr(out, field), ref(field))
    assert torch.equal(out.box_mask.cpu(), ref("box_mask"))
    thresholded_equal(out.multiboxes_present, ref("multiboxes_present"), ref("multiboxes_weights"))
    assert torch.equal(out.boxes_present.cpu(), ref("boxes_present"))


def test_region_encoding(model, encoding, expected):
    boxes = expected["regions/boxes"]
    with torch.inference_mode():
        close(model.encode_regions(encoding, boxes), expected["regions/features_post_nomask"])
        close(model.encode_regions(encoding, boxes, mask=torch.ones(boxes.shape[:2], dtype=torch.bool)),
              expected["regions/features_post_mask"])
        close(model.encode_regions(encoding, boxes, use_post_decoder=False), expected["regions/features_nopost"])


def _compare_generation(model, features, records, **kwargs):
    """Token ids equal up to the first near-tie step; sentences equal whenever ids are."""
    from chexcli.model.gpt2_text import decode_generated

    with torch.inference_mode():
        generated = model.generate(features, **kwargs)
    assert len(generated) == len(records)
    exact = 0
    for gen, rec in zip(generated, records):
        ref_ids, margins = rec["generated_ids"], rec["step_top1_top2_logit_margins"]
        ties = [i for i, m in enumerate(margins) if m < NEAR_TIE]
        upto = ties[0] if ties else None
        assert gen.ids[:upto] == ref_ids[:upto]
        if upto is None:
            assert gen.ids == ref_ids and gen.ended_with_eos == rec["ended_with_eos"]
        if gen.ids == ref_ids:
            exact += 1
            ours = decode_generated(model.gpt2_tokenizer, [gen.ids])[0]
            theirs = decode_generated(model.gpt2_tokenizer, [rec["output_ids"]])[0]
            assert ours == theirs
    return exact


@pytest.mark.parametrize("variant", ["nopost_nomask", "post_nodrop_nomask", "post_refdrop_nomask"])
def test_sentences_for_detected_regions(model, encoding, class_embeddings, expected, expected_json, variant):
    out = _detect(model, encoding, class_embeddings, expected, variant)
    records = expected_json["generate_detected"][variant]["records"]
    _compare_generation(model, out.box_features.flatten(0, 1), records)
    sentences = model.generate_sentences(out.box_features)
    assert sentences == expected_json["generate_detected"][variant]["sentences"]


def test_sentences_with_feature_mask_and_forced_length(model, encoding, class_embeddings, expected, expected_json):
    out = _detect(model, encoding, class_embeddings, expected, "post_nodrop_nomask")
    entry = expected_json["generate_detected"]["post_nodrop_nomask_featuremask"]
    mask = torch.tensor(entry["feature_mask"])
    _compare_generation(model, out.box_features[mask], entry["records"])
    assert model.generate_sentences(out.box_features, mask) == entry["sentences"]
    forced = expected_json["generate_detected"]["post_nodrop_forced12_first2x2"]
    kwargs = forced["kwargs"]
    _compare_generation(model, out.box_features[:2, :2].flatten(0, 1), forced["records"], **kwargs)


def test_sentences_for_box_prompts(model, encoding, expected, expected_json):
    boxes = expected["regions/boxes"]
    with torch.inference_mode():
        nomask = model.encode_regions(encoding, boxes)
        withmask = model.encode_regions(encoding, boxes, mask=torch.ones(boxes.shape[:2], dtype=torch.bool))
    _compare_generation(model, nomask.flatten(0, 1), expected_json["generate_regions"]["post_nomask"]["records"])
    _compare_generation(model, withmask.flatten(0, 1), expected_json["generate_regions"]["post_mask"]["records"])
    # list input: 3, 2, 1, 3 boxes per image, encoded without the post decoder (as the reference must)
    counts = expected_json["regions"]["list_input_counts"]
    feats = []
    with torch.inference_mode():
        for i, c in enumerate(counts):
            feats.append(model.encode_regions(encoding.select(slice(i, i + 1)), boxes[i:i + 1, :c],
                                              use_post_decoder=False)[0])
    close(torch.nn.utils.rnn.pad_sequence(feats, batch_first=True), expected["regions/features_list_input"])
    _compare_generation(model, torch.cat(feats), expected_json["generate_regions"]["list_input"]["records"])


def test_classification(model, encoding, expected, expected_json):
    from chexcli.model.classify import classify_features

    sets = model.prompts["prompt_sets"]
    names = expected_json["classify"]["regions_mscxr_poscentroid"]["class_names"]
    boxes = expected["regions/boxes"]
    with torch.inference_mode():
        feats = model.encode_regions(encoding, boxes, mask=torch.ones(boxes.shape[:2], dtype=torch.bool))
        pos_c, neg_c = model.encode_pos_neg_prompts(names, sets["mscxr_pos"], sets["mscxr_neg"], mode="pos_centroid")
        pos, neg = model.encode_pos_neg_prompts(names, sets["mscxr_pos"], sets["mscxr_neg"], mode="neg")
    close(pos_c, expected["classify/pos_prompt_emb_poscentroid"])
    close(neg_c, expected["classify/neg_prompt_emb_poscentroid"])
    close(neg, expected["classify/neg_prompt_emb_neg"])
    probs, _ = classify_features(feats[:, :, None], pos_c[None, None], neg_c[None, None])
    close(probs, expected["classify/regions_mscxr_poscentroid/probs"])
    assert probs.argmax(-1).tolist() == expected_json["classify"]["regions_mscxr_poscentroid"]["argmax"]
    probs, preds = classify_features(feats[:, :, None], pos[None, None], neg[None, None], threshold=0.5)
    close(probs, expected["classify/regions_mscxr_neg/probs"])
    ref = expected["classify/regions_mscxr_neg/probs"]
    thresholded_equal(preds, ref > 0.5, ref)


def test_detected_multibox_classification(model, encoding, class_embeddings, expected, expected_json):
    from chexcli.model.classify import classify_features

    sets = model.prompts["prompt_sets"]
    names = expected_json["classify"]["multiboxes_softmax_t0.1"]["class_names"]
    out = _detect(model, encoding, class_embeddings, expected, "nopost_nomask")
    with torch.inference_mode():
        pos, neg = model.encode_pos_neg_prompts(names, sets["mscxr_pos"], sets["mscxr_neg"], mode="neg")
    # query q is scored against class q
    probs, _ = classify_features(out.multiboxes_features, pos[None, :, None], neg[None, :, None],
                                 temperature=0.1, softmax=True)
    close(probs, expected["classify/multiboxes_softmax_t0.1/probs"])


def _pixel_box(cxcywh, width, height):
    s = min(width, height)
    x0, y0 = (width - s) // 2, (height - s) // 2
    cx, cy, w, h = cxcywh
    return [(cx - w / 2) * s + x0, (cy - h / 2) * s + y0, (cx + w / 2) * s + x0, (cy + h / 2) * s + y0]


def test_single_query_prediction_matches_reference(bundle, model, expected, expected_json, image_paths, tmp_path):
    """`chex predict` with one --prompt / one --box gives the reference's single-query results."""
    from PIL import Image

    from chexcli.data.images.readers import read_image
    from chexcli.predict import Predictor

    # one prompt: the reference's per-query detection without a query mask (queries are independent there)
    names = expected_json["prompts"]["names"]
    q = names.index("left lung")
    path = image_paths[0]
    width, height = Image.open(path).size
    ref_box = _pixel_box(expected["detect/nopost_nomask/boxes"][0, q].tolist(), width, height)
    r = subprocess.run([sys.executable, "-m", "chexcli", "predict", str(path), "--model", str(bundle),
                        "--prompt", "left lung", "--json", "--no-images"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    query = json.loads(r.stdout)["queries"][0]
    assert query["prompt_source"] == "anatomy:left lung"
    assert query["present"] == bool(expected["detect/nopost_nomask/boxes_present"][0, q])
    if query["present"]:
        assert np.allclose(query["box"], ref_box, atol=0.05)  # pixels, rounded to 0.01
    # its sentence without the post decoder equals the reference's (no post decoder: queries independent)
    predictor = Predictor(model, use_post_decoder=False)
    pred = predictor.predict([read_image(path)], [path.name], prompts=["left lung"])[0]
    records = expected_json["generate_detected"]["nopost_nomask"]["records"]
    ref_sentence = expected_json["generate_detected"]["nopost_nomask"]["sentences"][0][q]
    if min(records[q]["step_top1_top2_logit_margins"]) >= NEAR_TIE:
        assert pred.queries[0].sentence == ref_sentence

    # one box: the reference's box prompt without a region mask
    b = 1
    box = _pixel_box(expected["regions/boxes"][0, b].tolist(), width, height)
    r = subprocess.run([sys.executable, "-m", "chexcli", "predict", str(path), "--model", str(bundle), "--box",
                        ",".join(f"{v:.6f}" for v in box), "--json", "--no-images"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    query = json.loads(r.stdout)["queries"][0]
    rec = expected_json["generate_regions"]["post_nomask"]["records"][b]
    if min(rec["step_top1_top2_logit_margins"]) >= NEAR_TIE:
        assert query["sentence"] == expected_json["generate_regions"]["post_nomask"]["sentences"][0][b]
