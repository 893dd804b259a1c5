"""`chex data prepare NAME`: the name is resolved, then its preparer is looked up in PREPARERS.

Every preparer writes into ``out`` atomically and marks its step complete in the manifest
as its very last write (docs/data.md#chex-data-prepare).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from chexcli.data.prepare.custom import prepare_custom
from chexcli.data.prepare.mimic import prepare_all_mimic, prepare_mimic_part
from chexcli.data.prepare.nih import prepare_nih
from chexcli.data.prepare.result import PrepareResult
from chexcli.data.prepare.synthetic import prepare_synthetic
from chexcli.data.prepare.vindr import prepare_vindr
from chexcli.data.sources import MIMIC_PARTS, resolve_name


@dataclass(frozen=True)
class PrepareJob:
    """What `chex data prepare` was asked: raw and processed folder and the options."""

    raw: Path
    out: Path
    workers: int
    side: int
    progress: bool
    n: int  # synthetic: number of images
    seed: int  # synthetic: seed
    table: Path | None = None  # custom: the table
    images: Path | None = None  # custom: the folder its image paths are relative to


def _mimic_part(part: str) -> Callable[[PrepareJob], PrepareResult]:
    return lambda job: prepare_mimic_part(part, job.raw, job.out, job.workers, job.side, job.progress)


#: canonical name -> preparer (``synthetic`` reads nothing: ``n`` images drawn from ``seed``)
PREPARERS: dict[str, Callable[[PrepareJob], PrepareResult]] = {
    "mimic": lambda job: prepare_all_mimic(job.raw, job.out, job.workers, job.side, job.progress),
    **{part: _mimic_part(part) for part in MIMIC_PARTS},
    "vindr-cxr": lambda job: prepare_vindr(job.raw, job.out, workers=job.workers, side=job.side,
                                           progress=job.progress),
    "nih-cxr14": lambda job: prepare_nih(job.raw, job.out, workers=job.workers, progress=job.progress),
    "synthetic": lambda job: prepare_synthetic(job.out, n=job.n, seed=job.seed, workers=job.workers,
                                               side=job.side, progress=job.progress),
    "custom": lambda job: prepare_custom(job.table, job.images, job.out, workers=job.workers, side=job.side,
                                         progress=job.progress),
}


def prepare(name: str, raw: Path, out: Path, workers: int = 1, side: int = 256,
            progress: bool = True, n: int = 4000, seed: int = 0, table: Path | None = None,
            images: Path | None = None) -> PrepareResult:
    """Prepare dataset ``name`` (a canonical or short name, see sources.resolve_name) from ``raw`` into ``out``.

    ``custom`` reads ``table`` (image paths relative to ``images``) and creates ``out`` only when it succeeds.
    """
    name = resolve_name(name)
    raw, out = Path(raw).expanduser().resolve(), Path(out).expanduser()
    if name != "custom":
        out.mkdir(parents=True, exist_ok=True)
    return PREPARERS[name](PrepareJob(raw, out, workers, side, progress, n, seed, table, images))
