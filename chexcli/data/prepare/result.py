"""What one ``chex data prepare`` step did, and the list of images it skipped."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from chexcli.data.processed.files import write_csv
from chexcli.data.processed.layout import SKIPPED_IMAGES


@dataclass
class PrepareResult:
    """What one ``chex data prepare`` step did: datasets written, images and reports skipped."""

    out: Path
    skipped: int = 0
    skipped_file: Path | None = None
    skipped_reports: int = 0
    skipped_reports_file: Path | None = None
    datasets: dict = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

    def add(self, other: "PrepareResult") -> None:
        """Take in the result of a later step into the same folder."""
        self.skipped += other.skipped
        self.skipped_file = other.skipped_file or self.skipped_file
        self.skipped_reports += other.skipped_reports
        self.skipped_reports_file = other.skipped_reports_file or self.skipped_reports_file
        self.datasets.update(other.datasets)
        self.messages.extend(other.messages)


def write_skipped(out_dir: Path, skipped: list[tuple[str, str, str]]) -> Path:
    """``skipped_images.csv``: (sample_id, path, reason) of every image that was left out."""
    path = Path(out_dir) / SKIPPED_IMAGES
    write_csv(path, pd.DataFrame(skipped, columns=["sample_id", "path", "reason"]), index=False)
    return path


def note_skipped_images(res: PrepareResult, skipped: list[tuple[str, str, str]], say_first: bool = True) -> None:
    """List the skipped images in ``res`` and in ``skipped_images.csv`` (removed when none were)."""
    if skipped:
        res.skipped_file = write_skipped(res.out, skipped)
        res.skipped = len(skipped)
        if say_first:
            res.messages.append(f"first unreadable image: {skipped[0][0]}: {skipped[0][2]}")
    elif (res.out / SKIPPED_IMAGES).exists():
        (res.out / SKIPPED_IMAGES).unlink()

