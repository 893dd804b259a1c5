"""Import the released ChEX checkpoint and CheXzero CLIP weights into model bundles.

`import_official` takes the released zip as downloaded, the extracted
`chex_stage3` folder (`run_*/checkpoints/checkpoint_*.pth`, newest step) or a
single `.pth`, loads it with `torch.load(weights_only=True)` (pickled code is
never run), derives every size from the state-dict shapes and the stored
`config_dict` (ARCHITECTURE.md §11, §12, §15), checks every key and shape and
writes a bundle (`chexcli.model.bundle`).

`import_chexzero` turns CheXzero's CLIP weights (OpenAI state-dict layout)
into an initial bundle: image and prompt encoders filled, the rest freshly
initialised.

`bundle_info` summarises a bundle (sizes, parameter counts, provenance)
without loading its tensors.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import pickle
import re
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable

import torch

from chexcli.errors import ChexError
from chexcli.hashing import sha256_file
from chexcli.model.config import ChexConfig, DetectorConfig, GeneratorConfig, TextConfig, VisionConfig

#: extraction cap for a zip SOURCE (the released stage-3 zip holds one ~4.2 GB checkpoint)
MAX_EXTRACT_BYTES = 8 * 1024**3
#: how many parent folders of SOURCE are searched for tokenizer files
SEARCH_PARENTS = 6

CLIP_VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"
OFFICIAL_LM = "healx/gpt-2-pubmed-medium"
CHECKPOINT_RE = re.compile(r"(?:^|/)checkpoint_(\d+|best)\.pth$")
TRAINING_KEYS = ("optimizer", "lr_scheduler", "amp", "step", "results", "best_results", "experiment_config")
PROMPT_DICT_KEYS = ("anatomy_prompts", "pathology_pos_prompts", "pathology_neg_prompts", "no_finding_prompts")

IMG = "img_encoder.backbone."
TXT = "txt_encoder."
LM = "txt_decoder.language_model."
LM_HEAD = LM + "lm_head.weight"
WTE = LM + "transformer.wte.weight"
PREFIX = "txt_decoder.prefix_proj.layers."
# GPT-2 attention buffers that some transformers versions store; not weights
_LM_BUFFER_RE = re.compile(r"^txt_decoder\.language_model\.transformer\.h\.\d+\.attn\.(?:bias|masked_bias)$")

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# ---------------------------------------------------------------------------------------------
# hashing and small helpers
# ---------------------------------------------------------------------------------------------
def _normalise_sha(value: str) -> str:
    text = value.strip().lower()
    if text.startswith("sha256:"):
        text = text[7:]
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise ChexError(f"--expect-sha256 must be 64 hexadecimal digits, got {value!r}")
    return text


def _check_sha(actual: str, expected: str | None, what: Path) -> None:
    if expected is not None and actual != _normalise_sha(expected):
        raise ChexError(f"SHA-256 of {what} is {actual}, expected {_normalise_sha(expected)}; "
                        "the download is corrupt or a different file, download it again")


def _json_safe(value: Any) -> Any:
    """Plain JSON data from a config tree (tuples -> lists, other objects -> str)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return str(value)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ChexError(f"{out} already exists and is not empty; choose another --out or remove it")


def _parents(path: Path) -> list[Path]:
    start = path if path.is_dir() else path.parent
    start = start.resolve()
    return [start, *list(start.parents)[:SEARCH_PARENTS]]


# ---------------------------------------------------------------------------------------------
# locating the checkpoint
# ---------------------------------------------------------------------------------------------
@dataclass
class CheckpointSource:
    """The checkpoint chosen from SOURCE (extracted to a temporary folder for a zip)."""

    source: Path
    kind: str  # "zip" | "folder" | "file"
    checkpoint: Path  # the .pth to load
    member: str  # path of the checkpoint inside SOURCE ("" for a single file)
    sha256: str  # of SOURCE (the zip / the file); of the chosen .pth for a folder
    model_config: Path | None = None  # model_config.yaml next to checkpoints/, if any
    tmpdir: Path | None = None
    notes: list[str] = field(default_factory=list)

    def cleanup(self) -> None:
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None


def _choose(names: Iterable[tuple[str, float]], where: Path) -> str:
    """Newest numbered checkpoint by step (ties: newer mtime, then name); best only if alone."""
    numbered, best = [], []
    for name, mtime in names:
        m = CHECKPOINT_RE.search(name)
        if not m:
            continue
        if m.group(1) == "best":
            best.append((mtime, name))
        else:
            numbered.append((int(m.group(1)), mtime, name))
    if numbered:
        return max(numbered)[2]
    if best:
        return max(best)[1]
    raise ChexError(f"no checkpoint found in {where}: expected run_*/checkpoints/checkpoint_<step>.pth "
                    "(the extracted chex_stage3 folder, its zip, or a single .pth)")


def find_checkpoint(folder: str | Path) -> Path:
    """The checkpoint a folder SOURCE resolves to (newest step; checkpoint_best only if alone)."""
    folder = Path(folder)
    found = [(p.relative_to(folder).as_posix(), p.stat().st_mtime)
             for p in folder.rglob("checkpoint_*.pth") if p.is_file()]
    return folder / _choose(found, folder)


def _is_torch_zip(names: list[str]) -> bool:
    return any(n.endswith("/data.pkl") or n == "data.pkl" for n in names)


