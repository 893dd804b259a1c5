"""Tiny ChEX models with their own tokenizers, built offline in seconds (tests, demo, benchmarks)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from chexcli.model.bundle import default_prompts, save_bundle
from chexcli.model.chex import ChEX
from chexcli.model.clip_tokenizer import ClipTokenizer
from chexcli.model.config import ChexConfig
from chexcli.model.presets import tiny
from chexcli.model.gpt2_text import build_tiny_gpt2_tokenizer

TINY_CORPUS = [
    "The heart size is normal.",
    "There is a small left pleural effusion.",
    "Right lower lobe opacity, concerning for pneumonia.",
    "No pneumothorax is seen.",
    "The cardiac silhouette is enlarged.",
    "Mild pulmonary edema with bilateral interstitial opacities.",
    "Left lung opacity and atelectasis at the lung bases.",
    "The mediastinal contours are within normal limits.",
    "Support devices are in place, the endotracheal tube terminates above the carina.",
]


def build_tiny_model(seed: int = 0, gpt2_vocab_size: int = 300, n_clip_merges: int = 200,
                     tokenizer_dir: str | Path | None = None, config: ChexConfig | None = None) -> ChEX:
    """A randomly initialised tiny ChEX with tiny CLIP and GPT-2 tokenizers learnt from a short corpus."""
    torch.manual_seed(seed)
    clip_tok = ClipTokenizer.build_tiny(TINY_CORPUS, n_merges=n_clip_merges)
    folder = Path(tokenizer_dir) if tokenizer_dir else Path(tempfile.mkdtemp(prefix="chex-tiny-gpt2-"))
    gpt2_tok = build_tiny_gpt2_tokenizer(TINY_CORPUS, vocab_size=gpt2_vocab_size, folder=folder)
    eos = gpt2_tok.convert_tokens_to_ids("<|endoftext|>")
    cfg = config or tiny(clip_vocab_size=clip_tok.vocab_size, gpt2_vocab_size=len(gpt2_tok), eos_token_id=eos)
    model = ChEX(cfg, clip_tok, gpt2_tok, prompts=default_prompts())
    with torch.no_grad():
        # Make the tiny model's outputs informative: spread boxes and region weights.
        model.post_decoder.gate.fill_(0.7)
        model.detector.multiregion_tokens.mul_(20.0)
        model.detector.multiregion_weight_mlp.layers[3].bias.fill_(0.3)
        wte = model.txt_decoder.language_model.transformer.wte.weight
        wte[eos].mul_(0.05)
        wte[: min(257, wte.shape[0] - 1)].mul_(0.3)  # prefer learnt word pieces over raw bytes
    return model.eval()


def save_tiny_bundle(folder: str | Path, seed: int = 0) -> Path:
    """Build a tiny model and save it as a bundle folder."""
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(seed=seed, tokenizer_dir=tmp)
        return save_bundle(model, folder, provenance={"source": "random tiny model", "seed": seed})
