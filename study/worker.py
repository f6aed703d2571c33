"""The worker entry point: `python -m study.worker JOB.json` runs one trial to a final state.

    run:    the pipeline once per replicate seed, each epoch of the watched stage to the pruner,
            the objective values from the rows (results.objective_values)
    record: the trial's Parquet file and its learning curves
    tell:   the trial's attributes and final state, to the study storage

The local executor starts it as a process, a batch job calls `run_job`, the debug executor calls
it in the launcher's own process. Order matters for "nothing lost": the Parquet file is written
before the tell, so a worker killed in between leaves a result the launcher recovers instead of
recomputing.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from study import atomic, failures, faults, progress, results, stages, storage, studyfile
from study.cache import StageCache
from study.config import COST_METRIC, ExecutorSection, StudyFile
from study.executors.placement import THREADS_ENV, threads_from_env
from study.jobs import Job
from study.pipeline import Pipeline

__all__ = ["THREADS_ENV", "TrialOutcome", "run_job", "threads_from_env", "use_allotted_cpus"]

# The trial's `progress` user attribute: a journal line per update, so at most one every 10 s
# (a paper base of 200 x ~18 s epochs adds ~360 lines to a study's journal, not 70,000 steps).
PROGRESS_ATTR_S = 10.0
# A failure the executor running this worker raised itself (a batch job out of requeues):
# (error, executor settings) -> (fail_kind, reason), or None for any other error.
ClassifyFailure = Callable[[BaseException, ExecutorSection], "tuple[str, str] | None"]
Histories = list[tuple[int | None, str, bool, list[dict[str, Any]]]]


def use_allotted_cpus(n: int | None = None) -> None:
    """torch threads = `n`, else this worker's share of its parent's CPUs (STUDY_THREADS);
    unchanged (every core) when neither says."""
    n = n or threads_from_env(os.environ)
    if n:
        torch.set_num_threads(n)


class ProgressAttr:
    """Optuna user attribute `progress` = {stage: "epochs done/epochs"} of a running trial, for
    optuna-dashboard's trial page; a Progress listener, throttled to PROGRESS_ATTR_S."""

    def __init__(self, trial: optuna.Trial, every_s: float = PROGRESS_ATTR_S):
        self.trial, self.every_s = trial, every_s
        self.progress: dict[str, str] = {}
        self._sent: dict[str, str] = {}
        self._last = -float("inf")

    def __call__(self, snap: progress.Snapshot) -> None:
        if snap.phase != "train":
            return
        self.progress[snap.stage] = f"{snap.epochs_done}/{snap.epochs}"
        if time.monotonic() - self._last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if self.progress == self._sent:
            return
        self._last = time.monotonic()
        try:
            self.trial.set_user_attr("progress", dict(self.progress))
            self._sent = dict(self.progress)
        except Exception:  # noqa: BLE001 - a display attribute never fails the trial
            pass


def curve_histories(pipe: Pipeline, hub: progress.Progress, seed: int
                    ) -> list[tuple[int | None, str, bool, list[dict[str, Any]]]]:
    """Every stage this pipeline got, with its epoch records: built ones from this run, cache
    hits from the entry's meta (recorded when it was built), and a stage stopped midway (a
    pruned trial's watched stage) up to where it stopped."""
    out: list[tuple[int | None, str, bool, list[dict[str, Any]]]] = []
    seen = set()
    for rec in pipe.stages:
        seen.add(rec.stage)
        if rec.hit:
            history = _meta(pipe, rec).get("history") or []
        else:
            history = pipe.histories.get(rec.stage) or hub.records.get(rec.stage) or []
        out.append((seed, rec.stage, rec.hit, list(history)))
    for stage, records in hub.records.items():
        if stage not in seen and records:
            out.append((seed, stage, False, list(records)))
    return out


@dataclass
class TrialOutcome:
    """What running a trial produced, whatever its state: what `record` and `tell` need."""

    state: str                                  # COMPLETE, PRUNED or FAIL
    wall_s: float
    params: dict[str, Any] = field(default_factory=dict)   # the trial's sampled values
    values: list[float] = field(default_factory=list)   # the objectives (COMPLETE only)
    seed_rows: list[tuple[int, list[dict[str, Any]]]] = field(default_factory=list)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)   # key, hit, build_s
    histories: Histories = field(default_factory=list)
    config: StudyFile | None = None             # the trial's validated configuration
    device: str | None = None
    error: str | None = None                    # the traceback, or the pruner's message
    fail_kind: str | None = None
    fail_reason: str | None = None


