"""The executor contract: where a trial's worker runs, stated as capabilities.

The launcher (study/launcher.py) uses executors only through this class. A handle is a small
JSON-able dict the launcher stores with the trial (Optuna user attribute "job"), so a later
launcher, or `study cancel`, can find the work again after this process is gone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from optuna.trial import FrozenTrial

__all__ = ["Driver", "Executor", "Handle", "JobFiles"]

Handle = dict[str, Any]


@dataclass(frozen=True)
class JobFiles:
    """One trial's job file (what the worker reads) and the log its output goes to."""

    job: Path
    log: Path


class Driver(Callable[[], Any]):  # type: ignore[misc]
    """The launcher loop as a unit of work another process or job can run (`--detach`): a
    callable for a job, `argv` for a process."""

    argv: list[str]


class Executor(ABC):
    name: ClassVar[str]
    # True: submit() runs the trials to their end in the caller's process before it returns
    inline: ClassVar[bool] = False

    @property
    def trials_per_submission(self) -> int:
        """How many trials one submit() call packs (SLURM `trials_per_job`); the launcher
        submits whole packs only, and a smaller one at the end of a study."""
        return 1

    @abstractmethod
    def submit(self, trials: Sequence[JobFiles]) -> Handle:
        """Start the workers of these trials (at most trials_per_submission) as one unit."""

    @abstractmethod
    def alive(self, handle: Handle, trial: FrozenTrial) -> bool:
        """Whether the trial's worker may still finish it (after refresh())."""

    def started(self, job: Path) -> bool | None:
        """For a trial asked but without a handle (a launcher killed in between): whether a
        worker for this job file exists. None: cannot tell here (the launcher then waits a
        grace period for the worker to register)."""
        return None

    def refresh(self, handles: Sequence[Handle]) -> None:
        """Update what alive() knows, in one call for every trial in flight."""
        return None

    def poll(self) -> None:
        """Called once per launcher loop: reap finished processes and the like."""
        return None

    @abstractmethod
    def cancel(self, handles: Sequence[Handle]) -> None:
        """Stop the work behind these handles (trial jobs, stage jobs, worker processes)."""

    def build_shared_stages(self, plan: Sequence[tuple[str, int]],
                            build: Callable[[str, int], Any]) -> dict[str, str]:
        """Build the shared stages of `plan` ((stage, seed) in build order) ahead of the
        trials, where that helps (SLURM: their own jobs, the trials depending on them).
        `build(stage, seed)` builds one into the cache. Returns name -> job id; {} where the
        trials build what they need themselves (the cache lock makes racers wait)."""
        return {}

    @abstractmethod
    def start_driver(self, driver: Driver) -> Handle:
        """Run the launcher loop elsewhere so this process may exit (`study launch --detach`)."""

    @abstractmethod
    def stop_driver(self, handle: Handle, wait_s: float) -> None:
        """Stop a driver started by start_driver and wait up to wait_s for it to end."""
