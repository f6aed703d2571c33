"""Executors: where trial workers run, behind one contract (base.Executor).

    debug   in the launcher's own process, one trial after the other (debugging, tests)
    local   one process per trial on this machine (`--parallel K` at once)
    slurm   one SLURM job per trial (or per pack of trials) through submitit

To add one: a module here with an Executor subclass, its entry in EXECUTORS, its name in
config.ExecutorSection.backend, and a toy study launched on it in tests/test_launch.py.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from study.config import StudyFile
from study.errors import ConfigError
from study.executors import placement
from study.executors.base import Driver, Executor, Handle, JobFiles
from study.executors.debug import DebugExecutor
from study.executors.local import LocalExecutor
from study.executors.slurm import SlurmExecutor

__all__ = ["EXECUTORS", "DebugExecutor", "Driver", "Executor", "Handle", "JobFiles",
           "LocalExecutor", "SlurmExecutor", "allotted_cpus", "get",
           "make_executor"]

EXECUTORS: dict[str, type[Executor]] = {
    cls.name: cls for cls in (DebugExecutor, LocalExecutor, SlurmExecutor)}


def get(backend: str) -> type[Executor]:
    try:
        return EXECUTORS[backend]
    except KeyError:
        raise ConfigError(f"key 'executor.backend': unknown executor {backend!r}; allowed: "
                          f"{list(EXECUTORS)}") from None


def make_executor(sf: StudyFile, study_dir: Path) -> Executor:
    return get(sf.executor.backend).from_settings(sf.executor, study_dir, sf.study.name)


def allotted_cpus(environ: Mapping[str, str] | None = None) -> int | None:
    """The CPUs this process may use: its share where a parent split them (STUDY_THREADS),
    else what a batch system allotted it (a site without cgroups does not pin CPUs, and torch
    would take every core of the node), else None (all of this machine's)."""
    env = os.environ if environ is None else environ
    own = (cls.allotted_cpus(env) for cls in EXECUTORS.values())
    return placement.threads_from_env(env) or next((n for n in own if n), None)
