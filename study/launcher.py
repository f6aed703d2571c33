"""The launcher: keep `parallel` trials in flight, reconcile what the storage says with what is
really running, retry infrastructure failures, top the study up to n_trials; and cancel.

Workers tell their own results (study/worker.py), so the launcher holds no state that matters:
killing it loses nothing, and `study launch` again adopts the trials still running, recovers the
ones that finished while it was away, and retries the ones whose worker vanished.
A trial counts toward n_trials once it is COMPLETE, PRUNED or FAIL, except a FAIL that was retried.

`launch(request)` is the whole of `study launch` after argument parsing: the CLI calls it, and
so does the --detach driver (`python -m study.launcher REQUEST.json`, or a SLURM job), without
going back through the CLI.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import submitit
from optuna.trial import FrozenTrial, TrialState

from study import atomic, results, stages, storage, studyfile, worker
from study.cache import StageCache
from study.errors import StudyError, StudyHalted
from study.executors import Executor, Handle, JobFiles, make_executor
from study.pipeline import Pipeline
from study.studyfile import LoadedStudy
from study.worker import Job

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# A worker registers itself in its trial within seconds of starting (imports ~5 s here); one
# that has not after this long, and whose job is gone, never will.
REGISTER_GRACE_S = 180.0
DEFAULT_RETRIES = 2   # infrastructure failures (vanished, preempted, killed) per configuration
RETRYABLE = worker.RETRYABLE
# `study cancel`: how long no new trial may appear before the study counts as stopped (a
# SLURM KillWait is 30 s by default, 5 s on the test cluster), and the most it waits for that
CANCEL_QUIET_S = 6.0
CANCEL_SETTLE_S = 60.0
# Failures the circuit breaker counts: the study's own fault, not the cluster's.
BREAKER_KINDS = {"code", "config"}
Log = Callable[[str], None]


@dataclass(frozen=True)
class LaunchRequest:
    """What `study launch` was asked: enough for a driver elsewhere to do the same."""

    study_file: str
    overrides: list[str]
    results_dir: str
    cache_dir: str
    n_trials: int | None = None     # None: the study file's study.n_trials

    def write(self, path: Path) -> Path:
        atomic.write_text(path, json.dumps(asdict(self), indent=1), mode=0o600)
        return path

    @classmethod
    def read(cls, path: str | Path) -> LaunchRequest:
        return cls(**json.loads(Path(path).read_text()))


def shared_stage_plan(ld: LoadedStudy, cache_dir: str) -> list[tuple[str, int]]:
    """The shared stages (base, experts) every trial will need, not yet cached: (stage, seed) in
    build order. Empty when the space varies a field one of them reads (then each trial builds
    its own)."""
    reads = [f"pipeline.{r}" for name in stages.SHARED for r in stages.STAGES[name].reads]
    for p in ld.space.params:
        path = ".".join(p.path)
        if any(path == r or path.startswith(r + ".") or r.startswith(path + ".")
               for r in reads):
            return []
    degradations = set(ld.sf.pipeline.degradations)
    for p in ld.space.params:   # a searched subset of degradations needs every expert it names
        if p.path == ("pipeline", "degradations"):
            degradations |= set(p.spec.get("of", []))
    cache = StageCache(cache_dir)
    plan = []
    for r in range(ld.sf.study.replicates):
        seed = ld.sf.pipeline.seed + r
        pipe = Pipeline(ld.sf.pipeline.model_copy(update={"seed": seed}), cache)
        for name in stages.instance_names(sorted(degradations), stages=stages.SHARED):
            if not pipe.cached(name):
                plan.append((name, seed))
    return plan


def build_shared_stage(study_file: str, tree: dict[str, Any], cache_dir: str, name: str,
                       seed: int) -> str:
    """Build one shared stage of a study into the cache (a SLURM stage job runs this)."""
    ld = studyfile.from_tree(tree, study_file, check_space=False)   # checked at launch
    pipe = Pipeline(ld.sf.pipeline.model_copy(update={"seed": seed}), StageCache(cache_dir))
    pipe.network(name)
    return pipe.key(name)


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
    def __init__(self, opened: Opened, executor: Executor, *, cache_dir: str, parallel: int,
                 retries: int = DEFAULT_RETRIES, poll_s: float = 1.0, log: Log = print):
        self.ld, self.study, self.store = opened.ld, opened.study, opened.store
        self.storage_url, self.sdir = opened.url, opened.study_dir
        self.executor, self.cache_dir = executor, cache_dir
        self.parallel, self.retries, self.poll_s, self.log = parallel, retries, poll_s, log
        self.stop_after_failures = self.ld.sf.study.stop_after_failures
        self.started = time.time()   # the breaker counts the failures of this launch only

    # ------------------------------------------------------------ reconciliation
    def _vanished(self, t: FrozenTrial) -> bool:
        handle = t.user_attrs.get("job")
        if handle is None and "worker" not in t.user_attrs:
            # asked but never submitted (launcher killed in between) or not registered yet.
            # This launcher records a handle before it reconciles again, so the trial is a
            # killed launcher's: where the executor can look, that saves a 180 s wait.
            started = self.executor.started(self.job_path(t.number))
            if started is not None:
                return not started
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
        self._retry_reported_failures()

    def _retry_reported_failures(self) -> None:
        """A worker that failed for the cluster's reasons (its job ran out of requeues after
        time limits) marked its trial `retried` before telling FAIL (a finished trial's
        attributes are frozen); the retry itself is enqueued here, once."""
        trials = self.study.get_trials(deepcopy=False)
        done = {x.user_attrs.get("retry_of") for x in trials}   # one read, not one per trial
        for t in trials:
            if (t.state == TrialState.FAIL and t.number not in done
                    and t.user_attrs.get("retried")
                    and t.user_attrs.get("fail_kind") in RETRYABLE):
                self._enqueue_retry(t)

    def _recover(self, t: FrozenTrial) -> None:
        """The worker wrote its Parquet file but died before telling: tell from the file."""
        df = results.read_trial(self.sdir, t.number)
        state = str(df.state.iloc[0])
        if state == "FAIL" and t.user_attrs.get("retried"):
            self._enqueue_retry(t)   # its launcher was killed inside fail(), maybe before this
        # skip_if_finished: the worker may tell between our read of RUNNING and this tell (it
        # writes the file first, then tells, then exits); the storage then already agrees.
        if state == "COMPLETE":
            # values only here: a FAIL or PRUNED file holds NA, which float() refuses
            values = [float(df[c].iloc[0]) for c in sorted(df.columns) if c.startswith("value_")]
            self.study.tell(t.number, values, skip_if_finished=True)
        else:
            self.study.tell(t.number, state=TrialState[state], skip_if_finished=True)
        self.log(f"  trial {t.number}: recovered {state} from its Parquet file")

    def _infrastructure_failure(self, t: FrozenTrial, reason: str) -> None:
        attempt = int(t.user_attrs.get("attempt", 1))
        self.fail(t, reason, "infrastructure", retry=attempt <= self.retries)

    def fail(self, t: FrozenTrial, reason: str, fail_kind: str, retry: bool) -> None:
        """FAIL a RUNNING trial with a reason, in storage and Parquet; optionally enqueue a
        retry with the same parameters. A worker that wrote its file first wins (a cancelled
        SLURM job runs on for KillWait seconds): its result is recovered instead."""
        attempt = int(t.user_attrs.get("attempt", 1))
        trial_id = storage.trial_id(self.store, self.study.study_name, t.number)
        if results.has_trial(self.sdir, t.number):
            self._recover(t)
            return
        self.store.set_trial_user_attr(trial_id, "error", reason)
        self.store.set_trial_user_attr(trial_id, "fail_kind", fail_kind)
        self.store.set_trial_user_attr(trial_id, "fail_reason", reason)
        if retry:
            self.store.set_trial_user_attr(trial_id, "retried", True)
        n_obj = len(self.study.directions)
        written = results.write_trial(self.sdir, t.number, results.trial_frame(
            study_name=self.ld.sf.study.name, trial=t.number, attempt=attempt, state="FAIL",
            seed_rows=[], params=t.user_attrs.get("values", {}),
            param_dtypes={p.name: p.column_dtype for p in self.ld.space.params}, stages={},
            values=[None] * n_obj, extra={"error": reason, "fail_kind": fail_kind,
                                          "fail_reason": reason, **results.provenance()}),
            replace=False)
        if written is None:   # the worker's file landed between the check and the write
            for key in ("error", "fail_kind", "fail_reason", "retried"):
                self.store.set_trial_user_attr(trial_id, key, None)
            self._recover(self.store.get_trial(trial_id))
            return
        # Retry before tell: a launcher killed in between leaves the trial RUNNING with its
        # FAIL file, which the next one recovers; the other order would lose the retry.
        if retry:
            self._enqueue_retry(t)
        self.study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        self.log(f"  trial {t.number}: {reason}; "
                 + (f"retrying (attempt {attempt + 1})" if retry else "not retried"))

    def _enqueue_retry(self, t: FrozenTrial) -> None:
        """The same parameters as a new trial, once per failed trial."""
        if any(x.user_attrs.get("retry_of") == t.number
               for x in self.study.get_trials(deepcopy=False)):
            return
        keep = {k: t.user_attrs[k] for k in ("baseline", "baseline_values") if k in t.user_attrs}
        self.study.enqueue_trial(t.params, user_attrs={
            "attempt": int(t.user_attrs.get("attempt", 1)) + 1, "retry_of": t.number, **keep})

    # ------------------------------------------------------------ submission
    def job_path(self, number: int) -> Path:
        return self.sdir / "jobs" / f"trial-{number:06d}.json"

    def start_trial(self) -> int:
        return self.start_trials(1)[0]

    def start_trials(self, k: int) -> list[int]:
        """Ask k trials and submit them as one unit (k > 1 where the executor packs trials)."""
        asked = [self._ask() for _ in range(k)]
        if self.executor.inline:   # finished when submit returns: no attribute can follow
            for trial, _ in asked:
                trial.set_user_attr("job", {"kind": self.executor.name})
        handle = self.executor.submit([files for _, files in asked])
        if not self.executor.inline:
            for trial, _ in asked:
                trial.set_user_attr("job", handle)
        return [trial.number for trial, _ in asked]

    def _ask(self) -> tuple[optuna.Trial, JobFiles]:
        trial = self.study.ask()
        # A retry was enqueued with its raw params fixed, so sampling reproduces its values.
        values = self.ld.space.sample(trial)
        if trial.user_attrs.get("baseline"):   # exactly the file's values, not a round trip
            values = trial.user_attrs["baseline_values"]
        trial.set_user_attr("values", values)
        attempt = trial.user_attrs.get("attempt")
        if attempt is None:
            trial.set_user_attr("attempt", 1)
        job = Job(study_file=self.ld.source, overrides=[], results=str(self.sdir.parent),
                  cache=self.cache_dir, storage=self.storage_url,
                  study_name=self.ld.sf.study.name, trial=trial.number, tree=self.ld.tree)
        self.log(f"  trial {trial.number}: starting ({self.executor.name}) {values}")
        path = job.write(self.job_path(trial.number))
        return trial, JobFiles(path, path.with_suffix(".log"))

    def prebuild_shared_stages(self) -> None:
        """Where the executor does it (SLURM): base, then the experts in parallel, as their own
        jobs; the trials submitted next depend on them, so no GPU waits on a cache entry."""
        plan = shared_stage_plan(self.ld, self.cache_dir)
        if not plan:
            return
        # submitit pickles this call into the job folder: the tree without the storage URL
        # (a stage job never opens the study; the URL may hold a password)
        tree = {**self.ld.tree, "study": {**self.ld.tree["study"], "storage": None}}
        build = functools.partial(build_shared_stage, self.ld.source, tree, self.cache_dir)
        ids = self.executor.build_shared_stages(plan, build)
        if ids:
            self.study.set_user_attr("stage_jobs", ids)
            self.log("  shared stages as jobs: " + ", ".join(f"{k} {v}" for k, v in ids.items()))

    def run(self, n_trials: int) -> Counts:
        """Top the study up to n_trials. A full disk stops the launcher with one paragraph that
        names the file (exit 2), never a traceback or a loop that waits forever; the workers in
        flight go on, and `study launch` again picks everything up."""
        try:
            return self._run(n_trials)
        except OSError as e:
            raise atomic.disk_full(e, self.sdir) from None

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
            tripped = self.breaker(trials)
            if tripped:
                self.halt(tripped)
            c = count(self.study, trials)
            if c.done >= n_trials and c.running == 0:
                break
            free = self.parallel - c.running
            remaining = n_trials - c.done - c.running
            # whole packs only (a packed job holds its GPU until its last trial ends), and
            # what is left at the end of the study as one smaller pack; never more than
            # `parallel` (validation refuses that too), or no pack would ever fit
            pack = min(self.executor.trials_per_submission, self.parallel)
            while 0 < min(pack, remaining) <= free:
                if self.study.user_attrs.get("cancelled"):   # `study cancel` meanwhile
                    break
                k = min(pack, remaining)
                if self.executor.inline:   # its trials finished inside start_trials
                    tripped = self.breaker(self.study.get_trials(deepcopy=False))
                    if tripped:
                        self.halt(tripped)
                self.start_trials(k)
                free, remaining = free - k, remaining - k
            line = count(self.study, self.study.get_trials(deepcopy=False)).line(n_trials)
            if line.split("] ", 1)[1] != last:
                self.log(line)
                last = line.split("] ", 1)[1]
            if not self.executor.inline:
                time.sleep(self.poll_s)
            self.executor.poll()
        final = count(self.study, self.study.get_trials(deepcopy=False))
        if final.line(n_trials).split("] ", 1)[1] != last:
            self.log(final.line(n_trials))
        if final.done and not final.complete and not self.study.user_attrs.get("cancelled"):
            raise StudyHalted(
                f"{self.ld.source}: study '{self.ld.sf.study.name}' finished {final.done} "
                f"trials and none completed ({final.failed} failed, {final.pruned} pruned): "
                "there is nothing to publish. " + self.failure_summary())
        return final

    # ------------------------------------------------------------ the circuit breaker
    def breaker(self, trials: list[FrozenTrial]) -> str | None:
        """Why the study must stop, or None: its first K finished trials of this launch, or
        any K in a row (by completion time), failed with code or configuration errors."""
        k = self.stop_after_failures
        if k <= 0:
            return None
        ended = {t.number: t.datetime_complete.timestamp() for t in trials
                 if t.state.is_finished() and t.datetime_complete is not None}
        # this launch's trials (1 s of slack: storage timestamps and time.time() may differ)
        done = sorted((t for t in trials if ended.get(t.number, 0.0) >= self.started - 1),
                      key=lambda t: ended[t.number])
        run: list[FrozenTrial] = []
        for t in done:
            bad = (t.state == TrialState.FAIL
                   and t.user_attrs.get("fail_kind") in BREAKER_KINDS)
            run = [*run, t] if bad else []
            if len(run) >= k:
                nums = [x.number for x in run]
                first = "its first" if len(done) == len(run) else "a run of"
                return (f"{first} {len(run)} finished trials ({nums}) failed with code or "
                        f"configuration errors (study.stop_after_failures={k})")
        return None

    def failure_summary(self, limit: int = 3) -> str:
        """The last failures' one-line reasons, and where their logs are."""
        failed = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                  if t.user_attrs.get("fail_kind") != "cancelled"][-limit:]
        lines = [failure_line(t) for t in failed]
        where = self.sdir / "jobs"
        return ("Last failures: " + "; ".join(lines) + f". Full tracebacks: {where}/"
                "trial-N.log and the `error` column of the Parquet files.") if lines else ""

    def halt(self, why: str) -> None:
        """Stop the study: nothing new is submitted, the trials in flight are cancelled (not
        retried: they would most likely fail the same way), exit 3 with the reason."""
        self.study.set_user_attr("halted", {"reason": why, "at": time.time()})
        stopped = stop_in_flight(self, "stopped by the circuit breaker")
        raise StudyHalted(
            f"{self.ld.source}: study '{self.ld.sf.study.name}' stopped: {why}. "
            + (f"{stopped} trials in flight were cancelled. " if stopped else "")
            + self.failure_summary() + " Fix the cause and run `study launch` again: it "
            "resumes the study (finished trials are kept); study.stop_after_failures: 0 turns "
            "the breaker off.")


