"""Build the model a training run starts from, and freeze what the stage does not train.

Stage chaining goes through bundles (TRAINING.md §1.1):

=======  ========================================  ===============================================
stage    --init                                     --init-generator
=======  ========================================  ===============================================
1        CheXzero bundle (image + text encoder);    -
         none: random weights (a warning says so)
txtgen   bundle whose text encoder is used          bundle with a sentence generator (GPT-2); none:
         (CheXzero or a stage-1 bundle)             the --init bundle's generator, else a random one
2        stage-1 bundle                             -
3        stage-2 bundle                             txtgen bundle
=======  ========================================  ===============================================

Components are copied by name from the source bundles (strict per component).
A model built from random weights gets tokenizers learnt from the training
text (`tokenizers` BPE for GPT-2, our CLIP BPE learner for the prompt encoder).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from chexcli.errors import ChexError
from chexcli.model.bundle import (CLIP_DIR, CONFIG_FILE, FORMAT, FORMAT_VERSION, GPT2_DIR, attach_gpt2_tokenizer,
                                  default_prompts, load_bundle)
from chexcli.model.chex import ChEX
from chexcli.model.clip_tokenizer import ClipTokenizer
from chexcli.model.config import ChexConfig, DetectorConfig, GeneratorConfig, TextConfig, VisionConfig
from chexcli.model.conv_encoder import sincos_positions
from chexcli.model.gpt2_text import build_tiny_gpt2_tokenizer, load_gpt2_tokenizer

PRESETS = ("paper", "small", "tiny", "tiny-cnn")


# ------------------------------------------------------------------------------------------ configs
def preset_config(name: str, clip_vocab: int, gpt2_vocab: int, eos: int) -> ChexConfig:
    """Model sizes: `paper` (the released model), `small` (laptop), `tiny` (tests), `tiny-cnn` (`tiny`
    with the convolutional image tower of chexcli.model.conv_encoder: `chex demo`), or a YAML file."""
    if name == "paper":
        cfg = ChexConfig()
        cfg.text.vocab_size = clip_vocab
        cfg.generator.vocab_size = gpt2_vocab
    elif name in ("tiny", "tiny-cnn"):
        cfg = ChexConfig.tiny(clip_vocab_size=clip_vocab, gpt2_vocab_size=gpt2_vocab, eos_token_id=eos)
        cfg.vision.kind = "cnn" if name == "tiny-cnn" else "vit"
    elif name == "small":
        cfg = ChexConfig(
            d_model=128, n_head=4,
            vision=VisionConfig(image_size=224, patch_size=32, width=192, layers=4, heads=4, output_dim=128),
            text=TextConfig(context_length=77, vocab_size=clip_vocab, width=128, layers=2, heads=4, output_dim=128),
            detector=DetectorConfig(multiregions=3, n_decoder_layers=3),
            n_post_decoder_layers=2,
            generator=GeneratorConfig(vocab_size=gpt2_vocab, n_positions=128, n_embd=128, n_layer=2, n_head=4,
                                      max_length=48),
        )
    else:
        path = Path(name)
        if not path.is_file():
            raise ChexError(f"--model-config {name!r}: use paper, small, tiny, tiny-cnn or a YAML file of model sizes")
        try:
            cfg = ChexConfig.from_dict(yaml.safe_load(path.read_text()) or {})
        except (yaml.YAMLError, TypeError, ValueError) as err:
            raise ChexError(f"--model-config {path}: invalid model configuration ({str(err).splitlines()[0]})") from None
        cfg.text.vocab_size = clip_vocab
        if cfg.generator is not None:
            cfg.generator.vocab_size = gpt2_vocab
    if cfg.generator is not None:
        g = cfg.generator
        g.bos_token_id = g.eos_token_id = g.pad_token_id = eos
    return cfg


def _stage_config(arch: ChexConfig, stage: str) -> ChexConfig:
    """The architecture restricted to the components a stage's model has."""
    d = arch.to_dict()
    if stage == "1":
        d["n_post_decoder_layers"] = 0
        d["generator"] = None
    elif stage == "2":
        d["generator"] = None
    elif stage == "txtgen":
        d["n_post_decoder_layers"] = 0
    return ChexConfig.from_dict(d)


# ------------------------------------------------------------------------------------------ tokenizers
def build_tokenizers(corpus: list[str], folder: Path, clip_merges: int = 2000, gpt2_vocab: int = 2000):
    """CLIP and GPT-2 BPE tokenizers learnt from the training text (models from random weights)."""
    texts = sorted(set(corpus))
    clip = ClipTokenizer.build_tiny(texts, n_merges=clip_merges)
    gpt2 = build_tiny_gpt2_tokenizer(texts, vocab_size=max(300, gpt2_vocab), folder=folder)
    return clip, gpt2


