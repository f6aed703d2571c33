"""The two files the launcher hands on, one JSON shape each: a trial's `Job` (what its worker
runs) and a `LaunchRequest` (what a detached driver launches).

Both are written 0600 through atomic.py: a job's tree, and a request's overrides, may hold a
storage URL with its password.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from study import atomic

__all__ = ["Job", "LaunchRequest"]

def _write(record: Any, path: Path) -> Path:
    atomic.write_text(path, json.dumps(asdict(record), indent=1), mode=0o600)
    return path


def _read(path: str | Path) -> dict[str, Any]:
    return dict(json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class Job:
    """One trial for a worker: `python -m study.worker JOB.json`."""

    study_file: str
    overrides: list[str]
    results: str
    cache: str
    storage: str
    study_name: str
    trial: int
    # the resolved tree (study file + presets + overrides) as the launcher validated it: the
    # worker skips reading three YAML files (~100 ms, most of a toy trial's overhead) and runs
    # exactly what the study's fingerprint covers, even if the file is edited meanwhile
    tree: dict[str, Any] | None = None

    def write(self, path: Path) -> Path:
        return _write(self, path)

    @classmethod
    def read(cls, path: str | Path) -> Job:
        return cls(**_read(path))


@dataclass(frozen=True)
class LaunchRequest:
    """What `study launch` was asked: enough for a driver elsewhere to do the same."""

    study_file: str
    overrides: list[str]
    results_dir: str
    cache_dir: str
    n_trials: int | None = None     # None: the study file's study.n_trials

    def write(self, path: Path) -> Path:
        return _write(self, path)

    @classmethod
    def read(cls, path: str | Path) -> LaunchRequest:
        return cls(**_read(path))
