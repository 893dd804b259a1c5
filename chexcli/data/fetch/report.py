"""What a fetch did, file by file, and the destination folder it writes into."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from chexcli.data.fetch.errors import LocalWriteError, local_io
from chexcli.errors import ChexError


@dataclass
class FetchReport:
    downloaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, one-line reason)
    final: list[str] = field(default_factory=list)  # failed paths that a rerun cannot fix

    @property
    def rerun_helps(self) -> bool:
        return len(self.final) < len(self.failed)


def make_dest_folder(dest: Path) -> Path:
    """Create the destination folder, or say (ChexError) that another one is needed."""
    dest = Path(dest)
    try:
        local_io(dest, dest.mkdir, parents=True, exist_ok=True)
    except LocalWriteError as err:
        raise ChexError(f"{err}; choose another folder with --to") from None
    return dest
