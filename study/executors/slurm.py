"""SLURM through submitit: one job per trial, shared stages as a job graph, a driver job for
--detach, one sacct call per refresh for every job in flight. Every SLURM fact of `study` lives
here: job states and handles, requeues after time limits, KillWait, the allotted CPUs.

Jobs are Checkpointable: on preemption or the pre-timeout signal submitit requeues them, and the
rerun resumes from the stage cache (finished stages) and the epoch checkpoint (the stage in
progress). A code error inside a trial is caught by the worker (worker.run_job) and fails the
trial once; a job that vanishes (scancel, OOM kill, node failure) leaves its trial RUNNING with no
result, which the launcher sees in sacct and retries with the same parameters.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import submitit
from optuna.trial import FrozenTrial
from submitit.core.utils import UncompletedJobError

from study import adapter
from study.config import ExecutorSection, SlurmSettings
from study.executors import local, placement
from study.executors.base import Driver, Executor, Handle, JobFiles
from study.jobs import Job

# sacct states in which a job may still run (or run again after a requeue).
ALIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
         "COMPLETING", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}
# sacct may not know a job for a moment after sbatch returns.
UNKNOWN_GRACE_S = 60.0
# `study cancel`: scancel makes sacct call the driver job CANCELLED at once, while its process
# lives on for SLURM's KillWait (30 s by default, 5 s on the test cluster; submitit ignores the
# SIGTERM), so it may still start a trial. Such trials are stopped until none has appeared for
# DRAIN_QUIET_S, for at most DRAIN_MAX_S.
DRAIN_QUIET_S = 6.0
DRAIN_MAX_S = 60.0
CPUS_ENV = "SLURM_CPUS_PER_TASK"


@contextlib.contextmanager
def submission_env() -> Iterator[None]:
    """A job submitted from a job (the --detach driver) must not inherit its SLURM_* variables
    (they clash with the new job's resources), but every process needs SLURM_CONF."""
    conf = os.environ.get("SLURM_CONF")
    with submitit.helpers.clean_env():
        if conf:
            os.environ["SLURM_CONF"] = conf
        yield


class TrialJob(submitit.helpers.Checkpointable):
    """A trial's worker in the job's own process; checkpoint() (inherited) requeues the same
    call on preemption and before the time limit. Past max_requeues submitit raises inside the
    worker, which fails the trial as SlurmExecutor.classify_failure says."""

    def __init__(self, job_path: str):
        self.job_path = job_path

    def __call__(self) -> str:
        # The worker (torch, the pipeline) is imported in the job's own process, where the
        # trial runs; the machines that submit, describe or cancel jobs never pay it (~1.3 s).
        from study import worker

        worker.use_allotted_cpus(SlurmExecutor.allotted_cpus(os.environ))
        return worker.run_job(Job.read(self.job_path),
                              classify_failure=SlurmExecutor.classify_failure)


class PackedTrialJob(submitit.helpers.Checkpointable):
    """Several trials in one job, one process each, spread over the job's GPUs (K/G per GPU,
    each process seeing one) and splitting its CPUs. A requeue reruns them all: finished trials
    return at once, the others resume from the stage cache and their epoch checkpoints."""

    def __init__(self, job_paths: list[str]):
        self.job_paths = job_paths

    def environments(self, environ: dict[str, str] | None = None) -> list[dict[str, str]]:
        """Each process's environment: its GPU of the allocation and its share of the CPUs."""
        base = dict(os.environ if environ is None else environ)
        cpus = SlurmExecutor.allotted_cpus(base) or 0
        threads = str(max(1, cpus // len(self.job_paths)))
        devices = placement.spread(len(self.job_paths), placement.visible_devices("auto", base))
        return [placement.child_env(d, base) | {placement.THREADS_ENV: threads} for d in devices]

    def __call__(self) -> list[str]:
        procs = []
        for path, env in zip(self.job_paths, self.environments(), strict=True):
            with open(Path(path).with_suffix(".log"), "ab") as log:
                # argv list, no shell: user values never reach a shell string
                procs.append(subprocess.Popen([sys.executable, "-m", local.WORKER_MODULE, path],
                                              stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, env=env))
        codes = [p.wait() for p in procs]
        return [f"{Path(path).stem}: exit {c}" for path, c in zip(self.job_paths, codes)]


class StageJob(submitit.helpers.Checkpointable):
    """Builds shared stages (the base, or experts) into the cache; trials depend on it. Several
    stages (the experts, independent of each other) build side by side, one process and one GPU
    of the allocation each: on a 4-GPU node the four experts train at once."""

    def __init__(self, build: Callable[[str, int], Any], stages: list[tuple[str, int]]):
        self.build, self.stages = build, stages

    def __call__(self) -> list[Any]:
        from study import worker  # in the job's process, as TrialJob's

        if len(self.stages) == 1:
            worker.use_allotted_cpus(SlurmExecutor.allotted_cpus(os.environ))
            return [self.build(*self.stages[0])]
        devices = placement.spread(len(self.stages), placement.visible_devices("auto"))
        cpus = SlurmExecutor.allotted_cpus(os.environ) or 0
        threads = max(1, cpus // len(self.stages))
        # spawn, not fork: each child sets its device before torch first touches CUDA
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(len(self.stages)) as pool:
            runs = [pool.apply_async(_build_on, (self.build, stage, seed, device, threads))
                    for (stage, seed), device in zip(self.stages, devices, strict=True)]
            return [r.get() for r in runs]


def _build_on(build: Callable[[str, int], Any], stage: str, seed: int, device: str | None,
              threads: int) -> Any:
    """One stage in a process of its own, on one device of the job's allocation."""
    if device is not None:
        os.environ[placement.ENV] = device
    os.environ[placement.THREADS_ENV] = str(threads)   # and what the build starts, its share too
    from study import worker  # in the stage's own process, as TrialJob's

    worker.use_allotted_cpus(threads)
    return build(stage, seed)


class DriverJob(submitit.helpers.Checkpointable):
    """The --detach launcher loop as a job: requeued on preemption, it resumes the study (the
    launcher keeps no state of its own)."""

    def __init__(self, call: Callable[[], Any]):
        self.call = call

    def __call__(self) -> Any:
        return self.call()


def sacct_states(job_ids: Iterable[str]) -> dict[str, str]:
    """One sacct call for every job; falls back to squeue where accounting is missing."""
    ids = sorted({str(j) for j in job_ids if j})
    if not ids:
        return {}
    try:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobIDRaw,State", "-j",
                              ",".join(ids)], capture_output=True, text=True, timeout=60)
        if out.returncode == 0:
            states = {}
            for line in out.stdout.splitlines():
                jid, _, state = line.partition("|")
                if jid:
                    states[jid.strip()] = state.split()[0] if state.split() else "UNKNOWN"
            return states
    except (OSError, subprocess.SubprocessError):
        pass
    out = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(ids)],
                         capture_output=True, text=True, timeout=60)
    return dict(line.split(None, 1) for line in out.stdout.splitlines() if " " in line)


