"""The launcher: keep `parallel` trials in flight, reconcile what the storage says with what is
really running, retry infrastructure failures, top the study up to n_trials.

Workers tell their own results (see objective.py), so the launcher holds no state that matters:
killing it loses nothing, and `study launch` again adopts the trials still running, recovers the
ones that finished while it was away, and retries the ones whose worker vanished.
A trial counts toward n_trials once it is COMPLETE, PRUNED or FAIL, except a FAIL that was retried.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from study import results, storage
from study.objective import Job, Loaded, run_job

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# A worker registers itself in its trial within seconds of starting (imports ~5 s here); one
# that has not after this long, and whose job is gone, never will.
REGISTER_GRACE_S = 180.0
DEFAULT_RETRIES = 2   # infrastructure failures (vanished, preempted, killed) per configuration


class Executor(Protocol):
    kind: str

    def submit(self, job_path: Path, job: Job, log_path: Path) -> dict[str, Any]: ...

    def alive(self, handle: dict[str, Any], trial: FrozenTrial) -> bool: ...

    def refresh(self, handles: list[dict[str, Any]]) -> None: ...

    def poll(self) -> None: ...


class DebugExecutor:
    """Runs each trial in this process, synchronously: for debugging and tests."""

    kind = "debug"

    def submit(self, job_path: Path, job: Job, log_path: Path) -> dict[str, Any]:
        run_job(job)
        return {"kind": self.kind}

    def alive(self, handle: dict[str, Any], trial: FrozenTrial) -> bool:
        return False   # a debug trial still RUNNING belongs to a launcher that died

    def refresh(self, handles: list[dict[str, Any]]) -> None:
        pass

    def poll(self) -> None:
        pass


def _pid_alive(pid: int, marker: str) -> bool:
    """Alive and really our worker (not a recycled pid), not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return marker.encode() in f.read()
    except (OSError, IndexError):
        return False


class LocalExecutor:
    """One subprocess per trial in its own session, so it outlives a killed launcher."""

    kind = "local"

    def __init__(self, threads: int | None = None):
        self.threads = threads
        self._children: list[subprocess.Popen[bytes]] = []

    def submit(self, job_path: Path, job: Job, log_path: Path) -> dict[str, Any]:
        env = dict(os.environ)
        if self.threads:
            env["STUDY_THREADS"] = str(self.threads)
        with open(log_path, "ab") as log:
            # argv list, no shell: user values never reach a shell string.
            p = subprocess.Popen([sys.executable, "-m", "study.objective", str(job_path)],
                                 stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=env, start_new_session=True)
        self._children.append(p)
        return {"kind": self.kind, "pid": p.pid, "host": platform.node(),
                "marker": str(job_path), "submitted": time.time()}

    def alive(self, handle: dict[str, Any], trial: FrozenTrial) -> bool:
        self.poll()
        worker = trial.user_attrs.get("worker") or {}
        if worker.get("host", handle.get("host")) != platform.node():
            return True   # another machine's process: cannot look, assume alive
        pid = worker.get("pid") or handle.get("pid")
        return bool(pid) and _pid_alive(int(pid), handle.get("marker", "study.objective"))

    def refresh(self, handles: list[dict[str, Any]]) -> None:
        self.poll()

    def running(self, marker: str) -> bool:
        """Whether a process on this machine runs job file `marker` (Linux: /proc)."""
        return any(_pid_alive(int(p.name), marker) for p in Path("/proc").iterdir()
                   if p.name.isdigit())

    def poll(self) -> None:
        self._children = [p for p in self._children if p.poll() is None]   # reap zombies


