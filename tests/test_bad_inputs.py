"""Bad and unusual inputs to `chex`: one row per case, each with its exit code and message.

Every row runs the CLI in-process (`chexcli.cli.main.run`, the console-script entry) in a
fresh folder and checks: the exit code, a fragment of the message, no traceback, no library
warning, and (for a failure) no run folder left behind. Rows of `chex data`/`evaluate
--predictions` inputs live in tests/test_bad_inputs_data.py.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from chexcli.cli.main import run


# --------------------------------------------------------------------------- input makers


def png(path: Path, width: int = 260, height: int = 300) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (height, width), dtype=np.uint8), "L").save(path)
    return path


def png_header(path: Path, width: int, height: int, depth: int = 8) -> Path:
    """A PNG that declares width x height but holds almost no data (a few hundred bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    return path


def dicom(path: Path, rows: int = 240, cols: int = 220, pixels: bytes | None = None) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels if pixels is not None else np.random.default_rng(1).integers(
        0, 4095, (rows, cols), dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def bundle_with(tmp: Path, bundle: Path, edit: Callable[[dict], None] | None = None,
                drop: str | None = None) -> Path:
    """A copy of the tiny bundle with config.json edited by `edit` and/or the folder `drop` removed."""
    copy = tmp / "bundle"
    shutil.copytree(bundle, copy)
    if edit is not None:
        config = json.loads((copy / "config.json").read_text())
        edit(config)
        (copy / "config.json").write_text(json.dumps(config))
    if drop is not None:
        shutil.rmtree(copy / drop)
    return copy


def raw_config(tmp: Path, bundle: Path, text: str) -> Path:
    """A copy of the tiny bundle whose config.json holds `text`."""
    copy = bundle_with(tmp, bundle)
    (copy / "config.json").write_text(text)
    return copy


def setitem(path: str, value):
    """An edit of config.json that sets the dotted key `path` to `value`."""
    def edit(config: dict) -> None:
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[last] = value
    return edit


# --------------------------------------------------------------------------- the table


@dataclass
class Case:
    id: str
    make: Callable[[Path, Path], list]  # (tmp folder, tiny bundle) -> command arguments
    code: int
    message: str  # fragment of stderr (of stdout + stderr for a success)
    env: dict = field(default_factory=dict)
    one_line: bool = True  # a ChexError is one line; click's usage message is not


def predict(*extra, image: Callable[[Path], Path] = lambda t: png(t / "a.png"), bundle=None):
    """Rows of `chex predict IMAGE --model BUNDLE EXTRA...`; `bundle(tmp, tiny)` makes a broken bundle."""
    def make(tmp: Path, tiny: Path) -> list:
        model = bundle(tmp, tiny) if bundle else tiny
        return ["predict", image(tmp), "--model", model, "--max-new-tokens", "2", "--no-images", *extra]
    return make


def with_file(tmp: Path, name: str) -> Path:
    (tmp / name).write_text("x")
    return tmp / name


def tiff_file(tmp: Path, name: str) -> Path:
    """A real TIFF image (a format Pillow reads, outside chexcli's allow-list)."""
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp / name, format="TIFF")
    return tmp / name


def incomplete_processed(tmp: Path) -> Path:
    (tmp / "proc").mkdir()
    (tmp / "proc/manifest.json").write_text(json.dumps({"schema_version": 1, "parts": {"images": {"complete": False}}}))
    return tmp / "proc"


def evaluate(*extra):
    def make(tmp: Path, tiny: Path) -> list:
        (tmp / "data").mkdir(exist_ok=True)
        return ["evaluate", "--task", "od_nih8", "--data", tmp / "data", "--model", tiny, *extra]
    return make


def extensionless_dicom_folder(tmp: Path) -> Path:
    (tmp / "scans").mkdir()
    dicom(tmp / "scans" / "1.2.840.113619.2.55.3.7")  # scanners name files by UID
    dicom(tmp / "scans" / "IM0001")
    (tmp / "scans" / "notes.txt").write_text("not an image")
    return tmp / "scans"


CASES = [
    # 1. usage errors: click's message, exit 2, and typer.Exit codes kept
    Case("batch-size-0", predict("--prompt", "x", "--batch-size", "0"), 2, "Invalid value for '--batch-size'",
         one_line=False),
    Case("batch-size-not-int", predict("--prompt", "x", "--batch-size", "two"), 2, "'--batch-size'", one_line=False),
    Case("missing-model-option", lambda t, b: ["predict", png(t / "a.png")], 2, "Missing option '--model'",
         one_line=False),
    Case("unknown-option", predict("--bogus"), 2, "No such option: --bogus", one_line=False),
    Case("unknown-command", lambda t, b: ["frobnicate"], 2, "No such command 'frobnicate'", one_line=False),
    Case("evaluate-batch-size-0", evaluate("--batch-size", "0"), 2, "Invalid value for '--batch-size'", one_line=False),
    Case("prepare-workers-0", lambda t, b: ["data", "prepare", "nih-cxr14", "--workers", "0"], 2,
         "Invalid value for '--workers'", one_line=False),
    Case("data-info-incomplete-exit-1", lambda t, b: ["data", "info", incomplete_processed(t)], 1,
         "did not finish", one_line=False),
    # 2. bundles: impossible sizes, wrong types, missing tokenizers -> file and key named
    Case("config-zero-heads", predict("--prompt", "x", bundle=lambda t, b: bundle_with(
        t, b, setitem("model.vision.heads", 0))), 2, "config.json: model.vision.heads must be >= 1 (got 0)"),
    Case("config-width-not-divisible", predict("--prompt", "x", bundle=lambda t, b: bundle_with(
        t, b, setitem("model.text.heads", 3))), 2, "model.text.width (32) is not divisible by model.text.heads (3)"),
    Case("config-negative-layers", predict("--prompt", "x", bundle=lambda t, b: bundle_with(
        t, b, setitem("model.detector.n_decoder_layers", -1))), 2, "model.detector.n_decoder_layers must be >= 1"),
    Case("config-zero-generator-heads", predict("--prompt", "x", bundle=lambda t, b: bundle_with(
        t, b, setitem("model.generator.n_head", 0))), 2, "model.generator.n_head must be >= 1"),
    Case("config-string-size", predict("--prompt", "x", bundle=lambda t, b: bundle_with(
        t, b, setitem("model.d_model", "32"))), 2, "model.d_model must be an integer, got '32'"),
    Case("config-float-layers", predict("--prompt", "x", bundle=lambda t, b: bundle_with(
        t, b, setitem("model.vision.layers", 2.5))), 2, "model.vision.layers must be an integer"),
    Case("config-section-not-object", predict("--prompt", "x", bundle=lambda t, b: bundle_with(
        t, b, setitem("model.vision", [1, 2]))), 2, "model.vision must be an object"),
    Case("config-unknown-key", predict("--prompt", "x", bundle=lambda t, b: bundle_with(
        t, b, setitem("model.text.depth", 3))), 2, "unknown field model.text.depth"),
    Case("config-nan-std", predict("--prompt", "x", bundle=lambda t, b: bundle_with(
        t, b, setitem("model.pixel_std", float("nan")))), 2, "model.pixel_std must be a finite number, got nan"),
    Case("config-output-dim-mismatch", predict("--prompt", "x", bundle=lambda t, b: bundle_with(
        t, b, setitem("model.vision.output_dim", 48))), 2, "model.vision.output_dim (48) must equal model.d_model"),
    Case("config-negative-token-id", predict("--prompt", "x", bundle=lambda t, b: bundle_with(
        t, b, setitem("model.generator.eos_token_id", -1))), 2, "model.generator.eos_token_id must be >= 0"),
    Case("config-model-missing", predict("--prompt", "x", bundle=lambda t, b: bundle_with(
        t, b, lambda c: c.pop("model"))), 2, "config.json: the key model"),
    Case("config-prompts-wrong-type", predict("--prompt", "x", bundle=lambda t, b: bundle_with(
        t, b, setitem("prompts", "all"))), 2, "config.json: prompts must be an object"),
    Case("config-is-a-list", predict("--prompt", "x", bundle=lambda t, b: raw_config(t, b, "[1, 2]")), 2,
         "config.json is not a chexcli bundle config"),
    Case("config-format-version-text", predict("--prompt", "x", bundle=lambda t, b: bundle_with(
        t, b, setitem("format_version", "1"))), 2, "format_version must be an integer"),
    Case("no-clip-tokenizer", predict("--prompt", "x", bundle=lambda t, b: bundle_with(t, b, drop="clip_tokenizer")),
         2, "clip_tokenizer/ is missing, so text prompts cannot be encoded (box prompts still work"),
    Case("no-clip-tokenizer-boxes-work", predict("--box", "20,40,200,250", bundle=lambda t, b: bundle_with(
        t, b, drop="clip_tokenizer")), 0, "box: box [20, 40, 200, 250]"),
    Case("no-gpt2-tokenizer", predict("--prompt", "x", bundle=lambda t, b: bundle_with(t, b, drop="gpt2_tokenizer")),
         2, "gpt2_tokenizer/ is missing, so no sentences can be generated (boxes and scores still work"),
    Case("no-gpt2-tokenizer-no-sentences", predict("--prompt", "heart", "--no-sentences", bundle=lambda t, b: bundle_with(
        t, b, drop="gpt2_tokenizer")), 0, "prompt 'heart'"),
    # 2. output folders: checked before the model is loaded
    Case("out-is-a-file", predict("--prompt", "x", "--out", "taken"), 2, "--out taken is a file",
         env={"_file": "taken"}),
    Case("out-under-a-file", predict("--prompt", "x", "--out", "taken/runs"), 2,
         "--out taken/runs cannot be created: taken is a file", env={"_file": "taken"}),
    Case("out-checked-before-model", lambda t, b: ["predict", png(t / "a.png"), "--model", t / "no-bundle",
                                                   "--prompt", "x", "--out", with_file(t, "f")], 2, "is a file"),
    Case("evaluate-out-is-a-file", evaluate("--out", "taken"), 2, "--out taken is a file", env={"_file": "taken"}),
    Case("weights-import-out-is-a-file", lambda t, b: ["weights", "import", with_file(t, "x.pth"), "--out",
                                                       with_file(t, "taken")], 2, "taken is a file"),
    # 3. the pixel limit: from the header, before decoding, one line, no PIL warning
    Case("png-15000x15000-16bit", predict("--prompt", "x", image=lambda t: png_header(t / "big.png", 15000, 15000, 16)),
         2, "15000 x 15000 = 225.0 megapixels exceeds the limit of 50 megapixels"),
    Case("png-over-pil-warning-limit", predict("--prompt", "x", image=lambda t: png_header(t / "big.png", 10000, 10000)),
         2, "exceeds the limit"),
    Case("dicom-14000x14000", predict("--prompt", "x", image=lambda t: dicom(t / "big.dcm", 14000, 14000, b"\0" * 64)),
         2, "big.dcm: image of 14000 x 14000"),
    Case("jpeg-over-configured-limit", predict("--prompt", "x", image=lambda t: png(t / "a.jpg")), 2,
         "a.jpg: image of 260 x 300 = 0.1 megapixels exceeds the limit of 0.01 megapixels",
         env={"CHEX_MAX_IMAGE_PIXELS": "10000"}),
    Case("limit-off-no-bomb-warning", predict("--prompt", "x", image=lambda t: png_header(t / "big.png", 10000, 10000)),
         2, "corrupt or truncated image file", env={"CHEX_MAX_IMAGE_PIXELS": "0"}),
    Case("limit-env-not-a-number", predict("--prompt", "x"), 2, "CHEX_MAX_IMAGE_PIXELS='lots': give a positive number",
         env={"CHEX_MAX_IMAGE_PIXELS": "lots"}),
    # 4. paths and leftovers
    Case("name-traversal", predict("--prompt", "x", "--name", "../../x"), 2, "--name '../../x': give a plain folder name"),
    Case("name-absolute", predict("--prompt", "x", "--name", "/tmp/x"), 2, "give a plain folder name"),
    Case("name-dot-dot", predict("--prompt", "x", "--name", ".."), 2, "give a plain folder name"),
    Case("name-empty", predict("--prompt", "x", "--name", ""), 2, "give a plain folder name"),
    Case("evaluate-name-traversal", evaluate("--name", "a/b"), 2, "--name 'a/b': give a plain folder name"),
    Case("single-missing-file", predict("--prompt", "x", image=lambda t: t / "nope.png"), 2, "nope.png: file not found"),
    Case("all-files-missing", lambda t, b: ["predict", t / "a.png", t / "b.png", "--model", b, "--prompt", "x"], 2,
         "a.png: file not found (and 1 more)"),
    Case("single-corrupt-file", predict("--prompt", "x", image=lambda t: with_file(t, "bad.png")), 2,
         "bad.png: not a recognised image file"),
    Case("tiff-outside-the-allow-list", predict("--prompt", "x", image=lambda t: tiff_file(t, "scan.tif")), 2,
         "scan.tif: TIFF images are not supported (supported: PNG, JPEG, DICOM); convert it to PNG first"),
    Case("every-image-unreadable", lambda t, b: ["predict", with_file(t, "x.png"), with_file(t, "y.jpg"), "--model", b,
                                                 "--prompt", "x"], 2, "none of the 2 images could be used",
         one_line=False),
    Case("extensionless-dicom-in-folder", predict("--box", "20,20,200,200", image=extensionless_dicom_folder), 0,
         "IM0001 (220x240)"),
    Case("empty-prompt", predict("--prompt", ""), 2, "empty --prompt"),
    Case("blank-prompt", predict("--prompt", "   "), 2, "empty --prompt"),
    Case("random-bytes-checkpoint", lambda t, b: ["weights", "import", _random_file(t / "w.pth"), "--out", t / "o"], 2,
         "not a readable PyTorch checkpoint"),
    Case("pickled-code-checkpoint", lambda t, b: ["weights", "import", _pickled_code(t / "w.pth", 2), "--out",
                                                  t / "o"], 2, "pickled code or objects (posix.system)"),
    Case("protocol-4-checkpoint-no-warning", lambda t, b: ["weights", "import", _pickled_code(t / "w.pth", 4), "--out",
                                                           t / "o"], 2, "pickle protocol 4 or newer"),
    # 5. literal prompts, and the prompt source in the printed table
    Case("named-prompt-uses-synonyms", predict("--prompt", "cardiomegaly"), 0,
         "prompt 'cardiomegaly' (pathology "),
    Case("literal-prompt", predict("--prompt", "cardiomegaly", "--literal"), 0, "prompt 'cardiomegaly' (as typed)"),
]


def _random_file(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(3).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    return path


class _Payload:
    def __reduce__(self):
        import os

        return os.system, ("true",)


def _pickled_code(path: Path, protocol: int) -> Path:
    """A torch.save file that would call os.system (torch.load warns about protocol 4)."""
    import torch

    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Payload()}, path, pickle_protocol=protocol)
    return path


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tiny_bundle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for key, value in case.env.items():
        if key == "_file":
            (tmp_path / value).write_text("a file, not a folder")
        else:
            monkeypatch.setenv(key, value)
    args = [str(a) for a in case.make(tmp_path, Path(tiny_bundle))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(SystemExit) as exited:
            run(args)
    out, err = capsys.readouterr()
    code = exited.value.code or 0
    assert code == case.code, (out, err)
    assert case.message in out + err, err
    assert "Traceback" not in out + err
    assert not [str(w.message) for w in caught]  # no library warnings for handled cases
    if case.code:
        if case.one_line:  # progress lines may come first; the error itself is one line
            errors = [line for line in err.splitlines() if line.startswith("error: ")]
            assert len(errors) == 1 and case.message in errors[0], err
        runs = tmp_path / "runs"
        assert not runs.exists() or not any(runs.rglob("*")), list(runs.rglob("*"))  # no empty run folder


def test_entry_point_in_a_fresh_process(tmp_path):
    """The console entry, not only run(): a usage error and a typer.Exit code, without a traceback."""
    r = subprocess.run([sys.executable, "-m", "chexcli", "predict", "x.png", "--model", "m", "--batch-size", "0"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Invalid value for '--batch-size'" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "chexcli", "data", "info", incomplete_processed(tmp_path)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
