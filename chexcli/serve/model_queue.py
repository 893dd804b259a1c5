"""One line of model calls for `chex serve`: a bounded queue served by one worker thread.

    queue = ModelQueue(max_waiting=8)
    job = queue.submit(session.run_question, question, ticket="tab-42")  # QueueFull when the line is full
    queue.position("tab-42")   # 0 while it runs, k when k calls are ahead of it, None when unknown
    queue.cancel(job)          # a waiting call is dropped; a running one finishes, its result unused
    job.future.result()        # a concurrent.futures.Future

The model answers one call at a time (it is not thread-safe, and two calls at once would
only share the same cores), so requests from several tabs wait here in arrival order. The
web layer cancels a call whose client has gone before it starts.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from chexcli.errors import ChexError


class QueueFull(ChexError):
    """The line of waiting model calls is full; the client should retry later."""


@dataclass
class Job:
    """A model call: `fn(*args)`, its future, and the client's ticket (for its queue position)."""

    fn: Callable[..., Any]
    args: tuple
    ticket: str | None = None
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    number: int = 0  # arrival order


class ModelQueue:
    """Runs submitted calls one at a time, in arrival order, on one worker thread."""

    def __init__(self, max_waiting: int = 8):
        self.max_waiting = max_waiting
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._numbers = itertools.count(1)
        self._worker = threading.Thread(target=self._serve, name="chex-model-queue", daemon=True)
        self._worker.start()

    def submit(self, fn: Callable[..., Any], *args, ticket: str | None = None) -> Job:
        """Queue `fn(*args)`; raises QueueFull when `max_waiting` calls already wait."""
        with self._cond:
            if self._closed:
                raise ChexError("the app is shutting down")
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self._waiting)} questions are already waiting for the model; "
                                "try again in a moment")
            job = Job(fn, args, ticket, number=next(self._numbers))
            self._waiting.append(job)
            self._cond.notify()
        return job

    def position(self, ticket: str) -> int | None:
        """0: the ticket's call is running; k >= 1: k calls run or wait before it; None: not queued."""
        with self._cond:
            if self._running is not None and self._running.ticket == ticket:
                return 0
            ahead = int(self._running is not None)
            for job in self._waiting:
                if job.ticket == ticket:
                    return ahead
                ahead += 1
        return None

    def find(self, ticket: str) -> Job | None:
        """The waiting or running job with this ticket."""
        with self._cond:
            for job in ([self._running] if self._running else []) + list(self._waiting):
                if job.ticket == ticket:
                    return job
        return None

    def cancel(self, job: Job) -> bool:
        """Drop a waiting call (True). A running call cannot be stopped: it finishes (False)."""
        with self._cond:
            try:
                self._waiting.remove(job)
            except ValueError:
                return False
        return job.future.cancel()

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    def close(self) -> None:
        """Cancel every waiting call and stop the worker once the running call (if any) ends."""
        with self._cond:
            self._closed = True
            dropped, self._waiting = list(self._waiting), collections.deque()
            self._cond.notify_all()
        for job in dropped:
            job.future.cancel()

    def _next(self) -> Job | None:
        with self._cond:
            while not self._waiting and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            self._running = self._waiting.popleft()
            return self._running

    def _serve(self) -> None:
        while (job := self._next()) is not None:
            try:
                if job.future.set_running_or_notify_cancel():
                    try:
                        job.future.set_result(job.fn(*job.args))
                    except BaseException as err:  # noqa: BLE001 - handed to the waiting request
                        job.future.set_exception(err)
            finally:
                with self._cond:
                    self._running = None
