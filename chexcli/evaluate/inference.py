"""Model inference of every task kind: a collated batch -> prediction records.

A record is one JSON line per image, in the schema of `chex predict --json`
("image", "box_format", "queries" with "type", "prompt", "prompt_source",
"box", "box_model", "score", "present", "regions", "sentence"), extended with
what the metrics need: detection and grounding queries keep every raw
candidate (`regions[*].logit` = cos(h, p_c) - cos(h, n_c) for detection) so
post-processing can be re-applied without the model, plus the final
`detections`; region queries carry `probs` (class order of the task). Boxes:
`box_model` center format on the 224 x 224 input; `box` corners in the same
relative frame ("box_format": "model").
"""

from __future__ import annotations

from typing import Any

import torch

from chexcli.data.names import anatomy_names, class_names
from chexcli.evaluate.postprocess import postprocess_detections, postprocess_grounding
from chexcli.evaluate.prompts import cos_logits, prompt_sets
from chexcli.evaluate.records import corners, floats
from chexcli.evaluate.report import report_records
from chexcli.evaluate.tasks import TaskConfig


class TaskInference:
    """Prompt embeddings of a task, computed once; `__call__(batch)` -> records."""

    @torch.inference_mode()
    def __init__(self, model, task: TaskConfig, device: str | torch.device = "cpu", seed: int = 42):
        self.model, self.task, self.device = model.eval(), task, torch.device(device)
        self.s = task.settings
        sets = prompt_sets(model)
        p = task.get("prompts", {}) or {}
        kind = task.kind
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        if kind in ("detection", "box_explanation", "anatomy_explanation"):
            self.names = class_names(task.get("class_names"))
            self.pos, self.neg = model.encode_pos_neg_prompts(self.names, sets[p["pos"]], sets[p["neg"]],
                                                              mode=task.get("neg_prompt_mode", "neg"))
        if kind == "detection":
            self.box_emb = model.encode_prompts(sets[p["box"]], self.names)[0]
            self.box_prompts = [sets[p["box"]][n][0] for n in self.names]
        if kind == "anatomy_explanation":
            self.anat = anatomy_names(task.get("anatomy_names"))
        if kind == "grounding":
            self.names = class_names(task.get("class_names"))
        if kind == "report_generation":
            self.path_names = class_names(task.get("pathology_names"))
            self.anat_names = anatomy_names(task.get("anatomy_names"))
            queries, self.query_prompts, self.query_kinds = [], [], []
            if self.s.get("use_pathology_prompts", True):
                queries.append(model.encode_prompts(sets[p["pathology"]], self.path_names)[0])
                self.query_prompts += [sets[p["pathology"]][n][0] for n in self.path_names]
                self.query_kinds += [f"pathology:{n}" for n in self.path_names]
            if self.s.get("use_anatomy_prompts", True):
                queries.append(model.encode_prompts(sets[p["anatomy"]], self.anat_names)[0])
                self.query_prompts += [sets[p["anatomy"]][n][0] for n in self.anat_names]
                self.query_kinds += [f"anatomy:{n}" for n in self.anat_names]
            self.queries = torch.cat(queries)
            pos, neg = model.encode_pos_neg_prompts(self.path_names, sets[p["pos"]], sets[p["neg"]], mode="neg")
            if self.s.get("cls_prompt_average", True):
                pos, neg = pos.mean(0, keepdim=True), neg.mean(0, keepdim=True)
            self.pos, self.neg = pos, neg

    @torch.inference_mode()
    def __call__(self, batch: dict) -> list[dict[str, Any]]:
        x = batch["x"].to(self.device)
        kind = self.task.kind
        if kind == "detection":
            return self._detection(x, batch)
        if kind == "grounding":
            return self._grounding(x, batch)
        if kind in ("box_explanation", "anatomy_explanation"):
            return self._regions(x, batch)
        return report_records(self, x, batch)

    # ------------------------------------------------------------------ detection
    def _detection(self, x, batch) -> list[dict]:
        c = len(self.names)
        out = self.model.detect_prompts(x, self.box_emb, mask=torch.ones(c, dtype=torch.bool, device=x.device),
                                        clip_boxes=self.s.get("clip_boxes", True), use_post_decoder=False,
                                        skip_roi_pool=self.s.get("skip_roi_pool", True))
        logits = cos_logits(out.multiboxes_features, self.pos[None, :, None], self.neg[None, :, None])
        mb, mw = out.multiboxes.cpu().numpy(), out.multiboxes_weights.cpu().numpy()
        lg, present = logits.cpu().numpy(), out.multiboxes_present.cpu().numpy()
        hull, hw = out.boxes.cpu().numpy(), out.boxes_weights.cpu().numpy()
        records = []
        for i, sid in enumerate(batch["sample_id"]):
            queries = []
            for k, name in enumerate(self.names):
                regions = [{"box": corners(mb[i, k, r]), "box_model": floats(mb[i, k, r]),
                            "weight": float(mw[i, k, r]), "present": bool(present[i, k, r]),
                            "logit": float(lg[i, k, r])} for r in range(mb.shape[2])]
                queries.append({"type": "prompt", "prompt": self.box_prompts[k], "prompt_source": f"pathology:{name}",
                                "class": name, "box": corners(hull[i, k]), "box_model": floats(hull[i, k]),
                                "score": float(hw[i, k]), "present": bool(present[i, k].any()),
                                "regions": regions, "sentence": None})
            rec = {"image": str(sid), "task": self.task.name, "box_format": "model", "queries": queries}
            apply_detection_postprocess(rec, self.s, self.names)
            records.append(rec)
        return records

    # ------------------------------------------------------------------ grounding
    def _grounding(self, x, batch) -> list[dict]:
        sents = batch["grounded_sentences"]
        s_max = max((len(s) for s in sents), default=0)
        n = len(sents)
        if s_max == 0:
            return [{"image": str(sid), "task": self.task.name, "box_format": "model", "queries": []}
                    for sid in batch["sample_id"]]
        d = self.model.cfg.d_model
        emb = torch.zeros(n, s_max, d, device=x.device)
        mask = torch.zeros(n, s_max, dtype=torch.bool, device=x.device)
        for i, ss in enumerate(sents):
            if ss:
                emb[i, :len(ss)] = self.model.encode_sentences(list(ss)).to(x.device)
                mask[i, :len(ss)] = True
        out = self.model.detect_prompts(x, emb, mask=mask, clip_boxes=self.s.get("clip_boxes", True),
                                        use_post_decoder=False, skip_roi_pool=self.s.get("skip_roi_pool", True))
        mb, mw = out.multiboxes.cpu().numpy(), out.multiboxes_weights.cpu().numpy()
        present = out.multiboxes_present.cpu().numpy()
        records = []
        for i, sid in enumerate(batch["sample_id"]):
            queries = []
            for k, sentence in enumerate(sents[i]):
                regions = [{"box": corners(mb[i, k, r]), "box_model": floats(mb[i, k, r]),
                            "weight": float(mw[i, k, r]), "present": bool(present[i, k, r])}
                           for r in range(mb.shape[2])]
                queries.append({"type": "prompt", "prompt": sentence, "prompt_source": "sentence",
                                "regions": regions, "sentence": None})
            rec = {"image": str(sid), "task": self.task.name, "box_format": "model", "queries": queries}
            apply_grounding_postprocess(rec, self.s)
            records.append(rec)
        return records

    # ------------------------------------------------------------------ region classification / explanation
    def _regions(self, x, batch) -> list[dict]:
        n = x.shape[0]
        if self.task.kind == "anatomy_explanation":
            boxes = batch["target_anat_boxes"].to(x.device).float()
            mask = batch["target_anat_present_masks"].to(x.device).bool()
            region_names = [self.anat] * n
        else:
            per = [b.reshape(-1, 5) for b in batch["target_cls_boxes"]]
            m = max((len(b) for b in per), default=0)
            boxes = torch.zeros(n, max(m, 1), 4, device=x.device)
            mask = torch.zeros(n, max(m, 1), dtype=torch.bool, device=x.device)
            for i, b in enumerate(per):
                boxes[i, :len(b)] = b[:, :4].to(x.device)
                mask[i, :len(b)] = True
            region_names = [[None] * len(b) for b in per]
        feats = self.model.encode_regions(x, boxes, mask, use_post_decoder=True)  # (N, M, d)
        probs = torch.sigmoid(cos_logits(feats[:, :, None], self.pos[None, None], self.neg[None, None]))
        probs = probs.cpu().numpy()  # (N, M, C)
        sentences = None
        if self.s.get("generate_sentences"):
            sentences = self.model.generate_sentences(feats, mask, max_new_tokens=int(self.s.get("max_length", 128)) - 1)
        records = []
        bx, mk = boxes.cpu().numpy(), mask.cpu().numpy()
        for i, sid in enumerate(batch["sample_id"]):
            gen = iter(sentences[i]) if sentences is not None else None
            queries = []
            for j in range(len(region_names[i])):
                if self.task.kind == "box_explanation" and not mk[i, j]:
                    continue
                q = {"type": "box", "prompt": region_names[i][j], "prompt_source":
                     f"anatomy:{region_names[i][j]}" if region_names[i][j] else None,
                     "box": corners(bx[i, j]), "box_model": floats(bx[i, j]), "score": None,
                     "present": bool(mk[i, j]), "regions": [],
                     "sentence": next(gen) if gen is not None and mk[i, j] else None,
                     "probs": floats(probs[i, j]) if mk[i, j] else None}
                queries.append(q)
            records.append({"image": str(sid), "task": self.task.name, "box_format": "model", "queries": queries})
        return records


def apply_detection_postprocess(rec: dict, settings: dict, names: list[str]) -> None:
    """(Re)compute `detections` of every class query from its raw regions."""
    boxes, weights, logits, labels = [], [], [], []
    for k, q in enumerate(rec["queries"]):
        for r in q["regions"]:
            boxes.append(r["box_model"])
            weights.append(r["weight"])
            logits.append(r.get("logit", 0.0))
            labels.append(k)
    b, s, lab = postprocess_detections(boxes, weights, logits, labels, settings, names)
    for q in rec["queries"]:
        q["detections"] = []
    for box, score, k in zip(b, s, lab):
        rec["queries"][int(k)]["detections"].append({"box": corners(box), "box_model": floats(box),
                                                     "score": float(score)})


def apply_grounding_postprocess(rec: dict, settings: dict) -> None:
    for q in rec["queries"]:
        b, s = postprocess_grounding([r["box_model"] for r in q["regions"]], [r["weight"] for r in q["regions"]],
                                     settings)
        q["detections"] = [{"box": corners(box), "box_model": floats(box), "score": float(sc)}
                           for box, sc in zip(b, s)]