# ------------------------------------------------------------------------------------------ bundles
def _load(path: Path, what: str) -> ChEX:
    model = load_bundle(path)
    model.train()
    return model


def _stage_of(model: ChEX) -> str | None:
    prov = getattr(model, "provenance", {}) or {}
    if "stage" in prov:
        return str(prov["stage"])
    kind = str(prov.get("kind", ""))
    if kind == "chexzero-init":  # chex weights import-chexzero
        return "chexzero"
    if kind == "official-chex":  # chex weights import
        return "official"
    if kind == "hf-gpt2":  # chex weights import-gpt2: a pretrained GPT-2 with a fresh prefix MLP
        return "gpt2"
    return None


def _architecture(model: ChEX) -> ChexConfig:
    prov = getattr(model, "provenance", {}) or {}
    arch = prov.get("architecture")
    return ChexConfig.from_dict(arch) if arch else model.cfg


def _copy(dst: ChEX, src: ChEX, component: str, where: Path) -> None:
    a, b = getattr(dst, component), getattr(src, component)
    if a is None or b is None:
        raise ChexError(f"{where} has no {component}; pass a bundle of the right stage")
    sa, sb = a.state_dict(), b.state_dict()
    bad = [k for k in sa if k not in sb or sa[k].shape != sb[k].shape]
    if bad or len(sa) != len(sb):
        key = bad[0] if bad else next(k for k in sb if k not in sa)
        raise ChexError(f"{where}: its {component} does not fit the model being trained ({key} differs in "
                        "shape or is missing); pass a bundle of the same model size")
    a.load_state_dict(sb)


def _require_stage(model: ChEX, path: Path, allowed: tuple[str, ...], option: str, stage: str) -> None:
    found = _stage_of(model)
    if found is not None and found not in allowed:
        raise ChexError(f"{option} {path} is a {found} bundle, but stage {stage} needs one of: "
                        f"{', '.join(allowed)}; pass the bundle written by that run")


