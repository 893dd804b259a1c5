"""The demo's quality checks: a trained ChEX against trivial baselines on the held-out synthetic split.

Three checks, each measured on the test split of a synthetic processed folder
(`chex data prepare synthetic`) and compared with a baseline fitted on its train split:

* **anatomy grounding**: the 29 anatomy names (``cig_default``) are detected as text prompts
  (mean embedding of their synonym prompts, as `chex predict` does); the predicted box of a
  prompt is its hull box when present, else the hull of its R candidate boxes, so every
  prompt gives a box. Measured: mean IoU over the (image, anatomy) pairs whose ground-truth
  box is present. Baseline: the best constant box per anatomy (among the mean train box and
  up to 200 train boxes, the one with the highest mean IoU on train). Passes when the mean
  IoU is at least 0.5 and at least 0.1 above the baseline.
* **finding detection**: every finding class of the split (VinDr-CXR names such as
  "Nodule/Mass") is detected with the model's positive pathology prompts (synonym mean);
  one detection per image and class: of the prompt's R candidate boxes, the one with the
  highest score, scored as the paper's detection inference scores a candidate
  (docs/evaluation.md#object-detection, with both factors on): its weight times the probability of the
  positive over the negative ("No ...") pathology prompt, sigmoid(cos(h, p) - cos(h, n))
  of the candidate's feature h. (The hull of the present candidates, used for anatomy,
  would merge a small nodule with the other candidates.) Measured: AP at IoU >= 0.5
  (all-point interpolation, tied scores ranked as one block) averaged over the classes with a ground-truth box in the
  split. Baseline: per class the constant train box that hits (IoU >= 0.5) the most train
  boxes of the class, predicted in every image with one constant score, so ranking carries
  no information. Passes when the AP is at least 0.3 above the baseline.
* **region sentences**: for every test finding, its region's anatomy name (e.g. "left upper
  lung zone") is the text prompt; the 29 anatomy prompts of the image are detected jointly
  (the post decoder sees all of them, as in stage-3 training and in `chex predict` with
  these prompts) and the region's feature is described by the sentence generator (greedy,
  at most 24 new tokens). Baseline: per anatomy name the most frequent region sentence of
  the train split. Passes when more than 60 % of the generated sentences are right and
  the right fraction is at least 0.2 above the baseline's ("clearly above").

A generated sentence is **right** for a finding of kind K in region A when

1. it affirms a finding word of K: nodule|mass, opacity|opacities, consolidation, effusion,
   pneumothorax, enlarged|cardiomegaly (cardiomegaly), with no negation (no, not, without)
   earlier in the sentence ("The heart is not enlarged." affirms nothing);
2. it names A's side when A's name has one (left/right) and never the opposite side;
3. it names A's zone when A is a lung zone (upper, mid, lower; every synthetic sentence of
   these findings states the zone) and, whenever A's name has a zone (upper, mid, lower,
   apical), no incompatible zone word (upper/mid/lower/apical/apex; apical, apex and upper
   are compatible). An apical-zone sentence may leave the zone out: the synthetic
   vocabulary says "Small left pneumothorax." too.

Every ground-truth sentence of the synthetic data is right by this rule
(``reference_right`` = 1.0). Also reported, without a threshold: the fraction of normal
test regions (no finding there) whose generated sentence affirms no finding word, and what a
user of `chex predict` sees (chexcli.demo.targets, next to the targets of the demo issue):
per finding the AUROC of the finding prompt's score against "the image has this finding"
(the lowest one in the table), the sentences of the ground-truth finding boxes given as box
prompts, the mean IoU of each anatomy prompt's best candidate, and the share of present
anatomies whose prompt has a present region (drawn as a solid box).

With ``quick=True`` the checks are computed and reported but not enforced.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from chexcli.data.dataset import ChexDataset, collate
from chexcli.data.names import anatomy_names
from chexcli.data.transforms import EvalTransform
from chexcli.boxes import as_boxes, box_iou_cxcywh, hull_box, paired_iou
from chexcli.demo.targets import FINDING_PROMPTS, TARGETS, measure_targets
from chexcli.model.classify import classify_features

CIG = "cig_boxclssent"
VINDR = "vindrcxr_boxes"
TRUTH = "synthetic.csv"
MAX_NEW_TOKENS = 24

GROUNDING_MIN_IOU = 0.5
GROUNDING_MARGIN = 0.1
DETECTION_MARGIN = 0.3  # 0.15 before the demo-cnn plan
SENTENCE_MIN = 0.6  # strictly more; 0.5 before the demo-cnn plan
SENTENCE_MARGIN = 0.2

FINDING_WORDS = {
    "nodule": ("nodule", "mass"),
    "opacity": ("opacity", "opacities"),
    "consolidation": ("consolidation",),
    "effusion": ("effusion",),
    "pneumothorax": ("pneumothorax",),
    "cardiomegaly": ("enlarged", "cardiomegaly"),
}
NEGATIONS = ("no", "not", "without")
SIDES = ("left", "right")
ZONE_WORDS = {"upper": ("upper",), "mid": ("mid", "middle"), "lower": ("lower",), "apical": ("apical", "apex")}
COMPATIBLE_ZONES = {"upper": {"upper", "apical"}, "mid": {"mid"}, "lower": {"lower"}, "apical": {"apical", "upper"}}
# regions that hold a finding's sentence first (synthetic_report.finding_regions) and can be normal
FINDING_REGIONS = [f"{s} {z} lung zone" for s in SIDES for z in ("upper", "mid", "lower")] + [
    f"{s} {p}" for s in SIDES for p in ("apical zone", "costophrenic angle")] + ["cardiac silhouette"]
RULE = ("right = the sentence affirms the finding's word (nodule|mass, opacity|opacities, consolidation, "
        "effusion, pneumothorax, enlarged|cardiomegaly; no 'no'/'not'/'without' before it), names the region's "
        "side (left/right) and never the opposite side, names the zone of a lung-zone region (upper/mid/lower), "
        "and names no zone incompatible with the region's (apical~upper)")


# ------------------------------------------------------------------------------------------ boxes
def best_constant_box(boxes, max_candidates: int = 200, criterion: str = "mean_iou") -> np.ndarray:
    """The constant box that best fits boxes (M, 4) center format -> (4,).

    Candidates: the mean box and up to ``max_candidates`` of the boxes (evenly spread).
    ``criterion``: "mean_iou" (highest mean IoU) or "hits" (most boxes with IoU >= 0.5, ties
    by mean IoU). No boxes -> a zero box (IoU 0 with everything).
    """
    b = as_boxes(boxes)
    if len(b) == 0:
        return np.zeros(4)
    pick = np.unique(np.linspace(0, len(b) - 1, min(max_candidates, len(b))).round().astype(int))
    candidates = np.concatenate([b.mean(axis=0, keepdims=True), b[pick]])
    iou = box_iou_cxcywh(candidates, b)  # (K, M)
    mean = iou.mean(axis=1)
    if criterion == "hits":
        order = np.lexsort((-mean, -(iou >= 0.5).sum(axis=1)))
        return candidates[order[0]]
    if criterion != "mean_iou":
        raise ValueError(f"unknown criterion {criterion!r}")
    return candidates[int(np.argmax(mean))]


def average_precision(scores, hits, n_gt: int) -> float:
    """All-point interpolated AP of P detections: scores (P,), hits (P,) bool (TP at IoU 0.5).

    Detections with equal scores form one block (their order carries no information): the
    precision/recall curve has one point per distinct score. 0 when n_gt == 0.
    """
    scores, hits = np.asarray(scores, dtype=np.float64), np.asarray(hits, dtype=bool)
    if n_gt == 0 or len(scores) == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    s, tp = scores[order], np.cumsum(hits[order])
    ends = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each tie block
    precision = tp[ends] / (ends + 1)
    recall = tp[ends] / n_gt
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.r_[0.0, recall])
    return float((steps * envelope).sum())


def prompt_boxes(out) -> torch.Tensor:
    """A DetectionOutput -> (N, Q, 4) one box per prompt: the hull box when the prompt is
    present, else the hull of its R candidate boxes (every prompt gives a box)."""
    return torch.where(out.boxes_present[..., None], out.boxes, hull_box(out.multiboxes))


# ------------------------------------------------------------------------------------------ data
def _targets_only(img, t, rng=None):
    """The eval transform's box geometry on a tiny output: boxes are relative, so they are the
    same as with the 224 x 224 input, and reading targets skips the full resize."""
    return EvalTransform(size=8, normalize=False)(img, t, rng)


def _indices(ds: ChexDataset, max_images: int | None) -> list[int]:
    return list(range(len(ds) if max_images is None else min(len(ds), max_images)))


def _batches(ds: ChexDataset, indices: Sequence[int], batch_size: int):
    for start in range(0, len(indices), batch_size):
        yield collate([ds[i] for i in indices[start:start + batch_size]])


def _spread(items: list, k: int | None) -> list:
    """At most k items, evenly spread over the list (deterministic, order kept)."""
    if k is None or len(items) <= k:
        return list(items)
    return [items[i] for i in np.unique(np.linspace(0, len(items) - 1, k).round().astype(int))]


def anatomy_targets(data_dir, split: str = "train", max_images: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth anatomy boxes of a split: (N, A, 4) center format (network frame), present (N, A)."""
    ds = ChexDataset(data_dir, CIG, split=split, transform=_targets_only)
    idx = _indices(ds, max_images)
    boxes = np.zeros((len(idx), len(ds.anat_names), 4))
    present = np.zeros((len(idx), len(ds.anat_names)), dtype=bool)
    for k, i in enumerate(idx):
        s = ds[i]
        boxes[k], present[k] = s["target_anat_boxes"].numpy(), s["target_anat_present_masks"].numpy()
    return boxes, present


