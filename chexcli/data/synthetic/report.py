"""Report text of a synthetic scene: sentences, the regions they describe, region labels.

Every sentence names its finding and place with the real Chest ImaGenome anatomy names
("There is a small nodule in the left upper lung zone."); each anatomy of ``cig_default``
gets at least one sentence (a normal one when nothing is found there), like the anatomy
phrases of Chest ImaGenome. Wording varies a little, from a small fixed vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chexcli.data.synthetic.scene import Finding, Scene

# Chest ImaGenome region labels (``cig_all`` without the ``cig/`` prefix) per finding kind
CIG_LABELS = {
    "nodule": ["af/lung lesion", "af/mass/nodule (not otherwise specified)"],
    "opacity": ["af/lung opacity"],
    "consolidation": ["af/lung opacity", "af/consolidation"],
    "effusion": ["af/pleural effusion"],
    "pneumothorax": ["af/pneumothorax"],
    "cardiomegaly": ["af/enlarged cardiac silhouette"],
}
# VinDr-CXR local labels and MS-CXR categories per finding kind (MS-CXR has no nodule)
VINDR_CLASS = {"nodule": "Nodule/Mass", "opacity": "Lung Opacity", "consolidation": "Consolidation",
               "effusion": "Pleural effusion", "pneumothorax": "Pneumothorax", "cardiomegaly": "Cardiomegaly"}
MSCXR_CLASS = {"opacity": "Lung Opacity", "consolidation": "Consolidation", "effusion": "Pleural Effusion",
               "pneumothorax": "Pneumothorax", "cardiomegaly": "Cardiomegaly"}

FINDING_TEMPLATES = {
    "nodule": ["There is a {size}nodule in the {zone}.", "{Size}nodule in the {zone}.",
               "A {size}nodule is seen in the {zone}."],
    "opacity": ["There is an opacity in the {zone}.", "{Zone} opacity.", "Patchy opacity in the {zone}."],
    "consolidation": ["There is consolidation in the {zone}.", "{Zone} consolidation.",
                      "Dense consolidation in the {zone}."],
    "effusion": ["{Size} {side} pleural effusion.", "There is a {size} {side} pleural effusion.",
                 "{Size} {side} pleural effusion with blunting of the costophrenic angle."],
    "pneumothorax": ["There is a {size} {side} apical pneumothorax.", "{Size} {side} pneumothorax.",
                     "A {size} pneumothorax is seen at the {side} apex."],
    "cardiomegaly": ["The cardiac silhouette is enlarged.", "The heart is enlarged.", "Moderate cardiomegaly."],
}
NORMAL = {
    "lungs": ["The lungs are clear.", "No focal consolidation is seen in either lung."],
    "lung": ["The {side} lung is clear.", "No focal opacity in the {side} lung."],
    "zone": ["The {zone} is clear."],
    "heart": ["Heart size is normal.", "The cardiac silhouette is normal in size.", "The heart is not enlarged."],
    "effusion": ["No pleural effusion.", "There is no pleural effusion."],
    "effusion_side": ["No {side} pleural effusion."],
    "pneumothorax": ["No pneumothorax.", "There is no pneumothorax."],
    "pneumothorax_side": ["No {side} pneumothorax."],
    "mediastinum": ["The mediastinal contours are normal.", "Mediastinal contours are within normal limits."],
    "hila": ["The hila are normal.", "Hilar contours are normal."],
    "trachea": ["The trachea is midline."],
    "diaphragm": ["The hemidiaphragms are normal."],
    "diaphragm_side": ["The {side} hemidiaphragm is normal."],
    "bones": ["No acute osseous abnormality.", "The osseous structures are intact."],
    "abdomen": ["No free air below the diaphragm.", "The upper abdomen is unremarkable."],
}
LUNG_PARTS = ["lung", "upper lung zone", "mid lung zone", "lower lung zone", "apical zone"]


def finding_regions(f: Finding) -> list[str]:
    """The anatomy regions (``cig_default`` names) a finding's sentence is linked to."""
    s = f.side
    if f.kind in ("nodule", "opacity", "consolidation"):
        return [f"{s} {f.zone} lung zone", f"{s} lung"]
    if f.kind == "effusion":
        return [f"{s} costophrenic angle", f"{s} lower lung zone", f"{s} hemidiaphragm", f"{s} lung"]
    if f.kind == "pneumothorax":
        return [f"{s} apical zone", f"{s} upper lung zone", f"{s} lung"]
    return ["cardiac silhouette", "right atrium"]


def finding_sentence(f: Finding, rng: np.random.Generator) -> str:
    template = FINDING_TEMPLATES[f.kind][int(rng.integers(len(FINDING_TEMPLATES[f.kind])))]
    zone = f"{f.side} {f.zone} lung zone" if f.zone else ""
    size = f"{f.size} " if f.kind == "nodule" and f.size else f.size
    text = template.format(zone=zone, Zone=zone.capitalize(), side=f.side or "", size=size,
                           Size=size.capitalize())
    return text[0].upper() + text[1:]


