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
from typing import Callable

import torch
from torch import Tensor

from chexcli.model.detector import ImageEncoding
from chexcli.train.generation import GenerationCall, generation_call
from chexcli.train.losses import (WEIGHTS_COEFF, anatomy_classification_loss, expected_count_subsample,
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


class LossTerms:
    """The loss terms of one training forward: the total is the sum of `coeff x value` over them.

    `add(name, coeff, value)` records a term of the total; `note(name, value)` a derived sub-loss
    that is reported beside the terms but not added (e.g. `l_anat/anat_single`). Names follow
    TRAINING.md §10.4; values are unweighted scalars. `weighted` keeps each term's `coeff x value`
    tensor (per-term gradients in the parity test); `metrics()` turns the values into floats with
    one device synchronisation.
    """

    def __init__(self):
        self.weighted: dict[str, Tensor] = {}
        self.coeffs: dict[str, float] = {}
        self._values: dict[str, Tensor] = {}
        self._floats: dict[str, float] = {}
        self._sums: dict[str, list[str]] = {}
        self.pending: dict[str, tuple[float, GenerationCall]] = {}  # generation terms, computed together

    def add(self, name: str, coeff: float, value: Tensor) -> None:
        self.weighted[name] = coeff * value
        self.coeffs[name] = coeff
        self._values[name] = value.detach()

    def note(self, name: str, value: Tensor | float) -> None:
        if isinstance(value, Tensor):
            self._values[name] = value.detach()
        else:
            self._floats[name] = float(value)

    def note_sum(self, name: str, terms: list[str]) -> None:
        """A derived sub-loss: the weighted sum of `terms` (those computed), taken at `metrics()`."""
        self._sums[name] = list(terms)

    def add_generation(self, name: str, coeff: float, call: GenerationCall) -> None:
        """A generation term, computed by `resolve_generation` with the other calls of the step."""
        self.pending[name] = (coeff, call)

    def resolve_generation(self, losses: Callable[[list[GenerationCall]], list[Tensor]]) -> None:
        """Compute every pending generation term in one generator pass (`losses` maps calls to losses)."""
        if not self.pending:
            return
        names = list(self.pending)
        for name, loss in zip(names, losses([self.pending[n][1] for n in names])):
            self.add(name, self.pending[name][0], loss)
        self.pending.clear()

    def update(self, other: "LossTerms") -> None:
        self.weighted.update(other.weighted)
        self.coeffs.update(other.coeffs)
        self._values.update(other._values)
        self._floats.update(other._floats)
        self._sums.update(other._sums)
        self.pending.update(other.pending)

    def weighted_sum(self, names: list[str] | None = None) -> Tensor | None:
        """Sum of `coeff x value` over `names` (default: every term); None without any."""
        parts = [t for n, t in self.weighted.items() if names is None or n in names]
        if not parts:
            return None
        total = parts[0]
        for t in parts[1:]:
            total = total + t
        return total

    def metrics(self) -> dict[str, float]:
        if self.pending:
            raise RuntimeError(f"generation terms not computed yet: {', '.join(self.pending)}")
        out = dict(self._floats)
        values = dict(self._values)
        for name, parts in self._sums.items():
            total = self.weighted_sum(parts)
            if total is None:
                out[name] = 0.0
            else:
                values[name] = total.detach()
        if values:
            names = list(values)
            stacked = torch.stack([values[n].float().reshape(()) for n in names]).tolist()
            out.update(zip(names, stacked))
        return out


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

    if w.global_contrastive:
        img = sub.patch_features.flatten(1, 2).mean(dim=1)
        txt = (padded * mask[..., None]).sum(dim=1) / (mask.sum(dim=1, keepdim=True) + 1e-7)
        terms.add("l_sent/global_contr", w.global_contrastive, global_contrastive_loss(img, txt, tau=opt.global_tau))
    if w.sentence_contrastive:
        terms.add("l_sent/sent_contr", w.sentence_contrastive,
                  sentence_region_contrastive_loss(padded, regions, mask, tau=opt.sentence_tau))
    if w.sentence_mse:
        terms.add("l_sent/sent_mse", w.sentence_mse, masked_mse_loss(padded, regions, mask))
    if w.sentence_generation:
        terms.add_generation("l_sent/sent_gen", w.sentence_generation,
                             generation_call(regions[mask], flat, opt.max_generated_sentences, opt.generation_sampling))
    terms.note_sum("l_sent/total_sent", SENTENCE_TERMS)
    return terms


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
                       neg: PromptBank | None) -> LossTerms:
    """Anatomy prompts as queries: box detection (stage 1), region classification, phrase MSE and generation.

    Which samples and anatomies enter each loss follows the reference (TRAINING.md §7.2): detection
    uses the samples with a box of a selected anatomy; classification the samples with a label;
    MSE and generation the selected anatomies of samples with boxes that have phrases (the MSE
    scores every anatomy with a phrase, present or not; generation only present ones).
    """
    device = enc.patch_features.device
    terms = LossTerms()
    boxes = batch.get("target_anat_boxes")
    if boxes is None or len(anatomy.names) == 0:
        return terms
    boxes = boxes.to(device)
    n, a = boxes.shape[:2]
    present = batch["target_anat_present_masks"].to(device).bool()
    has_boxes = _flag(batch, "has_anatomy_bboxes", (n, a), device)
    selected = expected_count_subsample(has_boxes.any(dim=0), opt.anatomy_box_subsample)  # (A)

    mode = opt.anatomy_region_mode
    if mode == "random":
        mode = "token" if bool(torch.rand(()) < 0.5) else "bbox"
    use_multi = (mode == "token" and opt.use_multiboxes and multi is not None
                 and batch.get("target_anat_multiboxes") is not None)
    if use_multi:
        has_multi = _flag(batch, "has_anatomy_multiboxes", tuple(batch["target_anat_multiboxes"].shape[:2]), device)
    else:
        has_multi = torch.zeros(n, 0, dtype=torch.bool, device=device)
    multi_sel = has_multi.any(dim=0)  # (G) multi-box anatomies are never subsampled
    samples_with_boxes = (has_boxes & selected).any(dim=1) | (has_multi & multi_sel).any(dim=1)  # (N)

    relevant = selected.clone()
    relevant_samples = samples_with_boxes.clone()
    classify = w.anatomy_classification > 0 and batch.get("target_anat_cls_labels") is not None and pos is not None
    if classify:
        labels = batch["target_anat_cls_labels"].to(device)
        has_labels = _flag(batch, "has_anatomy_class_labels", tuple(labels.shape), device)
        label_anat = has_labels.any(dim=2).any(dim=0)  # (A)
        label_cls = has_labels.any(dim=1).any(dim=0)  # (C)
        samples_with_labels = has_labels.any(dim=2).any(dim=1)  # (N)
        relevant |= label_anat
        relevant_samples |= samples_with_labels
    phrases = batch.get("target_anat_sentences")
    describe = bool(w.anatomy_mse or w.anatomy_generation) and phrases is not None
    if describe:
        has_text = _flag(batch, "has_anatomy_sentences", (n, a), device) & selected & samples_with_boxes[:, None]
        text_rows, text_cols = has_text.any(dim=1), has_text.any(dim=0)
    sample_idx = relevant_samples.nonzero().squeeze(1)
    anat_idx = relevant.nonzero().squeeze(1)
    if sample_idx.numel() == 0 or anat_idx.numel() == 0:
        return terms
    sub = enc.select(sample_idx)

    feats, out = _anatomy_region_features(model, sub, mode, opt, anatomy, anat_idx, multi, multi_sel,
                                          boxes[sample_idx][:, anat_idx])

    row_of = torch.full((n,), -1, dtype=torch.long, device=device)  # sample -> row of `feats`
    row_of[sample_idx] = torch.arange(sample_idx.numel(), device=device)
    col_of = torch.full((a,), -1, dtype=torch.long, device=device)  # anatomy -> column of `feats`
    col_of[anat_idx] = torch.arange(anat_idx.numel(), device=device)

    if w.anatomy_detection and out is not None:
        rows = row_of[samples_with_boxes]
        t_boxes = boxes[samples_with_boxes][:, selected]
        t_present = (present & has_boxes)[samples_with_boxes][:, selected]
        s_sum, s_count = single_box_loss(out.multiboxes[rows][:, col_of[selected]], t_boxes, t_present)
        m_sum, m_count = _zero(feats), 0
        if bool(multi_sel.any()):
            q_a = anat_idx.numel()
            mb = batch["target_anat_multiboxes"].to(device)[samples_with_boxes][:, multi_sel]
            mm = batch["target_anat_multiboxes_masks"].to(device).bool()[samples_with_boxes][:, multi_sel]
            mm = mm & has_multi[samples_with_boxes][:, multi_sel][..., None]
            m_sum, m_count = multi_box_loss(out.multiboxes[rows][:, q_a:], out.multiboxes_weights[rows][:, q_a:],
                                            mb, mm)
        terms.add("l_anat/anat_det", w.anatomy_detection, (s_sum + m_sum) / max(1, s_count + m_count))
        terms.note("l_anat/anat_single", s_sum / max(1, s_count))
        terms.note("l_anat/anat_multi", m_sum / max(1, m_count))

    if classify:
        cls_idx = label_cls.nonzero().squeeze(1)
        f = feats[row_of[samples_with_labels]][:, col_of[label_anat]]
        lab = labels[samples_with_labels][:, label_anat][:, :, cls_idx]
        valid = (has_labels[samples_with_labels][:, label_anat][:, :, cls_idx]
                 & present[samples_with_labels][:, label_anat][:, :, None])
        p = pos.embed(model, opt.randomize_prompts)[cls_idx.cpu()].to(device)
        q = neg.embed(model, opt.randomize_prompts)[cls_idx.cpu()].to(device)
        terms.add("l_anat/anat_cls", w.anatomy_classification,
                  anatomy_classification_loss(f, p, q, lab, valid, tau=opt.anatomy_cls_tau,
                                              n_negatives=opt.anatomy_cls_negatives))

    if describe:
        f = feats[row_of[text_rows]][:, col_of[text_cols]]  # (N'', A'', d)
        row_list = text_rows.nonzero().squeeze(1).tolist()
        col_list = text_cols.nonzero().squeeze(1).tolist()
        target, has_phrase = _anatomy_phrase_targets(model, phrases, row_list, col_list, device)
        if w.anatomy_mse:
            terms.add("l_anat/sent_mse", w.anatomy_mse, masked_mse_loss(target, f, has_phrase))
        if w.anatomy_generation:
            gen_mask, flat = _anatomy_texts(phrases, row_list, col_list, (has_text & present)[text_rows][:, text_cols])
            terms.add_generation("l_anat/anat_gen", w.anatomy_generation,
                                 generation_call(f[gen_mask], flat, opt.max_generated_sentences,
                                                 opt.generation_sampling))
    return terms


