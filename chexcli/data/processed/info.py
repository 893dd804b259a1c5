"""`chex data info`: what a processed folder holds and whether it is complete."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chexcli.data.processed.manifest import SCHEMA_VERSION, read_manifest
from chexcli.errors import ChexError


def folder_info(path: Path) -> dict:
    path = Path(path)
    if not path.is_dir():
        raise ChexError(f"{path} is not a folder; pass a folder written by `chex data prepare`")
    man = read_manifest(path)
    if man is None:
        raise ChexError(f"{path} has no manifest.json: not a processed folder, or its first "
                        "`chex data prepare` was interrupted; run prepare again")
    problems: list[str] = []
    if man.get("schema_version") != SCHEMA_VERSION:
        problems.append(f"schema version {man.get('schema_version')} (this chexcli reads {SCHEMA_VERSION})")
    for part, entry in man.get("parts", {}).items():
        if not entry.get("complete"):
            problems.append(f"step {part} started {entry.get('started_at', '?')} but did not finish")
    for name, ds in man.get("datasets", {}).items():
        for f in ds.get("files", {}).values():
            if not (path / f).is_file():
                problems.append(f"missing {f}")
    caches = []
    for npy in sorted(path.glob("images_*.npy")):
        if npy.name.endswith("_state.npy"):
            continue
        try:
            arr = np.load(npy, mmap_mode="r")
        except Exception:  # noqa: BLE001
            problems.append(f"unreadable image cache {npy.name}")
            continue
        state_path = npy.with_name(npy.stem + "_state.npy")
        todo = failed = 0
        if state_path.is_file():
            st = np.load(state_path)
            todo, failed = int((st[:, 0] == 0).sum()), int((st[:, 0] == 2).sum())
            if todo:
                problems.append(f"image cache {npy.name}: {todo} images not yet processed")
        caches.append({"file": npy.name, "images": int(arr.shape[0]), "side": int(arr.shape[1]),
                       "bytes": npy.stat().st_size, "todo": todo, "skipped": failed})
    return {
        "path": str(path),
        "schema_version": man.get("schema_version"),
        "kind": man.get("kind"),
        "complete": not problems,
        "problems": problems,
        "parts": man.get("parts", {}),
        "datasets": man.get("datasets", {}),
        "image_caches": caches,
    }


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render_info(info: dict, console) -> None:
    from rich.table import Table

    state = "[green]complete[/]" if info["complete"] else "[red]incomplete[/]"
    console.print(f"[bold]{info['path']}[/]  kind={info['kind']}  schema v{info['schema_version']}  {state}")
    for p in info["problems"]:
        console.print(f"  [red]- {p}[/]")
    for part, e in info["parts"].items():
        extra = ", ".join(f"{k}={v}" for k, v in e.items()
                          if k in ("images", "cached", "skipped", "studies_with_report", "boxes"))
        console.print(f"  step {part}: {'done' if e.get('complete') else 'unfinished'}"
                      + (f" ({extra})" if extra else ""))
    for c in info["image_caches"]:
        console.print(f"  image cache {c['file']}: {c['images']} x {c['side']}x{c['side']} uint8, "
                      f"{_human(c['bytes'])}, skipped {c['skipped']}")
    for name, ds in info["datasets"].items():
        console.print(f"[bold]{name}[/]")
        t = Table(show_edge=False)
        splits = [s for s in ("train", "val", "test") if s in ds.get("splits", {})]
        t.add_column("class")
        for s in splits:
            t.add_column(s, justify="right")
        t.add_row("[bold]images[/]", *[str(ds["splits"][s]) for s in splits])
        for cls, counts in ds.get("classes", {}).items():
            t.add_row(cls, *[str(counts.get(s, 0)) for s in splits])
        console.print(t)
