"""Every error a user can fix, under one base: the CLI prints it as one paragraph, exit 2
(exit 3 for a study that stopped because it could not make progress).

Anything else that escapes a command is a bug in `study` (exit 1, with a traceback).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["ConfigError", "DataError", "DiskFullError", "StorageError", "StudyError",
           "StudyHalted", "naming_file"]


class StudyError(Exception):
    """A user error: printed as is (it names the file, the key and what is allowed), exit 2."""


class ConfigError(StudyError):
    """A study file, a preset or a `--set` override is wrong."""


class DataError(StudyError):
    """A dataset is missing or unreadable where the study file says it is."""


class StorageError(StudyError):
    """An Optuna storage cannot be opened, or holds a study that does not match the file."""


class DiskFullError(StudyError, OSError):
    """A write failed for lack of space or quota. An OSError (errno, filename) to code that
    handles I/O errors; to the command line a user error naming the file (not a config error:
    the study file is fine, the disk is not)."""

    def __str__(self) -> str:
        return (f"disk full: cannot write {self.filename} ({self.strerror}). Finished trials are "
                "kept: free space (or raise the quota) and run `study launch` again to resume; "
                "trials the full disk interrupted are retried or failed with this reason.")


class StudyHalted(StudyError):
    """A launch that cannot make progress stopped: its trials fail with code or configuration
    errors (the circuit breaker), or it ended with no completed trial. Exit 3, so a script or
    a SLURM dependency tells it from a refused command (2) and from a crash (1)."""

    exit_code = 3


@contextlib.contextmanager
def naming_file(source: str) -> Iterator[None]:
    """A StudyError raised inside names the study file first: the setting at fault (a storage
    URL, a GPU index) may come from the file or from a --set override."""
    try:
        yield
    except StudyError as e:
        raise type(e)(f"{source}: {e}") from None
