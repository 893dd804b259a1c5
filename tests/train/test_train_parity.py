"""Training parity with the reference implementation on the train-parity fixture.

The fixture (docs/training.md, "Training parity") holds, for one train step of each stage, the
batch the reference's dataset code built, the reference's model configuration, and what the
reference computed from the tiny parity checkpoint: every loss term, the gradient norm and signed
sum of every trained parameter, and per-term gradient norms by component. It also lists the
dropout sites of the default configurations and the initial distribution of every parameter.

The fixture folder is `$CHEX_TRAIN_PARITY`, by default `shared/reference/train_parity` next to the
repository; its checkpoint is `../parity` beside it (else `shared/reference/parity`, and the
manifest's SHA-256 must match). The variants are read from its manifest, and
the reference's settings of each variant from its `model_config.yaml`, so another fixture of the
same layout (another seed and batch) runs through the same assertions. Tolerances are the
fixture's own (its README): the reference differs from itself by this much across thread counts.

Which assertion catches which training divergence (issue 21):
  dropout after the box / region-weight heads  -> test_dropout_sites (MLP layouts, active sites)
  multiregion_tokens initialisation            -> test_initialisation_follows_the_reference_rules
  pathology detection on label-only samples    -> test_pathology_detection_skips_samples_without_box_flags
  txtgen copy dropout in validation            -> test_txtgen_copy_dropout_is_off_in_eval_mode
  absent anatomies zeroed in bbox mode         -> test_losses[stage2_bbox|stage3_bbox] (l_anat/sent_mse)
  teacher-forcing positions of padding         -> test_losses[stage3_*] (sent_gen, anat_gen)
  no Hugging Face GPT-2 importer               -> tests/test_import_gpt2.py
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = Path(os.environ.get("CHEX_TRAIN_PARITY") or ROOT.parent / "shared" / "reference" / "train_parity")
# the tiny checkpoint: `../parity` beside the fixture (its README), else the repository's neighbour
CHECKPOINTS = next((p for p in (FIXTURE.parent / "parity", ROOT.parent / "shared" / "reference" / "parity")
                    if (p / "models").is_dir()), FIXTURE.parent / "parity")
HAVE_FIXTURE = (FIXTURE / "manifest.json").is_file() and (CHECKPOINTS / "models").is_dir()
needs_fixture = pytest.mark.skipif(not HAVE_FIXTURE, reason=f"train-parity fixture not found at {FIXTURE}")

LOSS_RTOL, LOSS_ATOL = 1e-5, 1e-6
GRAD_ATOL = 1e-6
COMPONENTS = ("img_encoder", "txt_encoder", "detector", "post_decoder", "txt_decoder")


def _manifest() -> dict:
    return json.loads((FIXTURE / "manifest.json").read_text()) if HAVE_FIXTURE else {"variants": {}}


VARIANTS = sorted(_manifest()["variants"])


def grad_rtol(stage: int) -> float:
    return 3e-4 if stage == 3 else 1e-4


# ------------------------------------------------------------------------------------------ settings
def reference_settings(cfg: dict, vision_layers: int) -> list[str]:
    """`--set` items that give chexcli's recipe the settings of a reference model config.

    cfg: the variant's model_config.yaml; vision_layers: ViT blocks of the image tower.
    Settings chexcli cannot express separately are refused rather than approximated.
    """
    sets: list[str] = []
    rates = (cfg["dropout"], cfg["attention_dropout"], cfg["droppath_prob"], cfg["detector"]["dropout_skip_roi_pool"])
    if all(r == 0 for r in rates):
        sets.append("model.dropout_scale=0")
    elif rates != (0.3, 0.1, 0.2, 0.3):
        pytest.fail(f"dropout rates {rates}: chexcli scales the reference's rates together (model.dropout_scale)")
    sets += [f"model.skip_roi_pool_prob={cfg['detector']['skip_roi_pool_prob']}",
             f"supervision.randomize_prompts={str(bool(cfg['randomize_prompts'])).lower()}",
             f"supervision.max_generated_sentences={cfg['max_generated_sentences']}"]
    if cfg.get("n_post_decoder_layers"):
        sets.append(f"model.post_decoder_multibox_drop={cfg['post_decoder_multibox_drop']}")
    freeze = cfg["img_encoder"]["freeze_backbone_layers"]  # embedding stage + the first freeze - 1 blocks
    sets.append(f"model.image_encoder_trainable_blocks={max(0, vision_layers - max(0, freeze - 1))}")

    sent, anat, patho = cfg["sent_tok"] or {}, cfg["anat_tok"] or {}, cfg["patho_tok"] or {}

    def coeff(section: dict, name: str) -> float:
        return float(section.get(f"coeff_{name}", 0.0)) if section.get(f"use_{name}") else 0.0

    loss = {"global_contrastive": coeff(sent, "global_contr"), "sentence_contrastive": coeff(sent, "sent_contr"),
            "sentence_mse": coeff(sent, "sent_mse"), "sentence_generation": coeff(sent, "sent_gen"),
            "anatomy_detection": coeff(anat, "anat_det"), "anatomy_classification": coeff(anat, "anat_cls"),
            "anatomy_mse": coeff(anat, "anat_mse"), "anatomy_generation": coeff(anat, "anat_gen"),
            "pathology_detection": coeff(patho, "patho_detect"),
            "pathology_classification": coeff(patho, "patho_cls")}
    sets += [f"loss.{k}={v}" for k, v in loss.items()]
    if sent:
        sets += [f"supervision.global_tau={sent['global_contr_temp']}",
                 f"supervision.sentence_tau={sent['sent_contr_temp']}"]
    if anat:
        for key, value in (("loss_coeff_bbox", 5.0), ("loss_coeff_giou", 2.0), ("cost_coeff_weights", 3.0)):
            assert anat[key] == value, f"anat_tok.{key} = {anat[key]}: chexcli's is {value}"
        assert anat.get("multi_sentence_mode", "concat") == "concat"
        assert anat.get("empty_sentences_mode", "ignore") == "ignore"
        sets += [f"supervision.anatomy_region_mode={anat['region_encoding_mode']}",
                 f"supervision.anatomy_box_subsample={anat['subsample_anat_det']}",
                 f"supervision.anatomy_cls_negatives={anat['anat_cls_subsample_negatives']}",
                 f"supervision.anatomy_cls_tau={anat['anat_cls_temp']}"]
    if patho:
        for key, value in (("loss_coeff_weights", 3.0), ("cost_coeff_cls", 1.0), ("loss_coeff_bbox", 5.0)):
            assert patho[key] == value, f"patho_tok.{key} = {patho[key]}: chexcli's is {value}"
        sets += [f"supervision.pathology_box_subsample={patho['subsample_patho_boxes']}",
                 f"supervision.pathology_label_subsample={patho['subsample_patho_cls']}",
                 f"supervision.pathology_cls_tau={patho['patho_cls_temp']}"]
    return sets


# ------------------------------------------------------------------------------------------ the step
@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from chexcli.weights.official import import_official

    expected = _manifest().get("checkpoint_sha256")
    checkpoint = next((CHECKPOINTS / "models").glob("*/run_*/checkpoints/checkpoint_*.pth"))
    if expected:
        assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == expected, f"{checkpoint} is not the fixture's"
    return import_official(checkpoint, tmp_path_factory.mktemp("train_parity") / "tiny",
                           clip_vocab=CHECKPOINTS / "clip_bpe" / "bpe_simple_vocab_16e6.txt.gz",
                           lm_tokenizer=CHECKPOINTS / "gpt2_tiny")


def stage_model(source, stage: str, recipe: dict):
    """A model of `stage` (the components it has) with the recipe's dropout and skip settings,
    holding `source`'s weights and tokenizers."""
    from chexcli.model.chex import ChEX
    from chexcli.train.model_setup import regularised, stage_config

    model = ChEX(regularised(stage_config(source.cfg, stage), recipe["model"]), source.txt_encoder.tokenizer,
                 source.gpt2_tokenizer, prompts=source.prompts, provenance=source.provenance)
    missing, _ = model.load_state_dict(source.state_dict(), strict=False)
    assert not missing, missing[:3]
    return model