def build_model(stage: str, init: Path | None, init_generator: Path | None, model_config: str,
                corpus: Callable[[], list[str]], workdir: Path, warn: Callable[[str], None]) -> ChEX:
    """The model a stage starts from (train mode), with its tokenizers attached."""
    prompts = default_prompts()
    init_model = _load(init, "--init") if init else None
    gen_model = _load(init_generator, "--init-generator") if init_generator else None

    if stage == "1":
        if init_model is None:
            warn("no --init: stage 1 starts from random weights (give a CheXzero bundle from "
                 "`chex weights import-chexzero` to start from pretrained encoders)")
            return _random_model("1", model_config, corpus, workdir, prompts)
        arch = init_model.cfg if _stage_of(init_model) == "chexzero" else _architecture(init_model)
        model = ChEX(_stage_config(arch, "1"), init_model.txt_encoder.tokenizer, prompts=prompts)
        for comp in ("img_encoder", "txt_encoder"):
            _copy(model, init_model, comp, init)
        model.provenance = {"architecture": arch.to_dict()}
        return model

    if stage == "txtgen":
        if init_model is None:
            raise ChexError("stage txtgen needs --init BUNDLE for its text encoder (a CheXzero or stage-1 bundle)")
        arch = _architecture(init_model)
        source = gen_model if gen_model is not None else (init_model if init_model.txt_decoder is not None else None)
        if source is not None:
            _require_stage(source, init_generator or init, ("gpt2", "txtgen", "official", "3", None),
                           "--init-generator", stage)
            arch_d = arch.to_dict()
            arch_d["generator"] = source.cfg.generator.__dict__.copy() if source.cfg.generator else None
            arch = ChexConfig.from_dict(arch_d)
        if arch.generator is None:
            arch = ChexConfig.from_dict({**arch.to_dict(), "generator": GeneratorConfig().__dict__})
        gpt2_tok = source.gpt2_tokenizer if source is not None else None
        if source is None:
            warn("no --init-generator: the sentence generator starts from random weights with a tokenizer "
                 "learnt from the training sentences")
            gpt2_tok = build_tokenizers(corpus(), workdir / "gpt2", clip_merges=0)[1]
            g = arch.generator.__dict__.copy()
            eos = gpt2_tok.convert_tokens_to_ids("<|endoftext|>")
            g.update(vocab_size=len(gpt2_tok), bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
            arch = ChexConfig.from_dict({**arch.to_dict(), "generator": g})
        model = ChEX(_stage_config(arch, "txtgen"), init_model.txt_encoder.tokenizer, prompts=prompts)
        for comp in ("img_encoder", "txt_encoder", "detector"):
            _copy(model, init_model, comp, init)
        if source is not None:
            _copy(model, source, "txt_decoder", init_generator or init)
        attach_gpt2_tokenizer(model, gpt2_tok)
        model.provenance = {"architecture": arch.to_dict()}
        return model

    if stage == "2":
        if init_model is None:
            raise ChexError("stage 2 needs --init BUNDLE: the bundle written by stage 1 (RUN_DIR/bundle)")
        _require_stage(init_model, init, ("1", "2", "3", "official"), "--init", stage)
        arch = _architecture(init_model)
        if arch.n_post_decoder_layers == 0:
            arch = ChexConfig.from_dict({**arch.to_dict(), "n_post_decoder_layers": 3})
        model = ChEX(_stage_config(arch, "2"), init_model.txt_encoder.tokenizer, prompts=prompts)
        for comp in ("img_encoder", "txt_encoder", "detector"):
            _copy(model, init_model, comp, init)
        model.provenance = {"architecture": arch.to_dict()}
        return model

    if stage == "3":
        if init_model is None or gen_model is None:
            raise ChexError("stage 3 needs --init (the stage-2 bundle) and --init-generator (the txtgen bundle)")
        _require_stage(init_model, init, ("2", "3", "official"), "--init", stage)
        _require_stage(gen_model, init_generator, ("txtgen", "3", "official"), "--init-generator", stage)
        if init_model.post_decoder is None:
            raise ChexError(f"--init {init} has no post decoder; pass the bundle written by stage 2")
        if gen_model.txt_decoder is None:
            raise ChexError(f"--init-generator {init_generator} has no sentence generator; pass the txtgen bundle")
        if gen_model.cfg.d_model != init_model.cfg.d_model:
            raise ChexError(f"--init-generator {init_generator} was built for width {gen_model.cfg.d_model}, "
                            f"--init {init} has width {init_model.cfg.d_model}; pass bundles of the same model size")
        d = init_model.cfg.to_dict()
        d["generator"] = gen_model.cfg.generator.__dict__.copy()
        model = ChEX(ChexConfig.from_dict(d), init_model.txt_encoder.tokenizer, prompts=prompts)
        for comp in ("img_encoder", "txt_encoder", "detector", "post_decoder"):
            _copy(model, init_model, comp, init)
        _copy(model, gen_model, "txt_decoder", init_generator)
        attach_gpt2_tokenizer(model, gen_model.gpt2_tokenizer)
        same = all(torch.equal(a, b) for a, b in zip(init_model.txt_encoder.state_dict().values(),
                                                     gen_model.txt_encoder.state_dict().values()))
        if not same:
            warn("the txtgen bundle was trained on another text encoder than the stage-2 bundle's; "
                 "its generator may not read the region features well")
        model.provenance = {"architecture": model.cfg.to_dict()}
        return model
    raise ChexError(f"unknown stage {stage!r}")


def _random_model(stage: str, model_config: str, corpus: Callable[[], list[str]], workdir: Path,
                  prompts: dict) -> ChEX:
    small = model_config in ("tiny", "tiny-cnn", "small")
    clip, gpt2 = build_tokenizers(corpus(), workdir / "gpt2", clip_merges=800 if small else 4000,
                                  gpt2_vocab=1000 if small else 8000)
    eos = gpt2.convert_tokens_to_ids("<|endoftext|>")
    arch = preset_config(model_config, clip.vocab_size, len(gpt2), eos)
    model = ChEX(_stage_config(arch, stage), clip, prompts=prompts)
    if arch.vision.kind == "vit":
        init_positions(model.img_encoder.backbone)
    attach_gpt2_tokenizer(model, gpt2)
    model.provenance = {"architecture": arch.to_dict()}
    return model


@torch.no_grad()
def init_positions(backbone) -> None:
    """Random-weight models: give the image tower (a `VisionTransformer`) sine-cosine patch
    positions of unit scale.

    CLIP's random init (std width^-0.5) makes positions ~15x weaker than the patch content, so a
    detector trained from scratch barely knows where a patch is (CheXzero's trained positions
    do not have this problem). Only models built from random weights are changed.
    """
    grid, width = backbone.cfg.grid, backbone.cfg.width
    backbone.positional_embedding[0].zero_()
    backbone.positional_embedding[1:] = sincos_positions(grid, width)


# ------------------------------------------------------------------------------------------ freezing
def apply_freezing(model: ChEX, recipe: dict[str, Any]) -> list[str]:
    """requires_grad per TRAINING.md §1.1 (+ the ln_pre fix); returns the trained parameter names."""
    spec = recipe["model"]
    model.requires_grad_(False)
    for component in spec["trainable"]:
        if component == "img_encoder":
            backbone = model.img_encoder.backbone
            blocks = backbone.stages if model.cfg.vision.kind == "cnn" else backbone.transformer.resblocks
            k = int(spec.get("image_encoder_trainable_blocks", len(blocks)))
            for block in list(blocks)[max(0, len(blocks) - k):]:
                block.requires_grad_(True)
            if k >= len(blocks):
                backbone.requires_grad_(True)
            elif spec.get("train_ln_pre") and model.cfg.vision.kind == "vit":
                backbone.ln_pre.requires_grad_(True)
        elif component in ("detector", "post_decoder", "txt_decoder", "txt_encoder"):
            module = getattr(model, component)
            if module is None:
                raise ChexError(f"recipe model.trainable names {component}, which this model does not have")
            module.requires_grad_(True)
        else:
            raise ChexError(f"recipe model.trainable: unknown component {component!r}; use img_encoder, "
                            "detector, post_decoder, txt_decoder or txt_encoder")
    if spec.get("train_text_encoder"):
        model.txt_encoder.requires_grad_(True)
    model.txt_encoder.cache_enabled = not any(p.requires_grad for p in model.txt_encoder.parameters())
    return [n for n, p in model.named_parameters() if p.requires_grad]


def set_regularisation(model: ChEX, recipe: dict[str, Any]) -> None:
    """Training-time stochasticity from the recipe: `model.dropout_scale` multiplies every dropout
    and drop-path rate (1.0: the reference's rates; the demo trains small models with less),
    `model.post_decoder_multibox_drop` sets the post decoder's multibox-token dropping, and
    `model.skip_roi_pool_prob` the detector's random skip connection in training (the share of
    region tokens that mix the decoder token into the pooled feature, as inference always does;
    ARCHITECTURE.md §5.5)."""
    from torch import nn

    from chexcli.model.gpt2 import _Attention
    from chexcli.model.layers import DropPath, MultiheadAttention

    scale = float(recipe["model"].get("dropout_scale", 1.0))
    for module in model.modules():
        if isinstance(module, (nn.Dropout, DropPath)):
            if not hasattr(module, "_reference_p"):
                module._reference_p = module.p
            module.p = module._reference_p * scale
        elif isinstance(module, (_Attention, MultiheadAttention)):
            if not hasattr(module, "_reference_dropout"):
                module._reference_dropout = module.dropout
            module.dropout = module._reference_dropout * scale
    if model.post_decoder is not None:
        model.post_decoder.drop_prob = float(recipe["model"].get("post_decoder_multibox_drop", 0.1))
    if model.detector is not None:
        model.detector.skip_roi_pool_prob = float(recipe["model"].get("skip_roi_pool_prob", 0.25))


# ------------------------------------------------------------------------------------------ run folder
def save_skeleton(model: ChEX, folder: Path) -> None:
    """Config and tokenizers of the run's model (no weights): resume rebuilds the model from it."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model.cfg.to_dict(),
              "prompts": model.prompts, "provenance": getattr(model, "provenance", {})}
    if model.txt_encoder.tokenizer is not None:
        model.txt_encoder.tokenizer.save(folder / CLIP_DIR)
    tok = getattr(model, "gpt2_tokenizer", None)
    if tok is not None:
        tok.save_pretrained(str(folder / GPT2_DIR))
    tmp = folder / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(config, indent=1))
    tmp.replace(folder / CONFIG_FILE)


def load_skeleton(folder: Path) -> ChEX:
    config = json.loads((folder / CONFIG_FILE).read_text())
    clip = ClipTokenizer.load(folder / CLIP_DIR) if (folder / CLIP_DIR).is_dir() else None
    model = ChEX(ChexConfig.from_dict(config["model"]), clip, prompts=config.get("prompts") or {})
    gpt2 = load_gpt2_tokenizer(folder / GPT2_DIR) if (folder / GPT2_DIR).is_dir() else None
    attach_gpt2_tokenizer(model, gpt2)
    model.provenance = config.get("provenance", {})
    return model


__all__ = ["PRESETS", "apply_freezing", "build_model", "build_tokenizers", "load_skeleton", "preset_config",
           "save_skeleton"]
