"""Run folders: runs/<task>/<name>, runs/<task>/<name>2, ... never overwriting an earlier run."""

from __future__ import annotations

from pathlib import Path


def new_run_dir(base: str | Path, name: str = "run") -> Path:
    """Create and return a fresh folder `base/name`, `base/name2`, `base/name3`, ..."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    for i in range(1, 100_000):
        candidate = base / (name if i == 1 else f"{name}{i}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"no free run folder name under {base}")