def load_batch(name: str) -> tuple[dict, dict]:
    batch = torch.load(FIXTURE / "batches" / f"{name}.pt", weights_only=True)
    meta = json.loads((FIXTURE / "batches" / f"{name}.json").read_text())
    batch.update(meta["non_tensor"])
    return batch, meta["data_config"]


def build_objective(bundle: Path, variant: str, weights: dict | None = None):
    """The model of the variant's stage (train mode, frozen as the stage freezes it) and its objective."""
    from chexcli.model.bundle import load_bundle
    from chexcli.train.freezing import apply_freezing
    from chexcli.train.objective import ChexObjective
    from chexcli.train.recipe import resolve_recipe
    from chexcli.train.supervisors import LossWeights, SupervisionOptions

    spec = _manifest()["variants"][variant]
    stage = str(spec["stage"])
    cfg = yaml.safe_load((FIXTURE / variant / "model_config.yaml").read_text())
    loaded = load_bundle(bundle)
    sets = reference_settings(cfg, loaded.cfg.vision.layers)
    recipe = resolve_recipe(stage, sets=sets, profile="reference")
    model = stage_model(loaded, stage, recipe)
    apply_freezing(model, recipe)
    model.train()
    batch, names = load_batch(spec["batch"])
    options = SupervisionOptions(**recipe["supervision"])
    loss_weights = LossWeights(**{**recipe["loss"], **(weights or {})})
    objective = ChexObjective(model, loss_weights, options, names["class_names"], names["anatomy_names"],
                              names.get("multi_anatomy_names", []) if options.use_multiboxes else [])
    return model, objective, batch, int(spec["stage"])


