"""The training forward of each run: batch -> (total loss, sub-losses as detached scalar tensors).

`ChexObjective` (stages 1, 2, 3): encode the image once, then the sentence,
anatomy and pathology supervisors in that order (docs/training.md#supervisors).
`TxtgenObjective`: the sentence generator learns to reconstruct report
sentences from their frozen text embeddings (docs/training.md#txtgen).
The sub-losses stay on the device; they become floats where they are logged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chexcli.data.names import multibox_mapping
from chexcli.train.encoding_cache import FrozenEncodingCache, caches_frozen_encodings, is_frozen, shared_cache
from chexcli.train.generation import generation_losses
from chexcli.train.prompts import anatomy_bank, pathology_banks
from chexcli.train.loss_terms import LossTerms
from chexcli.train.losses import BoxCoefficients
from chexcli.train.supervisors import (LossWeights, SupervisionOptions, anatomy_supervisor, pathology_supervisor,
                                       sentence_supervisor)


class ChexObjective(nn.Module):
    """Wraps the model so DDP sees one module whose forward returns the loss.

    With `cache_encodings`, a frozen image tower encodes each image once (`FrozenEncodingCache`,
    the process's `shared_cache` of the tower, looked up at the first batch).
    `weights` are the loss coefficients, `box_coefficients` those of box regression and matching.
    """

    def __init__(self, model, weights: LossWeights, options: SupervisionOptions, class_names: list[str],
                 anatomy_names: list[str], multi_names: list[str], cache_encodings: bool = False,
                 box_coefficients: BoxCoefficients = BoxCoefficients()):
        super().__init__()
        self.model = model
        self.cache_encodings = cache_encodings
        self.encodings: FrozenEncodingCache | None = None
        self.weights = weights
        self.box_coefficients = box_coefficients
        self.options = options
        prompts = model.prompts or {}
        self.anatomy = anatomy_bank(anatomy_names, prompts)
        multi = [m for m in multi_names if m in multibox_mapping("cig_mapping")]
        self.multi = anatomy_bank(multi, prompts) if multi else None
        self.pos, self.neg = pathology_banks(class_names, prompts) if class_names else (None, None)

    def text_strings(self) -> list[str]:
        """Every prompt string this objective may embed (for warming the text cache)."""
        banks = [self.anatomy, self.multi, self.pos, self.neg]
        return [s for b in banks if b is not None for s in b.all_strings()]

    def loss_terms(self, batch: dict) -> tuple[LossTerms, Tensor]:
        """Every loss term of the batch, and a zero scalar tied to the image encoding (the total's start)."""
        w, opt = self.weights, self.options
        for bank in (self.anatomy, self.multi, self.pos, self.neg):
            if bank is not None:
                bank.new_step()
        if self.cache_encodings and is_frozen(self.model.img_encoder):
            if self.encodings is None:
                self.encodings = shared_cache(self.model.img_encoder, self.model.device)
            enc = self.encodings.encode(self.model, batch["x"], batch.get("x_digest"))
        else:
            enc = self.model.encode_image(batch["x"].to(self.model.device, non_blocking=True))
        terms = LossTerms()
        if w.global_contrastive or w.sentence_contrastive or w.sentence_mse or w.sentence_generation:
            terms.update(sentence_supervisor(self.model, enc, batch, w, opt))
        if w.anatomy_detection or w.anatomy_classification or w.anatomy_mse or w.anatomy_generation:
            terms.update(anatomy_supervisor(self.model, enc, batch, w, opt, self.anatomy, self.multi, self.pos,
                                            self.neg, self.box_coefficients))
        if (w.pathology_detection or w.pathology_classification) and self.pos is not None:
            terms.update(pathology_supervisor(self.model, enc, batch, w, opt, self.pos, self.neg,
                                              self.box_coefficients))
        # report sentences and anatomy texts: one generator pass (each weight read once, one gradient)
        terms.resolve_generation(lambda calls: generation_losses(self.model, calls, opt.generation_include_padding,
                                                                 opt.generation_keep_end_token))
        zero = enc.patch_features.sum() * 0.0
        gen = self.model.txt_decoder
        if (w.sentence_generation or w.anatomy_generation) and gen is not None and not any(
                name in terms.weighted for name in ("l_sent/sent_gen", "l_anat/anat_gen")):
            # a micro-batch without texts to decode: keep the trained generator in the graph (zero
            # gradients), so that every process of a DDP run reduces the same parameters
            for p in gen.parameters():
                if p.requires_grad:
                    zero = zero + p.reshape(-1)[0] * 0.0
        return terms, zero

    def forward(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        terms, zero = self.loss_terms(batch)
        total = terms.weighted_sum()
        total = zero if total is None else zero + total
        terms.note("loss", total)
        return total, terms.values()


class TxtgenObjective(nn.Module):
    """Sentence-generator pretraining on report text (images are not used)."""

    def __init__(self, model, max_sentences: int = 64, copies: tuple[int, int] = (1, 4), dropout: float = 0.3,
                 include_padding: bool = False, keep_end_token: bool = True, prefix_activation: str = "gelu"):
        super().__init__()
        self.model = model
        if prefix_activation == "relu":
            # the reference's txtgen builds its prefix MLP with ReLU; stage 3 then runs the same
            # weights with GELU (quirk 8). The weights are saved alone, so a bundle reloads with GELU.
            model.txt_decoder.prefix_proj.layers[1] = nn.ReLU()
        elif prefix_activation != "gelu":
            raise ValueError(f"prefix_activation must be gelu or relu, got {prefix_activation!r}")
        self.max_sentences = max_sentences
        self.copies = copies
        self.copy_dropout = float(dropout)  # on in training only, like the model's own dropout
        self.include_padding = include_padding
        self.keep_end_token = keep_end_token

    def text_strings(self) -> list[str]:
        return []

    def forward(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        # training decodes the first `max_sentences` sentences of the reports in order;
        # validation (eval mode) all of them, as the reference does
        limit = self.max_sentences if self.model.training else None
        sentences: list[str] = []
        for report in batch.get("sentences") or []:
            for s in report or []:
                if limit is None or len(sentences) < limit:
                    sentences.append(s)
        device = self.model.device
        if not sentences:
            zero = sum(p.sum() for p in self.model.txt_decoder.parameters()) * 0.0
            return zero, {"loss": torch.tensor(0.0, dtype=torch.float64)}
        emb = self.model.encode_sentences(sentences).to(device)  # (M, d), frozen text encoder
        r = int(torch.randint(self.copies[0], self.copies[1] + 1, ()))
        copies = emb[:, None].expand(-1, r, -1)
        feats = F.dropout(copies, self.copy_dropout, training=self.model.training)  # (M, R, d): R noisy copies
        loss = self._loss(feats, sentences)
        return loss, {"txtgen_loss": loss.detach(), "loss": loss.detach()}

    def _loss(self, feats: Tensor, texts: list[str]) -> Tensor:
        """Prefix of R copies (copy-major) -> teacher-forced cross-entropy."""
        from chexcli.train.generation import encode_targets, teacher_forcing_loss

        gen = self.model.txt_decoder
        cfg = gen.cfg
        m, r, d = feats.shape
        keys, values = gen.prefix(feats.reshape(m * r, d))
        # (M*R, H, F, hd) per layer -> (M, H, R*F, hd): the copies' prefixes one after the other
        keys = [k.view(m, r, *k.shape[1:]).permute(0, 2, 1, 3, 4).flatten(2, 3) for k in keys]
        values = [v.view(m, r, *v.shape[1:]).permute(0, 2, 1, 3, 4).flatten(2, 3) for v in values]
        ids, mask = encode_targets(self.model.gpt2_tokenizer, texts, cfg.bos_token_id, cfg.eos_token_id,
                                   cfg.pad_token_id, cfg.max_length, self.keep_end_token)
        ids, mask = ids.to(feats.device), mask.to(feats.device)
        hidden, = gen.prefixed_hidden([(ids, mask)], keys, values, drop_padding=not self.include_padding)
        return teacher_forcing_loss(gen.language_model, hidden, ids, mask, self.include_padding)


def make_objective(stage: str, model, recipe: dict, names: tuple[list[str], list[str], list[str]]) -> nn.Module:
    """The objective of a stage from its recipe; `names`: the training data's (class, anatomy,
    multi-box anatomy) names (chexcli.train.data_setup.dataset_names)."""
    if stage == "txtgen":
        t = recipe["txtgen"]
        return TxtgenObjective(model, t["max_sentences"], tuple(t["copies"]), t["dropout"],
                               t["generation_include_padding"], t["generation_keep_end_token"],
                               t.get("prefix_activation", "gelu"))
    classes, anatomies, multi = names
    options = SupervisionOptions(**recipe["supervision"])
    # without augmentation a frozen image tower sees the same image tensors every epoch
    return ChexObjective(model, LossWeights(**recipe["loss"]), options, classes, anatomies,
                         multi if options.use_multiboxes else [], caches_frozen_encodings(recipe))


__all__ = ["ChexObjective", "TxtgenObjective", "make_objective"]
