"""The structures of a synthetic chest as boolean masks over the image grid (canonical u, v),
and the 29 Chest ImaGenome anatomies built from them."""

from __future__ import annotations

import math

import numpy as np

from chexcli.data.synthetic.grid import window, windowed
from chexcli.data.synthetic.scene import APICAL_T, F32, SIGN, Scene


def lung_t(sc: Scene, side: str, v):
    """Relative height in the lung of ``side``: 0 at the apex, 1 at the costophrenic angle."""
    return (v - sc.v_top) / sc.lung_height(side)


def lateral_r(sc: Scene, side: str, u):
    """Relative lateral position: 0 at the mediastinum, 1 at the lateral lung border."""
    return (SIGN[side] * u - sc.m) / (sc.w[side] - sc.m)


def lung_x_out(sc: Scene, side: str, t):
    """Lateral lung border |u| at relative height t (rounded apex, widest from t = 0.8)."""
    w, m = sc.w[side], sc.m
    ca = m + 0.4 * (w - m)  # column of the apex
    q = (0.8 - np.minimum(t, 0.8)) / 0.8
    return ca + (w - ca) * np.sqrt(np.clip(1 - q * q, 0, 1))


def lung_x_in(sc: Scene, side: str, t):
    """Medial lung border |u| at relative height t (the apex curves in to the mediastinum)."""
    w, m = sc.w[side], sc.m
    ca = m + 0.4 * (w - m)
    q = (0.25 - np.minimum(t, 0.25)) / 0.25
    return ca - (ca - m) * np.sqrt(np.clip(1 - q * q, 0, 1))


def heart_mask(sc: Scene, u, v):
    hu, hv, a, b = sc.heart()
    c, s = math.cos(sc.heart_tilt), math.sin(sc.heart_tilt)
    du, dv = u - hu, v - hv
    p, q = (du * c + dv * s) / a, (dv * c - du * s) / b
    return p * p + q * q <= 1.0


def knob_mask(sc: Scene, u, v):
    ku, kv, kr = sc.knob()
    return (u - ku) ** 2 + (v - kv) ** 2 <= kr * kr


def lung_mask(sc: Scene, side: str, u, v, heart=None, knob=None, t=None, level=None):
    """The lung of ``side``: apex to diaphragm, mediastinum to lateral wall, minus heart and knob.

    ``t`` (relative height) and ``level`` (diaphragm level) may be passed when already known.
    """
    au = SIGN[side] * u
    t = lung_t(sc, side, v) if t is None else t
    level = sc.dome_level(side, lateral_r(sc, side, u)) if level is None else level
    inside = (t >= 0) & (au >= lung_x_in(sc, side, t)) & (au <= lung_x_out(sc, side, t)) & (v <= level)
    heart = heart_mask(sc, u, v) if heart is None else heart
    knob = knob_mask(sc, u, v) if knob is None else knob
    return inside & ~heart & ~knob


def side_width(sc: Scene, u):
    """Lateral extent of the lung on the side of each point."""
    return F32(sc.w["left"]) + (u < 0) * F32(sc.w["right"] - sc.w["left"])


def body_mask(sc: Scene, u, v):
    """Chest wall and shoulders: soft tissue outside the lungs, wider towards the shoulders."""
    extra = sc.tissue + 26 * np.clip((sc.v_top + 5 - v) / 45, 0, 1) - 6 * np.clip((v - sc.v_cp["left"]) / 50, 0, 1)
    return np.abs(u) < side_width(sc, u) + extra


def below_diaphragm(sc: Scene, u, v, levels: dict | None = None):
    """Under the diaphragm, inside the lateral chest walls (``levels``: side -> diaphragm level)."""
    if levels is None:
        levels = {s: sc.dome_level(s, lateral_r(sc, s, u)) for s in ("right", "left")}
    level = levels["left"] + (levels["right"] - levels["left"]) * (u < 0)
    return (v > level) & (np.abs(u) < side_width(sc, u) + 6)


def segment_distance2(u, v, p, q):
    """Squared distance of points (u, v) to the segment p-q."""
    du, dv = q[0] - p[0], q[1] - p[1]
    t = np.clip(((u - p[0]) * du + (v - p[1]) * dv) / (du * du + dv * dv), 0, 1)
    eu, ev = u - (p[0] + t * du), v - (p[1] + t * dv)
    return eu * eu + ev * ev


def clavicle_segment(sc: Scene, side: str):
    s = SIGN[side]
    return (s * (sc.m + 2), sc.clavicle_v), (s * (sc.w[side] + 16), sc.clavicle_v - sc.clavicle_tilt)