def component_norms(grads: dict[str, torch.Tensor | None]) -> dict[str, float]:
    out = {}
    for comp in COMPONENTS:
        parts = [g.double().pow(2).sum() for n, g in grads.items() if n.startswith(comp + ".") and g is not None]
        if parts:
            out[comp] = float(torch.stack(parts).sum().sqrt())
    return out


@pytest.fixture(scope="module")
def step(bundle):
    """variant -> what chexcli computes for the fixture's step (computed once per variant)."""
    done: dict[str, dict] = {}

    def run(variant: str) -> dict:
        if variant not in done:
            model, objective, batch, stage = build_objective(bundle, variant)
            torch.manual_seed(1234)
            terms, zero = objective.loss_terms(batch)
            trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
            term_grads = {}
            for name, weighted in terms.weighted.items():
                grads = torch.autograd.grad(weighted, list(trained.values()), retain_graph=True, allow_unused=True)
                named = dict(zip(trained, grads))
                total = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads if g is not None))
                term_grads[name] = {"coeff": terms.coeffs[name], "grad_norm": total,
                                    "grad_norm_by_component": component_norms(named)}
            total = zero + terms.weighted_sum()
            total.backward()
            metrics = terms.metrics()
            metrics["loss"] = float(total.detach())
            done[variant] = {"stage": stage, "losses": metrics, "term_grads": term_grads,
                             "grads": {n: p.grad for n, p in trained.items()}}
        return done[variant]

    return run


def expected(variant: str, name: str) -> dict:
    return json.loads((FIXTURE / variant / "expected" / f"{name}.json").read_text())


@needs_fixture
@pytest.mark.parametrize("variant", VARIANTS)
def test_losses(step, variant):
    mine = step(variant)["losses"]
    ref = expected(variant, "losses")["losses"]
    for name, value in ref.items():
        assert name in mine, f"{variant}: chexcli does not compute {name}"
        assert mine[name] == pytest.approx(value, rel=LOSS_RTOL, abs=LOSS_ATOL), f"{variant}: {name}"


