"""What a user of `chex predict` sees on the held-out synthetic split, measured as they would.

Every number comes from :class:`chexcli.predict.Predictor`, the code behind `chex predict`
(post decoder on, skip connection on, no multibox dropping, greedy sentences), on the
cached 256 x 256 test images with pixel boxes:

* **presence AUROC** per finding kind: the prompt is the finding's name as a user types it
  (``FINDING_PROMPTS``, e.g. "pleural effusion"); the image's presence score is the JSON's
  ``score`` of that prompt (the weighted mean of its candidates' weights); AUROC against
  "the image has this finding".
* **anatomy-prompted sentences**: every finding prompted by its most specific anatomy name
  (the first of its ``regions``, e.g. "right costophrenic angle" for an effusion), the 29
  anatomy names in one call; right by ``chexcli.demo.checks.sentence_is_right``.
* **box-prompt sentences**: every finding's ground-truth pixel box as a ``--box`` prompt;
  right by the same rule with the finding's most specific anatomy as its place.
* **normal regions**: the regions a finding can sit in (``FINDING_REGIONS``) that are normal
  in the image, prompted by name; clean when the sentence affirms no finding word.
* **anatomy boxes**: per (image, anatomy with a ground-truth box) the IoU of the prompt's
  best candidate (its highest-weight region, drawn dashed when absent) and of the box
  `chex predict` draws (the hull of the present candidates, the best candidate when none is
  present); the share drawn as present.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from chexcli.boxes import box_iou_xyxy
from chexcli.data.names import anatomy_names

CIG_TEST = "mimic-cxr-frontal-cig_anatboxes-cig_anatlabels-cig_anatphrases.{split}.csv"
FINDING_PROMPTS = {"nodule": "nodule", "opacity": "lung opacity", "consolidation": "consolidation",
                   "effusion": "pleural effusion", "pneumothorax": "pneumothorax", "cardiomegaly": "cardiomegaly"}
TARGETS = {"presence_auroc": 0.9, "anatomy_sentences": 0.8, "box_sentences": 0.7, "normal_clean": 0.95,
           "anatomy_best_iou": 0.75}


def load_split(data_dir: Path, split: str = "test", max_images: int | None = 200) -> pd.DataFrame:
    """The split's images: dicom_id, sample_id, findings (list), anat_boxes, anat_labels (dicts);
    at most ``max_images``, evenly spread as the checks spread theirs."""
    from chexcli.demo.checks import _spread

    truth = pd.read_csv(data_dir / "synthetic.csv", dtype={"sample_id": str}, keep_default_na=False)
    cig = pd.read_csv(data_dir / CIG_TEST.format(split=split), dtype={"sample_id": str}, keep_default_na=False)
    df = cig.merge(truth[["sample_id", "findings"]], on="sample_id", how="left")
    df = df.iloc[_spread(list(range(len(df))), max_images)].reset_index(drop=True)
    for col in ("findings", "anat_boxes", "anat_labels"):
        df[col] = [json.loads(v) if v else ([] if col == "findings" else {}) for v in df[col]]
    return df


def best_candidate(query) -> list[float]:
    """The pixel box of a prompt's highest-weight candidate region."""
    return max(query.regions, key=lambda r: r.weight).box


class _Tally:
    """What one pass over the split collects: presence scores, anatomy box IoUs and the region
    features to describe (each a (finding kind or None, region, feature) triple)."""

    def __init__(self, kinds: list[str], names: list[str]):
        self.kinds, self.names = kinds, names
        self.scores: dict[str, list[float]] = {k: [] for k in kinds}
        self.has: dict[str, list[bool]] = {k: [] for k in kinds}
        self.best_iou: list[float] = []
        self.drawn_iou: list[float] = []
        self.drawn: list[bool] = []
        self.per_anatomy: dict[str, list[tuple[float, bool]]] = {n: [] for n in names}  # (best IoU, drawn)
        self.anat_q: list[tuple] = []
        self.box_q: list[tuple] = []
        self.normal_q: list[tuple] = []

    def add_presence(self, pred, findings: list[dict]) -> None:
        """One image's answers to the finding prompts (``FINDING_PROMPTS`` order)."""
        present_kinds = {f["kind"] for f in findings}
        for k, q in zip(self.kinds, pred.queries):
            self.scores[k].append(q.score)
            self.has[k].append(k in present_kinds)

    def add_anatomy(self, pred, row, normal_regions: Sequence[str]) -> None:
        """One image's answers to the anatomy names, then to its findings' boxes."""
        by_name = dict(zip(self.names, pred.queries[: len(self.names)]))
        for name, q in by_name.items():
            truth = row["anat_boxes"].get(name)
            if truth is None:
                continue
            candidate = best_candidate(q)
            shown = q.box if q.present else candidate
            best = float(box_iou_xyxy(np.array([candidate]), np.array([truth]))[0, 0])
            self.best_iou.append(best)
            self.drawn_iou.append(float(box_iou_xyxy(np.array([shown]), np.array([truth]))[0, 0]))
            self.drawn.append(q.present)
            self.per_anatomy[name].append((best, q.present))
        for f, q in zip(row["findings"], pred.queries[len(self.names):]):
            region = f["regions"][0]
            self.anat_q.append((f["kind"], region, by_name[region].features))
            self.box_q.append((f["kind"], region, q.features))
        for region in normal_regions:
            if row["anat_labels"].get(region) == ["normal"]:
                self.normal_q.append((None, region, by_name[region].features))


