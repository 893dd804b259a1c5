"""optimize_inference (docs/evaluation.md#tuning-post-processing): tune post-processing on val-split records.

Detection: (1) per-class box scale in SCALES (each class keeps the scale with
its best mean-over-thresholds AP, ties -> the later, larger scale); (2) the
classification mode: weights only, prompts only, or weights x prompts with
softmax temperature in TEMPERATURES (best `AP/mAP`, ties -> later); (3) the NMS
threshold in NMS_THRESHOLDS when the task uses NMS.
Grounding: global scale by `AP/mAP`, then the NMS sweep, which the reference
scores with the *stored* threshold (B2): every candidate ties and the last,
0.5, is kept. `fix_b2=True` scores each candidate with its own threshold.
Explanation and report tasks have nothing to tune.
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np

from chexcli.data.names import class_names
from chexcli.evaluate.inference import apply_detection_postprocess, apply_grounding_postprocess
from chexcli.evaluate.scoring import align, detection_images, grounding_sets
from chexcli.evaluate.tasks import TaskConfig
from chexcli.metrics.detection import BoxAP

SCALES = (0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 2.0)
TEMPERATURES = tuple(float(t) for t in np.arange(0.05, 0.5, 0.05))
NMS_THRESHOLDS = (0.05, 0.1, 0.25, 0.5)


def _od_ap(pairs, settings, names) -> np.ndarray:
    for rec, _ in pairs:
        apply_detection_postprocess(rec, settings, names)
    return BoxAP(detection_images(pairs, names), names).ap_table()


def _sg_map(pairs, settings) -> float:
    for rec, _ in pairs:
        apply_grounding_postprocess(rec, settings)
    ap_images, _, units = grounding_sets(pairs)
    return float(BoxAP(ap_images, ["sentence"], units=units).ap_table().mean())


def tune_task(task: TaskConfig, records: Sequence[dict], targets: Sequence[dict], fix_b2: bool = False) -> dict:
    """Tuned settings (a new dict); `records` are modified (re-post-processed)."""
    settings = copy.deepcopy(task.settings)
    pairs = align(records, targets)
    if task.kind == "detection":
        names = class_names(task.get("class_names"))
        best = {n: (-np.inf, 1.0) for n in names}
        for s in SCALES:
            ap = _od_ap(pairs, {**settings, "box_scale_factors": {n: s for n in names}}, names).mean(axis=1)
            for c, n in enumerate(names):
                if ap[c] >= best[n][0]:
                    best[n] = (ap[c], s)
        settings["box_scale_factors"] = {n: best[n][1] for n in names}
        modes = [dict(classify_by_weights=True, classify_by_prompts=False, softmax_temperature=None),
                 dict(classify_by_weights=False, classify_by_prompts=True, softmax_temperature=None)]
        modes += [dict(classify_by_weights=True, classify_by_prompts=True, softmax_temperature=t) for t in TEMPERATURES]
        best_map, best_mode = -np.inf, None
        for mode in modes:
            m = _od_ap(pairs, {**settings, **mode}, names).mean()
            if m >= best_map:
                best_map, best_mode = m, mode
        settings.update(best_mode)
        if settings.get("postprocess") == "nms":
            best_map, best_t = -np.inf, settings.get("nms_threshold")
            for t in NMS_THRESHOLDS:
                m = _od_ap(pairs, {**settings, "nms_threshold": t}, names).mean()
                if m >= best_map:
                    best_map, best_t = m, t
            settings["nms_threshold"] = best_t
    elif task.kind == "grounding":
        best_map, best_s = -np.inf, 1.0
        for s in SCALES:
            m = _sg_map(pairs, {**settings, "box_scale_factor": s})
            if m >= best_map:
                best_map, best_s = m, s
        settings["box_scale_factor"] = best_s
        best_map, best_t = -np.inf, settings.get("nms_threshold")
        for t in NMS_THRESHOLDS:
            m = _sg_map(pairs, {**settings, "nms_threshold": t if fix_b2 else settings["nms_threshold"]})
            if m >= best_map:
                best_map, best_t = m, t
        settings["nms_threshold"] = best_t
    return settings