def kept_epochs(pipe: Pipeline) -> dict[str, int | None]:
    """The epoch whose weights each stage this pipeline got holds: built ones from this run,
    cache hits from their entry (an entry of release 0.3 names none: the first epoch of its
    best val, else its last)."""
    out: dict[str, int | None] = {}
    for rec in pipe.stages:
        if not rec.hit:
            out[rec.stage] = pipe.kept_epochs.get(rec.stage)
            continue
        meta = _meta(pipe, rec)
        history = meta.get("history") or []
        out[rec.stage] = meta.get("kept_epoch") or next(
            (r.get("epoch") for r in history if r.get("val") == meta.get("best_val")),
            history[-1].get("epoch") if history else None)
    return out


def _meta(pipe: Pipeline, rec: Any) -> dict[str, Any]:
    try:
        return pipe.cache.meta(stages.parse_instance(rec.stage)[0].folder, rec.key)
    except (OSError, ValueError):
        return {}


def run_job(job: Job, log: Callable[[str], None] = print,
            classify_failure: ClassifyFailure | None = None) -> str:
    """Run one trial to a final state; returns the state name. Never raises for a trial's own
    error: that is a FAIL with its traceback, stored with the trial and in its Parquet row.
    While it runs, a heartbeat file beside its job file says where it is (`study status`)."""
    ld = (studyfile.load(job.study_file, job.overrides) if job.tree is None
          else studyfile.from_tree(job.tree, job.study_file, check_space=False))
    store = storage.open_storage(job.storage)
    st = optuna.load_study(study_name=job.study_name, storage=store,
                           pruner=storage.make_pruner(ld.sf))
    trial_id = storage.trial_id(store, job.study_name, job.trial)
    frozen = store.get_trial(trial_id)
    if frozen.state != TrialState.RUNNING:
        log(f"trial {job.trial} is already {frozen.state.name}; nothing to do")
        return frozen.state.name
    trial = optuna.trial.Trial(st, trial_id)
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES")   # its placement: one device, or unset
    trial.set_user_attr("worker", {"host": platform.node(), "pid": os.getpid(), "gpu": gpu,
                                   "started": time.time()})
    faults.rendezvous()   # the storage concurrency test only
    attempt = int(frozen.user_attrs.get("attempt", 1))
    sdir = storage.study_dir(job.results, job.study_name)
    beat = progress.Heartbeat(progress.heartbeat_path(sdir, job.trial),
                              {"study": job.study_name, "trial": job.trial, "attempt": attempt,
                               "gpu": gpu}).start()
    state = "died"   # what the last beat says if the worker raises (a full disk)
    try:
        attr = ProgressAttr(trial)
        confirm = frozen.user_attrs.get("confirm")   # a `study confirm` re-run: one new seed
        outcome = run_trial(ld, frozen.user_attrs.get("values", {}), trial, job, log,
                            listeners=[beat, attr], classify_failure=classify_failure,
                            seeds=[int(confirm["seed"])] if confirm else None)
        if store.get_trial(trial_id).state != TrialState.RUNNING:   # retried elsewhere
            log(f"trial {job.trial} was finished by someone else; result not written")
            state = "STALE"
        elif not record(job, sdir, ld, outcome, attempt, gpu, log,
                        frozen.user_attrs.get("result_id")):
            state = "STALE"
        else:
            attr.flush()
            state = tell(st, store, trial, trial_id, outcome, attempt, ld, log)
    finally:
        beat.stop(state)
    return state


def cost_hours(sf: StudyFile, method: str, pipes: list[Pipeline]) -> float:
    """config.COST_METRIC: the build hours of every stage `method`'s networks come from, each
    counted at the time its build took (a cache hit too), summed over the replicate seeds."""
    needed = stages.lineage(sf.pipeline, stages.METHODS[method].networks(sf.pipeline))
    return sum(p.build_seconds(name) for p in pipes for name in needed) / 3600


