"""Synthetic chest X-ray caricatures: a random chest geometry, its anatomy boxes and findings.

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

        Its horizontal half extent is ``ctr * (w_right + w_left) / 2``; its centre lies ``heart_shift`` half widths right of the midline (the right border at
        least 3 pixels beyond the mediastinum) and its lower part hides under the diaphragm.
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


# ============================================================================ shapes
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
        helpers[side] = {"lung": lung, "t": t, "r": r, "level": level}
        h_u, h_v = sc.hilum(side)
        hw, hh = 0.16 * (sc.w[side] - sc.m) + 5, 0.11 * sc.lung_height(side)
        out[f"{side} hilar structures"] = windowed(
            sc, u, v, [h_u - hw, h_u + hw] * 2, [h_v - hh] * 2 + [h_v + hh] * 2, 1,
            lambda uu, vv: ((uu - h_u) / hw) ** 2 + ((vv - h_v) / hh) ** 2 <= 1)
        out[f"{side} hemidiaphragm"] = (r >= 0) & (r <= 1.02) & (v >= level - 3) & (v <= level + 8)
        p, q = clavicle_segment(sc, side)
        out[f"{side} clavicle"] = windowed(sc, u, v, [p[0], q[0]], [p[1], q[1]], 6,
                                           lambda uu, vv: segment_distance2(uu, vv, p, q) < 25.0)
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


# ============================================================================ sampling
def sample_scene(seed: int, index: int) -> Scene:
    """Draw the geometry, look and findings of image ``index`` of the data set ``seed``."""
    rng = np.random.default_rng([seed, index, 0])
    U = lambda a, b: float(rng.uniform(a, b))  # noqa: E731
    w = U(80, 100)
    v_cp_left = U(68, 90)
    sc = Scene(
        cx=128 + U(-14, 14), cy=126 + U(-11, 11), angle=math.radians(U(-8, 8)), scale=U(0.78, 1.03),
        m=U(10, 16), w={"right": w * U(0.94, 1.06), "left": w * U(0.94, 1.06)}, v_top=-U(78, 98),
        v_cp={"left": v_cp_left, "right": v_cp_left - U(2, 10)}, dome={"right": U(16, 30), "left": U(16, 30)},
        ctr=U(*NORMAL_CTR), heart_shift=U(0.28, 0.42), heart_aspect=U(0.72, 0.88), heart_tilt=math.radians(U(22, 40)),
        trachea_u=U(-3, 3), knob_r=U(10, 14), clavicle_v=0.0, clavicle_tilt=U(6, 18),
        rib_spacing=U(15, 19), rib_phase=U(0, 1), rib_rise=U(14, 24), spine_w=U(10, 13), tissue=U(10, 20),
        gastric_bubble=bool(rng.random() < 0.7),
        look={"contrast": U(0.8, 1.2), "brightness": U(-0.06, 0.06), "gamma": U(0.75, 1.3),
              "blur": int(rng.integers(1, 3)), "noise": U(0.01, 0.04), "haze": U(0.0, 0.05), "markings": U(0.05, 0.09),
              "marking_freq": [int(k) for k in rng.integers(9, 17, size=2)],
              "marking_phase": [float(p) for p in rng.uniform(0, 2 * math.pi, size=2)]},
    )
    sc.clavicle_v = sc.v_top + U(4, 16)
    n = int(rng.choice(3, p=P_FINDINGS))
    kinds = [str(k) for k in rng.choice(FINDING_KINDS, size=n, replace=False)]
    if "cardiomegaly" in kinds:  # geometry first: the heart shapes the left lung
        sc.ctr = U(*ENLARGED_CTR)
        kinds.remove("cardiomegaly")
        sc.findings.append(Finding("cardiomegaly", size="enlarged"))
    for kind in kinds:
        f = _sample_lung_finding(sc, kind, rng)
        if f is not None:
            sc.findings.append(f)
    return sc


def _sample_lung_finding(sc: Scene, kind: str, rng: np.random.Generator) -> Finding | None:
    """A finding of ``kind`` on a random side (and zone) not already taken by another finding."""
    taken = {(f.side, f.zone) for f in sc.findings}
    for side in rng.permutation(["right", "left"]):
        side = str(side)
        pleural = {f.kind for f in sc.findings if f.side == side} & {"effusion", "pneumothorax"}
        if kind == "effusion" and not pleural and (side, "lower") not in taken:
            level = float(rng.uniform(0.64, 0.8))
            return Finding(kind, side, "lower", "small" if level > 0.74 else "moderate",
                           {"level": level, "meniscus": float(rng.uniform(0.05, 0.1))})
        if kind == "pneumothorax" and not pleural and (side, "upper") not in taken:
            depth = float(rng.uniform(20, 32))
            return Finding(kind, side, "upper", "small" if depth < 25 else "moderate",
                           {"depth": depth, "t_end": float(rng.uniform(0.45, 0.72))})
        if kind == "consolidation" and (side, "lower") not in taken:
            return Finding(kind, side, "lower", "", {"fissure": float(rng.uniform(0.6, 0.7)),
                                                     "slope": float(rng.uniform(0.0, 0.1))})
        if kind not in ("nodule", "opacity"):
            continue
        for zone in rng.permutation(list(ZONES)):
            zone = str(zone)
            if (side, zone) in taken:
                continue
            if kind == "nodule":
                r = float(rng.uniform(15.0, 21.0))  # 20-30 px: about one patch of a ViT-B/32 at 224
                c = _point_in_zone(sc, side, zone, r + 2, rng)
                if c is not None:
                    return Finding(kind, side, zone, "small" if r < 17 else "",
                                   {"u": c[0], "v": c[1], "r": r, "amp": float(rng.uniform(0.45, 0.55))})
            else:
                ru, rv = float(rng.uniform(24, 32)), float(rng.uniform(24, 32))
                c = _point_in_zone(sc, side, zone, 0.5 * min(ru, rv), rng)
                if c is not None:
                    return Finding(kind, side, zone, "", {"u": c[0], "v": c[1], "ru": ru, "rv": rv,
                                                          "amp": float(rng.uniform(0.42, 0.5)),
                                                          "texture": int(rng.integers(0, 2**31))})
    return None


def _point_in_zone(sc: Scene, side: str, zone: str, margin: float, rng) -> tuple[float, float] | None:
    """A point of the lung zone whose circle of radius ``margin`` lies inside the lung."""
    a, b = ZONES[zone]
    ang = np.linspace(0, 2 * math.pi, 12, endpoint=False)
    for _ in range(60):
        t = rng.uniform(a + 0.05, b - 0.05)
        v = sc.v_top + t * sc.lung_height(side)
        u = SIGN[side] * rng.uniform(sc.m, sc.w[side])
        pu = np.concatenate([[u], u + margin * np.cos(ang)])
        pv = np.concatenate([[v], v + margin * np.sin(ang)])
        if lung_mask(sc, side, pu, pv).all():
            return float(u), float(v)
    return None


# ============================================================================ rendering
def canonical_grid(sc: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Canonical (u, v) of every pixel centre: two float32 arrays (SIDE, SIDE)."""
    x = np.arange(SIDE, dtype=F32) + F32(0.5)
    dx = x[None, :] - F32(sc.cx)
    dy = x[:, None] - F32(sc.cy)
    c, s = F32(math.cos(sc.angle)), F32(math.sin(sc.angle))
    inv = F32(1.0 / sc.scale)
    return (c * dx + s * dy) * inv, (c * dy - s * dx) * inv


