"""A synthetic chest: its geometry, look and findings, in a canonical frame (docs/data.md#synthetic-data).

A scene is described in a *canonical frame* (``u`` towards the image right, ``v`` down, in
pixels at scale 1, origin at the chest centre) and placed into the 256 x 256 image by a
rotation, a scale and a shift. The canonical coordinates of every image pixel are computed
once (inverse map), so every structure is a vectorised mask over the image grid and every
anatomy or finding box is the bounding box of the pixels of its mask.

Radiological convention: the patient's RIGHT is on the IMAGE LEFT (``u < 0``); the heart
lies mostly on the image right (the patient's left).

Determinism: ``sample_scene(seed, index)`` draws everything about image ``index`` from
``numpy.random.default_rng([seed, index, 0])`` and ``render`` draws its noise from
``default_rng([seed, index, 1])``: images are independent of each other (parallel,
resumable), and a scene can be rendered without its findings with identical noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

SIDE = 256
SIGN = {"right": -1.0, "left": 1.0}  # patient side -> sign of u (patient right = image left)
ZONES = {"upper": (0.0, 1 / 3), "mid": (1 / 3, 2 / 3), "lower": (2 / 3, 1.0)}
APICAL_T = 0.16  # the apical zone is the top of the lung, t < APICAL_T
FINDING_KINDS = ("nodule", "opacity", "consolidation", "effusion", "pneumothorax", "cardiomegaly")
P_FINDINGS = (0.2, 0.45, 0.35)  # probability of 0, 1, 2 findings in an image
NORMAL_CTR = (0.38, 0.47)  # cardiothoracic ratio of a normal heart
ENLARGED_CTR = (0.56, 0.66)  # ... of cardiomegaly (heart wider than half the chest)
F32 = np.float32


@dataclass
class Finding:
    """One finding: ``kind`` (FINDING_KINDS), patient ``side`` and lung ``zone`` where they
    apply, the report adjective ``size`` and the drawing parameters ``params`` (canonical)."""

    kind: str
    side: str | None = None
    zone: str | None = None
    size: str = ""
    params: dict = field(default_factory=dict)


@dataclass
class Scene:
    """Geometry and look of one image (canonical frame, see the module docstring)."""

    cx: float  # image position of the canonical origin
    cy: float
    angle: float  # radians; image point = centre + scale * R(angle) (u, v)
    scale: float
    m: float  # mediastinum half width
    w: dict  # side -> lateral extent of the lung
    v_top: float  # lung apices
    v_cp: dict  # side -> level of the costophrenic angle (lowest point of the lung)
    dome: dict  # side -> height of the diaphragm dome above the costophrenic angle
    ctr: float  # cardiothoracic ratio: heart width / (w_right + w_left)
    heart_shift: float  # heart centre right of the midline, as a fraction of the half width
    heart_aspect: float  # minor / major axis of the heart ellipse
    heart_tilt: float  # radians, major axis pointing down to the image right
    trachea_u: float
    knob_r: float  # aortic knob radius
    clavicle_v: float
    clavicle_tilt: float
    rib_spacing: float
    rib_phase: float
    rib_rise: float
    spine_w: float
    tissue: float  # soft tissue outside the ribs
    gastric_bubble: bool
    look: dict  # contrast, brightness, gamma, blur, noise, haze, markings
    findings: list = field(default_factory=list)
    _memo: dict = field(default_factory=dict, repr=False, compare=False)

    def lung_height(self, side: str) -> float:
        return self.v_cp[side] - self.v_top

    def dome_level(self, side: str, r):
        """Diaphragm level under the lung at relative lateral position r (0 medial, 1 lateral):
        lowest at the costophrenic angle (r = 1), highest at r = 0.4, a little lower medially."""
        r = np.clip(r, 0.0, 1.0)
        top = self.v_cp[side] - self.dome[side]
        lat = np.maximum(r - 0.4, 0.0) / 0.6
        med = np.maximum(0.4 - r, 0.0) / 0.4
        return top + self.dome[side] * (lat * lat + 0.45 * med * med)

    def heart(self) -> tuple[float, float, float, float]:
        """(centre u, centre v, major half axis, minor half axis) of the tilted heart ellipse.

        Its horizontal half extent is ``ctr * (w_right + w_left) / 2``; its centre lies
        ``heart_shift`` half widths right of the midline (the right border at least 3 pixels
        beyond the mediastinum) and its lower part hides under the diaphragm.
        """
        if self._memo.get("heart_ctr") == self.ctr:
            return self._memo["heart"]
        hw = self.ctr * (self.w["right"] + self.w["left"]) / 2
        c, s, k = math.cos(self.heart_tilt), math.sin(self.heart_tilt), self.heart_aspect
        a = hw / math.sqrt(c * c + k * k * s * s)
        b = k * a
        half_h = math.sqrt(a * a * s * s + b * b * c * c)
        base = float(self.dome_level("left", 0.0))
        geometry = (min(self.heart_shift * hw, hw - self.m - 3), base - 0.6 * half_h, a, b)
        self._memo["heart_ctr"], self._memo["heart"] = self.ctr, geometry
        return geometry

    def heart_top(self) -> float:
        hu, hv, a, b = self.heart()
        c, s = math.cos(self.heart_tilt), math.sin(self.heart_tilt)
        return hv - math.sqrt(a * a * s * s + b * b * c * c)

    def diaphragm_base(self) -> float:
        """The lower of the two medial diaphragm levels (bottom of the mediastinum)."""
        return max(float(self.dome_level("left", 0.0)), float(self.dome_level("right", 0.0)))

    def carina_v(self) -> float:
        return self.v_top + 0.3 * self.lung_height("right")

    def knob(self) -> tuple[float, float, float]:
        return self.m + 0.3 * self.knob_r, self.v_top + 0.22 * self.lung_height("left"), self.knob_r

    def hilum(self, side: str) -> tuple[float, float]:
        return (SIGN[side] * (self.m + 0.2 * (self.w[side] - self.m) + 2),
                self.v_top + 0.45 * self.lung_height(side))
