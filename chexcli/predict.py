"""Inference on new images: text prompts and/or boxes in, boxes and sentences out.

`Predictor.predict` takes a batch of images and, per image, text prompts
and boxes (pixels of the original image). Text prompts are detected jointly
(one detector call per batch, no query mask, so each prompt's boxes do not
depend on the others; the post decoder sees all of an image's prompts, as in
the reference); boxes are encoded independently of each other. All regions of
a batch are described by the generator in one pass. Prompt embeddings are
cached by the model across images and calls.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from chexcli.errors import ChexError
from chexcli.model.chex import ChEX
from chexcli.model.preprocess import CropInfo, model_boxes_to_pixels, pixel_boxes_to_model, preprocess_image


@dataclass
class Region:
    """One of the R candidate boxes of a text prompt."""

    box: list[float]  # x1, y1, x2, y2 in original-image pixels
    box_model: list[float]  # x_c, y_c, w, h normalised to the 224 x 224 network input
    weight: float
    present: bool


@dataclass
class QueryResult:
    """Prediction for one query (a text prompt or a box prompt)."""

    type: str  # "prompt" or "box"
    prompt: str | None
    prompt_source: str | None  # "sentence", "anatomy:<name>" or "pathology:<name>"
    box: list[float] | None  # final box, pixels (x1, y1, x2, y2); None when no region is present
    box_model: list[float]  # final box in network coordinates (x_c, y_c, w, h)
    score: float | None  # presence score of a text prompt (weighted region weights)
    present: bool
    regions: list[Region] = field(default_factory=list)
    sentence: str | None = None
    features: list[float] | None = None


@dataclass
class ImagePrediction:
    image: str
    width: int
    height: int
    queries: list[QueryResult]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_prompt(model: ChEX, text: str, literal: bool = False) -> tuple[str, list[str]]:
    """Map a prompt to the strings whose mean embedding represents it.

    A known anatomy or pathology name of the model's prompt dictionaries
    (matched case-insensitively, with or without a prefix such as `cig/af/`)
    uses the mean of its synonym prompts; anything else, and every prompt when
    `literal`, is embedded verbatim (source "sentence").
    Returns (source, prompt strings).
    """
    if not text.strip():
        raise ChexError("empty prompt: give some text, e.g. --prompt 'left lung opacity'")
    if literal:
        return "sentence", [text]
    sets = (model.prompts or {}).get("prompt_sets", {})
    assembly = (model.prompts or {}).get("model_prompt_assembly", {})
    wanted = " ".join(text.split()).lower()
    for kind, key in (("anatomy", "anatomy_prompts"), ("pathology", "pathology_pos_prompts")):
        for set_name in assembly.get(key, []):
            for name, prompts in sets.get(set_name, {}).items():
                if wanted in name_forms(name) and prompts:
                    return f"{kind}:{name}", list(prompts)
    return "sentence", [text]


def name_forms(name: str) -> set[str]:
    """The lower-case forms a user may type for a prompt-dictionary name: the whole name, its last
    component, the name after its dataset prefix, and each component after the prefix that is a
    word of its own (so
    "vindrcxr/Nodule/Mass" answers to "nodule" and "mass", "cig/af/pleural effusion" to
    "pleural effusion" but not to "af")."""
    parts = name.lower().split("/")
    return {name.lower(), parts[-1], "/".join(parts[1:])} | {p for p in parts[1:] if len(p) > 2}


class Predictor:
    """Runs a ChEX model on images. Deterministic: no multibox dropping, skip connection on."""

    def __init__(self, model: ChEX, device: str | torch.device = "cpu", generate: bool = True,
                 max_new_tokens: int | None = None, return_features: bool = False,
                 use_post_decoder: bool = True, literal: bool = False):
        """literal: embed every text prompt exactly as given (no synonym means for known names)."""
        self.model = model.eval()
        self.device = torch.device(device)
        self.generate = generate and model.txt_decoder is not None and model.decode is not None
        self.max_new_tokens = max_new_tokens
        self.return_features = return_features
        self.use_post_decoder = use_post_decoder
        self.literal = literal
        self._report_task = None

    def prompt_embeddings(self, prompts: Sequence[str]) -> tuple[list[str], torch.Tensor]:
        """prompts (Q) -> sources (Q) and embeddings (Q, d); the model caches every string's embedding."""
        resolved = [resolve_prompt(self.model, p, self.literal) for p in prompts]
        return [src for src, _ in resolved], torch.stack(
            [self.model.encode_sentences(strings).mean(dim=0) for _, strings in resolved])

    def preprocess_settings(self) -> dict:
        """The keyword arguments of `preprocess_image` for this model (for preprocessing elsewhere,
        e.g. in data-loader workers, then passing `prepared` to predict/report)."""
        cfg = self.model.cfg
        return {"size": cfg.vision.image_size, "pixel_mean": cfg.pixel_mean, "pixel_std": cfg.pixel_std}

    def _preprocess(self, images: Sequence[np.ndarray], prepared=None) -> tuple[torch.Tensor, tuple[CropInfo, ...]]:
        """N grayscale images -> (N, 224, 224) network input on the device, and their crop geometry.
        `prepared`: the N (input (S, S), CropInfo) pairs of `preprocess_image`, already computed."""
        settings = self.preprocess_settings()
        xs, infos = zip(*(prepared or [preprocess_image(img, **settings) for img in images]))
        return torch.stack(xs).to(self.device), infos

    @torch.inference_mode()
    def predict(self, images: Sequence[np.ndarray], names: Sequence[str], prompts: Sequence[str] = (),
                boxes: Sequence[Sequence[Sequence[float]]] | None = None, prepared=None) -> list[ImagePrediction]:
        """images: N grayscale arrays (H_i, W_i) in [0, 1]; prompts: shared by all images;
        boxes: per image a list of pixel boxes (x1, y1, x2, y2), already validated;
        prepared: optional N `preprocess_image` results for the images (see `preprocess_settings`)."""
        n = len(images)
        if n == 0:
            return []
        boxes = boxes if boxes is not None else [[] for _ in range(n)]
        if not prompts and not any(boxes):
            raise ChexError("nothing to predict: give at least one --prompt or --box")
        x, infos = self._preprocess(images, prepared)
        enc = self.model.encode_image(x)
        results: list[list[QueryResult]] = [[] for _ in range(n)]
        features: list[list[torch.Tensor]] = [[] for _ in range(n)]  # per image the (d) feature of each result

        if prompts:
            sources, emb = self.prompt_embeddings(list(prompts))
            det = self.model.detect_prompts(enc, emb.to(self.device), use_post_decoder=self.use_post_decoder)
            for i in range(n):
                for q, text in enumerate(prompts):
                    results[i].append(self._prompt_result(text, sources[q], det, i, q, infos[i]))
                    features[i].append(det.box_features[i, q])

        m = max((len(b) for b in boxes), default=0)
        if m:
            model_boxes = torch.zeros(n, m, 4)
            for i, image_boxes in enumerate(boxes):
                if len(image_boxes):
                    model_boxes[i, : len(image_boxes)] = torch.from_numpy(
                        pixel_boxes_to_model(np.asarray(image_boxes, dtype=np.float64), infos[i])).float()
            # No region mask: each box is encoded on its own, so zero padding changes nothing.
            region_feats = self.model.encode_regions(enc, model_boxes.to(self.device), use_post_decoder=self.use_post_decoder)
            for i, image_boxes in enumerate(boxes):
                for j, b in enumerate(image_boxes):
                    results[i].append(QueryResult(
                        type="box", prompt=None, prompt_source=None, box=[float(v) for v in b],
                        box_model=model_boxes[i, j].tolist(), score=None, present=True))
                    features[i].append(region_feats[i, j])

        # flat in image order (an image's prompts, then its boxes), the features in the same order
        flat = [r for per_image in results for r in per_image]
        flat_features = [f for per_image in features for f in per_image]
        if self.generate and flat_features:
            stacked = torch.stack(flat_features)
            sentences = self.model.describe(stacked, max_new_tokens=self.max_new_tokens)
            for r, s in zip(flat, sentences):
                r.sentence = s
        if self.return_features:
            for r, f in zip(flat, flat_features):
                r.features = f.float().cpu().tolist()
        return [ImagePrediction(names[i], infos[i].width, infos[i].height, results[i]) for i in range(n)]

    @torch.inference_mode()
    def report(self, images: Sequence[np.ndarray], names: Sequence[str], prepared=None) -> list[dict[str, Any]]:
        """Full reports (docs/evaluation.md#report-generation: 14 CheXpert + 15 anatomy queries, region selection,
        sentence generation, synonym removal), deterministic (no multibox dropping).

        Returns per image a dict with `report`, `width`, `height` and `queries` whose boxes are
        in original-image pixels (`box`) and network coordinates (`box_model`).
        """
        from chexcli.evaluate.inference import TaskInference
        from chexcli.evaluate.tasks import load_task

        if self._report_task is None:
            task = load_task("rg_mimic", {"multibox_drop": 0.0})
            if self.max_new_tokens is not None:
                task.settings["max_length"] = self.max_new_tokens + 1
            self._report_task = TaskInference(self.model, task, device=self.device)
        x, infos = self._preprocess(images, prepared)
        records = self._report_task({"x": x, "sample_id": list(names)})
        for rec, info in zip(records, infos):
            rec.update(width=info.width, height=info.height)
            for q in rec["queries"]:
                q["box"] = model_boxes_to_pixels(q["box_model"], info)[0].tolist() if q["present"] else None
                for r in q["regions"]:
                    r["box"] = model_boxes_to_pixels(r["box_model"], info)[0].tolist()
        return records

    @staticmethod
    def _prompt_result(text: str, source: str, det, i: int, q: int, info: CropInfo) -> QueryResult:
        present = bool(det.boxes_present[i, q])
        box_model = det.boxes[i, q].float().cpu().numpy()
        regions = []
        multi = det.multiboxes[i, q].float().cpu().numpy()
        pixels = model_boxes_to_pixels(multi, info)
        for r in range(multi.shape[0]):
            regions.append(Region(box=pixels[r].tolist(), box_model=multi[r].tolist(),
                                  weight=float(det.multiboxes_weights[i, q, r]),
                                  present=bool(det.multiboxes_present[i, q, r])))
        return QueryResult(
            type="prompt", prompt=text, prompt_source=source,
            box=model_boxes_to_pixels(box_model, info)[0].tolist() if present else None,
            box_model=box_model.tolist(), score=float(det.boxes_weights[i, q]), present=present, regions=regions)
