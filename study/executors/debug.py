"""Trials run in the launcher's own process, one after the other: for debugging and tests, the
counterpart of submitit's `cluster="debug"`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from optuna.trial import FrozenTrial

from study.config import ExecutorSection
from study.executors import local
from study.executors.base import Driver, Executor, Handle, JobFiles
from study.jobs import Job


class DebugExecutor(Executor):
    name: ClassVar[str] = "debug"
    inline: ClassVar[bool] = True

    @classmethod
    def from_settings(cls, settings: ExecutorSection, study_dir: Path, study_name: str
                      ) -> DebugExecutor:
        return cls()

    def submit(self, trials: Sequence[JobFiles]) -> Handle:
        # imported when a trial runs here: `study status` and `study cancel` build this executor
        # too, and never need the worker's torch (~1.3 s)
        from study import worker

        for t in trials:
            worker.run_job(Job.read(t.job))
        return {"kind": self.name}

    def describe_placement(self, parallel: int) -> str:
        return "one trial at a time, in the launcher's own process (debug)"

    def alive(self, handle: Handle, trial: FrozenTrial) -> bool:
        return False   # a debug trial still RUNNING belongs to a launcher that died

    def started(self, job: object) -> bool:
        return False

    def cancel(self, handles: Sequence[Handle]) -> None:
        local.kill_local(handles)   # workers of an earlier launch with another backend

    def start_driver(self, driver: Driver) -> Handle:
        return local.start_process_driver(driver)   # the detached launcher runs trials inline

    def stop_driver(self, handle: Handle, wait_s: float) -> None:
        local.stop_process_driver(handle, wait_s)
