"""The model a training run starts from (docs/training.md#stage-chaining).

Stages chain through bundles:

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

Each stage makes a `Blueprint`: the architecture, the tokenizers and the components to copy
by name from the source bundles (strict per component). `assemble` builds the model of it with
the recipe's training-time stochasticity in its configuration. A model built from random
weights gets tokenizers learnt from the training text (`tokenizers` BPE for GPT-2, our CLIP
BPE learner for the prompt encoder), sized by its preset (chexcli.model.presets).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from chexcli.errors import ChexError
from chexcli.model.bundle import default_prompts, load_bundle
from chexcli.model.chex import ChEX
from chexcli.model.clip_tokenizer import ClipTokenizer
from chexcli.model.config import ChexConfig, DetectorConfig, DropoutConfig, GeneratorConfig
from chexcli.model.conv_encoder import sincos_positions
from chexcli.model.gpt2_text import build_tiny_gpt2_tokenizer
from chexcli.model.presets import model_config as preset_model_config
from chexcli.model.presets import preset
from chexcli.train.data_prompts import model_prompts


# ------------------------------------------------------------------------------------------ configs
def stage_config(arch: ChexConfig, stage: str) -> ChexConfig:
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


def regularised(cfg: ChexConfig, model_recipe: dict[str, Any] | None) -> ChexConfig:
    """`cfg` with the training-time stochasticity of a recipe's `model` section
    (docs/training.md#stochasticity): every dropout rate is the reference's times `dropout_scale`
    (1.0: the reference's; the demo trains small models with less), the post decoder drops
    `post_decoder_multibox_drop` of its region tokens, and the detector mixes the decoder token
    into the pooled feature of `skip_roi_pool_prob` of its region tokens. None: the reference's."""
    spec = model_recipe or {}
    d = cfg.to_dict()
    d["dropout"] = DropoutConfig().scaled(float(spec.get("dropout_scale", 1.0))).__dict__
    d["detector"]["skip_roi_pool_prob"] = float(spec.get("skip_roi_pool_prob", DetectorConfig.skip_roi_pool_prob))
    d["post_decoder_multibox_drop"] = float(spec.get("post_decoder_multibox_drop",
                                                     ChexConfig.post_decoder_multibox_drop))
    return ChexConfig.from_dict(d)


def _with_generator(arch: ChexConfig, generator: dict[str, Any] | None) -> ChexConfig:
    return ChexConfig.from_dict({**arch.to_dict(), "generator": generator})


# ------------------------------------------------------------------------------------------ tokenizers
def build_tokenizers(corpus: list[str], folder: Path, clip_merges: int = 2000, gpt2_vocab: int = 2000):
    """CLIP and GPT-2 BPE tokenizers learnt from the training text (models from random weights)."""
    texts = sorted(set(corpus))
    clip = ClipTokenizer.build_tiny(texts, n_merges=clip_merges)
    gpt2 = build_tiny_gpt2_tokenizer(texts, vocab_size=max(300, gpt2_vocab), folder=folder)
    return clip, gpt2


def end_token(gpt2_tokenizer) -> int:
    return gpt2_tokenizer.convert_tokens_to_ids("<|endoftext|>")


# ------------------------------------------------------------------------------------------ sources
@dataclass
class Sources:
    """What a stage may start from: the --init and --init-generator bundles (loaded, train mode)
    and their paths, the training text (for learnt tokenizers) and the run's scratch folder."""

    init: ChEX | None
    init_path: Path | None
    generator: ChEX | None
    generator_path: Path | None
    corpus: Callable[[], list[str]]
    workdir: Path
    warn: Callable[[str], None]


def _load(path: Path | None) -> ChEX | None:
    if path is None:
        return None
    model = load_bundle(path)
    model.train()
    return model


def stage_of(model: ChEX) -> str | None:
    """The stage a bundle was trained in, or what imported it (chexzero, official, gpt2)."""
    prov = model.provenance
    if "stage" in prov:
        return str(prov["stage"])
    return {"chexzero-init": "chexzero",  # chex weights import-chexzero
            "official-chex": "official",  # chex weights import
            "hf-gpt2": "gpt2",  # chex weights import-gpt2: a pretrained GPT-2 with a fresh prefix MLP
            }.get(str(prov.get("kind", "")))


def _architecture(model: ChEX) -> ChexConfig:
    arch = model.provenance.get("architecture")
    return ChexConfig.from_dict(arch) if arch else model.cfg


def _require_stage(model: ChEX, path: Path, allowed: tuple[str | None, ...], option: str, stage: str) -> None:
    found = stage_of(model)
    if found is not None and found not in allowed:
        raise ChexError(f"{option} {path} is a {found} bundle, but stage {stage} needs one of: "
                        f"{', '.join(a for a in allowed if a)}; pass the bundle written by that run")


# ------------------------------------------------------------------------------------------ blueprints
@dataclass
class Blueprint:
    """A stage's model before it is built: `config` (the architecture restricted to the stage),
    `arch` (the whole architecture, kept in the provenance so that later stages can grow the
    model back), the tokenizers, and the components copied from source bundles as
    (component, source model, source path)."""

    arch: ChexConfig
    config: ChexConfig
    clip_tokenizer: Any
    gpt2_tokenizer: Any = None
    copies: list[tuple[str, ChEX, Path]] = field(default_factory=list)
    random_positions: bool = False  # a random ViT gets sine-cosine patch positions (`init_positions`)


def _random_blueprint(stage: str, model_config: str, src: Sources) -> Blueprint:
    sizes = preset(model_config)
    clip, gpt2 = build_tokenizers(src.corpus(), src.workdir / "gpt2", sizes.clip_merges, sizes.gpt2_vocab)
    arch = preset_model_config(model_config, clip.vocab_size, len(gpt2), end_token(gpt2))
    return Blueprint(arch, stage_config(arch, stage), clip, gpt2, random_positions=arch.vision.kind == "vit")


def _stage1(src: Sources, model_config: str) -> Blueprint:
    if src.init is None:
        src.warn("no --init: stage 1 starts from random weights (give a CheXzero bundle from "
                 "`chex weights import-chexzero` to start from pretrained encoders)")
        return _random_blueprint("1", model_config, src)
    arch = src.init.cfg if stage_of(src.init) == "chexzero" else _architecture(src.init)
    return Blueprint(arch, stage_config(arch, "1"), src.init.txt_encoder.tokenizer,
                     copies=[(c, src.init, src.init_path) for c in ("img_encoder", "txt_encoder")])


def _txtgen(src: Sources, model_config: str) -> Blueprint:
    if src.init is None:
        raise ChexError("stage txtgen needs --init BUNDLE for its text encoder (a CheXzero or stage-1 bundle)")
    arch = _architecture(src.init)
    source, source_path = ((src.generator, src.generator_path) if src.generator is not None else
                           (src.init, src.init_path) if src.init.txt_decoder is not None else (None, None))
    copies = [(c, src.init, src.init_path) for c in ("img_encoder", "txt_encoder", "detector")]
    if source is not None:
        _require_stage(source, source_path, ("gpt2", "txtgen", "official", "3", None), "--init-generator", "txtgen")
        arch = _with_generator(arch, source.cfg.generator.__dict__.copy() if source.cfg.generator else None)
        copies.append(("txt_decoder", source, source_path))
    if arch.generator is None:
        arch = _with_generator(arch, GeneratorConfig().__dict__)
    gpt2_tok = source.gpt2_tokenizer if source is not None else None
    if source is None:
        src.warn("no --init-generator: the sentence generator starts from random weights with a tokenizer "
                 "learnt from the training sentences")
        gpt2_tok = build_tokenizers(src.corpus(), src.workdir / "gpt2", clip_merges=0)[1]
        eos = end_token(gpt2_tok)
        arch = _with_generator(arch, {**arch.generator.__dict__, "vocab_size": len(gpt2_tok), "bos_token_id": eos,
                                      "eos_token_id": eos, "pad_token_id": eos})
    return Blueprint(arch, stage_config(arch, "txtgen"), src.init.txt_encoder.tokenizer, gpt2_tok, copies)


def _stage2(src: Sources, model_config: str) -> Blueprint:
    if src.init is None:
        raise ChexError("stage 2 needs --init BUNDLE: the bundle written by stage 1 (RUN_DIR/bundle)")
    _require_stage(src.init, src.init_path, ("1", "2", "3", "official"), "--init", "2")
    arch = _architecture(src.init)
    if arch.n_post_decoder_layers == 0:
        arch = ChexConfig.from_dict({**arch.to_dict(), "n_post_decoder_layers": 3})
    return Blueprint(arch, stage_config(arch, "2"), src.init.txt_encoder.tokenizer,
                     copies=[(c, src.init, src.init_path) for c in ("img_encoder", "txt_encoder", "detector")])


def _stage3(src: Sources, model_config: str) -> Blueprint:
    init, gen = src.init, src.generator
    if init is None or gen is None:
        raise ChexError("stage 3 needs --init (the stage-2 bundle) and --init-generator (the txtgen bundle)")
    _require_stage(init, src.init_path, ("2", "3", "official"), "--init", "3")
    _require_stage(gen, src.generator_path, ("txtgen", "3", "official"), "--init-generator", "3")
    if init.post_decoder is None:
        raise ChexError(f"--init {src.init_path} has no post decoder; pass the bundle written by stage 2")
    if gen.txt_decoder is None:
        raise ChexError(f"--init-generator {src.generator_path} has no sentence generator; pass the txtgen bundle")
    if gen.cfg.d_model != init.cfg.d_model:
        raise ChexError(f"--init-generator {src.generator_path} was built for width {gen.cfg.d_model}, "
                        f"--init {src.init_path} has width {init.cfg.d_model}; pass bundles of the same model size")
    if not all(torch.equal(a, b) for a, b in zip(init.txt_encoder.state_dict().values(),
                                                 gen.txt_encoder.state_dict().values())):
        src.warn("the txtgen bundle was trained on another text encoder than the stage-2 bundle's; "
                 "its generator may not read the region features well")
    arch = _with_generator(init.cfg, gen.cfg.generator.__dict__.copy())
    copies = [(c, init, src.init_path) for c in ("img_encoder", "txt_encoder", "detector", "post_decoder")]
    return Blueprint(arch, arch, init.txt_encoder.tokenizer, gen.gpt2_tokenizer,
                     copies + [("txt_decoder", gen, src.generator_path)])


BLUEPRINTS: dict[str, Callable[[Sources, str], Blueprint]] = {"1": _stage1, "txtgen": _txtgen, "2": _stage2,
                                                              "3": _stage3}


# ------------------------------------------------------------------------------------------ building
def build_model(stage: str, init: Path | None, init_generator: Path | None, model_config: str,
                corpus: Callable[[], list[str]], workdir: Path, warn: Callable[[str], None],
                model_recipe: dict[str, Any] | None = None) -> ChEX:
    """The model a stage starts from (train mode), with its tokenizers; `model_recipe` is the
    recipe's `model` section (its dropout and skip settings; None: the reference's)."""
    if stage not in BLUEPRINTS:
        raise ChexError(f"unknown stage {stage!r}")
    src = Sources(_load(init), init, _load(init_generator), init_generator, corpus, workdir, warn)
    return assemble(BLUEPRINTS[stage](src, model_config), model_recipe)


def assemble(plan: Blueprint, model_recipe: dict[str, Any] | None) -> ChEX:
    """Build the blueprint's model and copy its components in; its prompts are the packaged ones plus
    the custom finding prompts of its sources and data (chexcli.train.data_prompts)."""
    prompts = model_prompts(default_prompts(), [source for _, source, _ in plan.copies], model_recipe)
    model = ChEX(regularised(plan.config, model_recipe), plan.clip_tokenizer, plan.gpt2_tokenizer,
                 prompts=prompts, provenance={"architecture": plan.arch.to_dict()})
    for component, source, where in plan.copies:
        _copy(model, source, component, where)
    if plan.random_positions:
        init_positions(model.img_encoder.backbone)
    return model


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


__all__ = ["BLUEPRINTS", "Blueprint", "Sources", "assemble", "build_model", "build_tokenizers", "end_token",
           "init_positions", "regularised", "stage_config", "stage_of"]