def to_image(sc: Scene, u, v) -> tuple[np.ndarray, np.ndarray]:
    """Canonical points -> image pixel coordinates (x, y)."""
    c, s = math.cos(sc.angle), math.sin(sc.angle)
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    return sc.cx + sc.scale * (c * u - s * v), sc.cy + sc.scale * (s * u + c * v)


def bbox(mask: np.ndarray) -> list[float] | None:
    """Pixel box [x1, y1, x2, y2] (x2, y2 exclusive) of a boolean (H, W) mask; None if empty.

    Rows and columns are reduced 8 pixels at a time (the mask viewed as uint64 words).
    """
    words = np.ascontiguousarray(mask, dtype=bool).view(np.uint64)
    nz = np.flatnonzero(words)
    if not len(nz):
        return None
    r0, r1 = nz[0] // words.shape[1], nz[-1] // words.shape[1]
    cols = np.flatnonzero(np.bitwise_or.reduce(words[r0:r1 + 1], axis=0).view(bool))
    return [float(cols[0]), float(r0), float(cols[-1] + 1), float(r1 + 1)]


def window(sc: Scene, us, vs, margin: float) -> tuple[slice, slice]:
    """Image rows and columns that cover the canonical points (us, vs) grown by ``margin``."""
    x, y = to_image(sc, us, vs)
    g = margin * sc.scale + 2
    x0, x1 = max(0, int(math.floor(x.min() - g))), min(SIDE, int(math.ceil(x.max() + g)))
    y0, y1 = max(0, int(math.floor(y.min() - g))), min(SIDE, int(math.ceil(y.max() + g)))
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def windowed(sc: Scene, u, v, us, vs, margin: float, fn) -> np.ndarray:
    """``fn(u, v)`` evaluated only in the window around the points (us, vs), zero elsewhere."""
    sl = window(sc, us, vs, margin)
    out = np.zeros(u.shape, dtype=bool)
    out[sl] = fn(u[sl], v[sl])
    return out


