"""The launcher: keep `parallel` trials in flight, reconcile what the storage says with what is
really running, retry infrastructure failures, top the study up to n_trials; and cancel.

Workers tell their own results (study/worker.py), so the launcher holds no state that matters:
killing it loses nothing, and `study launch` again adopts the trials still running, recovers the
ones that finished while it was away, and retries the ones whose worker vanished.
A trial counts toward n_trials once it is COMPLETE, PRUNED or FAIL, except a FAIL that was retried.
Where trials run is the executor's business (study/executors/): the launcher only asks it.

`launch(request)` is the whole of `study launch` after argument parsing: the CLI calls it, and
so does the --detach driver (`python -m study.launcher REQUEST.json`, or a batch job), without
going back through the CLI.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from study import (
    atomic,
    executors,
    failures,
    results,
    stages,
    storage,
    studyfile,
    warm_start,
    worker,
)
from study.cache import StageCache
from study.errors import StudyError, StudyHalted, naming_file
from study.executors import Driver, Executor, Handle, JobFiles, make_executor
from study.jobs import Job, LaunchRequest
from study.pipeline import Pipeline
from study.status import Counts, Tally, count, summary_lines
from study.storage import StoredStudy
from study.studyfile import LoadedStudy

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# A worker registers itself in its trial within seconds of starting (imports ~5 s here); one
# that has not after this long, and whose job is gone, never will.
REGISTER_GRACE_S = 180.0
DEFAULT_RETRIES = 2   # infrastructure failures (vanished, preempted, killed) per configuration
# The launcher refreshes the study's compacted summary (results.compact_summary) every this many
# finished trials: a reader then opens at most this many trial files besides it (reading 100
# summary files takes ~0.5 s here; each refresh rewrites a 10,000-trial summary in ~1 s).
COMPACT_EVERY = 100
ACTIVE = (TrialState.RUNNING, TrialState.WAITING)
Log = Callable[[str], None]


def shared_stage_plan(ld: LoadedStudy, cache_dir: str) -> list[tuple[str, int]]:
    """The shared stages (base, experts) every trial will need, not yet cached: (stage, seed) in
    build order (the registry says which; the space, which degradations a trial may pick)."""
    names = stages.shared_instances(
        ld.sf.pipeline, [p.path for p in ld.space.params],
        ld.space.list_items_at(("pipeline", "degradations")))   # what a trial may pick
    cache = StageCache(cache_dir)
    plan = []
    for r in range(ld.sf.study.replicates):
        seed = ld.sf.pipeline.seed + r
        pipe = Pipeline(ld.sf.pipeline.model_copy(update={"seed": seed}), cache)
        plan += [(name, seed) for name in names if not pipe.cached(name)]
    return plan


def build_shared_stage(study_file: str, tree: dict[str, Any], cache_dir: str, name: str,
                       seed: int) -> str:
    """Build one shared stage of a study into the cache (an executor's stage job runs this)."""
    ld = studyfile.from_tree(tree, study_file, check_space=False)   # checked at launch
    pipe = Pipeline(ld.sf.pipeline.model_copy(update={"seed": seed}), StageCache(cache_dir))
    pipe.network(name)
    return pipe.key(name)


class Launcher:
    def __init__(self, stored: StoredStudy, executor: Executor, *, cache_dir: str,
                 parallel: int, retries: int = DEFAULT_RETRIES, poll_s: float = 1.0,
                 log: Log = print):
        self.ld, self.study, self.store = stored.ld, stored.study, stored.store
        self.storage_url, self.sdir = stored.url, stored.study_dir
        self.executor, self.cache_dir = executor, cache_dir
        self.parallel, self.retries, self.poll_s, self.log = parallel, retries, poll_s, log
        self.stop_after_failures = self.ld.sf.study.stop_after_failures
        self.schema = results.Schema.of(self.ld.sf.study.objectives, self.ld.space.params)
        self.started = time.time()   # the breaker counts the failures of this launch only
        self.tally = Tally(self.study)
        self.active: set[int] = set()            # trials RUNNING or WAITING at the last look
        self.ended: list[FrozenTrial] = []       # this launch's finished trials: the breaker
        self._retry_of: set[int] | None = None   # trials that have a retry enqueued
        self._compacted_at = 0
        self.looked = False

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
            if results.has_trial(self.sdir, t.number, t.user_attrs.get("result_id")):
                self._recover(t)
            else:
                self._infrastructure_failure(t, "the worker vanished without a result "
                                             "(killed, preempted, node failure or timeout)")
        self.look()   # the trials that finished meanwhile: counted, a retry enqueued

    def _retry_reported_failures(self, finished: list[FrozenTrial] | None = None) -> None:
        """A worker that failed for the cluster's reasons (its job ran out of requeues after
        time limits) marked its trial `retried` before telling FAIL (a finished trial's
        attributes are frozen); the retry itself is enqueued here, once. `finished`: the
        trials that finished since the last look (None: every trial)."""
        trials = self.study.get_trials(deepcopy=False) if finished is None else finished
        for t in trials:
            if (t.state == TrialState.FAIL and t.user_attrs.get("retried")
                    and t.user_attrs.get("fail_kind") in failures.RETRYABLE):
                self._enqueue_retry(t)

    def retry_of(self) -> set[int]:
        """The trials that have a retry: read once, then kept as retries are enqueued."""
        if self._retry_of is None:
            self._retry_of = {int(x.user_attrs["retry_of"])
                              for x in self.study.get_trials(deepcopy=False)
                              if x.user_attrs.get("retry_of") is not None}
        return self._retry_of

    def look(self) -> Counts:
        """The study's counts, reading only the trials in flight: those that left them since
        the last look are fetched one by one, counted, and checked for a retry to enqueue."""
        if not self.looked:
            return self._first_look()
        now = self.study.get_trials(deepcopy=False, states=ACTIVE)
        numbers = {t.number for t in now}
        finished = [self.store.get_trial(storage.trial_id(self.store, self.study.study_name,
                                                          n))
                    for n in sorted(self.active - numbers)]
        self.active = numbers
        finished = [t for t in finished if self.tally.add(t)]
        self.ended += finished
        self._retry_reported_failures(finished)
        done = self.tally.counts.done
        if done - self._compacted_at >= COMPACT_EVERY:
            results.compact_summary(self.sdir)
            self._compacted_at = done
        return self.tally.now(sum(t.state == TrialState.RUNNING for t in now))

    def _first_look(self) -> Counts:
        """Every trial once, at the start of a run; then `look`."""
        trials = self.study.get_trials(deepcopy=False)
        self.looked = True
        for t in trials:   # the breaker looks at this launch's trials only
            if self.tally.add(t) and t.datetime_complete is not None and (
                    t.datetime_complete.timestamp() >= self.started - 1):
                self.ended.append(t)
        self.active = {t.number for t in trials if t.state in ACTIVE}
        self._retry_reported_failures(trials)
        self._compacted_at = self.tally.counts.done
        return self.tally.now(sum(t.state == TrialState.RUNNING for t in trials))

    def _recover(self, t: FrozenTrial) -> None:
        """The worker wrote its Parquet file but died before telling: tell from the file. A
        file that cannot be read is moved aside (results.read_trial says so), and the trial
        counts as vanished without a result."""
        df = results.read_trial(self.sdir, t.number)
        if df is None:
            self._infrastructure_failure(t, "its result file was unreadable and was moved "
                                         "aside; the worker left no usable result")
            return
        state = str(df.state.iloc[0])
        if state == "FAIL" and t.user_attrs.get("retried"):
            self._enqueue_retry(t)   # its launcher was killed inside fail(), maybe before this
        # skip_if_finished: the worker may tell between our read of RUNNING and this tell (it
        # writes the file first, then tells, then exits); the storage then already agrees.
        if state == "COMPLETE":
            values = results.recorded_objectives(df, self.schema)
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
        batch job may run on for a grace period): its result is recovered instead."""
        attempt = int(t.user_attrs.get("attempt", 1))
        trial_id = storage.trial_id(self.store, self.study.study_name, t.number)
        if results.has_trial(self.sdir, t.number, t.user_attrs.get("result_id")):
            self._recover(t)
            return
        self.store.set_trial_user_attr(trial_id, "error", reason)
        self.store.set_trial_user_attr(trial_id, "fail_kind", fail_kind)
        self.store.set_trial_user_attr(trial_id, "fail_reason", reason)
        if retry:
            self.store.set_trial_user_attr(trial_id, "retried", True)
        written = results.write_trial(self.sdir, t.number, results.trial_frame(
            study_name=self.ld.sf.study.name, trial=t.number, attempt=attempt, state="FAIL",
            seed_rows=[], params=t.user_attrs.get("values", {}),
            param_columns=self.schema.params, stages={},
            objectives=dict.fromkeys(self.schema.objectives),
            extra={"error": reason, "fail_kind": fail_kind, "fail_reason": reason,
                   **results.provenance()}),
            result_id=t.user_attrs.get("result_id"), replace=False)
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
        if t.number in self.retry_of():
            return
        self.retry_of().add(t.number)
        keep: dict[str, Any] = {k: t.user_attrs[k] for k in ("baseline", "baseline_values",
                                                             "confirm") if k in t.user_attrs}
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
        self.active |= {trial.number for trial, _ in asked}
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
        # what its result file will carry: trial numbers restart in a new storage
        trial.set_user_attr("result_id", results.new_result_id())
        job = Job(study_file=self.ld.source, overrides=[], results=str(self.sdir.parent),
                  cache=self.cache_dir, storage=self.storage_url,
                  study_name=self.ld.sf.study.name, trial=trial.number, tree=self.ld.tree)
        self.log(f"  trial {trial.number}: starting ({self.executor.name}) "
                 + ", ".join(f"{k}={_short(v)}" for k, v in values.items()))
        path = job.write(self.job_path(trial.number))
        return trial, JobFiles(path, path.with_suffix(".log"))

    def prebuild_shared_stages(self) -> None:
        """Where the executor does it (a batch system): base, then the experts in parallel, as
        their own jobs; the trials submitted next depend on them, so no GPU waits on a cache
        entry."""
        plan = shared_stage_plan(self.ld, self.cache_dir)
        if not plan:
            return
        # the executor may store this call with a job: the tree without the storage URL
        # (a stage job never opens the study; the URL may hold a password)
        tree = {**self.ld.tree, "study": {**self.ld.tree["study"], "storage": None}}
        build = functools.partial(build_shared_stage, self.ld.source, tree, self.cache_dir)
        handles = self.executor.build_shared_stages(plan, build)
        if handles:
            self.study.set_user_attr("stage_jobs", handles)
            where = self.executor.describe(list(handles.values()))
            self.log("  shared stages ahead of the trials: " + ", ".join(
                f"{k} ({w})" for k, w in zip(handles, where, strict=True)))

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
        c = self.look()
        if c.done < n_trials:
            self.prebuild_shared_stages()
        while True:
            if self.study.user_attrs.get("cancelled"):
                self.log("study cancelled (`study cancel`); the launcher stops")
                break
            self.reconcile()
            c = self.look()
            tripped = self.breaker(self.ended)
            if tripped:
                self.halt(tripped)
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
                    self.look()
                    tripped = self.breaker(self.ended)
                    if tripped:
                        self.halt(tripped)
                self.start_trials(k)
                free, remaining = free - k, remaining - k
            line = self.look().line(n_trials)
            if line.split("] ", 1)[1] != last:
                self.log(line)
                last = line.split("] ", 1)[1]
            if not self.executor.inline:
                time.sleep(self.poll_s)
            self.executor.poll()
        final = count(self.study, self.study.get_trials(deepcopy=False))
        results.compact_summary(self.sdir)
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
                   and t.user_attrs.get("fail_kind") in failures.BREAKER_KINDS)
            run = [*run, t] if bad else []
            if len(run) >= k:
                nums = [x.number for x in run]
                first = "its first" if len(done) == len(run) else "a run of"
                return (f"{first} {len(run)} finished trials ({nums}) failed with code or "
                        "configuration errors or diverged (study.stop_after_failures="
                        f"{k})")
        return None

    def failure_summary(self, limit: int = 3) -> str:
        """The last failures' one-line reasons, and where their logs are."""
        failed = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                  if t.user_attrs.get("fail_kind") != "cancelled"][-limit:]
        lines = [failures.failure_line(t.user_attrs, t.number) for t in failed]
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


