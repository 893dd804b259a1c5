"""Synthetic chest X-ray caricatures: a scene (:mod:`.scene`) drawn as a 256 x 256 uint8 image
with the boxes of its anatomies and findings.

``render`` draws its noise from ``numpy.random.default_rng([seed, index, 1])``, so a scene
can be rendered without its findings with identical noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from chexcli.data.synthetic.filters import blur, fast_atan2, smooth_noise
from chexcli.data.synthetic.findings import draw_findings
from chexcli.data.synthetic.grid import bbox, canonical_grid, window, windowed
from chexcli.data.synthetic.scene import F32, SIDE, SIGN, Scene
from chexcli.data.synthetic.shapes import anatomy_masks, segment_distance2, side_width


AIR_BRONCHOGRAM = 0.3  # density taken out along the marking streaks inside a consolidation


@dataclass
class Rendered:
    image: np.ndarray  # uint8 (SIDE, SIDE)
    anatomy: dict  # anatomy name -> [x1, y1, x2, y2] pixel box (None if outside the image)
    findings: list  # one [x1, y1, x2, y2] pixel box per scene finding (None if outside)


def render(sc: Scene, seed: int, index: int, with_findings: bool = True) -> Rendered:
    """Draw the scene as a uint8 (SIDE, SIDE) image with its anatomy and finding boxes.

    Density model (bright = dense): air 0.04, soft tissue ~0.55, lungs ~0.26 with vessel
    markings, mediastinum/heart and abdomen ~0.67, bone (ribs, spine, clavicles) brighter;
    then contrast, gamma, blur and noise of the scene's ``look``.
    """
    rng = np.random.default_rng([seed, index, 1])
    u, v = canonical_grid(sc)
    A, H = anatomy_masks(sc, u, v)
    lungs = {side: H[side] for side in ("right", "left")}
    d = _body_density(sc, u, v, A, H)
    _add_spine_airways_clavicles(d, sc, u, v, A, H["body"])
    marks = _vessel_markings(d, sc, u, v, lungs)
    d += F32(sc.look["haze"]) * smooth_noise(rng, 4)
    noise = (rng.random(u.shape, dtype=F32) - F32(0.5)) * F32(math.sqrt(12))  # unit variance

    boxes: list = []
    if with_findings:  # (the opacity texture is drawn last from the noise stream)
        add, no_marks, air, boxes = draw_findings(sc, u, v, lungs, A, rng)
        d += add - F32(AIR_BRONCHOGRAM) * _air_bronchograms(sc, u, v, air)
        marks *= ~no_marks
    d += F32(4 * sc.look["markings"]) * marks
    anatomy = {name: bbox(mask) for name, mask in A.items()}
    return Rendered(_film(d, noise, sc.look), anatomy, boxes)


def _body_density(sc: Scene, u, v, A: dict, H: dict) -> np.ndarray:
    """Soft tissue, mediastinum and abdomen, the gastric bubble, the lungs and the ribs."""
    body = H["body"]
    au = np.abs(u)
    wide = side_width(sc, u) + F32(sc.tissue + 6)
    q = np.minimum(au / wide, F32(1))
    d = F32(0.04) + body * (F32(0.5) + F32(0.06) * (1 - q * q))
    d += (A["mediastinum"] | (H["below"] & body)) * F32(0.12)
    if sc.gastric_bubble:
        gu, gv = sc.m + 0.45 * (sc.w["left"] - sc.m), float(sc.dome_level("left", 0.45)) + 11
        d -= windowed(sc, u, v, [gu], [gv], 12,
                      lambda uu, vv: ((uu - gu) / 11) ** 2 + ((vv - gv) / 6) ** 2 <= 1) * F32(0.12)
    d -= (H["right"]["lung"] | H["left"]["lung"]) * F32(0.30)
    # ribs: periodic arcs that rise, then fall laterally, inside the chest wall
    r = np.maximum(au - sc.m, 0) / ((sc.w["right"] + sc.w["left"]) / 2 - sc.m)
    arc = (v - sc.v_top + sc.rib_rise * r * (1 - 1.6 * r)) / sc.rib_spacing - sc.rib_phase
    thorax = (au > sc.m * 0.8) & (au < wide - 10) & (v > sc.v_top - 12) & (v < sc.v_cp["left"] + 4)
    d += ((arc - np.floor(arc) < 0.3) & (arc > -0.5) & thorax) * F32(0.07)
    return d


def _add_spine_airways_clavicles(d: np.ndarray, sc: Scene, u, v, A: dict, body) -> None:
    """Spine with vertebrae, trachea and main bronchi, clavicles (added to ``d`` in place)."""
    au = np.abs(u)
    top, bottom = -sc.cy / sc.scale - 20, (SIDE - sc.cy) / sc.scale + 20  # canonical v of the image rows
    sl = window(sc, [-sc.spine_w, sc.spine_w] * 2, [top] * 2 + [bottom] * 2, 1)
    vv = v[sl] / F32(13.0)
    vert = (np.abs(vv - np.floor(vv) - 0.5) < 0.35) * F32(0.4) + F32(0.6)
    d[sl] += ((au[sl] < sc.spine_w) & body[sl]) * vert * F32(0.06)
    cv, tu = sc.carina_v(), sc.trachea_u
    airway = A["trachea"].copy()
    for s in (-1, 1):
        airway |= windowed(sc, u, v, [tu, tu + s * 22], [cv, cv + 22], 5,
                           lambda uu, vv, s=s: segment_distance2(uu, vv, (tu, cv), (tu + s * 22, cv + 22)) < 20.0)
    d -= airway * F32(0.14)
    d += (A["right clavicle"] | A["left clavicle"]) * F32(0.16)


def _vessel_markings(d: np.ndarray, sc: Scene, u, v, lungs: dict) -> np.ndarray:
    """Vessel markings radiating from the hila (computed inside each lung's box), returned;
    the hilar shadows are added to ``d`` in place."""
    marks = np.zeros_like(d)
    for side in ("right", "left"):
        hu, hv = sc.hilum(side)
        box = bbox(lungs[side]["lung"])
        if box is not None:
            sl = (slice(int(box[1]), int(box[3])), slice(int(box[0]), int(box[2])))
            marks[sl] = _markings(u[sl] - hu, v[sl] - hv, SIGN[side], sc.look) * lungs[side]["lung"][sl]
        sl = window(sc, [hu], [hv], 27)
        du, dv = u[sl] - hu, v[sl] - hv
        d[sl] += F32(0.07) * np.exp((du * du + dv * dv) * F32(-1 / (2 * 9.0 ** 2)))
    return marks


def _air_bronchograms(sc: Scene, u, v, air: np.ndarray) -> np.ndarray:
    """Aerated bronchi inside a consolidation: branching lucent streaks that point back to the
    hilum and, unlike the vessel markings, do not fade towards the periphery; 0 outside ``air``."""
    out = np.zeros(u.shape, dtype=F32)
    box = bbox(air)
    if box is None:
        return out
    sl = (slice(int(box[1]), int(box[3])), slice(int(box[0]), int(box[2])))
    for side in ("right", "left"):
        hu, hv = sc.hilum(side)
        here = air[sl] & (SIGN[side] * u[sl] > 0)
        if not here.any():
            continue
        du, dv = u[sl] - hu, v[sl] - hv
        theta = fast_atan2(dv, du * SIGN[side])
        streak = np.clip(np.cos(2 * sc.look["marking_freq"][0] * theta + sc.look["marking_phase"][0]), 0, 1)
        out[sl] += streak ** 6 * here
    return out


def _markings(du, dv, sign: float, look: dict):
    """Vessel streaks radiating from a hilum at offset (du, dv), fading with distance."""
    f1, f2 = look["marking_freq"]
    p1, p2 = look["marking_phase"]
    theta = fast_atan2(dv, du * sign)
    dist = np.sqrt(du * du + dv * dv)
    streak = np.clip(np.cos(f1 * theta + p1) * np.cos(f2 * theta + p2 + dist / 40), 0, 1)
    return streak * streak * streak * np.exp(-dist / F32(70))


def _film(d: np.ndarray, noise: np.ndarray, look: dict) -> np.ndarray:
    """Densities -> uint8 image: contrast, brightness, blur, gamma and noise of the ``look``."""
    d = (d - F32(0.35)) * F32(look["contrast"]) + F32(0.35 + look["brightness"])
    d = blur(np.clip(d, F32(0), F32(1)), look["blur"])
    gamma = (np.linspace(0, 1, 1024, dtype=F32) ** F32(look["gamma"])) * F32(255)  # lookup table
    d = gamma[(d * F32(1023) + F32(0.5)).astype(np.int32)] + F32(255 * look["noise"]) * noise
    return np.clip(d + F32(0.5), 0, 255).astype(np.uint8)