def class_targets(data_dir, split: str = "train", max_images: int | None = None) -> tuple[list[str], list[np.ndarray]]:
    """Finding boxes of a split: (class names of ``vindrcxr_loc``, per image (M, 5) = box + class index)."""
    ds = ChexDataset(data_dir, VINDR, split=split, transform=_targets_only)
    return ds.classes, [ds[i]["target_cls_boxes"].numpy() for i in _indices(ds, max_images)]


def _truth(data_dir) -> dict[str, list[dict]]:
    """sample_id -> findings (kind, side, zone, sentence, regions, ...) of ``synthetic.csv``."""
    df = pd.read_csv(Path(data_dir) / TRUTH, dtype={"sample_id": str}, keep_default_na=False)
    return {sid: json.loads(f) for sid, f in zip(df["sample_id"], df["findings"])}


# ------------------------------------------------------------------------------------------ the model
class ModelQueries:
    """The trained model behind the checks: anatomy boxes, class boxes + scores, region sentences.

    Every method takes a collated batch of ``ChexDataset`` samples (``x`` (N, 224, 224)).
    """

    def __init__(self, model, max_new_tokens: int = MAX_NEW_TOKENS):
        from chexcli.train.prompts import anatomy_bank

        self.model = model.eval()
        self.max_new_tokens = max_new_tokens
        self.anatomy = anatomy_names("cig_default")
        self.anatomy_index = {n: k for k, n in enumerate(self.anatomy)}
        with torch.no_grad():
            self.anatomy_prompts = anatomy_bank(self.anatomy, model.prompts).embed(model, randomize=False)  # (A, d)
        self._class_prompts: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def _x(self, batch: dict) -> torch.Tensor:
        return batch["x"].to(self.model.device)

    @torch.no_grad()
    def _detect_anatomy(self, batch: dict, post_decoder: bool):
        prompts = self.anatomy_prompts.to(self.model.device)
        return self.model.detect_prompts(self._x(batch), prompts, use_post_decoder=post_decoder, skip_roi_pool=True)

    def anatomy_boxes(self, batch: dict) -> torch.Tensor:
        """(N, A, 4) one box per anatomy prompt of ``cig_default``."""
        return prompt_boxes(self._detect_anatomy(batch, post_decoder=False)).cpu()

    @torch.no_grad()
    def class_boxes(self, batch: dict, classes: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """classes (C) such as "vindrcxr/Nodule/Mass" -> boxes (N, C, 4), presence scores (N, C)."""
        from chexcli.train.prompts import pathology_banks

        key = tuple(classes)
        if key not in self._class_prompts:
            pos, neg = pathology_banks(list(classes), self.model.prompts)
            self._class_prompts[key] = (pos.embed(self.model, randomize=False), neg.embed(self.model, randomize=False))
        pos, neg = (t.to(self.model.device) for t in self._class_prompts[key])
        out = self.model.detect_prompts(self._x(batch), pos, use_post_decoder=False, skip_roi_pool=True)
        prob, _ = classify_features(out.multiboxes_features, pos[None, :, None], neg[None, :, None],
                                    threshold=None)  # (N, C, R)
        score = out.multiboxes_weights * prob  # the paper's OD score: weight x P(positive prompt)
        best = score.argmax(dim=-1, keepdim=True)  # (N, C, 1) the best of the R candidate boxes
        box = out.multiboxes.gather(2, best[..., None].expand(-1, -1, -1, 4)).squeeze(2)
        return box.cpu(), score.gather(2, best).squeeze(2).cpu()

    @torch.no_grad()
    def describe(self, batch: dict, regions: Sequence[Sequence[str]]) -> list[list[str]]:
        """regions: per image the anatomy names to describe -> per image their sentences."""
        out = self._detect_anatomy(batch, post_decoder=True)
        feats = [out.box_features[i, self.anatomy_index[r]] for i, rs in enumerate(regions) for r in rs]
        if not feats:
            return [[] for _ in regions]
        sentences = iter(self.model.describe(torch.stack(feats), max_new_tokens=self.max_new_tokens))
        return [[next(sentences) for _ in rs] for rs in regions]


# ------------------------------------------------------------------------------------------ 1. grounding
def anatomy_grounding(model, data_dir, split: str = "test", max_images: int | None = None, batch_size: int = 16,
                      predict_boxes: Callable[[dict], torch.Tensor] | None = None) -> dict:
    """Mean IoU of the prompted anatomy boxes with the present ground-truth boxes.

    ``predict_boxes(batch) -> (N, A, 4)`` center boxes of the ``cig_default`` anatomies
    (default: the model's prompt boxes). Returns mean_iou over the (image, anatomy) pairs,
    pairs, images and per_anatomy mean IoU.
    """
    predict_boxes = predict_boxes or ModelQueries(model).anatomy_boxes
    ds = ChexDataset(data_dir, CIG, split=split, transform="eval")
    idx = _indices(ds, max_images)
    ious, present = [], []
    for batch in _batches(ds, idx, batch_size):
        pred = np.asarray(predict_boxes(batch), dtype=np.float64)
        ious.append(paired_iou(pred, batch["target_anat_boxes"].numpy()))
        present.append(batch["target_anat_present_masks"].numpy())
    iou = np.concatenate(ious) if ious else np.zeros((0, len(ds.anat_names)))
    mask = np.concatenate(present) if present else np.zeros(iou.shape, dtype=bool)
    per = {n: float(iou[mask[:, k], k].mean()) for k, n in enumerate(ds.anat_names) if mask[:, k].any()}
    return {"mean_iou": float(iou[mask].mean()) if mask.any() else float("nan"), "pairs": int(mask.sum()),
            "images": len(idx), "per_anatomy": per}


def constant_box_baseline(data_dir, max_candidates: int = 200) -> dict[str, list[float]]:
    """Per anatomy the best constant center box (network frame) on the TRAIN split (highest mean IoU)."""
    boxes, present = anatomy_targets(data_dir, "train")
    names = anatomy_names("cig_default")
    return {n: best_constant_box(boxes[present[:, k], k], max_candidates).tolist() for k, n in enumerate(names)}


def constant_predictor(table: dict[str, Sequence[float]], names: Sequence[str]) -> Callable[[dict], np.ndarray]:
    """batch -> (N, len(names), 4): the same box per name in every image (zero box for a missing name)."""
    fixed = np.array([table.get(n, [0.0] * 4) for n in names], dtype=np.float64).reshape(-1, 4)
    return lambda batch: np.broadcast_to(fixed, (len(batch["x"]),) + fixed.shape)


def anatomy_baseline_iou(baseline: dict[str, Sequence[float]], data_dir, split: str = "test",
                         max_images: int | None = None) -> dict:
    """``anatomy_grounding`` of the constant boxes."""
    return anatomy_grounding(None, data_dir, split, max_images,
                             predict_boxes=constant_predictor(baseline, anatomy_names("cig_default")))


# ------------------------------------------------------------------------------------------ 2. detection
def finding_detection(model, data_dir, split: str = "test", max_images: int | None = None, batch_size: int = 16,
                      predict: Callable[[dict, list[str]], tuple] | None = None) -> dict:
    """AP at IoU 0.5 of one detection per (image, finding class), averaged over the classes
    with a ground-truth box in the split.

    ``predict(batch, classes) -> (boxes (N, C, 4), scores (N, C))`` (default: the model's
    prompt boxes scored by presence). Returns ap50 (mAP; NaN without any finding box),
    per_class AP, gt_boxes per class and images.
    """
    predict = predict or ModelQueries(model).class_boxes
    all_classes, gts = class_targets(data_dir, split, max_images)
    ids = sorted({int(c) for g in gts for c in g[:, 4]})
    classes = [all_classes[c] for c in ids]
    ds = ChexDataset(data_dir, VINDR, split=split, transform="eval")
    boxes, scores = [], []
    if classes:
        for batch in _batches(ds, _indices(ds, max_images), batch_size):
            b, s = predict(batch, classes)
            boxes.append(np.asarray(b, dtype=np.float64))
            scores.append(np.asarray(s, dtype=np.float64))
    per_class, n_gt, auroc = {}, {}, {}
    for j, (c, name) in enumerate(zip(ids, classes)):
        pred = np.concatenate([b[:, j] for b in boxes])  # (N, 4)
        score = np.concatenate([s[:, j] for s in scores])  # (N,)
        truth = [g[g[:, 4] == c, :4] for g in gts]
        hits = [len(t) > 0 and bool((box_iou_cxcywh(p[None], t) >= 0.5).any()) for p, t in zip(pred, truth)]
        n_gt[_short(name)] = sum(len(t) for t in truth)
        per_class[_short(name)] = average_precision(score, hits, n_gt[_short(name)])
        auroc[_short(name)] = presence_auroc(score, [len(t) > 0 for t in truth])
    ap = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    return {"ap50": ap, "per_class": per_class, "gt_boxes": n_gt, "images": len(gts), "presence_auroc": auroc}


def presence_auroc(scores, has_finding) -> float:
    """AUROC of per-image presence scores (N) against "the image has the finding" (N bool): the
    chance that an image with the finding scores above one without (ties count half); NaN
    unless both kinds of image occur."""
    from chexcli.metrics.classification import binary_auroc

    has = np.asarray(has_finding, dtype=bool)
    return binary_auroc(scores, has) if has.any() and not has.all() else float("nan")


def _short(name: str) -> str:
    return name.split("/", 1)[1] if name.startswith("vindrcxr/") else name


def constant_box_detection_baseline(data_dir, max_candidates: int = 200) -> dict[str, list[float]]:
    """Per finding class (``vindrcxr_loc`` name) the constant box that hits (IoU >= 0.5) the most
    of its TRAIN boxes (ties: higher mean IoU); classes without train boxes are left out."""
    classes, gts = class_targets(data_dir, "train")
    allb = np.concatenate(gts) if gts else np.zeros((0, 5))
    return {classes[c]: best_constant_box(allb[allb[:, 4] == c, :4], max_candidates, "hits").tolist()
            for c in sorted({int(c) for c in allb[:, 4]})}


def detection_baseline_ap(baseline: dict[str, Sequence[float]], data_dir, split: str = "test",
                          max_images: int | None = None) -> dict:
    """``finding_detection`` of the constant boxes, every detection with the same score."""
    def predict(batch, classes):
        boxes = constant_predictor(baseline, classes)(batch)
        return boxes, np.ones(boxes.shape[:2])

    return finding_detection(None, data_dir, split, max_images, predict=predict)


# ------------------------------------------------------------------------------------------ 3. sentences
def _words(sentence: str) -> list[str]:
    return re.findall(r"[a-z]+", sentence.lower())


def affirmed_kinds(sentence: str) -> set[str]:
    """Finding kinds whose word the sentence affirms (no negation word before it)."""
    words = _words(sentence)
    first_neg = next((k for k, w in enumerate(words) if w in NEGATIONS), len(words))
    return {kind for kind, vocab in FINDING_WORDS.items() if any(w in vocab for w in words[:first_neg])}


def region_location(region: str) -> tuple[str | None, str | None]:
    """An anatomy name -> (side or None, zone or None), e.g. "left upper lung zone" -> ("left", "upper")."""
    words = region.split()
    side = words[0] if words and words[0] in SIDES else None
    zone = next((z for z in ZONE_WORDS if z in words), None)
    return side, zone


def sentence_is_right(sentence: str, kind: str, region: str) -> bool:
    """The module's rule: finding word affirmed, region side named (never the opposite side),
    lung-zone word named, no incompatible zone word."""
    if kind not in affirmed_kinds(sentence):
        return False
    words = set(_words(sentence))
    side, zone = region_location(region)
    if side is not None and (side not in words or ({"left", "right"} - {side}) & words):
        return False
    if zone is None:
        return True
    named = {z for z, vocab in ZONE_WORDS.items() if words & set(vocab)}
    if region.endswith("lung zone") and zone not in named:
        return False
    return named <= COMPATIBLE_ZONES[zone]


@dataclass(frozen=True)
class RegionQuery:
    """One test region to describe: the dataset row, the anatomy name, the finding kind (None:
    a normal region) and the ground-truth sentence(s)."""

    row: int
    sample_id: str
    region: str
    kind: str | None
    expected: tuple[str, ...]


def sentence_queries(ds: ChexDataset, data_dir, max_images: int | None = None, max_regions: int | None = 300,
                     max_normal_regions: int | None = 100) -> tuple[list[RegionQuery], list[RegionQuery]]:
    """The finding regions (first region of every finding) and the normal regions (a region of
    ``FINDING_REGIONS`` labelled normal) of the split's images, each list evenly capped."""
    truth = _truth(data_dir)
    findings, normal = [], []
    for i in _indices(ds, max_images):
        row = ds.df.iloc[i]
        sid = ds.sample_id(row)
        for f in truth.get(sid, []):
            findings.append(RegionQuery(i, sid, f["regions"][0], f["kind"], (f["sentence"],)))
        labels, sentences = json.loads(row["anat_labels"]), json.loads(row["anat_sentences"])
        for r in FINDING_REGIONS:
            if labels.get(r) == ["normal"]:
                normal.append(RegionQuery(i, sid, r, None, tuple(sentences.get(r, []))))
    return _spread(findings, max_regions), _spread(normal, max_normal_regions)


def _describe_all(ds: ChexDataset, queries: list[RegionQuery], describe, batch_size: int) -> list[str]:
    """Generated sentence per query (images batched, each loaded once)."""
    rows = sorted({q.row for q in queries})
    wanted: dict[int, list[int]] = {}
    for k, q in enumerate(queries):
        wanted.setdefault(q.row, []).append(k)
    out = [""] * len(queries)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        batch = collate([ds[r] for r in chunk])
        sentences = describe(batch, [[queries[k].region for k in wanted[r]] for r in chunk])
        for r, said in zip(chunk, sentences):
            for k, s in zip(wanted[r], said):
                out[k] = s
    return out


def sentence_check(model, data_dir, split: str = "test", max_regions: int | None = 300,
                   max_normal_regions: int | None = 100, max_images: int | None = None, batch_size: int = 16,
                   max_new_tokens: int = MAX_NEW_TOKENS,
                   describe: Callable[[dict, list[list[str]]], list[list[str]]] | None = None) -> dict:
    """Fraction of generated sentences of the test finding regions that are right (module docstring).

    ``describe(batch, regions per image) -> sentences per image`` (default: the model with
    each region's anatomy name as prompt). Returns right (NaN without findings), regions,
    per_kind, reference_right (the rule on the ground-truth sentences), normal_regions,
    normal_without_finding, the rule and a few examples.
    """
    describe = describe or ModelQueries(model, max_new_tokens).describe
    ds = ChexDataset(data_dir, CIG, split=split, transform="eval")
    findings, normal = sentence_queries(ds, data_dir, max_images, max_regions, max_normal_regions)
    said = _describe_all(ds, findings + normal, describe, batch_size)
    right = [sentence_is_right(s, q.kind, q.region) for q, s in zip(findings, said)]
    reference = [sentence_is_right(q.expected[0], q.kind, q.region) for q in findings]
    clean = [not affirmed_kinds(s) for s in said[len(findings):]]
    per_kind: dict[str, dict] = {}
    for q, ok in zip(findings, right):
        d = per_kind.setdefault(q.kind, {"regions": 0, "right": 0})
        d["regions"] += 1
        d["right"] += int(ok)
    examples = [{"image": q.sample_id, "region": q.region, "kind": q.kind, "expected": q.expected[0],
                 "generated": s, "right": ok} for q, s, ok in list(zip(findings, said, right))[:8]]
    frac = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    return {"right": frac(right), "right_count": int(sum(right)), "regions": len(findings),
            "per_kind": {k: {"regions": v["regions"], "right": v["right"] / v["regions"]}
                         for k, v in sorted(per_kind.items())},
            "reference_right": frac(reference), "normal_regions": len(normal), "normal_without_finding": frac(clean),
            "rule": RULE, "examples": examples}


def most_frequent_sentence_baseline(data_dir) -> dict[str, str]:
    """Per anatomy name the most frequent region sentence (``anat_sentences``) of the TRAIN split
    (ties: alphabetically first)."""
    ds = ChexDataset(data_dir, CIG, split="train", transform=_targets_only)
    counts: dict[str, dict[str, int]] = {}
    for cell in ds.df["anat_sentences"]:
        for region, sentences in json.loads(cell).items():
            c = counts.setdefault(region, {})
            for s in set(sentences):
                c[s] = c.get(s, 0) + 1
    return {r: min(c, key=lambda s: (-c[s], s)) for r, c in counts.items()}


def sentence_baseline(baseline: dict[str, str], data_dir, split: str = "test", max_regions: int | None = 300,
                      max_normal_regions: int | None = 100, max_images: int | None = None) -> dict:
    """``sentence_check`` of always writing the baseline's sentence for the prompted region."""
    return sentence_check(None, data_dir, split, max_regions, max_normal_regions, max_images,
                          describe=lambda batch, regions: [[baseline.get(r, "") for r in rs] for rs in regions])


# ------------------------------------------------------------------------------------------ the checks
@dataclass
class Check:
    """One row of the demo summary. ``enforced`` False: reported only (quick mode, informational rows)."""

    name: str
    value: float
    baseline: float | None
    threshold: str
    passed: bool
    enforced: bool = True
    detail: str = ""
    informational: bool = False
    results: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.informational:
            return "info"
        word = "PASS" if self.passed else "FAIL"
        return word if self.enforced else f"{word.lower()} (not enforced)"


def _fmt(v: float | None) -> str:
    return "-" if v is None else ("n/a" if isinstance(v, float) and math.isnan(v) else f"{v:.3f}")


def _ge(a: float, b: float) -> bool:
    """a >= b, NaN never passes (a small tolerance for float sums)."""
    return not (math.isnan(a) or math.isnan(b)) and a >= b - 1e-9


def grounding_check(measured: dict, baseline: dict) -> Check:
    v, b = measured["mean_iou"], baseline["mean_iou"]
    need = max(GROUNDING_MIN_IOU, b + GROUNDING_MARGIN)
    worst = min(measured["per_anatomy"].items(), key=lambda kv: kv[1], default=("-", float("nan")))
    return Check("anatomy grounding (mean IoU)", v, b,
                 f">= {GROUNDING_MIN_IOU} and >= baseline + {GROUNDING_MARGIN} (= {_fmt(need)})",
                 _ge(v, GROUNDING_MIN_IOU) and _ge(v, b + GROUNDING_MARGIN),
                 detail=(f"{measured['pairs']} (image, anatomy) pairs on {measured['images']} images; baseline: "
                         f"best constant box per anatomy fitted on train; worst anatomy {worst[0]} {_fmt(worst[1])}"),
                 results={"measured": measured, "baseline": baseline})


def detection_check(measured: dict, baseline: dict) -> Check:
    v, b = measured["ap50"], baseline["ap50"]
    per = ", ".join(f"{c} {_fmt(a)} (baseline {_fmt(baseline['per_class'].get(c))}, {measured['gt_boxes'][c]} boxes)"
                    for c, a in measured["per_class"].items())
    need = b + DETECTION_MARGIN
    return Check("finding detection (AP@0.5)", v, b, f">= baseline + {DETECTION_MARGIN} (= {_fmt(need)})", _ge(v, need),
                 detail=(f"{measured['images']} images; baseline: constant train box per class, constant score; "
                         + (per or "no finding box in the split")),
                 results={"measured": measured, "baseline": baseline})


def sentence_check_row(measured: dict, baseline: dict) -> Check:
    v, b = measured["right"], baseline["right"]
    need = max(SENTENCE_MIN, b + SENTENCE_MARGIN)
    return Check("region sentences (fraction right)", v, b,
                 f"> {SENTENCE_MIN} and >= baseline + {SENTENCE_MARGIN} (= {_fmt(need)})",
                 not math.isnan(v) and v > SENTENCE_MIN and _ge(v, b + SENTENCE_MARGIN),
                 detail=(f"{measured['right_count']}/{measured['regions']} finding regions right; baseline: most "
                         f"frequent train sentence per region; {RULE}"),
                 results={"measured": measured, "baseline": baseline})


def normal_regions_row(measured: dict, baseline: dict) -> Check:
    return Check("normal regions without a finding word", measured["normal_without_finding"],
                 baseline["normal_without_finding"], "none (reported only)", True, enforced=False,
                 detail=f"{measured['normal_regions']} normal test regions (no finding there)", informational=True)


def presence_row(targets: dict) -> Check:
    """Reported only: the lowest per-finding presence AUROC of the finding prompts' `chex predict`
    score (target 0.9 for every kind)."""
    per = targets["presence_auroc"]
    finite = {k: v for k, v in per.items() if not math.isnan(v)}
    worst = min(finite.values()) if finite else float("nan")
    listing = ", ".join(f"{k} {_fmt(v)}" for k, v in per.items()) or "no finding in the split"
    return Check("finding presence (lowest AUROC)", worst, None, f"target >= {TARGETS['presence_auroc']}", True,
                 enforced=False,
                 detail=("per image the `chex predict` score of the finding's prompt (" + ", ".join(
                     f'"{p}"' for p in FINDING_PROMPTS.values()) + f") against 'the image has it': {listing}"),
                 informational=True, results={"measured": per})


def box_sentences_row(targets: dict) -> Check:
    """Reported only: the share of right sentences for the finding boxes given as box prompts."""
    m = targets["box_sentences"]
    per = ", ".join(f"{k} {_fmt(v)}" for k, v in m["per_kind"].items())
    return Check("box-prompt sentences (fraction right)", m["right"], None, f"target >= {TARGETS['box_sentences']}",
                 True, enforced=False,
                 detail=f"{m['regions']} ground-truth finding boxes as --box prompts; per finding: {per}",
                 informational=True, results={"measured": m})


def best_candidate_row(targets: dict) -> Check:
    """Reported only: mean IoU of each anatomy prompt's best candidate with its ground-truth box."""
    per = {k: v["best_iou"] for k, v in targets["per_anatomy"].items()}
    worst = sorted(per.items(), key=lambda kv: kv[1])[:3]
    return Check("anatomy best candidate (mean IoU)", targets["anatomy_best_iou"], None,
                 f"target >= {TARGETS['anatomy_best_iou']}", True, enforced=False,
                 detail=(f"{targets['anatomy_pairs']} (image, anatomy) pairs; the drawn box (hull of the present "
                         f"candidates) {_fmt(targets['anatomy_drawn_iou'])}; worst: "
                         + ", ".join(f"{k} {_fmt(v)}" for k, v in worst)),
                 informational=True, results={"measured": per})


def boxes_drawn_row(targets: dict) -> Check:
    """Reported only: the share of anatomy prompts that `chex predict` draws as a present box."""
    per = {k: v["drawn"] for k, v in targets["per_anatomy"].items()}
    fewest = sorted(per.items(), key=lambda kv: kv[1])[:3]
    return Check("anatomy prompts drawn as present", targets["anatomy_drawn"], None, "none (reported only)", True,
                 enforced=False,
                 detail=(f"{targets['anatomy_pairs']} (image, anatomy) pairs with a ground-truth box; the others "
                         "show only a dashed best candidate; fewest: " + ", ".join(f"{k} {_fmt(v)}" for k, v in fewest)),
                 informational=True, results={"measured": per})


def run_checks(model, data_dir, quick: bool, max_images: int | None = None, split: str = "test",
               batch_size: int = 16, max_regions: int = 300, max_new_tokens: int = MAX_NEW_TOKENS) -> list[Check]:
    """The demo's checks of ``model`` (a loaded ChEX) on ``split`` of the synthetic folder ``data_dir``.

    Returns grounding, detection and sentence checks plus informational rows (normal regions,
    then what `chex predict` shows, chexcli.demo.targets: the lowest per-finding presence AUROC,
    box-prompt sentences, the anatomy prompts' best candidates and how many are drawn as
    present); with ``quick`` nothing is enforced (``enforced=False``).
    """
    data_dir = Path(data_dir)
    queries = ModelQueries(model, max_new_tokens)
    grounding = anatomy_grounding(model, data_dir, split, max_images, batch_size, predict_boxes=queries.anatomy_boxes)
    grounding_base = anatomy_baseline_iou(constant_box_baseline(data_dir), data_dir, split, max_images)
    detection = finding_detection(model, data_dir, split, max_images, batch_size, predict=queries.class_boxes)
    detection_base = detection_baseline_ap(constant_box_detection_baseline(data_dir), data_dir, split, max_images)
    sentences = sentence_check(model, data_dir, split, max_regions, max_images=max_images, batch_size=batch_size,
                               describe=queries.describe)
    sentences_base = sentence_baseline(most_frequent_sentence_baseline(data_dir), data_dir, split, max_regions,
                                       max_images=max_images)
    targets = measure_targets(model, data_dir, split, max_images, batch_size, max_new_tokens)
    checks = [grounding_check(grounding, grounding_base), detection_check(detection, detection_base),
              sentence_check_row(sentences, sentences_base), normal_regions_row(sentences, sentences_base),
              presence_row(targets), box_sentences_row(targets), best_candidate_row(targets), boxes_drawn_row(targets)]
    if quick:
        for c in checks:
            c.enforced = False
    return checks


def format_table(checks: Sequence[Check], details: bool = True) -> str:
    """Plain-text table: check, measured, baseline, threshold, result (then one detail line per check)."""
    head = ("check", "measured", "baseline", "threshold", "result")
    rows = [(c.name, _fmt(c.value), _fmt(c.baseline), c.threshold, c.status) for c in checks]
    widths = [max(len(r[k]) for r in [head, *rows]) for k in range(len(head))]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    out = [line(head), line(tuple("-" * w for w in widths)), *map(line, rows)]
    if details:
        out += [""] + [f"{c.name}: {c.detail}" for c in checks if c.detail]
    return "\n".join(out)


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def to_json(checks: Sequence[Check]) -> list[dict]:
    """JSON-ready dicts of the checks (NaN -> null), with status and the raw results."""
    return [_clean({**asdict(c), "status": c.status}) for c in checks]