def _is_torchscript_zip(names: list[str]) -> bool:
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _unsafe_member(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "has an absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "would be written outside the extraction folder (path traversal)"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "is a symbolic link"
    if info.flag_bits & 0x1:
        return "is encrypted"
    return None


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int, archive: Path) -> int:
    """Stream one member to `target`; returns bytes written; refuses more than `budget` bytes."""
    written = 0
    with zf.open(info) as src, open(target, "wb") as dst:
        while True:
            block = src.read(1 << 22)
            if not block:
                break
            written += len(block)
            if written > budget or written > info.file_size:
                raise ChexError(f"{archive}: {info.filename} unpacks to more than its declared or allowed size; "
                                "refusing the archive")
            dst.write(block)
    return written


def open_zip_source(path: Path, tmp_parent: Path, max_bytes: int = MAX_EXTRACT_BYTES,
                    log: Log = _quiet) -> CheckpointSource:
    """Check a release zip and extract only the newest checkpoint (and model_config.yaml)."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ChexError(f"{path} is not a readable zip archive ({err}); download it again") from None
    with zf:
        infos = zf.infolist()
        for info in infos:
            why = _unsafe_member(info)
            if why:
                raise ChexError(f"refusing {path}: member {info.filename!r} {why}")
        files = [i for i in infos if not i.is_dir()]
        names = [(i.filename, _dt.datetime(*i.date_time).timestamp()) for i in files]
        if not any(CHECKPOINT_RE.search(n) for n, _ in names):
            pths = [n for n, _ in names if n.endswith((".pth", ".pt"))]
            if len(pths) != 1:
                raise ChexError(f"no checkpoint found in {path}: expected run_*/checkpoints/checkpoint_<step>.pth inside")
            chosen = pths[0]
        else:
            chosen = _choose(names, path)
        by_name = {i.filename: i for i in files}
        wanted = [by_name[chosen]]
        run_dir = PurePosixPath(chosen).parent
        if run_dir.name == "checkpoints":
            run_dir = run_dir.parent
        cfg_name = (run_dir / "model_config.yaml").as_posix()
        if cfg_name in by_name:
            wanted.append(by_name[cfg_name])
        total = sum(i.file_size for i in wanted)
        if total > max_bytes:
            raise ChexError(f"{path}: {chosen} would unpack to {total / 1e9:.1f} GB, more than the "
                            f"{max_bytes / 1e9:.1f} GB allowed; is this the ChEX release?")
        tmp = Path(tempfile.mkdtemp(prefix=".chex-import-", dir=tmp_parent))
        try:
            log(f"extracting {chosen} ({by_name[chosen].file_size / 1e6:.1f} MB)")
            budget = max_bytes
            budget -= _extract_member(zf, by_name[chosen], tmp / "checkpoint.pth", budget, path)
            model_config = None
            if len(wanted) > 1:
                model_config = tmp / "model_config.yaml"
                _extract_member(zf, wanted[1], model_config, budget, path)
        except zipfile.BadZipFile as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ChexError(f"{path} is corrupt ({err}); download it again") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return CheckpointSource(path, "zip", tmp / "checkpoint.pth", chosen, "", model_config, tmp)


def resolve_source(source: str | Path, expect_sha256: str | None = None, tmp_parent: Path | None = None,
                   max_bytes: int = MAX_EXTRACT_BYTES, log: Log = _quiet) -> CheckpointSource:
    """Locate (and for a zip, check and extract) the checkpoint of SOURCE; verify its SHA-256."""
    src = Path(source).expanduser()
    if not src.exists():
        raise ChexError(f"{src} does not exist; pass the downloaded zip, the extracted chex_stage3 folder or a .pth")
    if expect_sha256 is not None:
        _normalise_sha(expect_sha256)
    if src.is_dir():
        pth = find_checkpoint(src)
        log(f"checkpoint: {pth}")
        log("computing SHA-256 ...")
        digest = sha256_file(pth)
        _check_sha(digest, expect_sha256, pth)
        cfg = pth.parent.parent / "model_config.yaml" if pth.parent.name == "checkpoints" else pth.parent / "model_config.yaml"
        return CheckpointSource(src, "folder", pth, pth.relative_to(src).as_posix(), digest,
                                cfg if cfg.is_file() else None)
    release_zip = False
    if zipfile.is_zipfile(src):
        try:
            with zipfile.ZipFile(src) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            names = []
        if _is_torchscript_zip(names):
            raise ChexError(f"{src} is a TorchScript archive, not a checkpoint; convert it to a state dict in a "
                            "trusted environment: torch.save(torch.jit.load(f).state_dict(), 'weights.pt')")
        release_zip = not _is_torch_zip(names)
    log("computing SHA-256 ...")
    digest = sha256_file(src)
    _check_sha(digest, expect_sha256, src)
    if release_zip:
        res = open_zip_source(src, tmp_parent or src.parent, max_bytes, log)
        res.sha256 = digest
        return res
    cfg = src.parent.parent / "model_config.yaml" if src.parent.name == "checkpoints" else None
    return CheckpointSource(src, "file", src, "", digest, cfg if cfg is not None and cfg.is_file() else None)


# ---------------------------------------------------------------------------------------------
# loading without running pickled code
# ---------------------------------------------------------------------------------------------
def safe_torch_load(path: str | Path, what: str | None = None) -> Any:
    """`torch.load(weights_only=True, mmap=True)` with one-line errors (falls back to no mmap for old files)."""
    path = Path(path)
    what = what or str(path)
    try:
        with zipfile.ZipFile(path) as zf:
            if _is_torchscript_zip(zf.namelist()):
                raise ChexError(f"{what} is a TorchScript archive, not a checkpoint; convert it to a state dict in "
                                "a trusted environment: torch.save(torch.jit.load(f).state_dict(), 'weights.pt')")
        mmap = True
    except (zipfile.BadZipFile, OSError):
        mmap = False  # legacy (non-zip) torch.save format or not a checkpoint at all
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Weights only load failed" in text or "weights_only" in text:
            m = re.search(r"(?:GLOBAL|global)\s+([\w.]+)", text)
            culprit = f" ({m.group(1)})" if m else ""
            raise ChexError(f"{what} contains pickled code or objects{culprit} that are refused for safety "
                            "(only tensors and plain containers are loaded); use the official checkpoint file") from None
        raise ChexError(f"{what} is not a PyTorch checkpoint ({text.splitlines()[0] if text else 'unpickling failed'})") from None
    except ChexError:
        raise
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, AttributeError, IndexError, TypeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ChexError(f"{what} is not a readable PyTorch checkpoint ({first[:200]}); download it again") from None


def _yaml_config(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def split_checkpoint(obj: Any, what: str, model_config: Path | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, config_dict) of a loaded checkpoint; training entries are ignored."""
    if not isinstance(obj, dict):
        raise ChexError(f"{what} holds a {type(obj).__name__}, not a checkpoint dict with 'state_dict' and 'config_dict'")
    if "state_dict" in obj:
        state, config = obj["state_dict"], obj.get("config_dict")
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, config = obj, None
    else:
        raise ChexError(f"{what} has no 'state_dict' entry (top-level keys: {', '.join(map(str, list(obj)[:8]))})")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ChexError(f"{what}: 'state_dict' is not a mapping of names to tensors")
    if config is None:
        config = _yaml_config(model_config)
        if config is None:
            raise ChexError(f"{what} has no 'config_dict' and no model_config.yaml was found next to it; "
                            "import the checkpoint from its run folder or the release zip")
    if not isinstance(config, dict):
        raise ChexError(f"{what}: 'config_dict' is not a mapping")
    return dict(state), config