def _blur(img: np.ndarray, passes: int) -> np.ndarray:
    """Binomial [1, 2, 1] / 4 blur of a float32 (H, W) image, ``passes`` times per axis
    (sigma ~0.7 * sqrt(passes) pixels); edges replicated."""
    for _ in range(passes):
        p = np.concatenate([img[:1], img, img[-1:]], axis=0)
        img = (p[:-2] + p[2:]) * F32(0.25) + p[1:-1] * F32(0.5)
        p = np.concatenate([img[:, :1], img, img[:, -1:]], axis=1)
        img = (p[:, :-2] + p[:, 2:]) * F32(0.25) + p[:, 1:-1] * F32(0.5)
    return img


def _smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Uniform noise in [-1, 1] on a (cells+1)^2 lattice, bilinearly upsampled: float32 (SIDE, SIDE).

    ``cells`` divides SIDE, so every lattice cell covers the same ``SIDE // cells`` pixels.
    """
    step = SIDE // cells
    g = rng.uniform(-1, 1, size=(cells + 1, cells + 1)).astype(F32)
    f = np.tile(np.arange(step, dtype=F32) / step, cells)
    rows = np.repeat(g[:-1], step, 0) * (1 - f)[:, None] + np.repeat(g[1:], step, 0) * f[:, None]
    return np.repeat(rows[:, :-1], step, 1) * (1 - f)[None] + np.repeat(rows[:, 1:], step, 1) * f[None]


def _fast_atan2(y, x):
    """atan2 to ~1e-4 rad with a polynomial (numpy's is ~100x slower on float32)."""
    ax, ay = np.abs(x), np.abs(y)
    swap = ay > ax
    a = np.minimum(ax, ay) / (np.maximum(ax, ay) + F32(1e-6))
    s = a * a
    r = ((F32(-0.0464964749) * s + F32(0.15931422)) * s - F32(0.327622764)) * s * a + a
    r = r + swap * (F32(math.pi / 2) - 2 * r)
    r = r + (x < 0) * (F32(math.pi) - 2 * r)
    return r - (y < 0) * (2 * r)


def _smoothstep(x):
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


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
    look = sc.look
    u, v = canonical_grid(sc)
    A, H = anatomy_masks(sc, u, v)
    lungs = {side: H[side] for side in ("right", "left")}
    lung_any = lungs["right"]["lung"] | lungs["left"]["lung"]
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
    d -= lung_any * F32(0.30)
    # ribs: periodic arcs that rise, then fall laterally, inside the chest wall
    r = np.maximum(au - sc.m, 0) / ((sc.w["right"] + sc.w["left"]) / 2 - sc.m)
    arc = (v - sc.v_top + sc.rib_rise * r * (1 - 1.6 * r)) / sc.rib_spacing - sc.rib_phase
    thorax = (au > sc.m * 0.8) & (au < wide - 10) & (v > sc.v_top - 12) & (v < sc.v_cp["left"] + 4)
    d += ((arc - np.floor(arc) < 0.3) & (arc > -0.5) & thorax) * F32(0.07)
    # spine with vertebrae, trachea and main bronchi, clavicles
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
    # vessel markings radiating from the hila (computed inside each lung's box), hilar shadows
    marks = np.zeros_like(d)
    for side in ("right", "left"):
        hu, hv = sc.hilum(side)
        box = bbox(lungs[side]["lung"])
        if box is not None:
            sl = (slice(int(box[1]), int(box[3])), slice(int(box[0]), int(box[2])))
            marks[sl] = _markings(u[sl] - hu, v[sl] - hv, SIGN[side], look) * lungs[side]["lung"][sl]
        sl = window(sc, [hu], [hv], 27)
        du, dv = u[sl] - hu, v[sl] - hv
        d[sl] += F32(0.07) * np.exp((du * du + dv * dv) * F32(-1 / (2 * 9.0 ** 2)))
    d += F32(look["haze"]) * _smooth_noise(rng, 4)
    noise = (rng.random(u.shape, dtype=F32) - F32(0.5)) * F32(math.sqrt(12))  # unit variance

    boxes: list = []
    if with_findings:  # (the opacity texture is drawn last from the noise stream)
        add, no_marks, boxes = _draw_findings(sc, u, v, lungs, A, rng)
        d += add
        marks *= ~no_marks
    d += F32(4 * look["markings"]) * marks

    d = (d - F32(0.35)) * F32(look["contrast"]) + F32(0.35 + look["brightness"])
    d = _blur(np.clip(d, F32(0), F32(1)), look["blur"])
    gamma = (np.linspace(0, 1, 1024, dtype=F32) ** F32(look["gamma"])) * F32(255)  # lookup table
    d = gamma[(d * F32(1023) + F32(0.5)).astype(np.int32)] + F32(255 * look["noise"]) * noise
    img = np.clip(d + F32(0.5), 0, 255).astype(np.uint8)
    anatomy = {name: bbox(mask) for name, mask in A.items()}
    return Rendered(img, anatomy, boxes)


def _markings(du, dv, sign: float, look: dict):
    """Vessel streaks radiating from a hilum at offset (du, dv), fading with distance."""
    f1, f2 = look["marking_freq"]
    p1, p2 = look["marking_phase"]
    theta = _fast_atan2(dv, du * sign)
    dist = np.sqrt(du * du + dv * dv)
    streak = np.clip(np.cos(f1 * theta + p1) * np.cos(f2 * theta + p2 + dist / 40), 0, 1)
    return streak * streak * streak * np.exp(-dist / F32(70))


def _draw_findings(sc: Scene, u, v, lungs: dict, A: dict, rng: np.random.Generator):
    """(density added by the findings, where lung markings vanish, one box per finding)."""
    add = np.zeros(u.shape, dtype=F32)
    no_marks = np.zeros(u.shape, dtype=bool)
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
            add[sl] += F32(p["amp"]) * _smoothstep((p["r"] + 1 - dist) / 2.5)
            mask[sl] = dist < p["r"]
        elif f.kind == "opacity":
            sl = window(sc, [p["u"]], [p["v"]], max(p["ru"], p["rv"]) + 2)
            eu, ev = (u[sl] - p["u"]) / p["ru"], (v[sl] - p["v"]) / p["rv"]
            e = np.sqrt(eu * eu + ev * ev)
            texture = _smooth_noise(rng, 32)
            patchy = F32(0.7) + F32(0.3) * np.roll(texture, p["texture"] % 97, axis=p["texture"] % 2)[sl]
            alpha = _smoothstep((1.0 - e) / 0.45) * patchy * lung[sl]
            add[sl] += F32(p["amp"]) * alpha
            mask[sl] = alpha > 0.25
        elif f.kind == "consolidation":
            mask = lung & (t > p["fissure"] + p["slope"] * (1 - np.clip(r, 0, 1)))
            add += mask * F32(0.42)
            no_marks |= mask
        elif f.kind == "effusion":
            rr = 1 - np.clip(r, 0, 1)
            mask = lung & (t > p["level"] + p["meniscus"] * rr * np.sqrt(rr))
            add += mask * F32(0.48)
            no_marks |= mask
        elif f.kind == "pneumothorax":
            mask = _pneumothorax(sc, f.side, u, lung, t, p)
            edge = _dilate(mask, 2) & lung & ~mask  # the visceral pleural line
            add += edge * F32(0.3) - mask * F32(0.16)
            no_marks |= mask
        else:  # pragma: no cover
            raise ValueError(f.kind)
        boxes.append(bbox(mask))
    return add, no_marks, boxes


def _pneumothorax(sc: Scene, side: str, u, lung, t, p: dict) -> np.ndarray:
    """Air between the chest wall and the collapsed lung: an apical cap and a lateral rim
    ``depth`` wide that thins to nothing at relative height ``t_end``."""
    depth = p["depth"] * np.clip(1 - t / p["t_end"], 0, 1)
    cap = t < p["depth"] / sc.lung_height(side)
    return lung & ((SIGN[side] * u > lung_x_out(sc, side, t) - depth) | cap)


def _dilate(mask: np.ndarray, k: int) -> np.ndarray:
    """Binary dilation by ``k`` steps of the 4-neighbourhood."""
    out = mask.copy()
    for _ in range(k):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out