@dataclass
class SceneText:
    report: list  # report sentences, findings first
    finding_sentences: list  # one sentence per scene finding
    anat_sentences: dict  # region -> [sentences]
    anat_labels: dict  # region -> positive labels: "normal" or "abnormal" + "af/..."


def scene_text(sc: Scene, rng: np.random.Generator, anatomy: list[str]) -> SceneText:
    """Report, per-finding sentences, region sentences and region labels of a scene."""
    text = _Text(rng)
    finding_texts = []
    for f in sc.findings:
        sentence = finding_sentence(f, rng)
        finding_texts.append(sentence)
        text.say(sentence, finding_regions(f), CIG_LABELS[f.kind])
        if f.kind == "effusion":
            text.labels[f"{f.side} costophrenic angle"].append("af/costophrenic angle blunting")
    affected = {r for f in sc.findings for r in finding_regions(f)}
    _lungs_clear(text, sc, affected)
    _normal_statements(text, sc)

    anat_labels = {}
    for region in anatomy:
        positive = text.labels.get(region, [])
        anat_labels[region] = (["abnormal"] + positive) if region in affected else ["normal"]
    missing = [a for a in anatomy if not text.sentences.get(a)]
    if missing:  # pragma: no cover - every anatomy is covered above
        raise AssertionError(f"no sentence for {missing}")
    return SceneText(text.report, finding_texts, {a: text.sentences[a] for a in anatomy}, anat_labels)


class _Text:
    """The report being written: its sentences, and per region its sentences and labels."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.sentences: dict[str, list[str]] = {}
        self.labels: dict[str, list[str]] = {}
        self.report: list[str] = []

    def say(self, text: str, regions: list[str], positive: list[str] | None = None) -> None:
        if text not in self.report:
            self.report.append(text)
        for region in regions:
            if text not in self.sentences.setdefault(region, []):
                self.sentences[region].append(text)
            labs = self.labels.setdefault(region, [])
            for lab in positive or []:
                if lab not in labs:
                    labs.append(lab)

    def pick(self, key: str, **kw) -> str:
        """One of the wordings of a normal statement."""
        options = NORMAL[key]
        return options[int(self.rng.integers(len(options)))].format(**kw)


def _lungs_clear(text: _Text, sc: Scene, affected: set[str]) -> None:
    """Both lungs clear, or each lung without a finding, or each lung zone without one."""
    sides = {f.side for f in sc.findings if f.side}
    clear = [s for s in ("right", "left") if s not in sides]
    if len(clear) == 2:
        text.say(text.pick("lungs"), [f"{s} {p}" for s in clear for p in LUNG_PARTS])
        return
    for s in clear:
        text.say(text.pick("lung", side=s), [f"{s} {p}" for p in LUNG_PARTS])
    for s in (s for s in ("right", "left") if s in sides):  # a fixed order: a set's order follows the hash seed
        for p in LUNG_PARTS[1:]:
            if f"{s} {p}" not in affected:
                text.say(text.pick("zone", zone=f"{s} {p}"), [f"{s} {p}"])


def _normal_statements(text: _Text, sc: Scene) -> None:
    """Heart, pleura, mediastinum, hila, trachea, diaphragm, bones and abdomen, where normal."""
    say, pick = text.say, text.pick
    if not any(f.kind == "cardiomegaly" for f in sc.findings):
        say(pick("heart"), ["cardiac silhouette", "right atrium"])
    for kind, region in (("effusion", "costophrenic angle"), ("pneumothorax", "apical zone")):
        with_it = {f.side for f in sc.findings if f.kind == kind}
        if not with_it:
            say(pick(kind), [f"right {region}", f"left {region}"])
        else:
            for s in (s for s in ("right", "left") if s not in with_it):
                say(pick(f"{kind}_side", side=s), [f"{s} {region}"])
    say(pick("mediastinum"), ["mediastinum", "upper mediastinum", "aortic arch", "svc", "cavoatrial junction"])
    say(pick("hila"), ["right hilar structures", "left hilar structures"])
    say(pick("trachea"), ["trachea", "carina"])
    fluid = {f.side for f in sc.findings if f.kind == "effusion"}
    if not fluid:
        say(pick("diaphragm"), ["right hemidiaphragm", "left hemidiaphragm"])
    else:
        for s in (s for s in ("right", "left") if s not in fluid):
            say(pick("diaphragm_side", side=s), [f"{s} hemidiaphragm"])
    say(pick("bones"), ["spine", "right clavicle", "left clavicle"])
    say(pick("abdomen"), ["abdomen"])
