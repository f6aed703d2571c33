"""Files that are either whole or absent: temp file + fsync + rename, corrupt files moved aside,
a full disk reported with the file's name.

Every durable write of `study` goes through here (job files, Parquet results, epoch checkpoints,
stage cache entries, reports, bench records), so "a crash never leaves half a file" holds in one
place. A reader sees the old file or the new one, never a mix: rename(2) is atomic on one file
system, NFS included.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

from study import faults
from study.errors import DiskFullError

__all__ = ["DISK_FULL", "disk_full", "is_disk_full", "move_aside", "write_bytes", "write_file",
           "write_folder", "write_text"]

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)   # no space left; over the user's quota (HPC scratch)


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in DISK_FULL


def disk_full(e: OSError, path: str | Path) -> OSError:
    """`e` as a DiskFullError naming `path` when it is a full disk, else unchanged. Python
    and pyarrow report ENOSPC from write() without a file name."""
    if isinstance(e, DiskFullError) or e.errno not in DISK_FULL:
        return e
    return DiskFullError(e.errno, os.strerror(e.errno), str(e.filename or path))


def _temp_for(dest: Path) -> Path:
    # hidden and per process: readers globbing `*.parquet` never see it, two writers never share
    return dest.with_name(f".{dest.name}.tmp{os.getpid()}")


def write_file(dest: str | Path, write: Callable[[BinaryIO], None], *, replace: bool = True,
               fault_point: str | None = None, mode: int | None = None) -> Path | None:
    """Write `dest` whole or not at all: `write(f)` fills a temp file, which is fsynced and
    renamed over `dest`. replace=False keeps a `dest` that exists (returns None): the first
    writer wins, atomically (a hard link fails where the name exists). `fault_point` names the
    point where the fault suite may kill the writer midway; `mode` sets the file's permissions
    before it gets its name (0o600 for files that hold secrets)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_for(dest)
    try:
        with open(tmp, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if fault_point:
            faults.crash_midway(fault_point, tmp)   # the fault suite only
        if replace:
            os.replace(tmp, dest)
            return dest
        try:
            os.link(tmp, dest)
        except FileExistsError:
            return None
        except OSError as e:
            if is_disk_full(e):
                raise
            if dest.exists():   # a file system without hard links: look, then rename
                return None
            os.replace(tmp, dest)
        return dest
    except OSError as e:
        raise disk_full(e, dest) from None
    finally:
        # a full disk gets its space back; a no-op after rename; on a read-only file system
        # the unlink fails too, and must not hide the first error
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_bytes(dest: str | Path, data: bytes, **kwargs: object) -> Path | None:
    return write_file(dest, lambda f: f.write(data), **kwargs)  # type: ignore[arg-type]


def write_text(dest: str | Path, text: str, **kwargs: object) -> Path | None:
    return write_bytes(dest, text.encode(), **kwargs)


def write_folder(dest: str | Path, files: Mapping[str, bytes], *, temp_root: str | Path,
                 fault_point: str | None = None) -> Path:
    """Write the folder `dest` holding `files` (name -> bytes) whole or not at all: each file
    is written and fsynced in a temp folder under `temp_root` (on dest's file system), which is
    then renamed to `dest`. When another writer's `dest` is already there, theirs is kept and
    this copy discarded (two workers that built the same cache entry). `fault_point` names the
    point where the fault suite may kill the writer after each file."""
    dest, temp_root = Path(dest), Path(temp_root)
    temp_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{dest.parent.name}-{dest.name}-", dir=temp_root))
    try:
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if fault_point:
                faults.crash_midway(fault_point, tmp / name)   # the fault suite only
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)   # another writer won the race
        return dest
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)   # no half folder; a full disk gets it back
        raise disk_full(e, dest) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def move_aside(path: str | Path) -> Path:
    """Rename a corrupt file or folder to `<name>.corrupt-<ms>`: never loaded again, kept for a
    post-mortem. Returns the new path (unchanged when the rename failed: it may be gone)."""
    path = Path(path)
    aside = path.with_name(f"{path.name}.corrupt-{int(time.time() * 1000)}")
    try:
        path.rename(aside)
    except OSError:
        return path
    return aside