def run_trial(ld: studyfile.LoadedStudy, values: Mapping[str, Any], trial: optuna.Trial,
              job: Job, log: Callable[[str], None], *, listeners: list[Any],
              classify_failure: ClassifyFailure | None = None,
              seeds: list[int] | None = None) -> TrialOutcome:
    """The trial's pipeline, once per replicate seed (the first one's epochs go to the pruner),
    and its objective values; a pruned or failed trial is an outcome too, never an exception
    (but a full disk, which is not the trial's fault: the worker dies, the launcher retries).
    `seeds`: these pipeline seeds instead of the replicates, never pruned (a confirmation)."""
    quiet = progress.log_level() == "warning"
    stage_log = (lambda _: None) if quiet else log
    t0 = time.perf_counter()
    out = TrialOutcome("COMPLETE", 0.0, params=dict(values))
    final: str | None = None
    runs: list[tuple[int, Pipeline, progress.Progress]] = []
    try:
        sf = out.config = ld.trial_config(values)
        final = (stages.METHODS[sf.study.objectives[0].method].watched_stage(sf.pipeline)
                 if len(sf.study.objectives) == 1 else None)

        def on_epoch(epoch: int, val: float | None) -> None:
            if val is None:
                return
            trial.report(val, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} (val {val:.4f})")

        run_seeds = seeds or [sf.pipeline.seed + r for r in range(sf.study.replicates)]
        for r, seed in enumerate(run_seeds):
            hub = progress.Progress.from_env(
                log, listeners=listeners,
                prefix=f"trial {job.trial}" + (f" seed {seed}" if len(run_seeds) > 1 or seeds
                                               else ""))
            watched = r == 0 and seeds is None
            pipe = Pipeline(sf.pipeline.model_copy(update={"seed": seed}), StageCache(job.cache),
                            log=stage_log, on_epoch=on_epoch if watched else None,
                            final_stage=final, progress=hub)
            runs.append((seed, pipe, hub))
            res = pipe.run()
            out.device = out.device or res.device
            out.seed_rows.append((seed, [dict(row) for row in res.rows]))
        out.values = results.objective_values(
            [row for _, rows in out.seed_rows for row in rows],
            [(o.method, o.metric) for o in sf.study.objectives],
            {o.method: cost_hours(sf, o.method, [p for _, p, _ in runs])
             for o in sf.study.objectives if o.metric == COST_METRIC})
    except optuna.TrialPruned as e:
        out.state, out.error = "PRUNED", str(e)
        if runs and final is not None:
            # A pruned trial never resumes its watched stage, so its epoch checkpoint (for
            # ResNet56 ~14 MB: weights, best weights, two RAdam moments; one per pruned trial)
            # would only stay behind; a killed worker's stays, for its requeue to resume from.
            pruned = runs[0][1]
            pruned.checkpoint_path(final, pruned.key(final)).unlink(missing_ok=True)
    except Exception as e:  # noqa: BLE001 - a trial's own error fails that trial, once
        if atomic.is_disk_full(e):
            raise
        out.state, out.error = "FAIL", "".join(traceback.format_exception(e))
        own = classify_failure(e, ld.sf.executor) if classify_failure else None
        out.fail_kind, out.fail_reason = own or failures.classify_error(e)
    out.histories = [h for seed, p, hub in runs for h in curve_histories(p, hub, seed)]
    if out.state == "COMPLETE":
        kept: dict[tuple[int | None, str], int | None] = {
            (seed, stage): k for seed, p, _ in runs for stage, k in kept_epochs(p).items()}
        diverged = failures.divergence((seed, stage, records, kept.get((seed, stage)))
                                       for seed, stage, _, records in out.histories)
        if diverged or not all(math.isfinite(v) for v in out.values):
            _unusable(out, ld, diverged)
    # a pruned first replicate has no result, but its pipeline knows what it built or loaded
    # (the compute summary counts a pruned trial's stages too)
    first = runs[0][1].stages if runs else []
    out.stages = {s.stage: {"key": s.key, "hit": s.hit, "build_s": s.build_s} for s in first}
    out.wall_s = time.perf_counter() - t0
    return out