# ------------------------------------------------------------------------------------------ pathology
def pathology_supervisor(model, enc: ImageEncoding, batch: dict, w: LossWeights, opt: SupervisionOptions,
                         pos: PromptBank, neg: PromptBank) -> LossTerms:
    """Pathology prompts as queries (stage 1): matched box detection + weight focal loss, classification.

    Samples without `has_class_labels` but with `target_cls_labels` count as labelled for every
    class (the reference's rule for single-dataset batches).
    """
    device = enc.patch_features.device
    terms = LossTerms()
    n, c = len(batch["x"]), len(pos.names)
    none = torch.zeros(n, c, dtype=torch.bool, device=device)
    has_boxes = _flag(batch, "has_class_bboxes", (n, c), device) if batch.get("has_class_bboxes") is not None else none
    has_labels = (_flag(batch, "has_class_labels", (n, c), device)
                  if batch.get("has_class_labels") is not None or batch.get("target_cls_labels") is not None else none)
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
        return terms
    p_all = pos.embed(model, opt.randomize_prompts).to(device)
    n_all = neg.embed(model, opt.randomize_prompts).to(device)
    sub = enc.select(sample_idx)
    out = _detect(model, sub, p_all[q_idx], None, False)
    col = torch.full((c,), -1, dtype=torch.long, device=device)
    col[q_idx] = torch.arange(q_idx.numel(), device=device)

    if w.pathology_detection and bool(box_cls.any()):
        b_idx = box_cls.nonzero().squeeze(1)
        cols = col[b_idx]
        # only the samples that flag a box class enter the loss means and the focal alpha (a sample
        # with image labels but no boxes is not a sample "without findings" here)
        rows = (has_boxes[sample_idx] & box_cls).any(dim=1)  # (N')
        det_idx = sample_idx[rows]
        ids_with_boxes = batch["class_ids_with_boxes"].to(device)
        padded = batch["target_cls_boxes_padded"].to(device)[det_idx]
        pmask = batch["target_cls_boxes_mask"].to(device).bool()[det_idx]
        m = padded.shape[2]
        target = torch.zeros(det_idx.numel(), b_idx.numel(), m, 4, device=device)
        tmask = torch.zeros(det_idx.numel(), b_idx.numel(), m, dtype=torch.bool, device=device)
        lookup = {int(k): j for j, k in enumerate(ids_with_boxes.tolist())}
        for j, cls in enumerate(b_idx.tolist()):
            if cls in lookup:
                target[:, j] = padded[:, lookup[cls], :, :4]
                tmask[:, j] = pmask[:, lookup[cls]]
        feats = out.multiboxes_features[rows][:, cols]  # (N_b, Cb, R, d)
        logits = torch.stack([(feats * p_all[b_idx][None, :, None]).sum(-1),
                              (feats * n_all[b_idx][None, :, None]).sum(-1)], dim=-1)
        cls_prob = logits.float().softmax(dim=-1)[..., 0]
        res = pathology_detection_loss(out.multiboxes[rows][:, cols], out.multiboxes_weights[rows][:, cols],
                                       cls_prob, target, tmask, has_boxes[det_idx][:, b_idx])
        # total = box_loss + WEIGHTS_COEFF x weights_loss, scaled by the detection coefficient
        terms.add("l_cls/box_loss", w.pathology_detection, res["box_loss"])
        terms.add("l_cls/weights_loss", w.pathology_detection * WEIGHTS_COEFF, res["weights_loss"])
        terms.note("l_cls/patho_detect", res["total"])

    if w.pathology_classification and bool(label_cls.any()):
        l_idx = label_cls.nonzero().squeeze(1)
        f = out.box_features[:, col[l_idx]]
        labels = batch["target_cls_labels"].to(device)[sample_idx][:, l_idx]
        loss = pathology_classification_loss(f, p_all[l_idx], n_all[l_idx], labels,
                                             has_labels[sample_idx][:, l_idx], tau=opt.pathology_cls_tau)
        terms.add("l_cls/patho_cls", w.pathology_classification, loss)
    return terms