def make_executor(backend: str, ld: Loaded, sdir: Path) -> Executor:
    if backend == "debug":
        return DebugExecutor()
    if backend == "local":
        n_threads = max(1, (os.cpu_count() or 1) // max(ld.sf.executor.parallel, 1))
        return LocalExecutor(threads=n_threads)
    from study.slurm import SlurmExecutor

    return SlurmExecutor(ld.sf.executor.slurm, sdir / "jobs" / "slurm", ld.sf.study.name)


def shared_stage_plan(ld: Loaded, cache_dir: str) -> list[tuple[str, int]]:
    """The base and experts every trial will need, not yet cached: (stage, seed) in build order.
    Empty when the space varies what they read (then each trial builds its own)."""
    from study.cache import StageCache
    from study.config import DEGRADATION_NAMES
    from study.pipeline import Pipeline
    from study.slurm import SHARED_STAGE_INPUTS

    if any(".".join(p.path).startswith(SHARED_STAGE_INPUTS) for p in ld.space.params):
        return []
    degs = set(ld.sf.pipeline.degradations)
    for p in ld.space.params:
        if p.path == ("pipeline", "degradations") and p.kind == "subset":
            degs |= set(p.spec["of"])
    cache = StageCache(cache_dir)
    plan = []
    for r in range(ld.sf.study.replicates):
        seed = ld.sf.pipeline.seed + r
        pipe = Pipeline(ld.sf.pipeline.model_copy(update={"seed": seed}), cache)
        for stage in ["base"] + [f"expert_{d}" for d in DEGRADATION_NAMES if d in degs]:
            if not pipe.cached(stage):
                plan.append((stage, seed))
    return plan


@dataclass
class Counts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    retried: int = 0
    best: float | None = None
    best_trial: int | None = None
    by_state: dict[str, int] = field(default_factory=dict)

    @property
    def done(self) -> int:
        return self.complete + self.pruned + self.failed

    def line(self, n_trials: int) -> str:
        best = (f", best {self.best:.4f} (trial {self.best_trial})" if self.best is not None
                else "")
        retried = f", {self.retried} retried" if self.retried else ""
        target = max(n_trials, self.done)   # a study topped up past its file's n_trials
        return (f"[{time.strftime('%H:%M:%S')}] {self.done}/{target} done (complete "
                f"{self.complete}, pruned {self.pruned}, failed {self.failed}{retried}), "
                f"running {self.running}{best}")


def count(study: optuna.Study, trials: list[FrozenTrial]) -> Counts:
    c = Counts()
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("retried"):
            c.retried += 1
        elif t.state == TrialState.COMPLETE:
            c.complete += 1
        elif t.state == TrialState.PRUNED:
            c.pruned += 1
        elif t.state == TrialState.FAIL:
            c.failed += 1
        elif t.state == TrialState.RUNNING:   # WAITING = an enqueued retry, not yet asked
            c.running += 1
    if len(study.directions) == 1 and c.complete:
        best = study.best_trial
        c.best, c.best_trial = best.value, best.number
    return c


class Launcher:
    def __init__(self, ld: Loaded, study: optuna.Study, executor: Executor, *, results_dir: str,
                 cache_dir: str, storage_url: str, study_file: str, overrides: list[str],
                 parallel: int, retries: int = DEFAULT_RETRIES, poll_s: float = 1.0,
                 log: Callable[[str], None] = print):
        self.ld, self.study, self.executor = ld, study, executor
        self.results_dir, self.cache_dir, self.storage_url = results_dir, cache_dir, storage_url
        self.study_file, self.overrides = study_file, overrides
        self.parallel, self.retries, self.poll_s, self.log = parallel, retries, poll_s, log
        self.sdir = storage.study_dir(results_dir, ld.sf.study.name)

    # ------------------------------------------------------------ reconciliation
    def _vanished(self, t: FrozenTrial) -> bool:
        handle = t.user_attrs.get("job")
        if handle is None and "worker" not in t.user_attrs:
            # asked but never submitted (launcher killed in between) or not registered yet
            if self.executor.kind == "debug":
                return True
            if isinstance(self.executor, LocalExecutor) and Path("/proc").is_dir():
                # This launcher records a handle before it reconciles again, so the trial is
                # a killed launcher's: without this look it would hold a slot for 180 s.
                return not self.executor.running(str(self.job_path(t.number)))
            start = t.datetime_start.timestamp() if t.datetime_start else 0.0
            return time.time() - start > REGISTER_GRACE_S
        return not self.executor.alive(handle or {}, t)

    def reconcile(self) -> None:
        """Trials the storage calls RUNNING whose worker is gone: recover or retry them."""
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        self.executor.refresh([t.user_attrs.get("job") or {} for t in running])
        for t in running:
            if not self._vanished(t):
                continue
            if results.has_trial(self.sdir, t.number):
                self._recover(t)
            else:
                self._infrastructure_failure(t, "the worker vanished without a result "
                                             "(killed, preempted, node failure or timeout)")

    def _recover(self, t: FrozenTrial) -> None:
        """The worker wrote its Parquet file but died before telling: tell from the file."""
        df = results.read_trial(self.sdir, t.number)
        state = str(df.state.iloc[0])
        if state == "FAIL" and t.user_attrs.get("retried"):
            self._enqueue_retry(t)   # its launcher was killed inside fail(), maybe before this
        if state == "COMPLETE":
            # values only here: a FAIL or PRUNED file holds NA, which float() refuses
            values = [float(df[c].iloc[0]) for c in sorted(df.columns) if c.startswith("value_")]
            self.study.tell(t.number, values)
        else:
            self.study.tell(t.number, state=TrialState[state])
        self.log(f"  trial {t.number}: recovered {state} from its Parquet file")

    def _infrastructure_failure(self, t: FrozenTrial, reason: str) -> None:
        attempt = int(t.user_attrs.get("attempt", 1))
        self.fail(t, reason, "infrastructure", retry=attempt <= self.retries)

    def fail(self, t: FrozenTrial, reason: str, fail_kind: str, retry: bool) -> None:
        """FAIL a RUNNING trial with a reason, in storage and Parquet; optionally enqueue a
        retry with the same parameters."""
        attempt = int(t.user_attrs.get("attempt", 1))
        self.study._storage.set_trial_user_attr(t._trial_id, "error", reason)
        self.study._storage.set_trial_user_attr(t._trial_id, "fail_kind", fail_kind)
        if retry:
            self.study._storage.set_trial_user_attr(t._trial_id, "retried", True)
        n_obj = len(self.study.directions)
        results.write_trial(self.sdir, t.number, results.trial_frame(
            study_name=self.ld.sf.study.name, trial=t.number, attempt=attempt, state="FAIL",
            seed_rows=[], params=t.user_attrs.get("values", {}),
            param_kinds={p.name: p.kind for p in self.ld.space.params}, stages={},
            values=[None] * n_obj, extra={"error": reason, "fail_kind": fail_kind,
                                          **results.provenance()}))
        # Retry before tell: a launcher killed in between leaves the trial RUNNING with its
        # FAIL file, which the next one recovers; the other order would lose the retry.
        if retry:
            self._enqueue_retry(t)
        self.study.tell(t.number, state=TrialState.FAIL)
        self.log(f"  trial {t.number}: {reason}; "
                 + (f"retrying (attempt {attempt + 1})" if retry else "not retried"))

    def _enqueue_retry(self, t: FrozenTrial) -> None:
        """The same parameters as a new trial, once per failed trial."""
        if any(x.user_attrs.get("retry_of") == t.number
               for x in self.study.get_trials(deepcopy=False)):
            return
        self.study.enqueue_trial(t.params, user_attrs={
            "attempt": int(t.user_attrs.get("attempt", 1)) + 1, "retry_of": t.number})

    # ------------------------------------------------------------ submission
    def job_path(self, number: int) -> Path:
        return self.sdir / "jobs" / f"trial-{number:06d}.json"

    def start_trial(self) -> int:
        return self.start_trials(1)[0]

    def start_trials(self, k: int) -> list[int]:
        """Ask k trials and submit them: a job each, or one job for all k where the executor
        packs trials (SLURM `trials_per_job` > 1: processes sharing the job's GPU)."""
        asked = [self._ask() for _ in range(k)]
        pack = getattr(self.executor, "submit_packed", None)
        if k > 1 and pack is not None:
            handle = pack([path for _, _, path in asked])
            for trial, _, _ in asked:
                trial.set_user_attr("job", handle)
            return [trial.number for trial, _, _ in asked]
        for trial, job, job_path in asked:
            if self.executor.kind == "debug":
                trial.set_user_attr("job", {"kind": "debug"})
            handle = self.executor.submit(job_path, job, job_path.with_suffix(".log"))
            if self.executor.kind != "debug":
                trial.set_user_attr("job", handle)
        return [trial.number for trial, _, _ in asked]

    def _ask(self) -> tuple[optuna.Trial, Job, Path]:
        trial = self.study.ask()
        # A retry was enqueued with its raw params fixed, so sampling reproduces its values.
        values = self.ld.space.sample(trial)
        trial.set_user_attr("values", values)
        attempt = trial.user_attrs.get("attempt")
        if attempt is None:
            trial.set_user_attr("attempt", 1)
        job = Job(study_file=self.study_file, overrides=list(self.overrides),
                  results=self.results_dir, cache=self.cache_dir, storage=self.storage_url,
                  study_name=self.ld.sf.study.name, trial=trial.number, tree=self.ld.tree)
        self.log(f"  trial {trial.number}: starting ({self.executor.kind}) {values}")
        return trial, job, job.write(self.job_path(trial.number))

    def prebuild_shared_stages(self) -> None:
        """SLURM: base, then the experts in parallel, as their own jobs; the trials submitted
        next depend on them, so no GPU waits on a cache entry."""
        from study.slurm import SlurmExecutor

        if not isinstance(self.executor, SlurmExecutor):
            return
        plan = shared_stage_plan(self.ld, self.cache_dir)
        if plan:
            ids = self.executor.submit_stages(plan, self.study_file, self.overrides,
                                              self.cache_dir)
            self.study.set_user_attr("stage_jobs", ids)
            self.log("  shared stages as jobs: " + ", ".join(f"{k} {v}" for k, v in ids.items()))

    def run(self, n_trials: int) -> Counts:
        """Top the study up to n_trials. A full disk stops the launcher with one paragraph that
        names the file (exit 2), never a traceback or a loop that waits forever; the workers in
        flight go on, and `study launch` again picks everything up."""
        try:
            return self._run(n_trials)
        except OSError as e:
            raise storage.disk_full(e, self.sdir) from None

    def _run(self, n_trials: int) -> Counts:
        last = ""
        c = count(self.study, self.study.get_trials(deepcopy=False))
        if c.done < n_trials:
            self.prebuild_shared_stages()
        while True:
            if self.study.user_attrs.get("cancelled"):
                self.log("study cancelled (`study cancel`); the launcher stops")
                break
            self.reconcile()
            trials = self.study.get_trials(deepcopy=False)
            c = count(self.study, trials)
            if c.done >= n_trials and c.running == 0:
                break
            free = self.parallel - c.running
            remaining = n_trials - c.done - c.running
            # whole packs only (a packed job holds its GPU until its last trial ends), and
            # what is left at the end of the study as one smaller pack
            pack = getattr(self.executor, "trials_per_job", 1)
            while 0 < min(pack, remaining) <= free:
                k = min(pack, remaining)
                self.start_trials(k)
                free, remaining = free - k, remaining - k
            line = count(self.study, self.study.get_trials(deepcopy=False)).line(n_trials)
            if line.split("] ", 1)[1] != last:
                self.log(line)
                last = line.split("] ", 1)[1]
            if self.executor.kind != "debug":
                time.sleep(self.poll_s)
            self.executor.poll()
        final = count(self.study, self.study.get_trials(deepcopy=False))
        if final.line(n_trials).split("] ", 1)[1] != last:
            self.log(final.line(n_trials))
        return final
