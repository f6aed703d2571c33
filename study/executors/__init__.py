"""Executors: where trial workers run, behind one contract (base.Executor).

    debug   in the launcher's own process, one trial after the other (debugging, tests)
    local   one process per trial on this machine (`--parallel K` at once)
    slurm   one SLURM job per trial (or per pack of trials) through submitit

To add one: a module here with an Executor subclass, a branch in make_executor, a test.
"""

from __future__ import annotations

import os
from pathlib import Path

from study.config import StudyFile
from study.executors.base import Driver, Executor, Handle, JobFiles
from study.executors.debug import DebugExecutor
from study.executors.local import LocalExecutor
from study.executors.slurm import SlurmExecutor

__all__ = ["DebugExecutor", "Driver", "Executor", "Handle", "JobFiles",
           "LocalExecutor", "SlurmExecutor", "make_executor"]

def make_executor(sf: StudyFile, study_dir: Path) -> Executor:
    backend = sf.executor.backend
    if backend == "local":
        # the cores split between the trials in flight: 2 on a 2-core box at --parallel 1
        return LocalExecutor(threads=max(1, (os.cpu_count() or 1) // sf.executor.parallel),
                             gpus=sf.executor.gpus)
    if backend == "slurm":
        return SlurmExecutor(sf.executor.slurm, study_dir / "jobs" / "slurm", sf.study.name)
    return DebugExecutor()