def _mean(values: list) -> float:
    return float(np.mean(values)) if values else float("nan")


def _describe(model, queries: list[tuple], device, max_new_tokens: int) -> list[str]:
    """Greedy sentences of the queries' region features, 256 at a time."""
    if not queries:
        return []
    feats = torch.tensor([f for _, _, f in queries], dtype=torch.float32, device=device)
    out: list[str] = []
    for start in range(0, len(feats), 256):
        out += model.describe(feats[start:start + 256], max_new_tokens=max_new_tokens)
    return out


def _sentence_measure(queries: list[tuple], sentences: list[str], can_describe: bool) -> dict:
    """Share of right sentences, overall and per finding kind, with the first six as examples."""
    from chexcli.demo.checks import sentence_is_right

    if not can_describe:
        return {"right": float("nan"), "regions": 0, "per_kind": {}, "examples": []}
    right = [sentence_is_right(s, k, r) for (k, r, _), s in zip(queries, sentences)]
    per_kind: dict[str, list[bool]] = {}
    for (k, _, _), ok in zip(queries, right):
        per_kind.setdefault(k, []).append(ok)
    return {"right": _mean(right), "regions": len(right),
            "per_kind": {k: float(np.mean(v)) for k, v in sorted(per_kind.items())},
            "examples": [{"kind": k, "region": r, "generated": s}
                         for (k, r, _), s in list(zip(queries, sentences))[:6]]}


def measure_targets(model, data_dir, split: str = "test", max_images: int | None = 200, batch_size: int = 16,
                    max_new_tokens: int = 24) -> dict:
    """The measures of the module docstring on ``split`` of a synthetic folder (at most ``max_images``)."""
    from chexcli.data.images.cache import open_cache
    from chexcli.demo.checks import FINDING_REGIONS, affirmed_kinds, presence_auroc
    from chexcli.predict import Predictor

    data_dir = Path(data_dir)
    df = load_split(data_dir, split, max_images)
    cache, index = open_cache(data_dir)
    names = anatomy_names("cig_default")
    tally = _Tally(list(FINDING_PROMPTS), names)
    predictor = Predictor(model, generate=False, return_features=True)
    for start in range(0, len(df), batch_size):
        chunk = df.iloc[start:start + batch_size]
        images = [np.asarray(cache[index[s]], dtype=np.float32) / 255.0 for s in chunk["sample_id"]]
        ids = list(chunk["dicom_id"])
        for pred, fs in zip(predictor.predict(images, ids, prompts=list(FINDING_PROMPTS.values())), chunk["findings"]):
            tally.add_presence(pred, fs)
        boxes = [[f["box"] for f in fs] for fs in chunk["findings"]]
        for pred, (_, row) in zip(predictor.predict(images, ids, prompts=names, boxes=boxes), chunk.iterrows()):
            tally.add_anatomy(pred, row, FINDING_REGIONS)

    can_describe = model.txt_decoder is not None and model.decode is not None

    def describe(queries: list[tuple]) -> list[str]:  # nothing without a generator
        return _describe(model, queries, predictor.device, max_new_tokens) if can_describe else []

    normal_said = describe(tally.normal_q)
    return {
        "images": len(df),
        "presence_auroc": {k: presence_auroc(np.array(tally.scores[k]), np.array(tally.has[k])) for k in tally.kinds},
        "anatomy_sentences": _sentence_measure(tally.anat_q, describe(tally.anat_q), can_describe),
        "box_sentences": _sentence_measure(tally.box_q, describe(tally.box_q), can_describe),
        "normal_clean": _mean([not affirmed_kinds(s) for s in normal_said]),
        "normal_regions": len(normal_said),
        "anatomy_best_iou": _mean(tally.best_iou),
        "anatomy_drawn_iou": _mean(tally.drawn_iou),
        "anatomy_drawn": _mean(tally.drawn),
        "anatomy_pairs": len(tally.best_iou),
        "per_anatomy": {n: {"best_iou": _mean([v[0] for v in vs]), "drawn": _mean([v[1] for v in vs])}
                        for n, vs in tally.per_anatomy.items() if vs},
    }


def summary_line(m: dict) -> str:
    """One line of the measures for logs."""
    auroc = " ".join(f"{k[:5]} {v:.2f}" for k, v in m["presence_auroc"].items())
    return (f"AUROC [{auroc}] | anat sent {m['anatomy_sentences']['right']:.3f} | box sent "
            f"{m['box_sentences']['right']:.3f} | normal {m['normal_clean']:.3f} | best IoU "
            f"{m['anatomy_best_iou']:.3f} drawn IoU {m['anatomy_drawn_iou']:.3f} drawn {m['anatomy_drawn']:.3f}")


def main(argv: Sequence[str] | None = None) -> None:  # pragma: no cover - a developer's tool
    import sys

    from chexcli.model.bundle import load_bundle

    args = list(argv if argv is not None else sys.argv[1:])
    bundle, data = Path(args[0]), Path(args[1])
    torch.manual_seed(0)
    m = measure_targets(load_bundle(bundle), data, max_images=int(args[2]) if len(args) > 2 else 200)
    print(summary_line(m))
    print(json.dumps({k: v for k, v in m.items()}, indent=1, default=str)[:4000])


if __name__ == "__main__":  # pragma: no cover
    main()
