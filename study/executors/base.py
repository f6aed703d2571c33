"""The executor contract: where a trial's worker runs, stated as capabilities and hooks.

The launcher, the worker and `study status` use executors only through this class, so what a
cluster is (its job ids, its states, its signals, its time limits) stays inside its executor.
A handle is a small JSON-able dict the launcher stores with the trial (Optuna user attribute
"job"), so a later launcher, `study status` or `study cancel` can find the work again after
this process is gone; only the executor that made a handle reads what is inside it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from optuna.trial import FrozenTrial

if TYPE_CHECKING:
    from study.config import ExecutorSection

__all__ = ["Driver", "Executor", "Handle", "JobFiles"]

Handle = dict[str, Any]


@dataclass(frozen=True)
class JobFiles:
    """One trial's job file (what the worker reads) and the log its output goes to."""

    job: Path
    log: Path


@dataclass(frozen=True)
class Driver:
    """The launcher loop as a unit of work another process or job runs (`--detach`): `argv`
    for a process on this machine (its output to `log`), `call` for a job (picklable: a
    batch system stores it with the job)."""

    argv: list[str]
    call: Callable[[], Any]
    log: Path


class Executor(ABC):
    name: ClassVar[str]
    # True: submit() runs the trials to their end in the caller's process before it returns
    inline: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: ExecutorSection, study_dir: Path, study_name: str
                      ) -> Executor:
        """The executor a study's `executor` section asks for. A setting this machine cannot
        honour (a GPU index it does not show) is a ConfigError naming the key."""

    @property
    def trials_per_submission(self) -> int:
        """How many trials one submit() call packs (a SLURM job of several trials); the
        launcher submits whole packs only, and a smaller one at the end of a study."""
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

    def describe(self, handles: Sequence[Handle]) -> list[str]:
        """One short line per handle for people (`study status`, the launcher's log): where
        the work runs and, where the executor can ask, its state; one query for all."""
        return [_where(h) for h in handles]

    def describe_placement(self, parallel: int) -> str:
        """Where `parallel` trials in flight will run, in one line (`launch --dry-run`)."""
        return f"{parallel} trial(s) at a time"

    @abstractmethod
    def cancel(self, handles: Sequence[Handle]) -> None:
        """Stop the work behind these handles (trial jobs, stage jobs, worker processes)."""

    def build_shared_stages(self, plan: Sequence[tuple[str, int]],
                            build: Callable[[str, int], Any]) -> dict[str, Handle]:
        """Build the shared stages of `plan` ((stage, seed) in build order) ahead of the
        trials, where that helps (SLURM: their own jobs, the trials depending on them).
        `build(stage, seed)` builds one into the cache. Returns "<stage>@<seed>" -> the handle
        of the work building it; {} where the trials build what they need themselves (the
        cache lock makes racers wait)."""
        return {}

    @abstractmethod
    def start_driver(self, driver: Driver) -> Handle:
        """Run the launcher loop elsewhere so this process may exit (`study launch --detach`)."""

    @abstractmethod
    def stop_driver(self, handle: Handle, wait_s: float) -> None:
        """Stop a driver started by start_driver and wait up to wait_s for it to end."""

    def drain_stopped_driver(self, stop_new_trials: Callable[[], int]) -> int:
        """After stop_driver: a stopped driver that may still start trials for a while (a
        batch system's grace period before it kills a cancelled job) is waited out here, each
        trial it starts stopped with `stop_new_trials()` (returns how many it stopped). Returns
        the total. A process driver is gone when stop_driver returns: nothing to drain."""
        return 0

    # ------------------------------------------------------------ inside a worker
    @classmethod
    def classify_failure(cls, error: BaseException, settings: ExecutorSection
                         ) -> tuple[str, str] | None:
        """(fail_kind, one-line reason) for an error the executor itself raised inside a
        trial's worker (a job out of requeues), None for any other error (the worker
        classifies those)."""
        return None

    @classmethod
    def allotted_cpus(cls, environ: Mapping[str, str]) -> int | None:
        """The CPUs this executor gave the current process, where its environment says so."""
        return None


def _where(handle: Handle) -> str:
    kind = handle.get("kind", "?")
    if handle.get("job_id"):
        return f"{kind} job {handle['job_id']}"
    if handle.get("pid"):
        return f"{kind} process {handle['pid']}"
    return str(kind)