def anatomy_masks(sc: Scene, u, v) -> tuple[dict, dict]:
    """The 29 Chest ImaGenome anatomies (``cig_default``) as boolean masks over the image grid
    (u, v), and the helpers that drawing reuses: per side ``{"lung", "t", "r", "level"}``,
    and ``"below"`` (under the diaphragm)."""
    out: dict[str, np.ndarray] = {}
    helpers: dict = {}
    heart = heart_mask(sc, u, v)
    knob = knob_mask(sc, u, v)
    hu, hv, a, b = sc.heart()
    base = sc.diaphragm_base()
    for side in ("right", "left"):
        helpers[side] = _side_anatomies(sc, side, u, v, heart, knob, out)
    cv, tu = sc.carina_v(), sc.trachea_u
    out["trachea"] = windowed(sc, u, v, [tu - 6, tu + 6] * 2, [sc.v_top - 45] * 2 + [cv] * 2, 1,
                              lambda uu, vv: (np.abs(uu - tu) < 6) & (vv >= sc.v_top - 45) & (vv <= cv))
    sw = sc.spine_w
    out["spine"] = windowed(sc, u, v, [-sw, sw] * 2, [sc.v_top - 30] * 2 + [base + 12] * 2, 1,
                            lambda uu, vv: (np.abs(uu) < sw) & (vv >= sc.v_top - 30) & (vv <= base + 12))
    out["aortic arch"] = knob
    central = (np.abs(u) < sc.m + 1) & (v >= sc.v_top - 25)
    out["cardiac silhouette"] = heart & (v <= base + 2)
    out["mediastinum"] = (central & (v <= base)) | out["cardiac silhouette"] | knob
    out["upper mediastinum"] = (central & (v <= cv + 10)) | knob
    top = sc.heart_top()
    su = [-(sc.m + 3), -(sc.m - 6)]
    out["svc"] = windowed(sc, u, v, su * 2, [sc.clavicle_v] * 2 + [top + 4] * 2, 1,
                          lambda uu, vv: (uu > su[0]) & (uu < su[1]) & (vv >= sc.clavicle_v) & (vv <= top + 4))
    cu, cw = -(sc.m + 1), top + 4
    out["cavoatrial junction"] = windowed(sc, u, v, [cu - 10, cu + 10] * 2, [cw - 10] * 2 + [cw + 10] * 2, 1,
                                          lambda uu, vv: (np.abs(uu - cu) < 10) & (np.abs(vv - cw) < 10))
    out["right atrium"] = out["cardiac silhouette"] & (u < hu - 0.45 * a) & (v > hv - 0.5 * b)
    out["carina"] = windowed(sc, u, v, [tu - 13, tu + 13] * 2, [cv - 8] * 2 + [cv + 14] * 2, 1,
                             lambda uu, vv: (np.abs(uu - tu) < 13) & (vv >= cv - 8) & (vv <= cv + 14))
    helpers["below"] = below_diaphragm(sc, u, v, {s: helpers[s]["level"] for s in ("right", "left")})
    helpers["body"] = body_mask(sc, u, v)
    out["abdomen"] = helpers["below"] & helpers["body"]
    return out, helpers


def _side_anatomies(sc: Scene, side: str, u, v, heart, knob, out: dict) -> dict:
    """The anatomies of one side into ``out``; returns the side's drawing helpers
    ``{"lung", "t", "r", "level"}``."""
    t, r = lung_t(sc, side, v), lateral_r(sc, side, u)
    level = sc.dome_level(side, r)
    # the lung and its parts, computed in the window of the hemithorax only
    s = SIGN[side]
    sl = window(sc, [s * sc.m, s * sc.w[side]] * 2, [sc.v_top] * 2 + [sc.v_cp[side]] * 2, 2)
    lw, tw, rw = lung_mask(sc, side, u[sl], v[sl], heart[sl], knob[sl], t[sl], level[sl]), t[sl], r[sl]
    parts = {"lung": lw, "upper lung zone": lw & (tw < 1 / 3), "mid lung zone": lw & (tw >= 1 / 3) & (tw < 2 / 3),
             "lower lung zone": lw & (tw >= 2 / 3), "apical zone": lw & (tw < APICAL_T),
             "costophrenic angle": lw & (tw > 0.8) & (rw > 0.62)}
    for name, local in parts.items():
        out[f"{side} {name}"] = np.zeros(u.shape, dtype=bool)
        out[f"{side} {name}"][sl] = local
    lung = out[f"{side} lung"]
    h_u, h_v = sc.hilum(side)
    hw, hh = 0.16 * (sc.w[side] - sc.m) + 5, 0.11 * sc.lung_height(side)
    out[f"{side} hilar structures"] = windowed(
        sc, u, v, [h_u - hw, h_u + hw] * 2, [h_v - hh] * 2 + [h_v + hh] * 2, 1,
        lambda uu, vv: ((uu - h_u) / hw) ** 2 + ((vv - h_v) / hh) ** 2 <= 1)
    out[f"{side} hemidiaphragm"] = (r >= 0) & (r <= 1.02) & (v >= level - 3) & (v <= level + 8)
    p, q = clavicle_segment(sc, side)
    out[f"{side} clavicle"] = windowed(sc, u, v, [p[0], q[0]], [p[1], q[1]], 6,
                                       lambda uu, vv: segment_distance2(uu, vv, p, q) < 25.0)
    return {"lung": lung, "t": t, "r": r, "level": level}
