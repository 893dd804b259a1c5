"""Drawing a random scene: geometry, look and findings of image ``index`` of data set ``seed``."""

from __future__ import annotations

import math

import numpy as np

from chexcli.data.synthetic.scene import (ENLARGED_CTR, FINDING_KINDS, NORMAL_CTR, P_FINDINGS, SIGN, ZONES, Finding,
                                          Scene)
from chexcli.data.synthetic.shapes import lung_mask


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
                c = _point_in_zone(sc, side, zone, r + 2, rng, depth=0.7 * r)
                if c is not None:
                    return Finding(kind, side, zone, "small" if r < 17 else "",
                                   {"u": c[0], "v": c[1], "r": r, "amp": float(rng.uniform(0.45, 0.55))})
            else:
                # an ill-defined, patchy density larger than a nodule, away from the hilum whose
                # shadow it would otherwise merge with, its centre far enough inside the zone
                # that the zone its sentence names holds most of it (docs/demo.md)
                ru, rv = float(rng.uniform(28, 38)), float(rng.uniform(28, 38))
                c = _point_in_zone(sc, side, zone, 0.5 * min(ru, rv), rng, lateral=0.35, depth=0.4 * rv)
                if c is not None:
                    return Finding(kind, side, zone, "", {"u": c[0], "v": c[1], "ru": ru, "rv": rv,
                                                          "amp": float(rng.uniform(0.55, 0.65)),
                                                          "texture": int(rng.integers(0, 2**31))})
    return None


def _point_in_zone(sc: Scene, side: str, zone: str, margin: float, rng,
                   lateral: float = 0.0, depth: float = 0.0) -> tuple[float, float] | None:
    """A point of the lung zone whose circle of radius ``margin`` lies inside the lung, in the
    outer ``1 - lateral`` of the hemithorax's width, at least ``depth`` (canonical units) and
    5 % of the lung's height inside the zone's upper and lower borders."""
    a, b = ZONES[zone]
    inset = max(0.05, depth / sc.lung_height(side))
    ang = np.linspace(0, 2 * math.pi, 12, endpoint=False)
    for _ in range(60):
        t = rng.uniform(a + inset, b - inset)
        v = sc.v_top + t * sc.lung_height(side)
        u = SIGN[side] * rng.uniform(sc.m + lateral * (sc.w[side] - sc.m), sc.w[side])
        pu = np.concatenate([[u], u + margin * np.cos(ang)])
        pv = np.concatenate([[v], v + margin * np.sin(ang)])
        if lung_mask(sc, side, pu, pv).all():
            return float(u), float(v)
    return None
