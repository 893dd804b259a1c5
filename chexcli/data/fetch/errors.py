"""Why a download stopped: the exceptions of the fetch modules and the message for refused access."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Callable

from chexcli.errors import ChexError


class AuthError(Exception):
    def __init__(self, status: int):
        super().__init__(f"HTTP {status}")
        self.status = status


class PermanentError(Exception):
    """A file that could not be fetched in this run; `rerun_helps` says whether a rerun may."""

    def __init__(self, message: str, rerun_helps: bool = True):
        super().__init__(message)
        self.rerun_helps = rerun_helps


class LocalWriteError(Exception):
    """Writing (or reading back) a local file failed: not retried, never a traceback."""

    def __init__(self, path: Path, err: OSError):
        super().__init__(f"cannot write {path}: {err.strerror or err}")
        self.errno = err.errno

    @property
    def fatal(self) -> bool:
        """No space or a read-only disk: every other download would fail the same way."""
        return self.errno in (errno.ENOSPC, errno.EROFS, getattr(errno, "EDQUOT", -1))


class DigestMismatch(Exception):
    def __init__(self, got: str, expected: str):
        super().__init__("the downloaded data does not match its SHA-256")
        self.got, self.expected = got, expected


class Stalled(Exception):
    """The watchdog abandoned an attempt (message: why); retried like a network error."""


class Stopped(Exception):
    """The whole fetch is stopping (interrupt, refused credentials, full disk)."""


def local_io(path: Path, fn: Callable, *args, **kwargs):
    """Run a local file operation; an OSError becomes a LocalWriteError naming `path`."""
    try:
        return fn(*args, **kwargs)
    except OSError as err:
        raise LocalWriteError(path, err) from None


def auth_refused(source, user: str, status: int) -> ChexError:
    """The one message for 401/403: wrong credentials or an unsigned data use agreement."""
    return ChexError(
        f"{source.title}: access refused for user {user!r} (HTTP {status}): the credentials "
        f"are wrong, or the data use agreement is not signed yet - sign it at {source.agreement_page}",
        exit_code=2)