@needs_fixture
@pytest.mark.parametrize("variant", VARIANTS)
def test_trained_parameters(step, variant):
    grads = step(variant)["grads"]
    ref = expected(variant, "grad_norms")
    params = expected(variant, "parameters")
    assert set(grads) == set(ref), (f"{variant}: trained only by chexcli: {sorted(set(grads) - set(ref))[:5]}, "
                                    f"only by the reference: {sorted(set(ref) - set(grads))[:5]}")
    assert len(grads) == params["trainable_with_grad"]
    assert not params["trainable_without_grad"]
    assert all(g is not None for g in grads.values()), f"{variant}: a trained parameter got no gradient"


@needs_fixture
@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients(step, variant):
    result = step(variant)
    rtol = grad_rtol(result["stage"])
    norms, sums = expected(variant, "grad_norms"), expected(variant, "grad_sums")
    bad = []
    for name, ref_norm in norms.items():
        g = result["grads"].get(name)
        if g is None:
            bad.append(f"{name}: no gradient")
            continue
        norm, total = float(g.double().norm()), float(g.double().sum())
        if abs(norm - ref_norm) > GRAD_ATOL + rtol * abs(ref_norm):
            bad.append(f"{name}: norm {norm:.7g}, reference {ref_norm:.7g}")
        bound = rtol * math.sqrt(g.numel()) * ref_norm + GRAD_ATOL  # a sum can cancel to nearly 0
        if abs(total - sums[name]) > bound:
            bad.append(f"{name}: sum {total:.7g}, reference {sums[name]:.7g}")
        elif abs(sums[name]) > bound and math.copysign(1, total) != math.copysign(1, sums[name]):
            bad.append(f"{name}: sum has the wrong sign")
    assert not bad, f"{variant}: {len(bad)} of {len(norms)} gradients differ: " + "; ".join(bad[:8])


@needs_fixture
@pytest.mark.parametrize("variant", VARIANTS)
def test_term_gradients(step, variant):
    result = step(variant)
    rtol = grad_rtol(result["stage"])
    for term, ref in expected(variant, "term_grad_norms").items():
        mine = result["term_grads"].get(term)
        assert mine is not None, f"{variant}: {term} is not a term of chexcli's total"
        assert mine["coeff"] == pytest.approx(ref["coeff"], rel=1e-12), f"{variant}: coefficient of {term}"
        assert mine["grad_norm"] == pytest.approx(ref["grad_norm"], rel=rtol, abs=GRAD_ATOL), f"{variant}: {term}"
        for comp, value in ref["grad_norm_by_component"].items():
            got = mine["grad_norm_by_component"].get(comp, 0.0)
            assert got == pytest.approx(value, rel=rtol, abs=GRAD_ATOL), f"{variant}: {term} in {comp}"
    assert set(result["term_grads"]) == set(expected(variant, "term_grad_norms"))


@needs_fixture
def test_pathology_detection_skips_samples_without_box_flags(bundle):
    """A sample with image labels but no box flags does not enter pathology detection (its means and
    focal alpha), as in the reference: its detection losses equal those of the batch without it."""
    variant = next((v for v in VARIANTS if _manifest()["variants"][v]["stage"] == 1), None)
    if variant is None:
        pytest.skip("the fixture has no stage-1 variant")
    weights = {k: 0.0 for k in ("global_contrastive", "sentence_contrastive", "anatomy_detection",
                                "anatomy_classification")}
    _, objective, batch, _ = build_objective(bundle, variant, weights)
    flagged = batch["has_class_bboxes"].any(dim=1) & batch["has_class_labels"].any(dim=1)
    empty = flagged & ~batch["target_cls_boxes_mask"].flatten(1).any(dim=1)
    if not bool(empty.any()):
        pytest.skip("no sample of the batch has box flags without boxes")
    drop = int(empty.nonzero()[0])
    label_only = dict(batch)
    label_only["has_class_bboxes"] = batch["has_class_bboxes"].clone()
    label_only["has_class_bboxes"][drop] = False
    keep = [i for i in range(len(batch["x"])) if i != drop]
    without = {k: (v[keep] if torch.is_tensor(v) and v.dim() and v.shape[0] == len(batch["x"]) else
                   [v[i] for i in keep] if isinstance(v, list) and len(v) == len(batch["x"]) else v)
               for k, v in batch.items()}
    results = []
    for b in (label_only, without):
        torch.manual_seed(1234)
        results.append({k: float(v) for k, v in objective(b)[1].items()})
    for name in ("l_cls/box_loss", "l_cls/weights_loss"):
        assert results[0][name] == pytest.approx(results[1][name], rel=1e-5), name


