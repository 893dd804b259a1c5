"""Ctrl-C / SIGTERM during training: finish the current update, write a checkpoint, exit.

A second Ctrl-C stops at once (KeyboardInterrupt)."""

from __future__ import annotations

import signal
from typing import Any


class StopFlag:
    """`with StopFlag() as stop:` ... `stop.raised` turns true on the first SIGINT or SIGTERM."""

    def __init__(self):
        self.raised = False
        self._old: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.raised:
            raise KeyboardInterrupt
        self.raised = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


__all__ = ["StopFlag"]
