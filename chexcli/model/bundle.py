"""Model bundles: a folder with everything a ChEX model needs, loaded without pickle or network.

    BUNDLE/
      config.json          format, model configuration, prompt data, provenance
      model.safetensors    every tensor (the tied GPT-2 output head is stored once)
      clip_tokenizer/      CLIP BPE vocabulary of the prompt encoder
      gpt2_tokenizer/      tokenizer files of the sentence generator

A bundle is written into a temporary sibling folder and renamed into place,
so an interrupted save never leaves a half bundle under the final name.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import save_file

from chexcli.errors import ChexError
from chexcli.model.chex import ChEX
from chexcli.model.clip_tokenizer import ClipTokenizer
from chexcli.model.config import ChexConfig
from chexcli.model.gpt2_text import load_gpt2_tokenizer

FORMAT = "chexcli-bundle"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CLIP_DIR = "clip_tokenizer"
GPT2_DIR = "gpt2_tokenizer"


def default_prompts() -> dict[str, Any]:
    """The packaged prompt and name data (prompts_and_names.yaml)."""
    import yaml

    path = Path(__file__).resolve().parents[1] / "configs" / "prompts_and_names.yaml"
    return yaml.safe_load(path.read_text())


def save_bundle(model: ChEX, folder: str | Path, provenance: dict[str, Any] | None = None,
                overwrite: bool = False, weights: bool = True) -> Path:
    """Write `model` with its tokenizers, prompts and provenance (default `model.provenance`, stamped
    with the time it is saved) as a bundle folder; returns the folder.

    `weights=False` leaves out model.safetensors: a skeleton from which `load_skeleton` rebuilds the
    model (a training run keeps one and loads checkpoint weights into it on resume).
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise ChexError(f"{folder} already exists and is not empty; choose another --out or remove it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": model.cfg.to_dict(),
            "prompts": model.prompts,
            "provenance": {**(model.provenance if provenance is None else provenance), "saved": stamp},
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1))
        if weights:
            save_file(_unique_state_dict(model), str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        if model.txt_encoder.tokenizer is not None:
            model.txt_encoder.tokenizer.save(tmp / CLIP_DIR)
        if model.gpt2_tokenizer is not None:
            model.gpt2_tokenizer.save_pretrained(str(tmp / GPT2_DIR))
        for path in [tmp, *tmp.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _unique_state_dict(model: ChEX) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def read_bundle_config(folder: str | Path) -> dict[str, Any]:
    """Parse and check config.json of a bundle (one-line ChexError when it is not a bundle)."""
    folder = Path(folder)
    if not folder.exists():
        raise ChexError(f"model bundle {folder} does not exist; create one with `chex weights import`")
    path = folder / CONFIG_FILE
    if not folder.is_dir() or not path.is_file():
        raise ChexError(f"{folder} is not a model bundle (no {CONFIG_FILE}); create one with `chex weights import`")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ChexError(f"{path} is not valid JSON ({err.msg if hasattr(err, 'msg') else err}); re-create the bundle") from None
    except OSError as err:
        raise ChexError(f"{path} cannot be read ({err.strerror or err})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ChexError(f"{path} is not a chexcli bundle config (format {found!r})")
    version = config.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ChexError(f"{path}: format_version must be an integer, got {version!r}; re-create the bundle")
    if version > FORMAT_VERSION:
        raise ChexError(f"bundle format {version} is newer than this chexcli understands; upgrade chexcli")
    for key in ("prompts", "provenance"):
        if config.get(key) is not None and not isinstance(config[key], dict):
            raise ChexError(f"{path}: {key} must be an object, got {type(config[key]).__name__}; re-create the bundle")
    return config


def read_bundle(folder: str | Path) -> tuple[dict[str, Any], ChexConfig, Path]:
    """config.json contents, the parsed model configuration and the weights path of a bundle."""
    folder = Path(folder)
    config = read_bundle_config(folder)
    if "model" not in config:
        raise ChexError(f"{folder / CONFIG_FILE}: the key model (the model configuration) is missing; re-create the bundle")
    try:
        cfg = ChexConfig.from_dict(config["model"], prefix="model")
    except (TypeError, ValueError) as err:
        raise ChexError(f"{folder / CONFIG_FILE}: {err}; fix the value or re-create the bundle") from None
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ChexError(f"{folder} has no {WEIGHTS_FILE}; the bundle is incomplete, re-create it")
    return config, cfg, weights


# What needs each tokenizer folder, and what still works without it.
_TOKENIZER_USES = {
    "prompts": (CLIP_DIR, "text prompts cannot be encoded (box prompts still work without it)"),
    "sentences": (GPT2_DIR, "no sentences can be generated (boxes and scores still work without it, "
                            "e.g. chex predict --no-sentences)"),
}


def check_tokenizers(folder: str | Path, cfg: ChexConfig, needs: Iterable[str]) -> None:
    """One-line ChexError when a tokenizer folder that `needs` ("prompts", "sentences") asks for is missing.

    Sentences need the GPT-2 tokenizer only when the model has a sentence generator.
    """
    folder = Path(folder)
    for need in needs:
        if need not in _TOKENIZER_USES:
            raise ValueError(f"unknown tokenizer need {need!r}; use {', '.join(_TOKENIZER_USES)}")
        sub, consequence = _TOKENIZER_USES[need]
        if need == "sentences" and cfg.generator is None:
            continue
        if not (folder / sub).is_dir():
            raise ChexError(f"{folder}: the tokenizer folder {sub}/ is missing, so {consequence}; "
                            "re-create the bundle with `chex weights import`")


def load_bundle(folder: str | Path, device: str | torch.device = "cpu", dtype: str = "float32",
                needs: Iterable[str] = ()) -> ChEX:
    """Load a bundle into a ChEX model in eval mode on `device`.

    dtype float16 / int8 (CPU) builds the sentence generator's compact layers
    straight from the file, tensor by tensor, so its float32 weights (82 % of
    the model) are never all in memory (see chexcli.model.quantize).

    needs: what the caller will do, "prompts" (encode text) and/or "sentences"
    (generate); a missing tokenizer folder that one of them needs is refused
    up front (see `check_tokenizers`). Without it, a missing folder only
    leaves the model without that tokenizer.
    """
    from chexcli.model.quantize import DTYPES, compact_generator, compact_keys

    folder = Path(folder)
    if dtype not in DTYPES:
        raise ChexError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    config, cfg, weights = read_bundle(folder)
    check_tokenizers(folder, cfg, needs)
    tokenizers = _read_tokenizers(folder)
    with torch.device("meta"):
        model = _model(config, cfg, *tokenizers)
    compact = compact_keys(model) if dtype != "float32" else set()
    if compact and torch.device(device).type != "cpu":
        raise ChexError(f"--dtype {dtype} runs on the CPU only; use --dtype float32 with --device {device}")
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            check_state_shapes(model, shapes, source=str(weights))
            state = {k: f.get_tensor(k) for k in shapes if k not in compact}
            model.load_state_dict(state, strict=False, assign=True)
            if compact:
                reader = PlainReader(weights)
                compact_generator(model, dtype, get=reader.tensor, get_rows=reader.rows)
    except (SafetensorError, OSError, ValueError) as err:
        raise ChexError(f"{weights} is unreadable or truncated ({str(err).splitlines()[0]}); re-create the bundle") from None
    left = [name for name, p in model.named_parameters() if p.is_meta]
    if left:
        raise ChexError(f"{weights}: no weights were loaded for {left[0]}; re-create the bundle")
    _rebuild_buffers(model)
    model.to(device)
    return model.eval()


def load_skeleton(folder: str | Path) -> ChEX:
    """The model of a bundle written with `weights=False`, freshly initialised (train mode)."""
    config = read_bundle_config(folder)
    return _model(config, ChexConfig.from_dict(config["model"]), *_read_tokenizers(Path(folder)))


def _read_tokenizers(folder: Path) -> tuple[ClipTokenizer | None, Any]:
    """The CLIP and GPT-2 tokenizers of a bundle folder (None where its folder is absent)."""
    clip_tok = ClipTokenizer.load(folder / CLIP_DIR) if (folder / CLIP_DIR).is_dir() else None
    gpt2_tok = load_gpt2_tokenizer(folder / GPT2_DIR) if (folder / GPT2_DIR).is_dir() else None
    return clip_tok, gpt2_tok


def _model(config: dict[str, Any], cfg: ChexConfig, clip_tok, gpt2_tok) -> ChEX:
    return ChEX(cfg, clip_tok, gpt2_tok, prompts=config.get("prompts") or {}, provenance=config.get("provenance"))


class PlainReader:
    """Reads single tensors (or row ranges) of a float32 safetensors file with ordinary reads.

    Unlike a memory map, the bytes read land in ordinary memory that is freed once a
    tensor has been converted, so converting the generator tensor by tensor keeps the
    process small (file-backed pages of a map would stay resident until it closes).
    """

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            self.header = json.loads(fh.read(n))
        self.base = 8 + n

    def _entry(self, key: str) -> tuple[list[int], int]:
        entry = self.header[key]
        if entry["dtype"] != "F32":
            raise ChexError(f"{self.path}: {key} is stored as {entry['dtype']}, expected F32; re-create the bundle")
        return entry["shape"], self.base + entry["data_offsets"][0]

    def rows(self, key: str, start: int, end: int) -> torch.Tensor:
        """Rows [start, end) of the tensor `key` (first axis), float32."""
        shape, offset = self._entry(key)
        row = int(np.prod(shape[1:], dtype=np.int64))
        end = min(end, shape[0])
        data = np.fromfile(self.path, dtype="<f4", count=(end - start) * row, offset=offset + start * row * 4)
        if data.size != (end - start) * row:
            raise ChexError(f"{self.path} is truncated ({key}); re-create the bundle")
        return torch.from_numpy(data).view(end - start, *shape[1:])

    def tensor(self, key: str) -> torch.Tensor:
        shape, _ = self._entry(key)
        return self.rows(key, 0, shape[0]) if shape else self.rows(key, 0, 1)[0]


def load_weights(model: ChEX, state: dict[str, torch.Tensor], source: str) -> None:
    """Assign `state` to a (possibly meta-device) model after checking every key and shape."""
    check_state_shapes(model, {k: tuple(v.shape) for k, v in state.items()}, source)
    model.load_state_dict(state, strict=True, assign=True)
    _rebuild_buffers(model)


def check_state_shapes(model: ChEX, shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """One-line ChexError naming the first missing, unexpected or mis-shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}" + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""))
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}" + (f" (+{len(unexpected) - 3} more)" if len(unexpected) > 3 else ""))
        raise ChexError(f"{source} does not match its configuration: {'; '.join(parts)}")
    for key, tensor in expected.items():
        if tuple(shapes[key]) != tuple(tensor.shape):
            raise ChexError(f"{source}: {key} has shape {tuple(shapes[key])}, the configuration needs {tuple(tensor.shape)}")


def _rebuild_buffers(model: ChEX) -> None:
    """Non-persistent buffers are not in the state dict: recreate them on the weights' device."""
    text = model.txt_encoder
    length = text.cfg.context_length
    text.causal_mask = torch.ones(length, length, dtype=torch.bool, device=text.token_embedding.weight.device).tril()