class SlurmExecutor(Executor):
    name: ClassVar[str] = "slurm"

    def __init__(self, settings: SlurmSettings, folder: Path, study_name: str):
        self.settings, self.folder, self.study_name = settings, Path(folder), study_name
        self.states: dict[str, str] = {}
        self.submitted_at: dict[str, float] = {}
        self.dependency: list[str] = []     # shared-stage jobs the next trials wait for

    @classmethod
    def from_settings(cls, settings: ExecutorSection, study_dir: Path, study_name: str
                      ) -> SlurmExecutor:
        return cls(settings.slurm, study_dir / "jobs" / "slurm", study_name)

    def auto_executor(self, name: str, time_min: int, cpus: int | None = None,
                      dependency: list[str] | None = None) -> submitit.AutoExecutor:
        s = self.settings
        # a requeue per preemption or timeout, each resuming from checkpoints
        ex = submitit.AutoExecutor(folder=self.folder / "%j", cluster="slurm",
                                   slurm_max_num_timeout=s.max_requeues)
        extra: dict[str, Any] = dict(s.additional)
        params: dict[str, Any] = {
            "name": name, "timeout_min": time_min, "cpus_per_task": cpus or s.cpus_per_task,
            "slurm_signal_delay_s": s.signal_delay_s, "slurm_setup": list(s.setup),
        }
        if dependency:
            # afterany, not afterok: a failed stage job must not strand its trials, which
            # then build the stage themselves (the cache lock makes racers wait, not retrain).
            params["slurm_dependency"] = "afterany:" + ":".join(dependency)
            extra["kill-on-invalid-dep"] = "yes"
        if extra:
            params["slurm_additional_parameters"] = extra
        if s.account:
            params["slurm_account"] = s.account
        if s.qos:
            params["slurm_qos"] = s.qos
        if s.partition:
            params["slurm_partition"] = s.partition
        if s.gres:
            params["slurm_gres"] = s.gres
        if s.gpus_per_node is not None:
            params["gpus_per_node"] = s.gpus_per_node
        if s.mem_gb:
            params["mem_gb"] = s.mem_gb
        if s.constraint:
            params["slurm_constraint"] = s.constraint
        ex.update_parameters(**params)
        return ex

    def _live_dependencies(self) -> list[str]:
        if not self.dependency:
            return []
        states = sacct_states(self.dependency)
        self.dependency = [j for j in self.dependency if states.get(j, "PENDING") in ALIVE]
        return self.dependency

    def _track(self, job: submitit.Job[Any]) -> str:
        jid = str(job.job_id)
        self.submitted_at[jid] = time.time()
        self.states[jid] = "PENDING"
        return jid

    @property
    def trials_per_submission(self) -> int:
        return self.settings.trials_per_job

    def submit(self, trials: Sequence[JobFiles]) -> Handle:
        """One job: a TrialJob, or a PackedTrialJob for several trials (one process each,
        sharing the job's GPU). Every trial of the pack gets this same handle."""
        ex = self.auto_executor(f"study-{self.study_name}", self.settings.time_min,
                            dependency=self._live_dependencies())
        paths = [str(t.job) for t in trials]
        with submission_env():
            j = ex.submit(TrialJob(paths[0]) if len(paths) == 1 else PackedTrialJob(paths))
        jid = self._track(j)
        handle: Handle = {"kind": self.name, "job_id": jid, "submitted": time.time(),
                          "log": str(self.folder / jid / f"{jid}_0_log.out")}
        if len(paths) > 1:
            handle["packed"] = len(paths)
        return handle

    def build_shared_stages(self, plan: Sequence[tuple[str, int]],
                            build: Callable[[str, int], Any]) -> dict[str, Handle]:
        """base first, then the experts depending on it (one job each, or, where a job has
        several GPUs, the experts of a seed together, one GPU each); trials then depend on all
        of them."""
        time_min = self.settings.stage_time_min or self.settings.time_min
        ids: dict[str, str] = {}
        for group in stage_groups(plan, self.settings.gpus_per_node or 1):
            stage, seed = group[0]
            dep = [ids[f"base@{seed}"]] if stage != "base" and f"base@{seed}" in ids else None
            name = "+".join(s for s, _ in group)
            ex = self.auto_executor(f"study-{self.study_name}-{name}", time_min, dependency=dep)
            with submission_env():
                j = ex.submit(StageJob(build, group))
            jid = self._track(j)
            for s, sd in group:
                ids[f"{s}@{sd}"] = jid
        self.dependency = sorted(set(ids.values()))
        return {k: {"kind": self.name, "job_id": jid} for k, jid in ids.items()}

    def start_driver(self, driver: Driver) -> Handle:
        ex = self.auto_executor(f"study-{self.study_name}-driver", self.settings.driver_time_min,
                            cpus=1)
        # The driver only asks, submits and tells: no GPU, whatever the trials need.
        ex.update_parameters(slurm_gres=None, gpus_per_node=None, mem_gb=2)
        with submission_env():
            j = ex.submit(DriverJob(driver.call))
        return {"kind": self.name, "job_id": self._track(j)}

    def stop_driver(self, handle: Handle, wait_s: float) -> None:
        jid = handle.get("job_id")
        if not jid:
            return
        scancel([jid])
        deadline = time.time() + wait_s
        while time.time() < deadline and sacct_states([jid]).get(str(jid), "PENDING") in ALIVE:
            time.sleep(1)

    def drain_stopped_driver(self, stop_new_trials: Callable[[], int]) -> int:
        stopped = 0
        quiet_since = time.time()
        deadline = quiet_since + DRAIN_MAX_S
        while time.time() - quiet_since < DRAIN_QUIET_S and time.time() < deadline:
            time.sleep(1)
            late = stop_new_trials()
            if late:
                stopped, quiet_since = stopped + late, time.time()
        return stopped

    def cancel(self, handles: Sequence[Handle]) -> None:
        scancel([h["job_id"] for h in handles if h.get("kind") == self.name and h.get("job_id")])
        local.kill_local(handles)   # workers this machine runs (a single-node cluster)

    def refresh(self, handles: Iterable[dict[str, Any]]) -> None:
        ids = [h["job_id"] for h in handles if h.get("kind") == self.name and h.get("job_id")]
        self.states.update(sacct_states(ids))

    def alive(self, handle: dict[str, Any], trial: FrozenTrial) -> bool:
        jid = handle.get("job_id")
        if not jid:
            return False
        state = self.states.get(str(jid))
        if state is None:
            # sacct may not know a fresh submission for a moment
            return time.time() - float(handle.get("submitted", 0)) < UNKNOWN_GRACE_S
        return state in ALIVE

    def describe(self, handles: Sequence[Handle]) -> list[str]:
        """`slurm job 123 RUNNING` (one sacct call for every job), others as the base says."""
        ids = [str(h["job_id"]) for h in handles if h.get("kind") == self.name and h.get("job_id")]
        states = sacct_states(ids) if ids else {}
        lines = super().describe(handles)
        for i, h in enumerate(handles):
            state = states.get(str(h.get("job_id")), "") if h.get("kind") == self.name else ""
            packed = f", {h['packed']} trials packed" if h.get("packed") else ""
            lines[i] = f"{lines[i]} {state}".rstrip() + packed
        return lines

    def describe_placement(self, parallel: int) -> str:
        s = self.settings
        per_job = s.trials_per_job
        gpus = (f"{s.gpus_per_node} GPU(s)" if s.gpus_per_node else s.gres or "no GPU")
        return (f"up to {parallel} trial(s) in flight as SLURM jobs of {per_job} trial(s), "
                f"each job with {gpus}, {s.cpus_per_task} CPU(s), {s.time_min} min "
                f"(partition {s.partition or 'default'})")

    @classmethod
    def classify_failure(cls, error: BaseException, settings: ExecutorSection
                         ) -> tuple[str, str] | None:
        """submitit gave up requeueing a job: "timeout" after too many time limits (its
        epoch checkpoints let a retry finish, so the launcher retries it), "infrastructure"
        for a preemption it did not requeue."""
        if not isinstance(error, UncompletedJobError):
            return None
        if "timed-out" in str(error):
            s = settings.slurm
            return "timeout", (f"the job reached its time limit (executor.slurm.time_min="
                               f"{s.time_min}) more often than it may be requeued (executor."
                               f"slurm.max_requeues={s.max_requeues}); retried from its "
                               "checkpoints within executor.retries; raise "
                               "executor.slurm.time_min")
        return "infrastructure", f"the job was not requeued: {error}"

    @classmethod
    def allotted_cpus(cls, environ: Mapping[str, str]) -> int | None:
        n = environ.get(CPUS_ENV, "")
        return int(n) if n.isdigit() and int(n) > 0 else None


def stage_groups(plan: Sequence[tuple[str, int]], gpus_per_job: int
                 ) -> list[list[tuple[str, int]]]:
    """The stage jobs of a plan ((stage, seed) in build order): the base alone, then the
    experts of the same seed together, up to one per GPU of a job."""
    groups: list[list[tuple[str, int]]] = []
    for stage, seed in plan:
        last = groups[-1] if groups else []
        if (stage != "base" and last and last[0][0] != "base" and last[0][1] == seed
                and len(last) < gpus_per_job):
            last.append((stage, seed))
        else:
            groups.append([(stage, seed)])
    return groups


def scancel(job_ids: Iterable[str]) -> None:
    ids = [str(j) for j in job_ids if j]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=60)


def sbatch_script(settings: SlurmSettings, folder: Path, name: str = "study-example") -> str:
    """The sbatch file submitit would write for a trial job under these settings (for the
    golden-file test and for users who want to see it)."""
    ex = SlurmExecutor(settings, folder, name).auto_executor(name, settings.time_min)
    return adapter.sbatch_text(ex, "python -u -m submitit.core._submit '%j'")