def failure_lines(trials: list[FrozenTrial], limit: int = 5) -> list[str]:
    """`study status`: the failures by cause, and the last ones' one-line reasons."""
    failed = [t for t in trials if t.state == TrialState.FAIL]
    if not failed:
        return []
    kinds: dict[str, int] = {}
    for t in failed:
        kind = t.user_attrs.get("fail_kind", "unknown")
        kinds[kind] = kinds.get(kind, 0) + 1
    out = ["failures: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))]
    return out + ["  " + failure_line(t) for t in failed[-limit:]]


def failure_line(t: FrozenTrial) -> str:
    """`trial 7 [code] (retried): ZeroDivisionError: ... (at fusion.py:120 in fuse)`"""
    retried = " (retried)" if t.user_attrs.get("retried") else ""
    return (f"trial {t.number} [{t.user_attrs.get('fail_kind', 'unknown')}]{retried}: "
            f"{t.user_attrs.get('fail_reason') or '(no reason recorded)'}")


# ---------------------------------------------------------------- the commands
@contextlib.contextmanager
def _launcher_lock(sdir: Path) -> Iterator[bool]:
    """One launcher per study: two would both top the study up and overshoot n_trials."""
    sdir.mkdir(parents=True, exist_ok=True)
    with open(sdir / "launcher.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def about(source: str) -> Iterator[None]:
    """Storage errors name the study file too: the URL may come from it or from --set."""
    try:
        yield
    except StudyError as e:
        raise type(e)(f"{source}: {e}") from None


@dataclass
class Opened:
    """A study file's study, opened in its storage."""

    ld: LoadedStudy
    study: optuna.Study
    store: optuna.storages.BaseStorage
    url: str
    study_dir: Path


def _paths(ld: LoadedStudy, results_dir: str) -> tuple[str, Path]:
    return (storage.storage_url(ld.sf, results_dir),
            storage.study_dir(results_dir, ld.sf.study.name))


def open_study(ld: LoadedStudy, results_dir: str) -> Opened:
    """An already launched study; a study never launched is a user error."""
    url, sdir = _paths(ld, results_dir)
    with about(ld.source):
        st, store = storage.open_existing(ld.sf, results_dir)
    return Opened(ld, st, store, url, sdir)


def _create(ld: LoadedStudy, results_dir: str, n_trials: int) -> Opened:
    """Create or resume the study; every check first, so a refused launch writes nothing."""
    sf = ld.sf
    url, sdir = _paths(ld, results_dir)
    with about(ld.source):
        sampler = storage.make_sampler(sf, ld.space.grid(), sf.executor.parallel)
        store = storage.open_storage(url)
        st = storage.load_or_create(sf, store, sampler, storage.make_pruner(sf),
                                    fp=storage.fingerprint(ld.tree, ld.space.fingerprint()))
    with warnings.catch_warnings():   # set_metric_names is marked experimental in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        st.set_metric_names(results.metric_names(sf))   # the dashboard: "fusiondistill val.avg"
    if st.trials:
        st.sampler = storage.make_sampler(sf, ld.space.grid(), sf.executor.parallel,
                                          resumed_at=len(st.trials))
    elif sf.study.baseline:
        _enqueue_baseline(ld, st)
    sdir.mkdir(parents=True, exist_ok=True)
    st.set_user_attr("n_trials", n_trials)   # the target `study status` reports against
    st.set_user_attr("cancelled", False)
    st.set_user_attr("halted", None)   # a new launch after a fix: the breaker starts afresh
    return Opened(ld, st, store, url, sdir)


def _enqueue_baseline(ld: LoadedStudy, st: optuna.Study) -> None:
    """Trial 0 of a new study: the study file's own pipeline, exactly (its canonical values are
    kept with the trial; the raw suggestions only tell the sampler what ran). Where those
    values lie outside the space, the reason is kept for `study report`."""
    values, why = ld.space.baseline(ld.sf.model_dump())
    if values is None:
        st.set_user_attr("baseline_skipped", why)
        return
    st.enqueue_trial(ld.space.raw_params(values),
                     user_attrs={"baseline": True, "baseline_values": values})


class Driver(submitit.helpers.Checkpointable):
    """The launcher loop as a unit of work (`study launch --detach`): a SLURM job calls it, a
    local process runs `argv`. Resumable, so it may be killed and requeued."""

    def __init__(self, request_path: str):
        self.request_path = request_path

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "study.launcher", self.request_path]

    def __call__(self) -> int:
        launch(LaunchRequest.read(self.request_path), log=lambda m: print(m, flush=True))
        return 0


def preflight(ld: LoadedStudy, results_dir: str) -> tuple[str, Path]:
    """The checks of a launch that need no connection (storage URL, sampler): a refusal writes
    nothing. `launch --dry-run` runs exactly these. Returns the storage URL and study folder."""
    url, sdir = _paths(ld, results_dir)
    with about(ld.source):
        storage.check(url)
        storage.make_sampler(ld.sf, ld.space.grid(), ld.sf.executor.parallel)
    return url, sdir


def launch(request: LaunchRequest, *, detach: bool = False, log: Log = print) -> Counts | None:
    """Create or resume the study and run it to n_trials (or hand that to a driver: None).
    A second launcher of the same study is refused before it touches the study: it would
    otherwise reset the running one's n_trials, undo a `study cancel` in progress and enqueue
    a baseline."""
    ld = studyfile.load(request.study_file, request.overrides)
    sf = ld.sf
    n_trials = request.n_trials or sf.study.n_trials
    url, sdir = preflight(ld, request.results_dir)
    made = [d for d in (sdir, *sdir.parents) if not d.exists()]   # what the lock will create
    try:
        with _launcher_lock(sdir) as held:
            if not held:
                lock = sdir / "launcher.lock"
                raise StudyError(f"another launcher is running study '{sf.study.name}' (lock "
                                 f"{lock}: {lock.read_text()}); `study status` follows it, "
                                 "`study cancel` stops it")
            opened = _create(ld, request.results_dir, n_trials)
            return _launch_locked(request, opened, n_trials, detach, log)
    except StudyError:
        # a new study refused by its storage (unreachable, a different study) leaves no folder
        if made and sdir.is_dir() and {p.name for p in sdir.iterdir()} <= {"launcher.lock"}:
            (sdir / "launcher.lock").unlink(missing_ok=True)
            for d in made:   # innermost first; only folders this launch made, and empty
                with contextlib.suppress(OSError):
                    d.rmdir()
        raise


def _launch_locked(request: LaunchRequest, opened: Opened, n_trials: int, detach: bool,
                   log: Log) -> Counts | None:
    ld, sf = opened.ld, opened.ld.sf
    lock = opened.study_dir / "launcher.lock"
    executor = make_executor(sf, opened.study_dir)
    if detach:
        path = LaunchRequest(ld.source, request.overrides, request.results_dir,
                             request.cache_dir, n_trials).write(
            opened.study_dir / "launcher.json")
        handle = executor.start_driver(Driver(str(path)))
        opened.study.set_user_attr("driver", handle)
        where = (f"SLURM job {handle['job_id']}" if handle.get("job_id")
                 else f"process {handle['pid']} (log {handle.get('log')})")
        log(f"study '{sf.study.name}' detached: the launcher runs as {where}; "
            f"`study status --space {request.study_file}` follows it, `study cancel` "
            "stops it")
        return None
    lock.write_text(f"pid {os.getpid()} on {platform.node()}")
    log(f"study '{sf.study.name}': {len(opened.study.trials)} trials in storage "
        f"{storage.masked(opened.url)}; topping up to {n_trials} finished "
        f"({sf.executor.backend}, parallel {sf.executor.parallel})")
    worker.use_allotted_cpus()   # the debug executor runs trials in this process
    launcher = Launcher(opened, executor, cache_dir=request.cache_dir,
                        parallel=sf.executor.parallel, retries=sf.executor.retries, log=log)
    counts = launcher.run(n_trials)
    log(f"results: {opened.study_dir}/trials ({counts.done} finished trials)")
    return counts


def cancel(ld: LoadedStudy, results_dir: str, cache_dir: str, log: Log = print) -> int:
    """Stop a study: its driver first (so nothing is resubmitted), then its jobs; the trials in
    flight FAIL as cancelled (not retried). `study launch` later resumes the study. Returns
    how many trials were in flight."""
    opened = open_study(ld, results_dir)
    st = opened.study
    executor = make_executor(ld.sf, opened.study_dir)
    # First the launcher: it checks this flag every loop, and its job or process is stopped and
    # awaited, so it cannot start a trial after the ones below are stopped.
    st.set_user_attr("cancelled", True)
    executor.stop_driver(st.user_attrs.get("driver") or {}, wait_s=120)
    launcher = Launcher(opened, executor, cache_dir=cache_dir, parallel=1, log=log)
    stopped = stop_in_flight(launcher, "cancelled by `study cancel`")
    # sacct calls a scancelled driver CANCELLED at once, while its process may live on for
    # SLURM's KillWait (submitit ignores the SIGTERM): a trial it started in that window is
    # stopped too, until none has appeared for CANCEL_QUIET_S (bounded by CANCEL_SETTLE_S)
    quiet_since, deadline = time.time(), time.time() + CANCEL_SETTLE_S
    while time.time() - quiet_since < CANCEL_QUIET_S and time.time() < deadline:
        time.sleep(1)
        late = stop_in_flight(launcher, "cancelled by `study cancel`")
        if late:
            stopped, quiet_since = stopped + late, time.time()
    return stopped


def stop_in_flight(launcher: Launcher, reason: str) -> int:
    """Cancel the jobs of the trials in flight (and the shared-stage jobs) and FAIL those
    trials as cancelled, not retried. Returns how many there were."""
    st = launcher.study
    running = st.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    handles: list[Handle] = [t.user_attrs.get("job") or {} for t in running]
    handles += [t.user_attrs.get("worker") or {} for t in running]
    handles += [{"kind": "slurm", "job_id": j}
                for j in (st.user_attrs.get("stage_jobs") or {}).values()]
    launcher.executor.cancel(handles)
    for t in running:
        launcher.fail(t, reason, "cancelled", retry=False)
    return len(running)


def main(argv: list[str] | None = None) -> int:
    """`python -m study.launcher REQUEST.json`: the detached launcher on this machine."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        launch(LaunchRequest.read(argv[0]), log=lambda m: print(m, flush=True))
    except StudyError as e:
        print(f"study: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
