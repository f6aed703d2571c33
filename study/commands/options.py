"""What several commands check the same way: the --results and --cache folders, positive
counts, and how much the command and its workers print."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from study import progress
from study.errors import StudyError

__all__ = ["apply_verbosity", "check_dir", "positive", "results_and_cache"]


def apply_verbosity(args: argparse.Namespace) -> str:
    """--quiet, --log-level, --progress-interval into the environment, so the workers this
    command starts (local processes, batch jobs, which inherit it) show the same. Returns the
    log level."""
    if args.quiet:
        progress.set_log_level("warning")
    elif args.log_level:
        progress.set_log_level(args.log_level)
    if args.progress_interval is not None:
        if not args.progress_interval > 0:
            raise StudyError(f"--progress-interval must be > 0, got {args.progress_interval}")
        os.environ[progress.ENV_LINE_S] = str(args.progress_interval)
    progress.check_environment()   # bad settings: exit 2 here, not in every worker
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    return progress.log_level()


def results_and_cache(args: argparse.Namespace, *, write: bool = False, results: bool = True
                      ) -> tuple[str, str]:
    """--results and --cache, resolved and checked before anything runs: a regular file, or a
    folder that cannot be made (/proc/x), is refused with the flag named. `write`: the command
    will create them, so they must be creatable (checked by making the missing folders and
    removing them again). `results`: the command uses --results itself (`study run` only
    through the default cache)."""
    results_dir = str(Path(args.results).resolve())
    cache_dir = str(Path(args.cache).resolve() if args.cache else Path(results_dir) / "cache")
    if results or not args.cache:
        check_dir("--results", args.results, write=write)
    check_dir("--cache" if args.cache else "--results", args.cache or cache_dir, write=write)
    return results_dir, cache_dir


def check_dir(flag: str, value: str | Path, *, write: bool) -> Path:
    """`value` names a directory, or a path where one can be made (write=True); else a
    StudyError naming `flag`. Writes nothing: folders made to prove it are removed again."""
    path = Path(os.path.abspath(os.path.expanduser(value)))   # '..' folded, as mkdir sees it
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent   # Path.exists is False below a regular file too
    if not existing.is_dir():
        where = f"{flag} {value}" if existing == path else f"{flag} {value}: {existing}"
        kind = "is a file, not a directory" if existing.is_file() else "is not a directory"
        raise StudyError(f"{where} {kind}; give a directory (it is created when missing)")
    if not write:
        return path
    if existing == path:
        if not os.access(path, os.W_OK | os.X_OK):
            raise StudyError(f"{flag} {value}: the directory is not writable by this user")
        return path
    missing = [d for d in [path, *path.parents] if d not in (existing, *existing.parents)]
    made: list[Path] = []
    try:
        for d in reversed(missing):
            try:
                os.mkdir(d)
                made.append(d)
            except FileExistsError:
                if not d.is_dir():
                    raise
                # another command made it meanwhile: it is theirs, not ours to remove
    except OSError as e:
        raise StudyError(f"{flag} {value}: cannot create the directory {d} ({e.strerror or e}); "
                         "give a directory on a writable file system") from None
    finally:
        for d in reversed(made):
            with contextlib.suppress(OSError):   # another process may have filled it meanwhile
                os.rmdir(d)
    return path


def positive(**flags: int | None) -> None:
    """Each given count is >= 1, or a StudyError naming its flag."""
    for flag, value in flags.items():
        if value is not None and value < 1:
            raise StudyError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
