"""Run folders: runs/<task>/<name>, runs/<task>/<name>2, ... never overwriting an earlier run.

    check_run_name("exp1")                 # a plain folder name, else ChexError (exit 2)
    check_out_dir(Path("runs/predict"))    # --out is a folder or can be made one, else ChexError
    with run_folder("runs/predict", "exp1") as run_dir:
        ...                                # fails before writing anything: run_dir is removed again

Commands check the name and `--out` before loading a model, so bad options fail fast.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from chexcli.errors import ChexError


def check_run_name(name: str, option: str = "--name") -> str:
    """Return `name` when it is a plain folder name (no path separators, not `.`/`..`, not hidden)."""
    bad = (not name or name.strip() != name or name in (".", "..") or name.startswith((".", "-"))
           or any(sep in name for sep in ("/", "\\", os.sep)) or any(ord(ch) < 32 for ch in name)
           or Path(name).is_absolute() or len(name) > 200)
    if bad:
        raise ChexError(f"{option} {name!r}: give a plain folder name such as exp1 "
                        "(no slashes, not . or .., not starting with . or -); use --out to choose where it goes")
    return name


def check_out_dir(out: str | Path, option: str = "--out") -> Path:
    """Refuse an output folder that is a file or cannot be created (checked before any work starts).

    Nothing is created here; the nearest existing ancestor must be a writable folder.
    """
    out = Path(out)
    probe = out
    while not probe.exists():
        if probe.is_symlink():
            raise ChexError(f"{option} {out}: {probe} is a broken symbolic link; choose another folder")
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = "is a file" if probe == out else f"cannot be created: {probe} is a file"
        raise ChexError(f"{option} {out} {what}; give a folder")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise ChexError(f"{option} {out} cannot be created or written: no write permission in {probe}")
    return out


def new_run_dir(base: str | Path, name: str = "run") -> Path:
    """Create and return a fresh folder `base/name`, `base/name2`, `base/name3`, ..."""
    check_run_name(name)
    base = check_out_dir(base)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ChexError(f"--out {base} cannot be created ({err.strerror or err})") from None
    for i in range(1, 100_000):
        candidate = base / (name if i == 1 else f"{name}{i}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
        except OSError as err:
            raise ChexError(f"cannot create the run folder {candidate} ({err.strerror or err})") from None
    raise ChexError(f"no free run folder name under {base}; remove old runs or choose another --name", exit_code=1)


@contextmanager
def run_folder(base: str | Path, name: str = "run", setup_files: Iterable[str] = ("args.json",)) -> Iterator[Path]:
    """A fresh run folder (see `new_run_dir`) that is removed again when the body raises
    (an error, Ctrl-C) before the run produced anything (see `remove_if_unused`)."""
    base = Path(base)
    created = [p for p in (base, *base.parents) if not p.exists()]  # the folders new_run_dir will create
    run_dir = new_run_dir(base, name)
    try:
        yield run_dir
    except BaseException:
        if remove_if_unused(run_dir, setup_files):
            for folder in created:  # innermost first; stops at the first one that holds something
                try:
                    folder.rmdir()
                except OSError:
                    break
        raise


def remove_if_unused(run_dir: str | Path, setup_files: Iterable[str] = ("args.json",)) -> bool:
    """Delete `run_dir` when the run produced nothing in it: it holds only `setup_files` (what a
    run records before it starts, such as its options) and empty files. True when removed."""
    run_dir, keep = Path(run_dir), set(setup_files)
    try:
        for p in run_dir.iterdir():
            if p.is_dir() or p.is_symlink() or (p.name not in keep and p.stat().st_size > 0):
                return False
        shutil.rmtree(run_dir)
    except OSError:
        return False
    return True
