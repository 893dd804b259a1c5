"""Full-report assembly from region sentences (docs/evaluation.md#report-generation).

Per image: detect the pathology and anatomy queries (post-decoder on,
multibox dropping as configured), classify each query's feature against the
averaged positive/negative prompts, keep all pathology queries and the
positive anatomy queries, generate one sentence each, remove near-synonymous
sentences, and join the rest in query order.

Fix of the reference (B3): the preference of a sentence is the box weight
(or positiveness) of the query that *produced* it; the reference reads it by
sentence position, which is wrong for anatomy sentences once a negative
anatomy query was dropped.
"""

from __future__ import annotations

import numpy as np
import torch

from chexcli.evaluate.prompts import cos_logits
from chexcli.evaluate.records import corners, floats


def synonym_removal(embeddings: torch.Tensor | np.ndarray, preference, hard: float = 0.95, soft: float = 0.90,
                    max_sentences: int = 10) -> list[int]:
    """Indices (ascending) of the sentences kept.

    similarity s_ij = (cos(e_i, e_j) + 1) / 2 (diagonal 0). Repeatedly take the
    most similar kept pair (first maximal row, then column); stop when
    s < hard and (s < soft or at most `max_sentences` remain); else drop the
    one with the lower preference (ties drop j).
    """
    e = torch.as_tensor(embeddings, dtype=torch.float64)
    k = e.shape[0]
    if k < 2:
        return list(range(k))
    e = torch.nn.functional.normalize(e, dim=-1)
    sim = ((e @ e.T + 1) / 2).numpy()
    np.fill_diagonal(sim, 0.0)
    pref = np.asarray(preference, dtype=np.float64)
    kept = list(range(k))
    while len(kept) >= 2:
        sub = sim[np.ix_(kept, kept)]
        flat = int(np.argmax(sub))
        i, j = divmod(flat, len(kept))
        smax = sub[i, j]
        if smax < hard and (smax < soft or len(kept) <= max_sentences):
            break
        drop = kept[i] if pref[kept[i]] < pref[kept[j]] else kept[j]
        kept.remove(drop)
    return kept


def report_records(inf, x: torch.Tensor, batch: dict) -> list[dict]:
    """RG records: per image the queries with sentence/kept flags and the assembled `report`."""
    model, s = inf.model, inf.s
    n, q = x.shape[0], inf.queries.shape[0]
    r = model.detector.n_regions
    drop = float(s.get("multibox_drop", 0.1) or 0.0)
    keep = None
    if drop > 0:
        keep = (torch.rand((n, q, r), generator=inf.generator) >= drop).to(x.device)
    out = model.detect_prompts(x, inf.queries, mask=None, clip_boxes=True, use_post_decoder=True,
                               skip_roi_pool=s.get("skip_roi_pool", True), keep_multibox=keep)
    feats = out.box_features  # (N, Q, d)
    pi = torch.sigmoid(cos_logits(feats, inf.pos[None], inf.neg[None]))  # (N, Q)
    thr = float(s.get("positive_threshold", 0.5))
    positive = pi > thr
    is_anat = torch.tensor([k.startswith("anatomy:") for k in inf.query_kinds], device=x.device)
    selected = torch.ones(n, q, dtype=torch.bool, device=x.device)
    if s.get("ignore_negative_pathologies", False):
        selected &= positive | is_anat[None]
    if s.get("ignore_negative_anat_regions", True):
        selected &= positive | ~is_anat[None]
    sentences = model.generate_sentences(feats, selected, max_new_tokens=int(s.get("max_length", 128)) - 1)
    weights, pis = out.boxes_weights.cpu().numpy(), pi.cpu().numpy()
    hull, sel = out.boxes.cpu().numpy(), selected.cpu().numpy()
    present = out.boxes_present.cpu().numpy()
    mb, mw = out.multiboxes.cpu().numpy(), out.multiboxes_weights.cpu().numpy()
    records = []
    for i, sid in enumerate(batch["sample_id"]):
        qidx = [k for k in range(q) if sel[i, k]]
        sents = sentences[i]
        pref_src = pis[i] if s.get("sentence_preference", "weight") == "positiveness" else weights[i]
        kept_pos: list[int] = []
        if sents:
            emb = model.encode_sentences(list(sents)).detach().cpu()
            kept_pos = synonym_removal(emb, pref_src[qidx], float(s.get("synonym_removal_thres", 0.95)),
                                       float(s.get("synonym_soft_removal_thres", 0.9)),
                                       int(s.get("max_sentences", 10)))
        kept_queries = {qidx[p] for p in kept_pos}
        by_query = dict(zip(qidx, sents))
        queries = []
        for k in range(q):
            queries.append({"type": "prompt", "prompt": inf.query_prompts[k], "prompt_source": inf.query_kinds[k],
                            "box": corners(hull[i, k]), "box_model": floats(hull[i, k]),
                            "score": float(weights[i, k]), "present": bool(present[i, k]),
                            "positiveness": float(pis[i, k]), "selected": bool(sel[i, k]),
                            "regions": [{"box": corners(mb[i, k, j]), "box_model": floats(mb[i, k, j]),
                                         "weight": float(mw[i, k, j]), "present": bool(mw[i, k, j] > 0.5)}
                                        for j in range(mb.shape[2])],
                            "sentence": by_query.get(k), "kept": k in kept_queries})
        report = " ".join(by_query[k] for k in qidx if k in kept_queries)
        records.append({"image": str(sid), "task": inf.task.name, "box_format": "model", "report": report,
                        "queries": queries})
    return records
