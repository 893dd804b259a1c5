"""The findings of a synthetic scene drawn into the density image, each with the box of the
pixels it changed."""

from __future__ import annotations

import numpy as np

from chexcli.data.synthetic.filters import dilate, smooth_noise, smoothstep
from chexcli.data.synthetic.grid import bbox, window
from chexcli.data.synthetic.scene import F32, SIGN, Scene
from chexcli.data.synthetic.shapes import lung_x_out


def draw_findings(sc: Scene, u, v, lungs: dict, A: dict, rng: np.random.Generator):
    """(density added by the findings, where lung markings vanish, where they turn into air
    bronchograms (lucent instead of dense), one box per finding)."""
    add = np.zeros(u.shape, dtype=F32)
    no_marks = np.zeros(u.shape, dtype=bool)
    air = np.zeros(u.shape, dtype=bool)
    boxes = []
    for f in sc.findings:
        p = f.params
        if f.kind == "cardiomegaly":  # drawn by the geometry (ctr)
            boxes.append(bbox(A["cardiac silhouette"]))
            continue
        lung, t, r = lungs[f.side]["lung"], lungs[f.side]["t"], lungs[f.side]["r"]
        mask = np.zeros(u.shape, dtype=bool)
        if f.kind == "nodule":
            sl = window(sc, [p["u"]], [p["v"]], p["r"] + 4)
            du, dv = u[sl] - p["u"], v[sl] - p["v"]
            dist = np.sqrt(du * du + dv * dv)
            add[sl] += F32(p["amp"]) * smoothstep((p["r"] + 1 - dist) / 2.5)
            mask[sl] = dist < p["r"]
        elif f.kind == "opacity":
            sl = window(sc, [p["u"]], [p["v"]], max(p["ru"], p["rv"]) + 2)
            eu, ev = (u[sl] - p["u"]) / p["ru"], (v[sl] - p["v"]) / p["rv"]
            e = np.sqrt(eu * eu + ev * ev)
            texture = smooth_noise(rng, 32)
            patchy = F32(0.7) + F32(0.3) * np.roll(texture, p["texture"] % 97, axis=p["texture"] % 2)[sl]
            alpha = smoothstep((1.0 - e) / 0.45) * patchy * lung[sl]
            add[sl] += F32(p["amp"]) * alpha
            mask[sl] = alpha > 0.25
        elif f.kind == "consolidation":
            # airspace filling below the fissure; the bronchi stay aerated (air bronchograms,
            # drawn by the caller from the vessel-marking pattern), which an effusion never shows
            mask = lung & (t > p["fissure"] + p["slope"] * (1 - np.clip(r, 0, 1)))
            add += mask * F32(0.42)
            no_marks |= mask
            air |= mask
        elif f.kind == "effusion":
            rr = 1 - np.clip(r, 0, 1)
            mask = lung & (t > p["level"] + p["meniscus"] * rr * np.sqrt(rr))
            add += mask * F32(0.48)
            no_marks |= mask
        elif f.kind == "pneumothorax":
            mask = _pneumothorax(sc, f.side, u, lung, t, p)
            edge = dilate(mask, 2) & lung & ~mask  # the visceral pleural line
            add += edge * F32(0.3) - mask * F32(0.16)
            no_marks |= mask
        else:  # pragma: no cover
            raise ValueError(f.kind)
        boxes.append(bbox(mask))
    return add, no_marks, air, boxes


def _pneumothorax(sc: Scene, side: str, u, lung, t, p: dict) -> np.ndarray:
    """Air between the chest wall and the collapsed lung: an apical cap and a lateral rim
    ``depth`` wide that thins to nothing at relative height ``t_end``."""
    depth = p["depth"] * np.clip(1 - t / p["t_end"], 0, 1)
    cap = t < p["depth"] / sc.lung_height(side)
    return lung & ((SIGN[side] * u > lung_x_out(sc, side, t) - depth) | cap)
