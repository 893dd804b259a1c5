"""Child processes that die with their parent.

Data-loader workers and the worker pools of `chex data prepare` are forked children. When the
parent is killed without a chance to clean up (SIGKILL, the OOM killer, a preempted job), nothing
tells them to stop: a worker blocked writing into a pipe whose reader is gone waits forever,
holding its memory. `die_with_parent()`, run first in every child, asks the Linux kernel to
SIGKILL the child when the parent goes (`prctl(PR_SET_PDEATHSIG, SIGKILL)`), and checks that
the parent is still the one that started it (a parent that died between the fork and the prctl
call has already re-parented the child, and no signal would come).

`worker_init(parent_pid, then=None)` gives a DataLoader `worker_init_fn` / Pool `initializer`
that does this and then runs `then`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from functools import partial
from typing import Any, Callable

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None) -> bool:
    """Make this process receive SIGKILL when its parent exits (Linux); True when it is set.

    parent_pid: the pid of the parent that started this process; if the process has already
    been re-parented (that parent died before this call), it exits at once.
    """
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except OSError:
            armed = False
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the parent is already gone
    return armed


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask on Linux, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _init(parent_pid: int, then: Callable[..., Any] | None, *args: Any) -> None:
    die_with_parent(parent_pid)
    if then is not None:
        then(*args)


def worker_init(then: Callable[..., Any] | None = None) -> Callable[..., None]:
    """An initializer for workers forked by this process: die with it, then run `then(*args)`.

    Picklable (a `functools.partial` of a module-level function), so it also works with the
    spawn start method.
    """
    return partial(_init, os.getpid(), then)


__all__ = ["available_cpus", "die_with_parent", "worker_init"]
