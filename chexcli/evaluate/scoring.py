"""Prediction records + target records -> metric groups, bootstrapped as the reference does.

`score_task` returns a `TaskScores` with the flat result (point estimates, or
`k/mean`, `k/std`, `k/point`, `k/ci_low`, `k/ci_high` when bootstrapped),
the replicate tables per metric group and notes (skipped metrics).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from chexcli.data.names import anatomy_names, class_names
from chexcli.errors import ChexError
from chexcli.evaluate.tasks import TaskConfig
from chexcli.metrics.bootstrap import BootstrapResult, CombinedMetric, bootstrap
from chexcli.metrics.chexbert import MISSING_MESSAGE, ClinicalEfficacy, apply_empty_rule
from chexcli.metrics.classification import MultiClassMetrics, RegionMultiLabelMetrics
from chexcli.metrics.coco import coco_box_ap
from chexcli.metrics.detection import BoxAP, ImageBoxes
from chexcli.metrics.grounding import GroundingIoU, SentenceBoxes
from chexcli.metrics.text import TextMetrics, clean_pairs, make_meteor


@dataclass
class TaskScores:
    metrics: dict[str, float]
    groups: dict[str, BootstrapResult] = field(default_factory=dict)  # group name -> result
    notes: list[str] = field(default_factory=list)


def align(records: Sequence[dict], targets: Sequence[dict]) -> list[tuple[dict, dict]]:
    """Pair every target with the record of the same image (error if one is missing)."""
    by_id = {str(r["image"]): r for r in records}
    missing = [t["image"] for t in targets if str(t["image"]) not in by_id]
    if missing:
        raise ChexError(f"the predictions miss {len(missing)} of {len(targets)} images of the split "
                        f"(e.g. {missing[0]}); score predictions of the same task, split and data folder")
    return [(by_id[str(t["image"])], t) for t in targets]


def _boxes(dets: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    return (np.asarray([d["box_model"] for d in dets], dtype=np.float64).reshape(-1, 4),
            np.asarray([d["score"] for d in dets], dtype=np.float64))


# --------------------------------------------------------------------- metric builders
def detection_images(pairs, names: list[str]) -> list[ImageBoxes]:
    index = {n: i for i, n in enumerate(names)}
    images = []
    for rec, tgt in pairs:
        boxes, scores, labels = [], [], []
        for k, q in enumerate(rec["queries"]):
            c = index.get(q.get("class"), k)
            for d in q.get("detections", []):
                boxes.append(d["box_model"])
                scores.append(d["score"])
                labels.append(c)
        images.append(ImageBoxes.make(boxes, scores, labels, tgt["boxes"], tgt["labels"]))
    return images


def grounding_sets(pairs) -> tuple[list[ImageBoxes], list[SentenceBoxes], list[int]]:
    ap_images, sentences, units = [], [], []
    for rec, tgt in pairs:
        by_prompt = {q["prompt"]: q for q in rec["queries"]}
        if not tgt["sentences"]:
            continue
        for sent, gt in zip(tgt["sentences"], tgt["boxes"]):
            q = by_prompt.get(sent)
            if q is None:
                raise ChexError(f"the predictions of image {rec['image']} lack the sentence {sent!r}; "
                                "score predictions of the same task and data")
            b, s = _boxes(q.get("detections", []))
            ap_images.append(ImageBoxes.make(b, s, np.zeros(len(s), np.int64), gt, np.zeros(len(gt), np.int64)))
            sentences.append(SentenceBoxes.make(b, s, gt))
        units.append(len(tgt["sentences"]))
    return ap_images, sentences, units


def _sentence_pairs(pairs, kind: str):
    """(preds, refs, units, normal flags) of the region sentences, per image."""
    preds, refs, units, normal = [], [], [], []
    for rec, tgt in pairs:
        count = 0
        if kind == "box_explanation":
            for q, ref in zip(rec["queries"], tgt["sentences"]):
                preds.append(q.get("sentence") or "")
                refs.append(ref)
                normal.append(False)
                count += 1
        else:
            for a, (q, ref) in enumerate(zip(rec["queries"], tgt["sentences"])):
                if not tgt["present"][a]:
                    continue
                preds.append(q.get("sentence") or "")
                refs.append(ref)
                normal.append(not any(tgt["labels"][a]))
                count += 1
        units.append(count)
    return preds, refs, units, normal


class _Empty:
    """A metric with no keys (a group that is skipped)."""

    def __init__(self, n_units: int):
        self.n_units = n_units

    def compute(self, idx=None):
        return {}


class RegionSentenceExtras:
    """METEOR_ratio and METEOR on normal / abnormal regions (RE on CIG, docs/evaluation.md#region-explanation)."""

    def __init__(self, preds, refs, units, normal, meteor):
        self.meteor, self.n_units = meteor, len(units)
        starts = np.cumsum([0] + list(units))
        self.unit_data = []
        for u in range(len(units)):
            sl = slice(starts[u], starts[u + 1])
            p, r, keep = clean_pairs(preds[sl], refs[sl])
            nm = [normal[sl][k] for k in keep]
            self.unit_data.append((p, r, nm))

    def compute(self, idx=None):
        idx = range(self.n_units) if idx is None else idx
        matched_h, matched_r, mism_h, mism_r = [], [], [], []
        norm, abn = ([], []), ([], [])
        for u in idx:
            p, r, nm = self.unit_data[int(u)]
            matched_h += p
            matched_r += r
            for i, h in enumerate(p):
                for j, ref in enumerate(r):
                    if i != j:
                        mism_h.append(h)
                        mism_r.append(ref)
                for (hs, rs), flag in ((norm, True), (abn, False)):
                    if nm[i] == flag:
                        hs.append(h)
                        rs.append(r[i])
        matched = self.meteor.score(matched_h, matched_r)
        mism = self.meteor.score(mism_h, mism_r)
        return {"METEOR_ratio": matched / mism if mism > 0 else float("nan"),
                "METEOR_normal/normal": self.meteor.score(*norm),
                "METEOR_normal/abnormal": self.meteor.score(*abn)}


def clinical_metric(preds, refs, units, labeler, per_class: bool):
    """ClinicalEfficacy over the pairs with a non-empty reference."""
    starts = np.cumsum([0] + list(units))
    keep_units, keep_idx = [], []
    for u in range(len(units)):
        kept = [i for i in range(starts[u], starts[u + 1]) if str(refs[i] or "").strip()]
        keep_units.append(len(kept))
        keep_idx += kept
    p = [str(preds[i] or "").strip() for i in keep_idx]
    r = [str(refs[i]).strip() for i in keep_idx]
    pl = apply_empty_rule(labeler.label(p), p)
    rl = apply_empty_rule(labeler.label(r), r)
    return ClinicalEfficacy(pl, rl, units=keep_units, per_class=per_class)


# --------------------------------------------------------------------- task scoring
def _run(groups: dict[str, Any], replicates: dict[str, int], progress=None) -> tuple[dict, dict]:
    out, results = {}, {}
    for name, metric in groups.items():
        res = bootstrap(metric, replicates.get(name, 0), progress=None)
        results[name] = res
        out.update(res.summary() if replicates.get(name, 0) > 0 else res.point)
    return out, results


def score_task(task: TaskConfig, records: Sequence[dict], targets: Sequence[dict], n_bootstrap: int = 0,
               labeler=None, coco: bool = True) -> TaskScores:
    """Metrics of one task. n_bootstrap > 0 turns bootstrapping on (OD/SG use n_bootstrap
    replicates, the others their fixed reference counts from the task config)."""
    pairs = align(records, targets)
    notes: list[str] = []
    kind = task.kind
    boot = n_bootstrap > 0

    def reps(key: str) -> int:
        fixed = task.get(key)
        return 0 if not boot else int(fixed if fixed is not None else n_bootstrap)

    groups: dict[str, Any] = {}
    counts: dict[str, int] = {}
    extra: dict[str, float] = {}
    meteor = None
    try:
        if kind == "detection":
            names = class_names(task.get("class_names"))
            images = detection_images(pairs, names)
            groups[""] = BoxAP(images, names)
            counts[""] = reps("bootstrap_replicates")
            if coco:
                extra.update(coco_box_ap(images, len(names)))
        elif kind == "grounding":
            ap_images, sentences, units = grounding_sets(pairs)
            groups[""] = CombinedMetric(BoxAP(ap_images, ["sentence"], units=units, per_class_keys=False),
                                        GroundingIoU(sentences, units=units))
            counts[""] = reps("bootstrap_replicates")
        elif kind in ("box_explanation", "anatomy_explanation"):
            names = class_names(task.get("class_names"))
            if kind == "box_explanation":
                probs = [q["probs"] for rec, _ in pairs for q in rec["queries"]]
                labels = [c for _, t in pairs for c in t["labels"]]
                if len(probs) != len(labels):
                    raise ChexError("the predictions do not hold one query per ground-truth box; score predictions "
                                    "of the same task and data")
                groups["cls"] = MultiClassMetrics(np.asarray(probs).reshape(-1, len(names)), labels, names)
            else:
                n_a = len(anatomy_names(task.get("anatomy_names")))
                probs = np.zeros((len(pairs), n_a, len(names)))
                for i, (rec, t) in enumerate(pairs):
                    for a, q in enumerate(rec["queries"][:n_a]):
                        if t["present"][a] and q.get("probs") is not None:
                            probs[i, a] = q["probs"]
                groups["cls"] = RegionMultiLabelMetrics(probs, [t["labels"] for _, t in pairs],
                                                        [t["present"] for _, t in pairs], names,
                                                        threshold=float(task.settings.get("prompt_threshold", 0.5)))
            counts["cls"] = reps("bootstrap_replicates")
            if task.settings.get("generate_sentences"):
                preds, refs, units, normal = _sentence_pairs(pairs, kind)
                meteor = make_meteor(notes)
                sent = [TextMetrics(preds, refs, ["METEOR"], units=units, meteor=meteor)]
                if meteor is not None and kind == "anatomy_explanation":
                    sent.append(RegionSentenceExtras(preds, refs, units, normal, meteor))
                if labeler is not None:
                    sent.append(clinical_metric(preds, refs, units, labeler, per_class=kind == "anatomy_explanation"))
                else:
                    notes.append(MISSING_MESSAGE)
                groups["sent"] = CombinedMetric(*sent)
                counts["sent"] = reps("sentence_bootstrap_replicates")
        elif kind == "report_generation":
            preds = [rec.get("report") or "" for rec, _ in pairs]
            refs = [t["report"] for _, t in pairs]
            meteor = make_meteor(notes)
            metrics = [TextMetrics(preds, refs, ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "Rouge-L", "METEOR",
                                                 "CIDEr-D"], meteor=meteor)]
            if labeler is not None:
                metrics.append(clinical_metric(preds, refs, [1] * len(preds), labeler, per_class=True))
            else:
                notes.append(MISSING_MESSAGE)
            groups[""] = CombinedMetric(*metrics)
            counts[""] = reps("bootstrap_replicates")
        else:
            raise ValueError(kind)
        out, results = _run(groups, counts)
    finally:
        if meteor is not None:
            meteor.close()
    out.update(extra)
    return TaskScores(out, results, notes)
