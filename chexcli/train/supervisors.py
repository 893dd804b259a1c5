"""The three supervisors of ChEX training (docs/training.md#supervisors): sentence, anatomy and
pathology tokens.

Supervisors select, losses score. Each supervisor takes the model, the batch's image encoding
and the batch, selects the samples and queries of each of its losses, runs its own detector
pass and records the terms in a `LossTerms` (chexcli.train.loss_terms), weighted by the
coefficients it is given (`LossWeights`; the box coefficients `BoxCoefficients` go on to the
loss functions of chexcli.train.losses, as a DETR matcher and criterion take theirs). Batch
fields and shapes: docs/training.md#batch-fields (N samples, A anatomies, C classes, R regions
per query, d model width).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from chexcli.model.detector import ImageEncoding
from chexcli.train.generation import GenerationCall, generation_call
from chexcli.train.loss_terms import LossTerms
from chexcli.train.losses import (BoxCoefficients, anatomy_classification_loss, expected_count_subsample,
                                  global_contrastive_loss, masked_mse_loss, multi_box_loss,
                                  pathology_classification_loss, pathology_detection_loss,
                                  sentence_region_contrastive_loss, single_box_loss)
from chexcli.train.prompts import PromptBank


SENTENCE_TERMS = ["l_sent/global_contr", "l_sent/sent_contr", "l_sent/sent_mse", "l_sent/sent_gen"]


@dataclass
class LossWeights:
    """Coefficients of every loss term (0 switches a term off). Defaults: stage 1."""

    global_contrastive: float = 0.0
    sentence_contrastive: float = 0.0
    sentence_mse: float = 0.0
    sentence_generation: float = 0.0
    anatomy_detection: float = 0.0
    anatomy_classification: float = 0.0
    anatomy_mse: float = 0.0
    anatomy_generation: float = 0.0
    pathology_detection: float = 0.0
    pathology_classification: float = 0.0


@dataclass
class SupervisionOptions:
    """Everything else a supervisor needs from the recipe."""

    global_tau: float = 0.2
    sentence_tau: float = 0.25
    anatomy_cls_tau: float = 0.25
    anatomy_cls_negatives: int = 10
    pathology_cls_tau: float = 0.2
    anatomy_region_mode: str = "token"  # token | bbox | random (50/50 per forward)
    anatomy_box_subsample: int = 20
    pathology_box_subsample: int = 10
    pathology_label_subsample: int = 10
    use_multiboxes: bool = True
    use_post_decoder: bool = False
    randomize_prompts: bool = True
    max_generated_sentences: int = 32
    generation_include_padding: bool = False
    generation_keep_end_token: bool = True
    generation_sampling: str = "uniform"  # uniform (reference) | balanced (each distinct target text equally)


def _zero(ref: Tensor) -> Tensor:
    return ref.sum() * 0.0


def _flag(batch: dict, key: str, shape: tuple[int, ...], device) -> Tensor:
    """A `has_*` flag of the batch, all-true when the dataset does not set it (single-dataset runs)."""
    value = batch.get(key)
    if value is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    return value.to(device).bool()


def _detect(model, enc: ImageEncoding, queries: Tensor, mask: Tensor | None, post: bool):
    """Training detector pass: random skip connection, raw (unclipped) boxes."""
    return model.detect_prompts(enc, queries, mask, clip_boxes=False, use_post_decoder=post, skip_roi_pool=None)


# ------------------------------------------------------------------------------------------ sentences
def sentence_supervisor(model, enc: ImageEncoding, batch: dict, w: LossWeights, opt: SupervisionOptions) -> LossTerms:
    """Report sentences as queries: global and sentence<->region contrastive, MSE and generation."""
    device = enc.patch_features.device
    sentences = batch.get("sentences") or []
    has = batch.get("has_sentences")
    keep = [i for i, s in enumerate(sentences) if s and (has is None or bool(has[i]))]
    terms = LossTerms()
    if not keep:
        return terms
    texts = [sentences[i] for i in keep]
    padded, mask = _padded_embeddings(model, texts, device)  # (N', S, d), (N', S)
    sub = enc.select(torch.tensor(keep, device=device))
    regions = _detect(model, sub, padded, mask, opt.use_post_decoder).box_features  # (N', S, d)

    def global_contrastive() -> Tensor:
        img = sub.patch_features.flatten(1, 2).mean(dim=1)
        txt = (padded * mask[..., None]).sum(dim=1) / (mask.sum(dim=1, keepdim=True) + 1e-7)
        return global_contrastive_loss(img, txt, tau=opt.global_tau)

    terms.weigh("l_sent/global_contr", w.global_contrastive, global_contrastive)
    terms.weigh("l_sent/sent_contr", w.sentence_contrastive,
                lambda: sentence_region_contrastive_loss(padded, regions, mask, tau=opt.sentence_tau))
    terms.weigh("l_sent/sent_mse", w.sentence_mse, lambda: masked_mse_loss(padded, regions, mask))
    if w.sentence_generation:
        flat = [s for t in texts for s in t]
        terms.add_generation("l_sent/sent_gen", w.sentence_generation,
                             generation_call(regions[mask], flat, opt.max_generated_sentences, opt.generation_sampling))
    terms.note_sum("l_sent/total_sent", SENTENCE_TERMS)
    return terms


def _padded_embeddings(model, texts: list[list[str]], device) -> tuple[Tensor, Tensor]:
    """Sentence embeddings of N' reports, zero-padded: (N', S_max, d) and the mask (N', S_max) of real ones."""
    emb = model.encode_sentences([s for t in texts for s in t]).to(device)  # (sum S_i, d)
    padded = torch.zeros(len(texts), max(len(t) for t in texts), emb.shape[-1], device=device)
    mask = torch.zeros(padded.shape[:2], dtype=torch.bool, device=device)
    start = 0
    for row, t in enumerate(texts):
        padded[row, : len(t)] = emb[start:start + len(t)]
        mask[row, : len(t)] = True
        start += len(t)
    return padded, mask


def _positions(index: Tensor, size: int) -> Tensor:
    """(size,) position of each entry in `index` (its row or column in a selected block), -1 if absent."""
    where = torch.full((size,), -1, dtype=torch.long, device=index.device)
    where[index] = torch.arange(index.numel(), device=index.device)
    return where


# ------------------------------------------------------------------------------------------ anatomy
@dataclass
class AnatomySelection:
    """Which samples (N) and anatomies (A) enter each anatomy loss.

    Detection: the samples with a box of a `selected` (subsampled) anatomy or of a multi-box
    anatomy; classification (`labels` set): the samples with a label; phrase MSE and generation
    (`has_text` set): the selected anatomies of samples with boxes that have phrases. The detector
    runs once on `sample_idx` x `anat_idx`, the union of all of them.
    """

    boxes: Tensor  # (N, A, 4) target boxes
    present: Tensor  # (N, A) bool: the anatomy is in the image
    has_boxes: Tensor  # (N, A) bool: the sample's dataset has its box
    selected: Tensor  # (A) bool
    mode: str  # token | bbox: region features from the detector, or pooled from the target boxes
    has_multi: Tensor  # (N, G) bool: multi-box targets (token mode)
    multi_sel: Tensor  # (G) bool: multi-box anatomies queried (never subsampled)
    samples_with_boxes: Tensor  # (N) bool
    sample_idx: Tensor  # (N') rows of the detector pass
    anat_idx: Tensor  # (A') anatomy queries of the detector pass
    labels: Tensor | None = None  # (N, A, C) region labels, when classifying
    has_labels: Tensor | None = None  # (N, A, C) bool
    has_text: Tensor | None = None  # (N, A) bool, when describing


def select_anatomies(batch: dict, w: LossWeights, opt: SupervisionOptions, multi_names: PromptBank | None,
                     classify: bool, device) -> AnatomySelection | None:
    """The anatomy supervisor's selection (None when nothing is left to query)."""
    boxes = batch["target_anat_boxes"].to(device)
    n, a = boxes.shape[:2]
    has_boxes = _flag(batch, "has_anatomy_bboxes", (n, a), device)
    selected = expected_count_subsample(has_boxes.any(dim=0), opt.anatomy_box_subsample)  # (A)
    mode = opt.anatomy_region_mode
    if mode == "random":
        mode = "token" if bool(torch.rand(()) < 0.5) else "bbox"
    multiboxes = batch.get("target_anat_multiboxes")
    if mode == "token" and opt.use_multiboxes and multi_names is not None and multiboxes is not None:
        has_multi = _flag(batch, "has_anatomy_multiboxes", tuple(multiboxes.shape[:2]), device)
    else:
        has_multi = torch.zeros(n, 0, dtype=torch.bool, device=device)
    multi_sel = has_multi.any(dim=0)
    with_boxes = (has_boxes & selected).any(dim=1) | (has_multi & multi_sel).any(dim=1)  # (N)
    sel = AnatomySelection(boxes, batch["target_anat_present_masks"].to(device).bool(), has_boxes, selected, mode,
                           has_multi, multi_sel, with_boxes, sample_idx=with_boxes, anat_idx=selected)
    if classify:
        sel.labels = batch["target_anat_cls_labels"].to(device)
        sel.has_labels = _flag(batch, "has_anatomy_class_labels", tuple(sel.labels.shape), device)
    if bool(w.anatomy_mse or w.anatomy_generation) and batch.get("target_anat_sentences") is not None:
        sel.has_text = _flag(batch, "has_anatomy_sentences", (n, a), device) & selected & with_boxes[:, None]
    relevant, relevant_samples = selected.clone(), with_boxes.clone()
    if classify:
        relevant |= sel.has_labels.any(dim=2).any(dim=0)
        relevant_samples |= sel.has_labels.any(dim=2).any(dim=1)
    sel.sample_idx, sel.anat_idx = relevant_samples.nonzero().squeeze(1), relevant.nonzero().squeeze(1)
    if sel.sample_idx.numel() == 0 or sel.anat_idx.numel() == 0:
        return None
    return sel


def _anatomy_phrase_targets(model, phrases: list[list[list[str]]], samples: list[int], anat: list[int], device):
    """Mean phrase embedding per (sample, anatomy): (N', A', d) and mask (N', A') of 'has a phrase'."""
    d = model.cfg.text.output_dim
    target = torch.zeros(len(samples), len(anat), d, device=device)
    mask = torch.zeros(len(samples), len(anat), dtype=torch.bool, device=device)
    flat = [p for n in samples for a in anat for p in phrases[n][a]]
    if not flat:
        return target, mask
    emb = model.encode_sentences(flat).to(device)
    start = 0
    for i, n in enumerate(samples):
        for j, a in enumerate(anat):
            k = len(phrases[n][a])
            if k:
                target[i, j] = emb[start:start + k].mean(dim=0)
                mask[i, j] = True
                start += k
    return target, mask


def _anatomy_region_features(model, sub: ImageEncoding, mode: str, opt: SupervisionOptions, anatomy: PromptBank,
                             anat_idx: Tensor, multi: PromptBank | None, multi_sel: Tensor, boxes: Tensor):
    """Region features (N', A', d) of the anatomies `anat_idx` and, in token mode, the detector output
    (the multi-box anatomies `multi_sel` are queried after them); None in bbox mode.

    bbox mode pools the target boxes (N', A', 4); absent anatomies keep their zero box, which the
    reference encodes like any box (its features reach the anatomy MSE, which ignores the present mask).
    """
    device = sub.patch_features.device
    if mode == "token":
        queries = anatomy.embed(model, opt.randomize_prompts)[anat_idx.cpu()].to(device)
        if bool(multi_sel.any()):
            mq = multi.embed(model, opt.randomize_prompts)[multi_sel.cpu()].to(device)
            queries = torch.cat([queries, mq], dim=0)
        out = _detect(model, sub, queries, None, opt.use_post_decoder)
        return out.box_features[:, : anat_idx.numel()], out
    feats = model.detector.encode_regions(sub, boxes)
    if opt.use_post_decoder and model.post_decoder is not None:
        feats = model.post_decoder.refine_regions(feats, sub, None)
    return feats, None


def _anatomy_texts(phrases: list[list[list[str]]], rows: list[int], cols: list[int],
                   wanted: Tensor) -> tuple[Tensor, list[str]]:
    """Generation targets: each anatomy's phrases joined with a space, where `wanted` (R, C) and the
    text is not empty -> (mask (R, C), the texts of the masked cells in row-major order)."""
    texts = [[" ".join(phrases[r][c]) for c in cols] for r in rows]
    nonempty = torch.tensor([[bool(t.strip()) for t in row] for row in texts], dtype=torch.bool,
                            device=wanted.device).view(len(rows), len(cols))
    mask = wanted & nonempty
    return mask, [t for row, ok_row in zip(texts, mask.tolist()) for t, ok in zip(row, ok_row) if ok]


def anatomy_supervisor(model, enc: ImageEncoding, batch: dict, w: LossWeights, opt: SupervisionOptions,
                       anatomy: PromptBank, multi: PromptBank | None, pos: PromptBank | None,
                       neg: PromptBank | None, coeffs: BoxCoefficients = BoxCoefficients()) -> LossTerms:
    """Anatomy prompts as queries: box detection (stage 1), region classification, phrase MSE and generation
    (docs/training.md#anatomy-supervisor). The MSE scores every anatomy with a phrase, present or
    not; generation only present ones."""
    terms = LossTerms()
    if batch.get("target_anat_boxes") is None or len(anatomy.names) == 0:
        return terms
    classify = w.anatomy_classification > 0 and batch.get("target_anat_cls_labels") is not None and pos is not None
    sel = select_anatomies(batch, w, opt, multi, classify, enc.patch_features.device)
    if sel is None:
        return terms
    feats, out = _anatomy_region_features(model, enc.select(sel.sample_idx), sel.mode, opt, anatomy, sel.anat_idx,
                                          multi, sel.multi_sel, sel.boxes[sel.sample_idx][:, sel.anat_idx])
    n, a = sel.boxes.shape[:2]
    row_of, col_of = _positions(sel.sample_idx, n), _positions(sel.anat_idx, a)  # -> row / column of `feats`
    if w.anatomy_detection and out is not None:
        _anatomy_detection(terms, batch, sel, out, row_of, col_of, _zero(feats), w.anatomy_detection, coeffs)
    if sel.labels is not None:
        terms.add("l_anat/anat_cls", w.anatomy_classification,
                  _anatomy_classification(model, sel, feats, row_of, col_of, pos, neg, opt))
    if sel.has_text is not None:
        _anatomy_description(terms, model, batch["target_anat_sentences"], sel, feats, row_of, col_of, w, opt)
    return terms


def _anatomy_detection(terms: LossTerms, batch: dict, sel: AnatomySelection, out, row_of: Tensor, col_of: Tensor,
                       zero: Tensor, coeff: float, coeffs: BoxCoefficients) -> None:
    """`l_anat/anat_det`: single-box anatomies regress every region box to the target, multi-box
    anatomies are matched (docs/training.md#anatomy-detection)."""
    rows = row_of[sel.samples_with_boxes]
    with_boxes, chosen = sel.samples_with_boxes, sel.selected
    t_present = (sel.present & sel.has_boxes)[with_boxes][:, chosen]
    s_sum, s_count = single_box_loss(out.multiboxes[rows][:, col_of[chosen]], sel.boxes[with_boxes][:, chosen],
                                     t_present, coeffs)
    m_sum, m_count = zero, 0
    if bool(sel.multi_sel.any()):
        device, q_a = zero.device, sel.anat_idx.numel()
        mb = batch["target_anat_multiboxes"].to(device)[with_boxes][:, sel.multi_sel]
        mm = batch["target_anat_multiboxes_masks"].to(device).bool()[with_boxes][:, sel.multi_sel]
        mm = mm & sel.has_multi[with_boxes][:, sel.multi_sel][..., None]
        m_sum, m_count = multi_box_loss(out.multiboxes[rows][:, q_a:], out.multiboxes_weights[rows][:, q_a:], mb, mm,
                                        coeffs)
    terms.add("l_anat/anat_det", coeff, (s_sum + m_sum) / max(1, s_count + m_count))
    terms.note("l_anat/anat_single", s_sum / max(1, s_count))
    terms.note("l_anat/anat_multi", m_sum / max(1, m_count))


def _anatomy_classification(model, sel: AnatomySelection, feats: Tensor, row_of: Tensor, col_of: Tensor,
                            pos: PromptBank, neg: PromptBank, opt: SupervisionOptions) -> Tensor:
    """Region features of the labelled samples and anatomies against both prompts of each labelled class."""
    samples, anatomies = sel.has_labels.any(dim=2).any(dim=1), sel.has_labels.any(dim=2).any(dim=0)
    cls_idx = sel.has_labels.any(dim=1).any(dim=0).nonzero().squeeze(1)
    f = feats[row_of[samples]][:, col_of[anatomies]]
    lab = sel.labels[samples][:, anatomies][:, :, cls_idx]
    valid = (sel.has_labels[samples][:, anatomies][:, :, cls_idx] & sel.present[samples][:, anatomies][:, :, None])
    p = pos.embed(model, opt.randomize_prompts)[cls_idx.cpu()].to(feats.device)
    q = neg.embed(model, opt.randomize_prompts)[cls_idx.cpu()].to(feats.device)
    return anatomy_classification_loss(f, p, q, lab, valid, tau=opt.anatomy_cls_tau,
                                       n_negatives=opt.anatomy_cls_negatives)


def _anatomy_description(terms: LossTerms, model, phrases: list[list[list[str]]], sel: AnatomySelection,
                         feats: Tensor, row_of: Tensor, col_of: Tensor, w: LossWeights,
                         opt: SupervisionOptions) -> None:
    """`l_anat/sent_mse` (region feature vs mean phrase embedding) and `l_anat/anat_gen` (the phrases
    generated from the region feature) of the anatomies that have phrases."""
    text_rows, text_cols = sel.has_text.any(dim=1), sel.has_text.any(dim=0)
    f = feats[row_of[text_rows]][:, col_of[text_cols]]  # (N'', A'', d)
    row_list = text_rows.nonzero().squeeze(1).tolist()
    col_list = text_cols.nonzero().squeeze(1).tolist()
    target, has_phrase = _anatomy_phrase_targets(model, phrases, row_list, col_list, feats.device)
    terms.weigh("l_anat/sent_mse", w.anatomy_mse, lambda: masked_mse_loss(target, f, has_phrase))
    if w.anatomy_generation:
        wanted = (sel.has_text & sel.present)[text_rows][:, text_cols]
        gen_mask, flat = _anatomy_texts(phrases, row_list, col_list, wanted)
        terms.add_generation("l_anat/anat_gen", w.anatomy_generation,
                             generation_call(f[gen_mask], flat, opt.max_generated_sentences, opt.generation_sampling))


# ------------------------------------------------------------------------------------------ pathology
@dataclass
class PathologySelection:
    """The classes queried for detection (`box_cls`, (C)) and classification (`label_cls`, (C)),
    each subsampled among the classes with boxes / labels in the batch, and the samples
    (`sample_idx`) with a box or label of one of them; `has_boxes`, `has_labels` (N, C)."""

    has_boxes: Tensor
    has_labels: Tensor
    box_cls: Tensor
    label_cls: Tensor
    sample_idx: Tensor
    query_idx: Tensor


def select_pathologies(batch: dict, w: LossWeights, opt: SupervisionOptions, c: int,
                       device) -> PathologySelection | None:
    """Samples without `has_class_labels` but with `target_cls_labels` count as labelled for every
    class (the reference's rule for single-dataset batches)."""
    n = len(batch["x"])
    none = torch.zeros(n, c, dtype=torch.bool, device=device)
    has_boxes = _flag(batch, "has_class_bboxes", (n, c), device) if batch.get("has_class_bboxes") is not None else none
    has_labels = (_flag(batch, "has_class_labels", (n, c), device)
                  if batch.get("has_class_labels") is not None or batch.get("target_cls_labels") is not None else none)
    box_cls = (expected_count_subsample(has_boxes.any(dim=0), opt.pathology_box_subsample)
               if w.pathology_detection and bool(has_boxes.any()) else torch.zeros(c, dtype=torch.bool, device=device))
    label_cls = (expected_count_subsample(has_labels.any(dim=0), opt.pathology_label_subsample)
                 if w.pathology_classification and bool(has_labels.any())
                 else torch.zeros(c, dtype=torch.bool, device=device))
    samples = ((has_boxes & box_cls) | (has_labels & label_cls)).any(dim=1)
    sel = PathologySelection(has_boxes, has_labels, box_cls, label_cls, samples.nonzero().squeeze(1),
                             (box_cls | label_cls).nonzero().squeeze(1))
    return None if sel.sample_idx.numel() == 0 or sel.query_idx.numel() == 0 else sel


def pathology_supervisor(model, enc: ImageEncoding, batch: dict, w: LossWeights, opt: SupervisionOptions,
                         pos: PromptBank, neg: PromptBank, coeffs: BoxCoefficients = BoxCoefficients()) -> LossTerms:
    """Pathology prompts as queries (stage 1): matched box detection + weight focal loss, classification
    (docs/training.md#pathology-supervisor)."""
    device = enc.patch_features.device
    terms = LossTerms()
    sel = select_pathologies(batch, w, opt, len(pos.names), device)
    if sel is None:
        return terms
    p_all = pos.embed(model, opt.randomize_prompts).to(device)
    n_all = neg.embed(model, opt.randomize_prompts).to(device)
    out = _detect(model, enc.select(sel.sample_idx), p_all[sel.query_idx], None, False)
    col = _positions(sel.query_idx, len(pos.names))
    if w.pathology_detection and bool(sel.box_cls.any()):
        res = _pathology_detection(batch, sel, out, col, p_all, n_all, coeffs)
        # total = box_loss + weights coefficient x weights_loss, scaled by the detection coefficient
        terms.add("l_cls/box_loss", w.pathology_detection, res["box_loss"])
        terms.add("l_cls/weights_loss", w.pathology_detection * coeffs.weights, res["weights_loss"])
        terms.note("l_cls/patho_detect", res["total"])
    if w.pathology_classification and bool(sel.label_cls.any()):
        l_idx = sel.label_cls.nonzero().squeeze(1)
        labels = batch["target_cls_labels"].to(device)[sel.sample_idx][:, l_idx]
        terms.add("l_cls/patho_cls", w.pathology_classification,
                  pathology_classification_loss(out.box_features[:, col[l_idx]], p_all[l_idx], n_all[l_idx], labels,
                                                sel.has_labels[sel.sample_idx][:, l_idx], tau=opt.pathology_cls_tau))
    return terms


def _pathology_detection(batch: dict, sel: PathologySelection, out, col: Tensor, p_all: Tensor, n_all: Tensor,
                         coeffs: BoxCoefficients) -> dict[str, Tensor]:
    """Detection losses of the box classes. Only the samples that flag a box class enter the loss
    means and the focal alpha (a sample with image labels but no boxes is not a sample "without
    findings" here)."""
    b_idx = sel.box_cls.nonzero().squeeze(1)
    cols = col[b_idx]
    rows = (sel.has_boxes[sel.sample_idx] & sel.box_cls).any(dim=1)  # (N')
    det_idx = sel.sample_idx[rows]
    target, tmask = _class_box_targets(batch, det_idx, b_idx)
    feats = out.multiboxes_features[rows][:, cols]  # (N_b, Cb, R, d)
    logits = torch.stack([(feats * p_all[b_idx][None, :, None]).sum(-1),
                          (feats * n_all[b_idx][None, :, None]).sum(-1)], dim=-1)
    cls_prob = logits.float().softmax(dim=-1)[..., 0]
    return pathology_detection_loss(out.multiboxes[rows][:, cols], out.multiboxes_weights[rows][:, cols], cls_prob,
                                    target, tmask, sel.has_boxes[det_idx][:, b_idx], coeffs=coeffs)


def _class_box_targets(batch: dict, det_idx: Tensor, b_idx: Tensor) -> tuple[Tensor, Tensor]:
    """Target boxes (N_b, Cb, M, 4) and their mask (N_b, Cb, M) of the classes `b_idx` (padded per
    class id in the batch's `class_ids_with_boxes` order)."""
    device = det_idx.device
    ids_with_boxes = batch["class_ids_with_boxes"].to(device)
    padded = batch["target_cls_boxes_padded"].to(device)[det_idx]
    pmask = batch["target_cls_boxes_mask"].to(device).bool()[det_idx]
    target = torch.zeros(det_idx.numel(), b_idx.numel(), padded.shape[2], 4, device=device)
    tmask = torch.zeros(det_idx.numel(), b_idx.numel(), padded.shape[2], dtype=torch.bool, device=device)
    lookup = {int(k): j for j, k in enumerate(ids_with_boxes.tolist())}
    for j, cls in enumerate(b_idx.tolist()):
        if cls in lookup:
            target[:, j] = padded[:, lookup[cls], :, :4]
            tmask[:, j] = pmask[:, lookup[cls]]
    return target, tmask


__all__ = ["AnatomySelection", "LossTerms", "LossWeights", "PathologySelection", "SENTENCE_TERMS",
           "SupervisionOptions", "anatomy_supervisor", "pathology_supervisor", "select_anatomies",
           "select_pathologies", "sentence_supervisor"]
