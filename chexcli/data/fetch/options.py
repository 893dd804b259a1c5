"""How a fetch behaves: workers, retries, timeouts, the stall rule, logging, the stop flag."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from typing import Callable

CHUNK = 1 << 20  # bytes per read of a download or an archive member


def _default_log(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)  # does not tear a progress bar


@dataclass
class FetchOptions:
    workers: int = 4
    retries: int = 5
    backoff: float = 1.0  # seconds, doubled per retry, capped at 60
    timeout: float = 30.0  # connect, and the longest wait for any single read
    stall_timeout: float = 60.0  # abandon an attempt with < stall_bytes in this many s (0: off)
    stall_bytes: int = 16384
    notice_after: float | None = None  # say what we wait for after this long (default: derived)
    progress: bool = True
    log: Callable[[str], None] = _default_log
    stop: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def notice_delay(self) -> float:
        if self.notice_after is not None:
            return self.notice_after
        limits = [10.0, self.timeout / 2] + ([self.stall_timeout / 2] if self.stall_timeout > 0 else [])
        return max(0.05, min(limits))