def _create(ld: LoadedStudy, results_dir: str, n_trials: int, log: Log = print) -> StoredStudy:
    """Create or resume the study; every check first, so a refused launch writes nothing."""
    sf = ld.sf
    url, sdir = storage.study_paths(ld, results_dir)
    warm = warm_start.plan(ld, results_dir)   # read before anything of this study is created
    with naming_file(ld.source):
        sampler = storage.make_sampler(sf, ld.space.grid(), sf.executor.parallel)
        store = storage.open_storage(url)
        st = storage.load_or_create(sf, store, sampler, storage.make_pruner(sf),
                                    fp=storage.fingerprint(ld.tree, ld.space.fingerprint()))
    with warnings.catch_warnings():   # set_metric_names is marked experimental in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        st.set_metric_names(results.metric_names(sf))   # the dashboard: "fusiondistill val.avg"
    # optuna-dashboard calls the pruner's per-epoch values "Intermediate values" with an axis
    # "Objective Value"; they are not the objective, and the study page says what they are
    st.set_user_attr("intermediate_values", intermediate_values(ld))
    if st.trials:
        st.sampler = storage.make_sampler(sf, ld.space.grid(), sf.executor.parallel,
                                          resumed_at=len(st.trials))
    else:
        if sf.study.baseline:
            _enqueue_baseline(ld, st)
        if warm is not None:
            warm_start.enqueue(ld, st, warm, log)
    sdir.mkdir(parents=True, exist_ok=True)
    st.set_user_attr("n_trials", n_trials)   # the target `study status` reports against
    st.set_user_attr("cancelled", False)
    st.set_user_attr("halted", None)   # a new launch after a fix: the breaker starts afresh
    return StoredStudy(ld, st, store, url, sdir)