# ---------------------------------------------------------------------------------------------
# deriving the configuration from shapes + config_dict
# ---------------------------------------------------------------------------------------------
def _shape(state: dict[str, torch.Tensor], key: str, what: str) -> tuple[int, ...]:
    if key not in state:
        raise ChexError(f"{what} lacks {key}; it is not a complete ChEX/CLIP checkpoint")
    return tuple(state[key].shape)


def _count(state: dict[str, torch.Tensor], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = {int(m.group(1)) for k in state if (m := pat.match(k))}
    if idx and idx != set(range(len(idx))):
        raise ChexError(f"layers under {prefix}* are not numbered 0..{len(idx) - 1}: {sorted(idx)}")
    return len(idx)


def derive_vision(state: dict[str, torch.Tensor], prefix: str = IMG, what: str = "checkpoint") -> VisionConfig:
    """CLIP vision sizes as CLIP's build_model derives them (heads = width // 64)."""
    width, channels, patch, patch2 = _shape(state, prefix + "conv1.weight", what)
    rows = _shape(state, prefix + "positional_embedding", what)[0]
    grid = math.isqrt(max(rows - 1, 0))
    if grid * grid != rows - 1 or patch != patch2:
        raise ChexError(f"{what}: {prefix}positional_embedding has {rows} rows, not a square grid + 1")
    return VisionConfig(image_size=grid * patch, patch_size=patch, width=width,
                        layers=_count(state, prefix + "transformer.resblocks."), heads=max(1, width // 64),
                        output_dim=_shape(state, prefix + "proj", what)[1])


def derive_text(state: dict[str, torch.Tensor], prefix: str = TXT, what: str = "checkpoint") -> TextConfig:
    """CLIP text sizes (heads = width // 64, at least 1)."""
    vocab, width = _shape(state, prefix + "token_embedding.weight", what)
    return TextConfig(context_length=_shape(state, prefix + "positional_embedding", what)[0], vocab_size=vocab,
                      width=width, layers=_count(state, prefix + "transformer.resblocks."),
                      heads=max(1, width // 64), output_dim=_shape(state, prefix + "text_projection", what)[1])


# values of the reference configuration that chexcli's model implements (others would compute differently)
_SUPPORTED: list[tuple[tuple[str, ...], Any]] = [
    (("act",), "gelu"),
    (("layer_scale",), True),
    (("img_encoder", "add_cls_features"), False),
    (("img_encoder", "use_pretrained_projection"), True),
    (("img_encoder", "additional_projection_layers"), 0),
    (("img_encoder", "normalize_projected"), False),
    (("txt_encoder", "n_projection_layers"), 0),
    (("detector", "multiregion_sa"), True),
    (("detector", "decoder_sa"), False),
    (("detector", "decoder_ff"), True),
    (("detector", "shortcut_tokens"), False),
    (("detector", "use_pos_embeddings"), True),
    (("detector", "shortcut_pos_embeddings"), False),
    (("detector", "predictor_hidden_layers"), 1),
    (("detector", "patch_project_layers"), 1),
    (("detector", "out_project_layers"), 2),
    (("txt_decoder", "n_projection_layers"), 2),
    (("txt_decoder", "shared_projection"), False),
]
_SUPPORTED_IF_POST = [
    (("post_decoder_patches",), True),
    (("post_decoder_cls",), True),
    (("post_decoder_gate",), True),
]


def _get(config: dict[str, Any], path: tuple[str, ...], default: Any = None) -> Any:
    node: Any = config
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _check_supported(config: dict[str, Any], has_post: bool, has_generator: bool, what: str) -> None:
    checks = _SUPPORTED + (_SUPPORTED_IF_POST if has_post else [])
    for path, want in checks:
        if path[0] == "txt_decoder" and not has_generator:
            continue
        value = _get(config, path, want)
        if value != want:
            raise ChexError(f"{what}: config_dict sets {'.'.join(path)} = {value!r}; chexcli implements only "
                            f"{want!r} (the released ChEX configuration)")


def _position_offset(value: Any, prefix_len: int, what: str) -> int:
    if value is None or value == 0:
        return 0
    if value == "one" or value == 1:
        return 1
    if value == "prefix":
        return prefix_len
    raise ChexError(f"{what}: unknown txt_decoder.position_offset {value!r} (expected null, 'one' or 'prefix')")


def derive_config(state: dict[str, torch.Tensor], config_dict: dict[str, Any], lm_config: dict[str, Any] | None = None,
                  eos_token_id: int | None = None, what: str = "checkpoint") -> ChexConfig:
    """The ChexConfig of an official checkpoint: sizes from shapes, switches from `config_dict`.

    `lm_config` is the GPT-2 config.json (for n_head and layer-norm epsilon; default
    n_embd // 64); `eos_token_id` the tokenizer's <|endoftext|> id (default: the LM
    config's, else the last vocabulary id as in GPT-2).
    """
    vision = derive_vision(state, IMG, what)
    text = derive_text(state, TXT, what)
    if "d_model" not in config_dict or "n_head" not in config_dict:
        raise ChexError(f"{what}: config_dict lacks d_model / n_head; is this a ChEX checkpoint?")
    d, n_head = int(config_dict["d_model"]), int(config_dict["n_head"])
    r, d_tok = _shape(state, "detector.multiregion_tokens", what)
    for name, value in (("detector.multiregion_tokens width", d_tok), ("CLIP vision output", vision.output_dim),
                        ("CLIP text output", text.output_dim)):
        if value != d:
            raise ChexError(f"{what}: {name} is {value}, but config_dict.d_model is {d}")
    if d % n_head:
        raise ChexError(f"{what}: d_model {d} is not divisible by n_head {n_head}")
    n_det = _count(state, "detector.decoder.decoder_layers.")
    n_post = _count(state, "post_decoder.post_decoder_layers.")
    cfg_post = config_dict.get("n_post_decoder_layers")
    if cfg_post is not None and int(cfg_post) != n_post:
        raise ChexError(f"{what}: config_dict.n_post_decoder_layers is {cfg_post} but the state dict has {n_post} "
                        "post-decoder layers")
    ff_key = ("detector.decoder.decoder_layers.0.ff_block.layers.0.weight" if n_det
              else "post_decoder.post_decoder_layers.0.ff_block.layers.0.weight")
    ff = state[ff_key].shape[0] if ff_key in state else 4 * d
    hidden = _shape(state, "detector.bbox_predictor.1.layers.0.weight", what)[0]
    out_hidden = _shape(state, "detector.out_projector.1.layers.0.weight", what)[0]
    det_cfg = config_dict.get("detector") or {}
    detector = DetectorConfig(multiregions=r, n_decoder_layers=n_det,
                              soft_roi_beta=float(det_cfg.get("soft_roi_beta", 2.0)),
                              predictor_hidden_dim=None if hidden == d else hidden,
                              out_project_hidden_dim=None if out_hidden == 4 * d else out_hidden)
    has_generator = any(k.startswith("txt_decoder.") for k in state)
    _check_supported(config_dict, n_post > 0, has_generator, what)
    generator = None
    if has_generator:
        generator = derive_generator(state, config_dict, d, lm_config, eos_token_id, what)
    cfg = ChexConfig(
        d_model=d, n_head=n_head, ff_dim=None if ff == 4 * d else ff, vision=vision, text=text, detector=detector,
        n_post_decoder_layers=n_post,
        post_decoder_multibox_drop=float(config_dict.get("post_decoder_multibox_drop") or 0.0),
        generator=generator,
    )
    if config_dict.get("max_generated_sentences") is not None:
        cfg.max_generated_sentences = int(config_dict["max_generated_sentences"])
    return cfg


def derive_generator(state: dict[str, torch.Tensor], config_dict: dict[str, Any], d_model: int,
                     lm_config: dict[str, Any] | None, eos_token_id: int | None, what: str) -> GeneratorConfig:
    """GPT-2 + prefix sizes from shapes; prefix/offset/length switches from config_dict.txt_decoder."""
    lm_config = lm_config or {}
    vocab, n_embd = _shape(state, WTE, what)
    n_positions = _shape(state, LM + "transformer.wpe.weight", what)[0]
    n_layer = _count(state, LM + "transformer.h.")
    n_head = int(lm_config.get("n_head") or max(1, n_embd // 64))
    if n_embd % n_head:
        raise ChexError(f"{what}: GPT-2 width {n_embd} is not divisible by {n_head} heads (from the LM config)")
    for key, want in (("n_embd", n_embd), ("n_layer", n_layer), ("vocab_size", vocab)):
        if key in lm_config and lm_config[key] is not None and int(lm_config[key]) != want:
            raise ChexError(f"{what}: the GPT-2 config.json says {key} = {lm_config[key]}, the checkpoint has {want}; "
                            "pass the tokenizer/config folder of the language model this checkpoint was trained with")
    td = config_dict.get("txt_decoder") or {}
    factor = int(td.get("prefix_length_factor") or 5)
    prefix_hidden = _shape(state, PREFIX + "0.weight", what)[0]
    prefix_out = _shape(state, PREFIX + "3.weight", what)[0]
    if prefix_out != factor * 2 * n_layer * n_embd:
        raise ChexError(f"{what}: prefix projection has {prefix_out} outputs, expected prefix_length_factor {factor} x 2 x "
                        f"{n_layer} layers x {n_embd} = {factor * 2 * n_layer * n_embd}")
    gen_kwargs = td.get("generation_kwargs") or {}
    max_length = int(gen_kwargs.get("max_length") or td.get("max_length") or 128)
    if eos_token_id is None:
        eos_token_id = lm_config.get("eos_token_id")
        eos_token_id = int(eos_token_id) if isinstance(eos_token_id, int) else vocab - 1
    return GeneratorConfig(
        vocab_size=vocab, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        layer_norm_epsilon=float(lm_config.get("layer_norm_epsilon") or 1e-5),
        bos_token_id=eos_token_id, eos_token_id=eos_token_id, pad_token_id=eos_token_id,
        prefix_length_factor=factor, prefix_hidden_dim=None if prefix_hidden == 4 * d_model else prefix_hidden,
        position_offset=_position_offset(td.get("position_offset"), factor, what), max_length=max_length,
    )


# ---------------------------------------------------------------------------------------------
# tokenizers
# ---------------------------------------------------------------------------------------------
def load_clip_vocab(path: str | Path, context_length: int = 77):
    """CLIP tokenizer from the .txt.gz merge list, a folder holding it, or a HF CLIP tokenizer folder."""
    from chexcli.model.clip_tokenizer import ClipTokenizer

    path = Path(path).expanduser()
    if path.is_file():
        return ClipTokenizer.from_pretrained_file(path, context_length=context_length)
    if path.is_dir():
        for cand in (path / CLIP_VOCAB_NAME, *sorted(path.glob("*.txt.gz"))):
            if cand.is_file():
                return ClipTokenizer.from_pretrained_file(cand, context_length=context_length)
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            return ClipTokenizer.from_hf_folder(path, context_length=context_length)
        raise ChexError(f"{path} holds neither {CLIP_VOCAB_NAME} nor a Hugging Face CLIP tokenizer "
                        "(vocab.json + merges.txt); pass --clip-vocab with one of them")
    raise ChexError(f"CLIP vocabulary {path} not found; pass --clip-vocab {CLIP_VOCAB_NAME} "
                    "(shipped with OpenAI CLIP and CheXzero) or a Hugging Face CLIP tokenizer folder")


def find_clip_vocab(near: Path) -> Path | None:
    for folder in _parents(near):
        for cand in (folder / "clip_bpe" / CLIP_VOCAB_NAME, folder / CLIP_VOCAB_NAME):
            if cand.is_file():
                return cand
    return None


def _is_tokenizer_folder(folder: Path) -> bool:
    return folder.is_dir() and ((folder / "tokenizer.json").is_file()
                                or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()))


def _read_lm_config(folder: Path) -> dict[str, Any] | None:
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ChexError(f"{path} is not valid JSON ({err}); fix or remove it") from None
    return data if isinstance(data, dict) else None


def _missing_lm_message(name: str) -> str:
    return (f"cannot get the GPT-2 tokenizer {name!r} (offline or not on the hub); download vocab.json and merges.txt "
            f"(and config.json) from the Hugging Face hub repo {OFFICIAL_LM} into a folder and pass --lm-tokenizer FOLDER")


def _looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else is meant as a local path."""
    return name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or "\\" in name or name.endswith((".json", ".txt"))


@dataclass
class LmTokenizer:
    tokenizer: Any
    config: dict[str, Any] | None
    origin: str


def load_lm_tokenizer(spec: str | Path, hub_ok: bool = True) -> LmTokenizer:
    """GPT-2 tokenizer (+ its config.json if present) from a folder, or from the hub by name when online."""
    from chexcli.model.gpt2_text import load_gpt2_tokenizer

    path = Path(spec).expanduser()
    if path.exists():
        if not _is_tokenizer_folder(path):
            raise ChexError(f"{path} is not a GPT-2 tokenizer folder: it needs vocab.json + merges.txt or tokenizer.json "
                            f"(from the hub repo {OFFICIAL_LM})")
        return LmTokenizer(load_gpt2_tokenizer(path), _read_lm_config(path), str(path.resolve()))
    name = str(spec)
    if not hub_ok or isinstance(spec, Path) or _looks_like_path(name):
        raise ChexError(f"GPT-2 tokenizer folder {name} not found; " + _missing_lm_message(OFFICIAL_LM).split("; ", 1)[1])
    try:
        from transformers import AutoConfig, AutoTokenizer

        hub_tok = AutoTokenizer.from_pretrained(name)
    except Exception:  # offline, unknown repo, missing files: all the same to the user
        raise ChexError(_missing_lm_message(name)) from None
    config = None
    try:
        config = AutoConfig.from_pretrained(name).to_dict()
    except Exception:
        config = None
    with tempfile.TemporaryDirectory(prefix="chex-lm-tok-") as tmp:
        hub_tok.save_pretrained(tmp)
        tok = load_gpt2_tokenizer(tmp)  # read into memory; the folder may go
    return LmTokenizer(tok, config, f"hub:{name}")


def find_lm_tokenizer(url: str | None, near: Path) -> Path | None:
    """Resolve a relative `language_model_url` (like the fixture's 'gpt2_tiny') against SOURCE's folders."""
    if not url:
        return None
    p = Path(url).expanduser()
    if p.is_absolute():
        return p if _is_tokenizer_folder(p) else None
    for folder in _parents(near):
        if _is_tokenizer_folder(folder / url):
            return folder / url
    return None


def _eos_id(tokenizer) -> int | None:
    value = getattr(tokenizer, "eos_token_id", None)
    return int(value) if isinstance(value, int) else None


# ---------------------------------------------------------------------------------------------
# import_official
# ---------------------------------------------------------------------------------------------
def import_official(source: str | Path, out: str | Path, clip_vocab: str | Path | None = None,
                    lm_tokenizer: str | Path | None = None, expect_sha256: str | None = None, *,
                    log: Log | None = None, max_extract_bytes: int = MAX_EXTRACT_BYTES) -> Path:
    """Import an official ChEX checkpoint (zip / chex_stage3 folder / .pth) into a bundle at `out`.

    Returns the bundle folder; its config.json records the provenance (source,
    SHA-256 of SOURCE -- of the chosen .pth for a folder --, import date and the
    original config_dict).
    """
    from chexcli.model.bundle import attach_gpt2_tokenizer, default_prompts, load_weights, save_bundle
    from chexcli.model.chex import ChEX

    log = log or _quiet
    out = Path(out).expanduser()
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    src = resolve_source(source, expect_sha256, tmp_parent=out.parent, max_bytes=max_extract_bytes, log=log)
    try:
        log(f"SHA-256 {src.sha256}")
        what = f"{src.source} ({src.member})" if src.kind == "zip" else str(src.checkpoint)
        log("loading the checkpoint (weights only) ...")
        state, config_dict = split_checkpoint(safe_torch_load(src.checkpoint, what), what, src.model_config)
        for key in [k for k in state if _LM_BUFFER_RE.match(k)]:
            del state[key]

        # tokenizers
        text_ctx = _shape(state, TXT + "positional_embedding", what)[0]
        vocab_path = Path(clip_vocab).expanduser() if clip_vocab is not None else find_clip_vocab(src.source)
        if vocab_path is None:
            raise ChexError(f"the CLIP vocabulary is needed: pass --clip-vocab {CLIP_VOCAB_NAME} (shipped with OpenAI "
                            "CLIP and CheXzero) or a Hugging Face CLIP tokenizer folder")
        clip_tok = load_clip_vocab(vocab_path, context_length=text_ctx)
        clip_rows = _shape(state, TXT + "token_embedding.weight", what)[0]
        if clip_tok.vocab_size != clip_rows:
            raise ChexError(f"the CLIP vocabulary {vocab_path} has {clip_tok.vocab_size} tokens but the checkpoint's text "
                            f"tower has {clip_rows}; pass the matching {CLIP_VOCAB_NAME}")
        has_generator = any(k.startswith("txt_decoder.") for k in state)
        lm = None
        if has_generator:
            url = _get(config_dict, ("txt_decoder", "language_model_url"))
            if lm_tokenizer is not None:
                lm = load_lm_tokenizer(lm_tokenizer)
            else:
                local = find_lm_tokenizer(url, src.source)
                if local is not None:
                    lm = load_lm_tokenizer(local)
                elif url and not _looks_like_path(str(url)):
                    log(f"GPT-2 tokenizer: trying the hub ({url}) ...")
                    lm = load_lm_tokenizer(str(url))
                else:
                    raise ChexError("the GPT-2 tokenizer is needed: " + _missing_lm_message(str(url or OFFICIAL_LM))
                                    .split("; ", 1)[1])
        cfg = derive_config(state, config_dict, lm.config if lm else None, _eos_id(lm.tokenizer) if lm else None, what)
        if lm is not None and len(lm.tokenizer) > cfg.generator.vocab_size:
            raise ChexError(f"the GPT-2 tokenizer ({lm.origin}) has {len(lm.tokenizer)} tokens, more than the checkpoint's "
                            f"{cfg.generator.vocab_size}; pass the tokenizer of {OFFICIAL_LM}")

        # tied head
        if LM_HEAD in state:
            head = state.pop(LM_HEAD)
            wte = state.get(WTE)
            same = wte is not None and head.shape == wte.shape and (
                (head.data_ptr() == wte.data_ptr() and head.stride() == wte.stride()) or torch.equal(head, wte))
            if not same:
                raise ChexError(f"{what}: {LM_HEAD} differs from {WTE}; chexcli's GPT-2 ties them as the official "
                                "model does, so this checkpoint cannot be imported")

        prompts = default_prompts()
        model_dicts = {k: _json_safe(config_dict[k]) for k in PROMPT_DICT_KEYS if config_dict.get(k)}
        if model_dicts:
            prompts["model_prompt_dicts"] = model_dicts
        with torch.device("meta"):
            model = ChEX(cfg, clip_tok, prompts=prompts)
        load_weights(model, state, source=what)
        attach_gpt2_tokenizer(model, lm.tokenizer if lm else None)
        provenance = {
            "kind": "official-chex",
            "source": str(src.source.resolve()),
            "source_kind": src.kind,
            "checkpoint": src.member or src.source.name,
            "sha256": src.sha256,
            "sha256_of": "checkpoint file" if src.kind == "folder" else "source file",
            "imported": _now(),
            "tokenizers": {"clip": str(vocab_path.resolve()) if vocab_path.exists() else str(vocab_path),
                           "gpt2": lm.origin if lm else None},
            "config_dict": _json_safe(config_dict),
        }
        log(f"writing bundle {out} ...")
        save_bundle(model, out, provenance=provenance)
        del model, state
    finally:
        src.cleanup()
    log(f"imported {src.source} -> {out}")
    return out


# ---------------------------------------------------------------------------------------------
# import_chexzero
# ---------------------------------------------------------------------------------------------
_CLIP_TEXT_KEYS = ("token_embedding.", "positional_embedding", "ln_final.", "text_projection", "transformer.")
_CLIP_EXTRA_KEYS = {"logit_scale", "input_resolution", "context_length", "vocab_size"}


def _clip_state(obj: Any, what: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ChexError(f"{what} is not a CLIP state dict (expected tensors named visual.*, transformer.*, "
                        "token_embedding.weight, ...)")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if not any(k.startswith("visual.") for k in state):
        raise ChexError(f"{what} has no visual.* weights; is it a CheXzero / OpenAI CLIP checkpoint?")
    return state


def chexzero_config(state: dict[str, torch.Tensor], base: ChexConfig | None = None,
                    lm_config: dict[str, Any] | None = None, eos_token_id: int | None = None,
                    what: str = "CheXzero file") -> ChexConfig:
    """A ChexConfig whose CLIP towers match a CheXzero state dict (rest: `base`, default stage-3 sizes)."""
    import dataclasses

    vision = derive_vision(state, "visual.", what)
    text = derive_text(state, "", what)
    cfg = dataclasses.replace(base or ChexConfig(), vision=vision, text=text)
    if vision.output_dim != text.output_dim:
        raise ChexError(f"{what}: image embedding {vision.output_dim} and text embedding {text.output_dim} differ")
    if base is None:
        cfg.d_model = vision.output_dim
    elif cfg.d_model != vision.output_dim:
        raise ChexError(f"{what}: CLIP embedding width {vision.output_dim} differs from the configuration's "
                        f"d_model {cfg.d_model}")
    if cfg.generator is not None:
        gen = dataclasses.replace(cfg.generator)
        lm_config = lm_config or {}
        for key in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "layer_norm_epsilon"):
            if lm_config.get(key) is not None:
                setattr(gen, key, type(getattr(gen, key))(lm_config[key]))
        if eos_token_id is not None:
            gen.bos_token_id = gen.eos_token_id = gen.pad_token_id = eos_token_id
        cfg.generator = gen
    return cfg


def import_chexzero(path: str | Path, out: str | Path, clip_vocab: str | Path | None = None,
                    lm_tokenizer: str | Path | None = None, config: ChexConfig | None = None, *,
                    seed: int = 0, expect_sha256: str | None = None, log: Log | None = None) -> Path:
    """CheXzero CLIP weights (OpenAI layout) -> initial bundle: CLIP towers filled, the rest freshly initialised.

    `config` gives the non-CLIP sizes (default: the released stage-3 model with
    GPT-2 medium; pass one with `generator=None, n_post_decoder_layers=0` for
    stage 1). The GPT-2 tokenizer is optional: without it the bundle has no
    sentence tokenizer (it loads, but cannot describe regions).
    """
    from chexcli.model.bundle import attach_gpt2_tokenizer, default_prompts, save_bundle
    from chexcli.model.chex import ChEX

    log = log or _quiet
    src = Path(path).expanduser()
    out = Path(out).expanduser()
    _check_out(out)
    if not src.is_file():
        raise ChexError(f"{src} does not exist; pass the CheXzero weights file best_64_5e-05_original_22000_0.864.pt")
    if expect_sha256 is not None:
        _normalise_sha(expect_sha256)
    log("computing SHA-256 ...")
    digest = sha256_file(src)
    log(f"SHA-256 {digest}")
    _check_sha(digest, expect_sha256, src)
    state = _clip_state(safe_torch_load(src), str(src))

    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("visual."):
            mapped[IMG + key[len("visual."):]] = value
        elif key.startswith(_CLIP_TEXT_KEYS):
            mapped[TXT + key] = value
        elif key not in _CLIP_EXTRA_KEYS:
            raise ChexError(f"{src}: unexpected key {key} for an OpenAI-layout CLIP state dict")

    vocab_path = Path(clip_vocab).expanduser() if clip_vocab is not None else find_clip_vocab(src)
    if vocab_path is None:
        raise ChexError(f"the CLIP vocabulary is needed: pass --clip-vocab {CLIP_VOCAB_NAME} (shipped with OpenAI CLIP "
                        "and CheXzero) or a Hugging Face CLIP tokenizer folder")
    text_ctx = _shape(state, "positional_embedding", str(src))[0]
    clip_tok = load_clip_vocab(vocab_path, context_length=text_ctx)
    lm = load_lm_tokenizer(lm_tokenizer) if lm_tokenizer is not None else None
    cfg = chexzero_config(state, config, lm.config if lm else None, _eos_id(lm.tokenizer) if lm else None, str(src))
    if clip_tok.vocab_size != cfg.text.vocab_size:
        raise ChexError(f"the CLIP vocabulary {vocab_path} has {clip_tok.vocab_size} tokens but the text tower has "
                        f"{cfg.text.vocab_size}; pass the matching {CLIP_VOCAB_NAME}")
    if lm is not None and cfg.generator is not None and len(lm.tokenizer) > cfg.generator.vocab_size:
        raise ChexError(f"the GPT-2 tokenizer ({lm.origin}) has {len(lm.tokenizer)} tokens, more than the generator's "
                        f"vocabulary of {cfg.generator.vocab_size}")

    log("initialising the model ...")
    torch.manual_seed(seed)
    model = ChEX(cfg, clip_tok, prompts=default_prompts())
    expected = {k: v for k, v in model.state_dict().items() if k.startswith((IMG, TXT))}
    missing = [k for k in expected if k not in mapped]
    unexpected = [k for k in mapped if k not in expected]
    if missing or unexpected:
        first = (f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}")
        raise ChexError(f"{src} does not match a CLIP model: {first}")
    for key, tensor in expected.items():
        if tuple(mapped[key].shape) != tuple(tensor.shape):
            raise ChexError(f"{src}: {key} has shape {tuple(mapped[key].shape)}, expected {tuple(tensor.shape)}")
    with torch.no_grad():
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in mapped.items()}, strict=False)
    attach_gpt2_tokenizer(model, lm.tokenizer if lm else None)
    provenance = {
        "kind": "chexzero-init",
        "source": str(src.resolve()),
        "sha256": digest,
        "sha256_of": "source file",
        "imported": _now(),
        "initialised": {"from_source": ["img_encoder", "txt_encoder"],
                        "fresh": [n for n, present in (("detector", True), ("post_decoder", model.post_decoder is not None),
                                                       ("txt_decoder", model.txt_decoder is not None)) if present],
                        "seed": seed},
        "tokenizers": {"clip": str(vocab_path), "gpt2": lm.origin if lm else None},
    }
    log(f"writing bundle {out} ...")
    save_bundle(model, out, provenance=provenance)
    return out


# ---------------------------------------------------------------------------------------------
# bundle_info
# ---------------------------------------------------------------------------------------------
_COMPONENTS = (
    ("img_encoder", "img_encoder."),
    ("txt_encoder", "txt_encoder."),
    ("detector", "detector."),
    ("post_decoder", "post_decoder."),
    ("txt_decoder_lm", "txt_decoder.language_model."),
    ("prefix_projection", "txt_decoder.prefix_proj."),
)


def _safetensors_shapes(path: Path) -> dict[str, tuple[list[int], str]]:
    import struct

    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                raise ValueError("file too short")
            (size,) = struct.unpack("<Q", head)
            if size > 100 * 1024**2:
                raise ValueError("header too large")
            header = json.loads(fh.read(size))
    except (OSError, ValueError, json.JSONDecodeError) as err:
        raise ChexError(f"{path} is unreadable or truncated ({err}); re-create the bundle") from None
    return {k: (v["shape"], v["dtype"]) for k, v in header.items() if k != "__metadata__"}


def bundle_info(folder: str | Path) -> dict[str, Any]:
    """Format, configuration summary, parameter counts per component and provenance of a bundle."""
    from chexcli.model.bundle import CLIP_DIR, GPT2_DIR, read_bundle

    folder = Path(folder)
    config, cfg, weights = read_bundle(folder)
    shapes = _safetensors_shapes(weights)
    counts = {name: 0 for name, _ in _COMPONENTS}
    other = 0
    dtypes: dict[str, int] = {}
    for key, (shape, dtype) in shapes.items():
        n = math.prod(shape)
        dtypes[dtype] = dtypes.get(dtype, 0) + n
        for name, prefix in _COMPONENTS:
            if key.startswith(prefix):
                counts[name] += n
                break
        else:
            other += n
    if other:
        counts["other"] = other
    counts["total_unique"] = sum(counts.values())
    gen = cfg.generator
    summary = {
        "d_model": cfg.d_model, "n_head": cfg.n_head,
        "vision": {"image_size": cfg.vision.image_size, "patch_size": cfg.vision.patch_size, "width": cfg.vision.width,
                   "layers": cfg.vision.layers, "heads": cfg.vision.heads, "output_dim": cfg.vision.output_dim},
        "text": {"width": cfg.text.width, "layers": cfg.text.layers, "heads": cfg.text.heads,
                 "context_length": cfg.text.context_length, "vocab_size": cfg.text.vocab_size},
        "detector": {"layers": cfg.detector.n_decoder_layers, "multiregions": cfg.detector.multiregions},
        "post_decoder": {"layers": cfg.n_post_decoder_layers, "multibox_drop": cfg.post_decoder_multibox_drop},
        "generator": None if gen is None else {
            "n_embd": gen.n_embd, "n_layer": gen.n_layer, "n_head": gen.n_head, "vocab_size": gen.vocab_size,
            "n_positions": gen.n_positions, "prefix_length_factor": gen.prefix_length_factor,
            "position_offset": gen.position_offset, "max_length": gen.max_length},
    }
    prov = dict(config.get("provenance") or {})
    prov.pop("config_dict", None)  # large; still in config.json
    return {
        "bundle": str(folder),
        "format": config.get("format"),
        "format_version": config.get("format_version"),
        "config": summary,
        "parameters": counts,
        "dtypes": dtypes,
        "size_bytes": weights.stat().st_size,
        "tokenizers": {"clip": (folder / CLIP_DIR).is_dir(), "gpt2": (folder / GPT2_DIR).is_dir()},
        "provenance": prov,
    }