# ------------------------------------------------------------------------------------------ dropout sites
def _sites(model) -> tuple[dict[str, float], dict[str, list[str]]]:
    """Active dropout-like sites (path -> p) in train mode, and every MLP's layout (path -> layer kinds).

    Attention-probability dropout is a rate on the attention module; GPT-2's is reported at
    `<attn>.attn_dropout`, the name of its `nn.Dropout` in Hugging Face's GPT-2.
    """
    from torch import nn

    from chexcli.model.gpt2 import CausalSelfAttention
    from chexcli.model.layers import MLP, DropPath, MultiheadAttention

    active, mlps = {}, {}
    for path, module in model.named_modules():
        if isinstance(module, (nn.Dropout, DropPath)) and module.p > 0:
            active[path] = module.p
        elif isinstance(module, MultiheadAttention) and module.dropout > 0:
            active[path] = module.dropout
        elif isinstance(module, CausalSelfAttention) and module.dropout > 0:
            active[f"{path}.attn_dropout"] = module.dropout
        if isinstance(module, MLP):
            mlps[path] = [type(m).__name__ for m in module.layers]
    return active, mlps


def _default_model(dims: str, stage: str, bundle: Path, recipe: dict):
    from chexcli.model.bundle import load_bundle
    from chexcli.model.chex import ChEX
    from chexcli.model.config import ChexConfig
    from chexcli.train.model_setup import regularised, stage_config

    if dims == "tiny":
        return stage_model(load_bundle(bundle), stage, recipe)
    with torch.device("meta"):  # the paper's sizes, without allocating 1 B parameters
        return ChEX(regularised(stage_config(ChexConfig(), stage), recipe["model"]), None, prompts={})


@needs_fixture
@pytest.mark.parametrize("dims", ["tiny", "paper_dims"])
@pytest.mark.parametrize("stage", ["1", "3"])
def test_dropout_sites(bundle, dims, stage):
    """The default recipes drop out where the reference does, with its rates, and no MLP drops out
    after a layer where the reference's does not (the box and region-weight heads)."""
    from chexcli.train.freezing import apply_freezing
    from chexcli.train.recipe import resolve_recipe

    ref = json.loads((FIXTURE / "expected" / "dropout_sites.json").read_text())[dims][f"stage{stage}"]
    recipe = resolve_recipe(stage)
    model = _default_model(dims, stage, bundle, recipe)
    apply_freezing(model, recipe)
    model.train()
    active, mlps = _sites(model)
    want = {s["path"]: s["p"] for s in ref["active"]}
    assert set(active) == set(want), (f"only in chexcli: {sorted(set(active) - set(want))}, "
                                      f"only in the reference: {sorted(set(want) - set(active))}")
    for path, p in want.items():
        assert active[path] == pytest.approx(p), path
    for mlp in ref["mlps"]:
        if mlp["linear_layers"]:
            assert mlps.get(mlp["path"]) == mlp["layout"], mlp["path"]
    other = ref["other_random_choices"]
    skip = other["detector.skip_con_roi_pool"]
    assert recipe["model"]["skip_roi_pool_prob"] == skip["skip_roi_pool_prob"]
    assert model.detector.skip_con_dropout.p == pytest.approx(skip["dropout_skip_roi_pool"])
    if "post_decoder.multibox_drop_prob" in other:
        assert recipe["model"]["post_decoder_multibox_drop"] == other["post_decoder.multibox_drop_prob"]["p"]
    sup = recipe["supervision"]
    assert sup["randomize_prompts"] == other["randomize_prompts"]["value"]
    assert sup["anatomy_region_mode"] == other["anat_tok.region_encoding_mode"]["value"]
    assert sup["anatomy_box_subsample"] == other["anat_tok.subsample_anat_det"]["value"]
    if stage == "3":  # stage 1 generates nothing (the reference's stage-1 config says 128)
        assert sup["max_generated_sentences"] == other["max_generated_sentences"]["value"]
    if stage == "1":
        assert sup["anatomy_cls_negatives"] == other["anat_tok.anat_cls_subsample_negatives"]["value"]