def intermediate_values(ld: LoadedStudy) -> str:
    """What a trial reports to the pruner each epoch, in words."""
    o = ld.sf.study.objectives
    watched = (stages.METHODS[o[0].method].watched_stage(ld.sf.pipeline) if len(o) == 1
               else None)
    if watched is None:
        return ("none: no stage's epochs are reported (several objectives, or an objective "
                "whose method trains no single watched stage)")
    return (f"{watched}'s validation accuracy after each epoch: the mean over the degradations "
            "it trains on, one random level per image; what the pruner compares, not the "
            f"objective {o[0].method} {o[0].metric} (the mean over the evaluation's level grid, "
            "measured once the trial ends)")


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


def _short(value: Any) -> str:
    """A sampled value for a log line: floats to 4 significant digits (a log-uniform draw has
    16), mappings and lists element by element."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)


def run_request(request_path: str) -> int:
    """The detached launcher loop: a job calls this (pickled with the job), a process runs
    `python -m study.launcher REQUEST.json`."""
    launch(LaunchRequest.read(request_path), log=lambda m: print(m, flush=True))
    return 0


def driver_for(request_path: Path) -> Driver:
    return Driver(argv=[sys.executable, "-m", "study.launcher", str(request_path)],
                  call=functools.partial(run_request, str(request_path)),
                  log=request_path.with_suffix(".log"))


def preflight(ld: LoadedStudy, results_dir: str) -> tuple[str, Path]:
    """The checks of a launch that need no connection (storage URL, sampler): a refusal writes
    nothing. `launch --dry-run` runs exactly these. Returns the storage URL and study folder."""
    url, sdir = storage.study_paths(ld, results_dir)
    with naming_file(ld.source):
        storage.check(url)
        storage.make_sampler(ld.sf, ld.space.grid(), ld.sf.executor.parallel)
        make_executor(ld.sf, sdir)   # a setting this machine cannot honour (a GPU index)
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
            stored = _create(ld, request.results_dir, n_trials, log)
            return _launch_locked(request, stored, n_trials, detach, log)
    except StudyError:
        # a new study refused by its storage (unreachable, a different study) leaves no folder
        if made and sdir.is_dir() and {p.name for p in sdir.iterdir()} <= {"launcher.lock"}:
            (sdir / "launcher.lock").unlink(missing_ok=True)
            for d in made:   # innermost first; only folders this launch made, and empty
                with contextlib.suppress(OSError):
                    d.rmdir()
        raise


def _launch_locked(request: LaunchRequest, stored: StoredStudy, n_trials: int, detach: bool,
                   log: Log) -> Counts | None:
    ld, sf = stored.ld, stored.ld.sf
    lock = stored.study_dir / "launcher.lock"
    executor = make_executor(sf, stored.study_dir)
    if detach:
        path = LaunchRequest(ld.source, request.overrides, request.results_dir,
                             request.cache_dir, n_trials).write(
            stored.study_dir / "launcher.json")
        driver = driver_for(path)
        handle = executor.start_driver(driver)
        stored.study.set_user_attr("driver", handle)
        where = executor.describe([handle])[0]
        log(f"study '{sf.study.name}' detached: the launcher runs as {where} (log "
            f"{handle.get('log') or driver.log}); "
            f"`study status --space {request.study_file}` follows it, `study cancel` "
            "stops it")
        return None
    lock.write_text(f"pid {os.getpid()} on {platform.node()}")
    log(f"study '{sf.study.name}': {len(stored.study.trials)} trials in storage "
        f"{storage.masked(stored.url)}; topping up to {n_trials} finished "
        f"({sf.executor.backend}, parallel {sf.executor.parallel})")
    # the debug executor runs trials in this process
    worker.use_allotted_cpus(executors.allotted_cpus())
    launcher = Launcher(stored, executor, cache_dir=request.cache_dir,
                        parallel=sf.executor.parallel, retries=sf.executor.retries, log=log)
    counts = launcher.run(n_trials)
    for line in summary_lines(stored, request.study_file):
        log(line)
    return counts


def cancel(ld: LoadedStudy, results_dir: str, cache_dir: str, log: Log = print) -> int:
    """Stop a study: its driver first (so nothing is resubmitted), then its jobs; the trials in
    flight FAIL as cancelled (not retried). `study launch` later resumes the study. Returns
    how many trials were in flight."""
    stored = storage.open_study(ld, results_dir)
    st = stored.study
    executor = make_executor(ld.sf, stored.study_dir)
    # First the launcher: it checks this flag every loop, and its job or process is stopped and
    # awaited, so it cannot start a trial after the ones below are stopped.
    st.set_user_attr("cancelled", True)
    executor.stop_driver(st.user_attrs.get("driver") or {}, wait_s=120)
    launcher = Launcher(stored, executor, cache_dir=cache_dir, parallel=1, log=log)
    reason = "cancelled by `study cancel`"
    stopped = stop_in_flight(launcher, reason)
    return stopped + executor.drain_stopped_driver(lambda: stop_in_flight(launcher, reason))


def stop_in_flight(launcher: Launcher, reason: str) -> int:
    """Cancel the jobs of the trials in flight (and the shared-stage jobs) and FAIL those
    trials as cancelled, not retried. Returns how many there were."""
    st = launcher.study
    running = st.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    handles: list[Handle] = [t.user_attrs.get("job") or {} for t in running]
    handles += [t.user_attrs.get("worker") or {} for t in running]
    # a study of release 0.3 stored bare job ids here: its stage jobs ended long ago
    handles += [h for h in (st.user_attrs.get("stage_jobs") or {}).values()
                if isinstance(h, dict)]
    launcher.executor.cancel(handles)
    for t in running:
        launcher.fail(t, reason, "cancelled", retry=False)
    return len(running)


def main(argv: list[str] | None = None) -> int:
    """`python -m study.launcher REQUEST.json`: the detached launcher on this machine."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        run_request(argv[0])
    except StudyError as e:
        print(f"study: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
