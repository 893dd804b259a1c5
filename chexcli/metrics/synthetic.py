"""Random detection data for tests and benchmarks (not real predictions)."""

from __future__ import annotations

import numpy as np

from chexcli.metrics.detection import ImageBoxes


def random_detection_set(n_images: int, n_classes: int, preds_per_image: float = 5.0,
                         gts_per_image: float = 3.0, seed: int = 0,
                         score_levels: int | None = None) -> list[ImageBoxes]:
    """Images with Poisson-many GT boxes and predictions near some of them.

    About half of the predictions are jittered copies of a GT box (same class),
    the rest random boxes of random classes. `score_levels` quantises scores
    to that many values to create ties.
    """
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n_images):
        n_gt = rng.poisson(gts_per_image)
        n_pred = rng.poisson(preds_per_image)
        gt_c = rng.uniform(0.15, 0.85, size=(n_gt, 2))
        gt_wh = rng.uniform(0.05, 0.4, size=(n_gt, 2))
        gt = np.concatenate([gt_c, gt_wh], axis=1)
        gt_l = rng.integers(0, n_classes, size=n_gt)
        pred = np.zeros((n_pred, 4))
        pred_l = rng.integers(0, n_classes, size=n_pred)
        for k in range(n_pred):
            if n_gt and rng.random() < 0.5:
                g = rng.integers(n_gt)
                pred[k, :2] = gt[g, :2] + rng.normal(0, 0.03, size=2)
                pred[k, 2:] = gt[g, 2:] * rng.uniform(0.7, 1.4, size=2)
                pred_l[k] = gt_l[g]
            else:
                pred[k, :2] = rng.uniform(0.15, 0.85, size=2)
                pred[k, 2:] = rng.uniform(0.05, 0.4, size=2)
        scores = rng.random(n_pred)
        if score_levels:
            scores = np.floor(scores * score_levels) / score_levels
        images.append(ImageBoxes.make(pred, scores, pred_l, gt, gt_l))
    return images
