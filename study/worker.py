"""The worker entry point: `python -m study.worker JOB.json` runs one trial to a final state.

Read the trial's parameters from the study storage, run the pipeline (once per replicate seed),
report each epoch of the watched stage to the pruner, write the trial's Parquet file, then tell
the storage. The local executor starts it as a process, a SLURM job calls `run_job`, the debug
executor calls it in the launcher's own process.

Order matters for "nothing lost": the Parquet file is written before the tell, so a worker killed
in between leaves a result the launcher recovers instead of recomputing.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import pydantic
import torch
from optuna.trial import TrialState
from submitit.core.utils import UncompletedJobError

from study import atomic, evaluation, faults, progress, results, stages, storage, studyfile
from study.cache import StageCache
from study.config import StudyFile
from study.errors import StudyError
from study.pipeline import Pipeline, PipelineResult

# Failures retried with the same parameters (the retry resumes from the stage cache and epoch
# checkpoints); code and configuration failures are not: they would fail the same way again.
RETRYABLE = {"infrastructure", "timeout"}

# The trial's `progress` user attribute: a journal line per update, so at most one every 10 s
# (a paper base of 200 x ~18 s epochs adds ~360 lines to a study's journal, not 70,000 steps).
PROGRESS_ATTR_S = 10.0

AGG_COLUMN = {"avg": "Avg", "clean": "Clean", "jpeg": "JPEG", "blur": "Blur", "awgn": "AWGN",
              "saltpepper": "SAPN"}


@dataclass(frozen=True)
class Job:
    """What the launcher hands to a worker; written as JSON next to the study."""

    study_file: str
    overrides: list[str]
    results: str
    cache: str
    storage: str
    study_name: str
    trial: int
    # the resolved tree (study file + presets + overrides) as the launcher validated it: the
    # worker skips reading three YAML files (~100 ms, most of a toy trial's overhead) and runs
    # exactly what the study's fingerprint covers, even if the file is edited meanwhile
    tree: dict[str, Any] | None = None

    def write(self, path: Path) -> Path:
        # 0600: the tree may hold a storage URL with its password
        atomic.write_text(path, json.dumps(asdict(self), indent=1), mode=0o600)
        return path

    @classmethod
    def read(cls, path: str | Path) -> Job:
        return cls(**json.loads(Path(path).read_text()))


def objective_values(rows: list[dict[str, Any]], sf: StudyFile) -> list[float]:
    out = []
    for o in sf.study.objectives:
        split, agg = o.metric.split(".")
        part = [r for r in rows if r["model"] == o.method and r["split"] == split]
        if not part:
            raise RuntimeError(f"objective {o.metric} of {o.method}: no {split} rows")
        out.append(float(evaluation.table(part).iloc[0][AGG_COLUMN[agg]]) / 100)
    return out


def use_allotted_cpus() -> None:
    """torch threads = the CPUs this process was given: STUDY_THREADS first (a packed SLURM
    job or the local executor splits its CPUs between trials), else SLURM's allocation (sites
    without cgroups do not pin CPUs, and torch would take every core of the node)."""
    n = os.environ.get("STUDY_THREADS") or os.environ.get("SLURM_CPUS_PER_TASK")
    if n and n.isdigit() and int(n) > 0:
        torch.set_num_threads(int(n))


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
            try:
                history = pipe.cache.meta(stages.parse_instance(rec.stage)[0].folder,
                                          rec.key).get("history") or []
            except (OSError, ValueError):
                history = []
        else:
            history = pipe.histories.get(rec.stage) or hub.records.get(rec.stage) or []
        out.append((seed, rec.stage, rec.hit, list(history)))
    for stage, records in hub.records.items():
        if stage not in seen and records:
            out.append((seed, stage, False, list(records)))
    return out


def run_job(job: Job, log: Any = print) -> str:
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
    trial.set_user_attr("worker", {"host": platform.node(), "pid": os.getpid(),
                                   "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                                   "gpu": gpu, "started": time.time()})
    faults.rendezvous()   # the storage concurrency test only
    attempt = int(frozen.user_attrs.get("attempt", 1))
    sdir = storage.study_dir(job.results, job.study_name)
    beat = progress.Heartbeat(progress.heartbeat_path(sdir, job.trial),
                              {"study": job.study_name, "trial": job.trial, "attempt": attempt,
                               "gpu": gpu}).start()
    state = "died"   # what the last beat says if the worker raises (a full disk)
    try:
        state = _run_trial(job, log, ld, store, st, trial, trial_id, frozen, sdir, gpu, beat)
    finally:
        beat.stop(state)
    return state


def _run_trial(job: Job, log: Any, ld: studyfile.LoadedStudy,
               store: optuna.storages.BaseStorage, st: optuna.Study, trial: optuna.Trial,
               trial_id: int, frozen: optuna.trial.FrozenTrial, sdir: Path, gpu: str | None,
               beat: progress.Heartbeat) -> str:
    values = frozen.user_attrs.get("values", {})
    attempt = int(frozen.user_attrs.get("attempt", 1))
    quiet = progress.log_level() == "warning"
    stage_log = (lambda _: None) if quiet else log
    attr = ProgressAttr(trial)
    t0 = time.perf_counter()
    seeds: list[tuple[int, list[dict[str, Any]]]] = []
    first: PipelineResult | None = None
    state, error, fail_kind, objs = "COMPLETE", None, None, []
    fail_reason: str | None = None
    sf: StudyFile | None = None
    final: str | None = None
    runs: list[tuple[int, Pipeline, progress.Progress]] = []
    try:
        sf = ld.trial_config(values)
        final = (stages.METHODS[sf.study.objectives[0].method].watched_stage(sf.pipeline)
                 if len(sf.study.objectives) == 1 else None)

        def on_epoch(epoch: int, val: float | None) -> None:
            if val is None:
                return
            trial.report(val, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} (val {val:.4f})")

        for r in range(sf.study.replicates):
            seed = sf.pipeline.seed + r
            cfg = sf.pipeline.model_copy(update={"seed": seed})
            hub = progress.Progress.from_env(
                log, listeners=[beat, attr],
                prefix=f"trial {job.trial}" + (f" seed {seed}" if sf.study.replicates > 1
                                               else ""))
            pipe = Pipeline(cfg, StageCache(job.cache), log=stage_log,
                            on_epoch=on_epoch if r == 0 else None, final_stage=final,
                            progress=hub)
            runs.append((seed, pipe, hub))
            res = pipe.run()
            first = first or res
            seeds.append((seed, [dict(row) for row in res.rows]))
        objs = objective_values([row for _, rows in seeds for row in rows], sf)
    except optuna.TrialPruned as e:
        state, error = "PRUNED", str(e)
        if runs and final is not None:
            # A pruned trial never resumes its watched stage, so its epoch checkpoint (for
            # ResNet56 ~14 MB: weights, best weights, two RAdam moments; one per pruned trial)
            # would only stay behind; a killed worker's stays, for its requeue to resume from.
            pruned = runs[0][1]
            pruned.checkpoint_path(final, pruned.key(final)).unlink(missing_ok=True)
    except Exception as e:  # noqa: BLE001 - a trial's own error fails that trial, once
        if atomic.is_disk_full(e):
            raise   # not the trial's fault: the worker dies, the launcher retries the trial
        state, error = "FAIL", "".join(traceback.format_exception(e))
        fail_kind, fail_reason = classify_failure(e, ld)
    # a pruned first replicate has no result, but its pipeline knows what it built or loaded
    # (the compute summary counts a pruned trial's stages too)
    records = first.stages if first else (runs[0][1].stages if runs else [])
    stage_info = {s.stage: {"key": s.key, "hit": s.hit, "build_s": s.build_s}
                  for s in records}
    prov = results.provenance()
    extra = {"wall_s": time.perf_counter() - t0, "error": error, "fail_kind": fail_kind,
             "fail_reason": fail_reason,
             "device": first.device if first else None, "gpu": gpu,
             "amp": sf.pipeline.compute.amp if sf else None,
             "protocol": sf.pipeline.protocol if sf else None,
             "config_json": sf.pipeline.model_dump() if sf else None, **prov}
    n_obj = len(ld.sf.study.objectives)
    df = results.trial_frame(
        study_name=job.study_name, trial=job.trial, attempt=attempt, state=state,
        seed_rows=seeds, params=values,
        param_dtypes={p.name: p.column_dtype for p in ld.space.params},
        stages=stage_info, values=objs or [None] * n_obj, extra=extra)
    if store.get_trial(trial_id).state != TrialState.RUNNING:   # retried elsewhere meanwhile
        log(f"trial {job.trial} was finished by someone else; result not written")
        return "STALE"
    # The launcher may fail this trial between the check above and the tell below (a job
    # that SLURM cancelled runs on for KillWait seconds): whoever writes the file first wins,
    # and the loser tells nothing, so Parquet and storage agree.
    if results.write_trial(sdir, job.trial, df, replace=False) is None:
        log(f"trial {job.trial}: a result is already on disk; this one is not written")
        return "STALE"
    try:   # the learning curves: a view of the trial, never a reason to lose its result
        results.write_curves(sdir, job.trial, results.curve_frame(
            study_name=job.study_name, trial=job.trial, state=state,
            histories=[h for seed, p, hub in runs for h in curve_histories(p, hub, seed)]))
    except (OSError, ValueError, TypeError) as e:
        log(f"trial {job.trial}: learning curves not written ({e})")
    attr.flush()
    try:
        trial.set_user_attr("provenance", prov)
        trial.set_user_attr("stages", stage_info)
        trial.set_user_attr("wall_s", extra["wall_s"])
        if error:
            trial.set_user_attr("error", error[-4000:])
        if fail_kind:
            trial.set_user_attr("fail_kind", fail_kind)
            trial.set_user_attr("fail_reason", fail_reason)
        if fail_kind in RETRYABLE:
            # decided here: a finished trial's attributes are frozen; the launcher enqueues
            # the retry (same parameters, attempt + 1) when it next looks
            trial.set_user_attr("retried", attempt <= ld.sf.executor.retries)
        if state == "COMPLETE":
            st.tell(job.trial, objs)
        else:
            st.tell(job.trial, state=TrialState[state])
    except (RuntimeError, ValueError):
        if store.get_trial(trial_id).state == TrialState.RUNNING:
            raise
        log(f"trial {job.trial} was finished by someone else meanwhile; not told")
        return "STALE"
    log(f"trial {job.trial}: {state}" + (f" {objs}" if objs else "") +
        (f"\n{error}" if state == "FAIL" else ""))
    return state


def classify_failure(e: BaseException, ld: studyfile.LoadedStudy) -> tuple[str, str]:
    """A failed trial's cause and its one-line reason (the traceback stays in `error` and the
    trial's log). "timeout": submitit gave up requeueing a job that kept reaching its time
    limit; its epoch checkpoints let a retry finish, so the launcher retries it. "config": the
    trial's configuration is invalid (whole-space validation should have caught it). "code":
    anything else, which a retry would repeat."""
    if isinstance(e, UncompletedJobError) and "timed-out" in str(e):
        s = ld.sf.executor.slurm
        return "timeout", (f"the job reached its time limit (executor.slurm.time_min={s.time_min}"
                           f") more often than it may be requeued (executor.slurm.max_requeues="
                           f"{s.max_requeues}); retried from its checkpoints within "
                           "executor.retries; raise executor.slurm.time_min")
    if isinstance(e, UncompletedJobError):   # preempted and not requeued
        return "infrastructure", f"the job was not requeued: {e}"
    first_line = (str(e).strip().splitlines() or [""])[0][:300]
    if any(s in str(e) for s in ("No space left on device", "Disk quota exceeded")):
        # a library wrapped the OSError (torch.save: RuntimeError): the launcher stops on the
        # full disk itself, and neither a retry nor the breaker would help
        return "disk_full", f"{type(e).__name__}: {first_line}"
    if isinstance(e, (StudyError, pydantic.ValidationError)):
        return "config", f"{type(e).__name__}: {first_line}"
    frames = traceback.extract_tb(e.__traceback__)
    where = ""
    if frames:
        f = frames[-1]
        where = f" (at {Path(f.filename).name}:{f.lineno} in {f.name})"
    return "code", f"{type(e).__name__}: {first_line}{where}"


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
