"""The three supervisors of ChEX training (TRAINING.md §7): sentence, anatomy and pathology tokens.

Each supervisor takes the model, the batch's image encoding and the batch,
runs its own detector pass on its own samples and queries, and returns
`(weighted loss, {sub-loss name: float})`. Sub-loss names follow TRAINING.md
§10.4 (`l_sent/...`, `l_anat/...`, `l_cls/...`); values are unweighted.
Batch fields and shapes: TRAINING.md §4.3 (N samples, A anatomies, C classes,
R regions per query, d model width).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from chexcli.model.detector import ImageEncoding
from chexcli.train.generation import sentence_generation_loss
from chexcli.train.losses import (anatomy_classification_loss, expected_count_subsample, global_contrastive_loss,
                                  masked_mse_loss, multi_box_loss, pathology_classification_loss,
                                  pathology_detection_loss, sentence_region_contrastive_loss, single_box_loss)
from chexcli.train.prompts import PromptBank


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
def sentence_supervisor(model, enc: ImageEncoding, batch: dict, w: LossWeights, opt: SupervisionOptions):
    """Report sentences as queries: global and sentence<->region contrastive, MSE and generation."""
    device = enc.patch_features.device
    sentences = batch.get("sentences") or []
    has = batch.get("has_sentences")
    keep = [i for i, s in enumerate(sentences) if s and (has is None or bool(has[i]))]
    metrics: dict[str, float] = {}
    if not keep:
        return _zero(enc.patch_features), metrics
    texts = [sentences[i] for i in keep]
    s_max = max(len(t) for t in texts)
    flat = [s for t in texts for s in t]
    emb = model.encode_sentences(flat).to(device)  # (sum S_i, d)
    d = emb.shape[-1]
    padded = torch.zeros(len(keep), s_max, d, device=device)
    mask = torch.zeros(len(keep), s_max, dtype=torch.bool, device=device)
    start = 0
    for row, t in enumerate(texts):
        padded[row, : len(t)] = emb[start:start + len(t)]
        mask[row, : len(t)] = True
        start += len(t)
    sub = enc.select(torch.tensor(keep, device=device))
    out = _detect(model, sub, padded, mask, opt.use_post_decoder)
    regions = out.box_features  # (N', S, d)

    total = _zero(regions)
    if w.global_contrastive:
        img = sub.patch_features.flatten(1, 2).mean(dim=1)
        txt = (padded * mask[..., None]).sum(dim=1) / (mask.sum(dim=1, keepdim=True) + 1e-7)
        loss = global_contrastive_loss(img, txt, tau=opt.global_tau)
        metrics["l_sent/global_contr"] = float(loss.detach())
        total = total + w.global_contrastive * loss
    if w.sentence_contrastive:
        loss = sentence_region_contrastive_loss(padded, regions, mask, tau=opt.sentence_tau)
        metrics["l_sent/sent_contr"] = float(loss.detach())
        total = total + w.sentence_contrastive * loss
    if w.sentence_mse:
        loss = masked_mse_loss(padded, regions, mask)
        metrics["l_sent/sent_mse"] = float(loss.detach())
        total = total + w.sentence_mse * loss
    if w.sentence_generation:
        loss = sentence_generation_loss(model, regions[mask], flat, opt.max_generated_sentences,
                                        opt.generation_include_padding, opt.generation_keep_end_token,
                                        opt.generation_sampling)
        metrics["l_sent/sent_gen"] = float(loss.detach())
        total = total + w.sentence_generation * loss
    metrics["l_sent/total_sent"] = float(total.detach())
    return total, metrics


# ------------------------------------------------------------------------------------------ anatomy
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


def anatomy_supervisor(model, enc: ImageEncoding, batch: dict, w: LossWeights, opt: SupervisionOptions,
                       anatomy: PromptBank, multi: PromptBank | None, pos: PromptBank | None,
                       neg: PromptBank | None):
    """Anatomy prompts as queries: box detection (stage 1), region classification, phrase MSE and generation."""
    device = enc.patch_features.device
    metrics: dict[str, float] = {}
    boxes = batch.get("target_anat_boxes")
    if boxes is None or len(anatomy.names) == 0:
        return _zero(enc.patch_features), metrics
    boxes = boxes.to(device)
    n, a = boxes.shape[:2]
    present = batch["target_anat_present_masks"].to(device).bool()
    has_boxes = _flag(batch, "has_anatomy_bboxes", (n, a), device)
    selected = expected_count_subsample(has_boxes.any(dim=0), opt.anatomy_box_subsample)  # (A)
    samples_with_boxes = has_boxes[:, selected].any(dim=1)  # (N)

    mode = opt.anatomy_region_mode
    if mode == "random":
        mode = "token" if bool(torch.rand(()) < 0.5) else "bbox"
    use_multi = (mode == "token" and opt.use_multiboxes and multi is not None and w.anatomy_detection > 0
                 and batch.get("target_anat_multiboxes") is not None)
    multi_sel = torch.zeros(0, dtype=torch.bool, device=device)
    if use_multi:
        g = batch["target_anat_multiboxes"].shape[1]
        multi_sel = _flag(batch, "has_anatomy_multiboxes", (n, g), device).any(dim=0)

    classify = w.anatomy_classification > 0 and batch.get("target_anat_cls_labels") is not None and pos is not None
    relevant = selected.clone()
    relevant_samples = samples_with_boxes.clone()
    if classify:
        labels = batch["target_anat_cls_labels"].to(device)
        has_labels = _flag(batch, "has_anatomy_class_labels", tuple(labels.shape), device)
        label_anat = has_labels.any(dim=2).any(dim=0)
        label_cls = has_labels.any(dim=1).any(dim=0)
        relevant |= label_anat
        relevant_samples |= has_labels.any(dim=2).any(dim=1)
    sample_idx = relevant_samples.nonzero().squeeze(1)
    anat_idx = relevant.nonzero().squeeze(1)
    if sample_idx.numel() == 0 or anat_idx.numel() == 0:
        return _zero(enc.patch_features), metrics
    sub = enc.select(sample_idx)

    # region features of the relevant anatomies (and the multi-box anatomies in token mode)
    if mode == "token":
        queries = anatomy.embed(model, opt.randomize_prompts)[anat_idx.cpu()].to(device)
        if use_multi and bool(multi_sel.any()):
            mq = multi.embed(model, opt.randomize_prompts)[multi_sel.cpu()].to(device)
            queries = torch.cat([queries, mq], dim=0)
        out = _detect(model, sub, queries, None, opt.use_post_decoder)
        feats = out.box_features[:, : anat_idx.numel()]
    else:
        # absent anatomies keep their zero target box: the reference encodes it like any box (its
        # features reach the anatomy MSE, which ignores the present mask)
        feats = model.detector.encode_regions(sub, boxes[sample_idx][:, anat_idx])
        if opt.use_post_decoder and model.post_decoder is not None:
            feats = model.post_decoder.refine_regions(feats, sub, None)
        out = None

    pos_in_relevant = torch.full((a,), -1, dtype=torch.long, device=device)
    pos_in_relevant[anat_idx] = torch.arange(anat_idx.numel(), device=device)
    sel_cols = pos_in_relevant[selected]  # columns of the selected anatomies in `feats`
    sel_rows = samples_with_boxes[sample_idx]  # rows of samples with boxes
    total = _zero(feats)

    if w.anatomy_detection and out is not None:
        t_boxes = boxes[sample_idx][:, selected]
        t_present = (present & has_boxes)[sample_idx][:, selected] & sel_rows[:, None]
        s_sum, s_count = single_box_loss(out.multiboxes[:, sel_cols], t_boxes, t_present)
        m_sum, m_count = _zero(feats), 0
        if use_multi and bool(multi_sel.any()):
            q_a = anat_idx.numel()
            mb = batch["target_anat_multiboxes"].to(device)[sample_idx][:, multi_sel]
            mm = batch["target_anat_multiboxes_masks"].to(device).bool()[sample_idx][:, multi_sel]
            has_mb = _flag(batch, "has_anatomy_multiboxes", (n, multi_sel.numel()), device)[sample_idx][:, multi_sel]
            mm = mm & has_mb[..., None]
            m_sum, m_count = multi_box_loss(out.multiboxes[:, q_a:], out.multiboxes_weights[:, q_a:], mb, mm)
        loss = (s_sum + m_sum) / max(1, s_count + m_count)
        metrics["l_anat/anat_single"] = float(s_sum.detach()) / max(1, s_count)
        metrics["l_anat/anat_multi"] = float(m_sum.detach()) / max(1, m_count)
        metrics["l_anat/anat_det"] = float(loss.detach())
        total = total + w.anatomy_detection * loss

    if classify:
        cls_idx = label_cls.nonzero().squeeze(1)
        cols = pos_in_relevant[label_anat]
        f = feats[:, cols]
        lab = labels[sample_idx][:, label_anat][:, :, cls_idx]
        valid = (has_labels[sample_idx][:, label_anat][:, :, cls_idx]
                 & present[sample_idx][:, label_anat][:, :, None])
        p = pos.embed(model, opt.randomize_prompts)[cls_idx.cpu()].to(device)
        q = neg.embed(model, opt.randomize_prompts)[cls_idx.cpu()].to(device)
        loss = anatomy_classification_loss(f, p, q, lab, valid, tau=opt.anatomy_cls_tau,
                                           n_negatives=opt.anatomy_cls_negatives)
        metrics["l_anat/anat_cls"] = float(loss.detach())
        total = total + w.anatomy_classification * loss

    if w.anatomy_mse or w.anatomy_generation:
        phrases = batch.get("target_anat_sentences")
        has_phr = _flag(batch, "has_anatomy_sentences", (n, a), device)
        rows = sample_idx[sel_rows]
        f = feats[sel_rows][:, sel_cols]  # (N'', A_sel, d)
        sel_list = selected.nonzero().squeeze(1).tolist()
        target, tmask = _anatomy_phrase_targets(model, phrases, rows.tolist(), sel_list, device)
        tmask = tmask & has_phr[rows][:, selected]
        if w.anatomy_mse:
            loss = masked_mse_loss(target, f, tmask)
            metrics["l_anat/sent_mse"] = float(loss.detach())
            total = total + w.anatomy_mse * loss
        if w.anatomy_generation:
            gen_mask = tmask & present[rows][:, selected]
            texts = [" ".join(phrases[r][c]) for r, row in zip(rows.tolist(), gen_mask.tolist())
                     for c, ok in zip(sel_list, row) if ok]
            loss = sentence_generation_loss(model, f[gen_mask], texts, opt.max_generated_sentences,
                                            opt.generation_include_padding, opt.generation_keep_end_token,
                                            opt.generation_sampling)
            metrics["l_anat/anat_gen"] = float(loss.detach())
            total = total + w.anatomy_generation * loss
    return total, metrics


# ------------------------------------------------------------------------------------------ pathology
def pathology_supervisor(model, enc: ImageEncoding, batch: dict, w: LossWeights, opt: SupervisionOptions,
                         pos: PromptBank, neg: PromptBank):
    """Pathology prompts as queries (stage 1): matched box detection + weight focal loss, classification."""
    device = enc.patch_features.device
    metrics: dict[str, float] = {}
    has_boxes = batch.get("has_class_bboxes")
    has_labels = batch.get("has_class_labels")
    if has_boxes is None and has_labels is None:
        return _zero(enc.patch_features), metrics
    n, c = len(batch["x"]), len(pos.names)
    has_boxes = _flag(batch, "has_class_bboxes", (n, c), device) if has_boxes is not None else \
        torch.zeros(n, c, dtype=torch.bool, device=device)
    has_labels = _flag(batch, "has_class_labels", (n, c), device) if has_labels is not None else \
        torch.zeros(n, c, dtype=torch.bool, device=device)
    box_cls = (expected_count_subsample(has_boxes.any(dim=0), opt.pathology_box_subsample)
               if w.pathology_detection and bool(has_boxes.any()) else torch.zeros(c, dtype=torch.bool, device=device))
    label_cls = (expected_count_subsample(has_labels.any(dim=0), opt.pathology_label_subsample)
                 if w.pathology_classification and bool(has_labels.any())
                 else torch.zeros(c, dtype=torch.bool, device=device))
    query_cls = box_cls | label_cls
    samples = ((has_boxes & box_cls) | (has_labels & label_cls)).any(dim=1)
    sample_idx = samples.nonzero().squeeze(1)
    q_idx = query_cls.nonzero().squeeze(1)
    if sample_idx.numel() == 0 or q_idx.numel() == 0:
        return _zero(enc.patch_features), metrics
    p_all = pos.embed(model, opt.randomize_prompts).to(device)
    n_all = neg.embed(model, opt.randomize_prompts).to(device)
    sub = enc.select(sample_idx)
    out = _detect(model, sub, p_all[q_idx], None, False)
    col = torch.full((c,), -1, dtype=torch.long, device=device)
    col[q_idx] = torch.arange(q_idx.numel(), device=device)
    total = _zero(out.box_features)

    if w.pathology_detection and bool(box_cls.any()):
        b_idx = box_cls.nonzero().squeeze(1)
        cols = col[b_idx]
        ids_with_boxes = batch["class_ids_with_boxes"].to(device)
        padded = batch["target_cls_boxes_padded"].to(device)[sample_idx]
        pmask = batch["target_cls_boxes_mask"].to(device).bool()[sample_idx]
        m = padded.shape[2]
        target = torch.zeros(sample_idx.numel(), b_idx.numel(), m, 4, device=device)
        tmask = torch.zeros(sample_idx.numel(), b_idx.numel(), m, dtype=torch.bool, device=device)
        lookup = {int(k): j for j, k in enumerate(ids_with_boxes.tolist())}
        for j, cls in enumerate(b_idx.tolist()):
            if cls in lookup:
                target[:, j] = padded[:, lookup[cls], :, :4]
                tmask[:, j] = pmask[:, lookup[cls]]
        feats = out.multiboxes_features[:, cols]  # (N', Cb, R, d)
        logits = torch.stack([(feats * p_all[b_idx][None, :, None]).sum(-1),
                              (feats * n_all[b_idx][None, :, None]).sum(-1)], dim=-1)
        cls_prob = logits.float().softmax(dim=-1)[..., 0]
        res = pathology_detection_loss(out.multiboxes[:, cols], out.multiboxes_weights[:, cols], cls_prob,
                                       target, tmask, has_boxes[sample_idx][:, b_idx])
        metrics["l_cls/box_loss"] = float(res["box_loss"].detach())
        metrics["l_cls/weights_loss"] = float(res["weights_loss"].detach())
        metrics["l_cls/patho_detect"] = float(res["total"].detach())
        total = total + w.pathology_detection * res["total"]

    if w.pathology_classification and bool(label_cls.any()):
        l_idx = label_cls.nonzero().squeeze(1)
        f = out.box_features[:, col[l_idx]]
        labels = batch["target_cls_labels"].to(device)[sample_idx][:, l_idx]
        loss = pathology_classification_loss(f, p_all[l_idx], n_all[l_idx], labels,
                                             has_labels[sample_idx][:, l_idx], tau=opt.pathology_cls_tau)
        metrics["l_cls/patho_cls"] = float(loss.detach())
        total = total + w.pathology_classification * loss
    return total, metrics