# ------------------------------------------------------------------------------------------ initialisation
@needs_fixture
def test_initialisation_follows_the_reference_rules(bundle):
    """A freshly built model (tiny dimensions, nothing loaded) draws each ChEX parameter from the
    reference's rule.

    Tolerances: 5 standard errors of the sample mean (sigma / sqrt(n)) and of the sample std
    (sigma / sqrt(2n) for a normal, 0.45 sigma / sqrt(n) for a uniform), so a correct rule fails
    with probability below 1e-6 per parameter, while a wrong scale (0.02 instead of 1/sqrt(d) =
    0.125 at d = 64) is off by hundreds of standard errors. Uniform draws must also stay inside
    their bounds; constants must be exact. Parameters of fewer than 16 values are only checked
    against the bounds. CLIP and GPT-2 weights are pretrained in the reference: no rule.
    """
    from chexcli.model.bundle import load_bundle
    from chexcli.model.chex import ChEX

    cfg = load_bundle(bundle).cfg
    torch.manual_seed(0)
    model = ChEX(cfg, None, prompts={})
    params = dict(model.named_parameters())
    ref = json.loads((FIXTURE / "expected" / "init_stats.json").read_text())["parameters"]
    checked, bad = 0, []
    for name, stats in ref.items():
        if name.startswith("txt_decoder.language_model.") and name.endswith("lm_head.weight"):
            continue
        assert name in params, f"the reference has {name}, chexcli does not"
        p = params[name].detach().double().flatten()
        assert list(params[name].shape) == stats["shape"], name
        rule = stats.get("init_rule")
        if rule is None:
            continue
        checked += 1
        n = p.numel()
        if rule["dist"] == "constant":
            if not bool((p == rule["value_float32"]).all()):
                bad.append(f"{name}: not constant {rule['value_float32']}")
            continue
        mean, std = float(p.mean()), float(p.std()) if n > 1 else 0.0
        if rule["dist"] == "uniform" and (float(p.min()) < rule["low"] or float(p.max()) > rule["high"]):
            bad.append(f"{name}: outside U({rule['low']}, {rule['high']})")
        if n < 16:
            continue
        sigma = rule["std"]
        std_err = sigma / math.sqrt(2 * n) if rule["dist"] == "normal" else 0.45 * sigma / math.sqrt(n)
        if abs(mean - rule["mean"]) > 5 * sigma / math.sqrt(n):
            bad.append(f"{name}: mean {mean:.4g}, rule {rule['mean']:.4g} ({rule['rule']})")
        if abs(std - sigma) > 5 * std_err:
            bad.append(f"{name}: std {std:.4g}, rule {sigma:.4g} ({rule['rule']})")
    assert checked > 0
    assert not bad, f"{len(bad)} of {checked} parameters break the reference's initialisation: " + "; ".join(bad)


# ------------------------------------------------------------------------------------------ txtgen
def test_txtgen_copy_dropout_is_off_in_eval_mode(tiny_model):
    """Validation (model.eval()) scores the clean embedding: the loss does not depend on the seed."""
    from chexcli.train.objective import TxtgenObjective

    objective = TxtgenObjective(tiny_model, dropout=0.5, copies=(2, 2))
    batch = {"sentences": [["The lungs are clear.", "No pleural effusion."], ["Heart size is normal."]]}
    was_training = tiny_model.training
    tiny_model.eval()
    try:
        losses = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            with torch.no_grad():
                losses.append(objective(batch)[0])
        assert torch.equal(losses[0], losses[1])
        tiny_model.train()
        train_losses = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            with torch.no_grad():
                train_losses.append(objective(batch)[0])
        assert not torch.equal(train_losses[0], train_losses[1])  # the dropout is there in training
    finally:
        tiny_model.train(was_training)
