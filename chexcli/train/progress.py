"""A progress bar on stderr for training loops: update n of N, loss, learning rate, samples/s, ETA.

Used by `chex train` and by the demo's image-tower pretraining. The rate is measured here,
between `update` calls, unless the caller sets it (`update(..., rate=...)`, the trainer's
logging window); disabled, it prints nothing."""

from __future__ import annotations

import time


class ProgressBar:
    """`with ProgressBar(total, done, enabled) as bar: bar.update(step, loss, lr, samples=n)`."""

    def __init__(self, total: int, done: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.total, self.done = total, done
        self.rate = 0.0
        self._bar = None
        self._last = time.perf_counter()

    def __enter__(self) -> "ProgressBar":
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  "
                                            "{task.fields[rate]:.1f} samples/s"),
                                 TimeRemainingColumn(), console=Console(stderr=True), transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task("train", total=self.total, completed=self.done, loss=float("nan"),
                                            lr=0.0, rate=0.0)
        self._last = time.perf_counter()
        return self

    def update(self, step: int, loss: float, lr: float, samples: int | None = None, rate: float | None = None) -> None:
        """Show update `step`; `samples` processed since the last call give the rate, or `rate` directly."""
        now = time.perf_counter()
        if rate is not None:
            self.rate = rate
        elif samples is not None:
            self.rate = samples / max(now - self._last, 1e-9)
        self._last = now
        if self._bar is not None:
            self._bar.update(self._task, completed=step, loss=loss, lr=lr, rate=self.rate)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)


__all__ = ["ProgressBar"]