def _unusable(out: TrialOutcome, ld: studyfile.LoadedStudy, diverged: str | None) -> None:
    """A trial that ran to its end without a result worth recording fails instead:
    "diverged" when a stage kept weights trained past a non-finite loss (its accuracy is
    chance, not a measurement of its hyperparameters), "config" when an objective is NaN or
    infinite without that (the rows hold no such number, e.g. the oracle's clean accuracy;
    Optuna refuses to store it). Both count in the circuit breaker: the next trials of the
    space would most likely do the same."""
    names = [f"{o.method} {o.metric}" for o in ld.sf.study.objectives]
    values = ", ".join(f"{n} = {v:.4g}" for n, v in zip(names, out.values, strict=True))
    out.state, out.values = "FAIL", []
    if diverged:
        out.fail_kind = "diverged"
        out.fail_reason = f"training diverged: {diverged}; objective {values}"
    else:
        out.fail_kind = "config"
        out.fail_reason = (f"objective {values}: the trial's results hold no such number "
                           "(check study.objectives against pipeline.methods, "
                           "eval.degradations and data.val_size)")
    out.error = out.fail_reason


def record(job: Job, sdir: Path, ld: studyfile.LoadedStudy, out: TrialOutcome, attempt: int,
           gpu: str | None, log: Callable[[str], None], result_id: str | None) -> bool:
    """The trial's Parquet file, then its learning curves. False when a file was already there:
    the launcher failed this trial meanwhile (a cancelled batch job runs on for a grace
    period), and whoever writes first wins, so Parquet and storage agree."""
    sf = out.config
    extra = {"wall_s": out.wall_s, "error": out.error, "fail_kind": out.fail_kind,
             "fail_reason": out.fail_reason, "device": out.device, "gpu": gpu,
             "amp": sf.pipeline.compute.amp if sf else None,
             "protocol": sf.pipeline.protocol if sf else None,
             "config_json": sf.pipeline.model_dump() if sf else None, **results.provenance()}
    schema = results.Schema.of(ld.sf.study.objectives, ld.space.params)
    values: list[float | None] = list(out.values) or [None] * len(schema.objectives)
    df = results.trial_frame(
        study_name=job.study_name, trial=job.trial, attempt=attempt, state=out.state,
        seed_rows=out.seed_rows, params=out.params, param_columns=schema.params,
        stages=out.stages, objectives=dict(zip(schema.objectives, values, strict=True)),
        extra=extra)
    if results.write_trial(sdir, job.trial, df, result_id=result_id, replace=False) is None:
        log(f"trial {job.trial}: a result is already on disk; this one is not written")
        return False
    try:   # the learning curves: a view of the trial, never a reason to lose its result
        results.write_curves(sdir, job.trial, results.curve_frame(
            study_name=job.study_name, trial=job.trial, state=out.state,
            histories=out.histories))
    except (OSError, ValueError, TypeError) as e:
        log(f"trial {job.trial}: learning curves not written ({e})")
    return True


def tell(st: optuna.Study, store: optuna.storages.BaseStorage, trial: optuna.Trial,
         trial_id: int, out: TrialOutcome, attempt: int, ld: studyfile.LoadedStudy,
         log: Callable[[str], None]) -> str:
    """The trial's attributes, then its final state, to the storage. A retryable failure is
    marked `retried` here (a finished trial's attributes are frozen); the launcher enqueues
    the retry (same parameters, attempt + 1) when it next looks."""
    try:
        trial.set_user_attr("provenance", results.provenance())
        trial.set_user_attr("stages", out.stages)
        trial.set_user_attr("wall_s", out.wall_s)
        if out.error:
            trial.set_user_attr("error", out.error[-4000:])
        if out.fail_kind:
            trial.set_user_attr("fail_kind", out.fail_kind)
            trial.set_user_attr("fail_reason", out.fail_reason)
        if out.fail_kind in failures.RETRYABLE:
            trial.set_user_attr("retried", attempt <= ld.sf.executor.retries)
        if out.state == "COMPLETE":
            st.tell(trial.number, out.values)
        else:
            st.tell(trial.number, state=TrialState[out.state])
    except (RuntimeError, ValueError):
        if store.get_trial(trial_id).state == TrialState.RUNNING:
            raise
        log(f"trial {trial.number} was finished by someone else meanwhile; not told")
        return "STALE"
    log(f"trial {trial.number}: {out.state}"
        + (f" {[round(v, 4) for v in out.values]}" if out.values else "")
        + (f"\n{out.error}" if out.state == "FAIL" else ""))
    return out.state


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # a log file is block-buffered: line by line, so the trial's log follows it as it runs
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    use_allotted_cpus()
    run_job(Job.read(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
