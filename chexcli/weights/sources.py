"""Locate the checkpoint of a SOURCE (release zip, extracted chex_stage3 folder or single .pth) and check its SHA-256."""

from __future__ import annotations

import datetime as _dt
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable

from chexcli.errors import ChexError
from chexcli.hashing import sha256_file
from chexcli.weights.archive import MAX_EXTRACT_BYTES, extract_member, is_torch_zip, is_torchscript_zip, unsafe_member
from chexcli.weights.common import Log, check_sha, normalise_sha, quiet

CHECKPOINT_RE = re.compile(r"(?:^|/)checkpoint_(\d+|best)\.pth$")


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


def choose_checkpoint(names: Iterable[tuple[str, float]], where: Path) -> str:
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
    return folder / choose_checkpoint(found, folder)


def open_zip_source(path: Path, tmp_parent: Path, max_bytes: int = MAX_EXTRACT_BYTES,
                    log: Log = quiet) -> CheckpointSource:
    """Check a release zip and extract only the newest checkpoint (and model_config.yaml)."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ChexError(f"{path} is not a readable zip archive ({err}); download it again") from None
    with zf:
        infos = zf.infolist()
        for info in infos:
            why = unsafe_member(info)
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
            chosen = choose_checkpoint(names, path)
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
            budget -= extract_member(zf, by_name[chosen], tmp / "checkpoint.pth", budget, path)
            model_config = None
            if len(wanted) > 1:
                model_config = tmp / "model_config.yaml"
                extract_member(zf, wanted[1], model_config, budget, path)
        except zipfile.BadZipFile as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ChexError(f"{path} is corrupt ({err}); download it again") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return CheckpointSource(path, "zip", tmp / "checkpoint.pth", chosen, "", model_config, tmp)


def resolve_source(source: str | Path, expect_sha256: str | None = None, tmp_parent: Path | None = None,
                   max_bytes: int = MAX_EXTRACT_BYTES, log: Log = quiet) -> CheckpointSource:
    """Locate (and for a zip, check and extract) the checkpoint of SOURCE; verify its SHA-256."""
    src = Path(source).expanduser()
    if not src.exists():
        raise ChexError(f"{src} does not exist; pass the downloaded zip, the extracted chex_stage3 folder or a .pth")
    if expect_sha256 is not None:
        normalise_sha(expect_sha256)
    if src.is_dir():
        pth = find_checkpoint(src)
        log(f"checkpoint: {pth}")
        log("computing SHA-256 ...")
        digest = sha256_file(pth)
        check_sha(digest, expect_sha256, pth)
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
        if is_torchscript_zip(names):
            raise ChexError(f"{src} is a TorchScript archive, not a checkpoint; convert it to a state dict in a "
                            "trusted environment: torch.save(torch.jit.load(f).state_dict(), 'weights.pt')")
        release_zip = not is_torch_zip(names)
    log("computing SHA-256 ...")
    digest = sha256_file(src)
    check_sha(digest, expect_sha256, src)
    if release_zip:
        res = open_zip_source(src, tmp_parent or src.parent, max_bytes, log)
        res.sha256 = digest
        return res
    cfg = src.parent.parent / "model_config.yaml" if src.parent.name == "checkpoints" else None
    return CheckpointSource(src, "file", src, "", digest, cfg if cfg is not None and cfg.is_file() else None)
