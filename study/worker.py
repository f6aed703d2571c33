"""The worker entry point: `python -m study.worker JOB.json` runs one trial to a final state.

Read the trial's parameters from the study storage, run the pipeline (once per replicate seed),
report each epoch of the watched stage to the pruner, write the trial's Parquet file, then tell
the storage. The local executor starts it as a process, a SLURM job calls `run_job`, the debug
executor calls it in the launcher's own process.

Order matters for "nothing lost": the Parquet file is written before the tell, so a worker killed
in between leaves a result the launcher recovers instead of recomputing.
"""

from __future__ import annotations

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
import torch
from optuna.trial import TrialState

from study import atomic, evaluation, faults, results, stages, storage, studyfile
from study.cache import StageCache
from study.config import StudyFile
from study.pipeline import Pipeline, PipelineResult

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


def run_job(job: Job, log: Any = print) -> str:
    """Run one trial to a final state; returns the state name. Never raises for a trial's own
    error: that is a FAIL with its traceback, stored with the trial and in its Parquet row."""
    ld = (studyfile.load(job.study_file, job.overrides) if job.tree is None
          else studyfile.from_tree(job.tree, job.study_file))
    store = storage.open_storage(job.storage)
    st = optuna.load_study(study_name=job.study_name, storage=store)
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
    values = frozen.user_attrs.get("values", {})
    attempt = int(frozen.user_attrs.get("attempt", 1))
    sdir = storage.study_dir(job.results, job.study_name)
    t0 = time.perf_counter()
    seeds: list[tuple[int, list[dict[str, Any]]]] = []
    first: PipelineResult | None = None
    state, error, fail_kind, objs = "COMPLETE", None, None, []
    sf: StudyFile | None = None
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
            pipe = Pipeline(cfg, StageCache(job.cache), log=log,
                            on_epoch=on_epoch if r == 0 else None, final_stage=final)
            res = pipe.run()
            first = first or res
            seeds.append((seed, [dict(row) for row in res.rows]))
        objs = objective_values([row for _, rows in seeds for row in rows], sf)
    except optuna.TrialPruned as e:
        state, error = "PRUNED", str(e)
    except Exception as e:  # noqa: BLE001 - a trial's own error fails that trial, once
        if atomic.is_disk_full(e):
            raise   # not the trial's fault: the worker dies, the launcher retries the trial
        state, error, fail_kind = "FAIL", "".join(traceback.format_exception(e)), "code"
    stage_info = {s.stage: {"key": s.key, "hit": s.hit, "build_s": s.build_s}
                  for s in (first.stages if first else [])}
    prov = results.provenance()
    extra = {"wall_s": time.perf_counter() - t0, "error": error, "fail_kind": fail_kind,
             "device": first.device if first else None, "gpu": gpu,
             "amp": sf.pipeline.compute.amp if sf else None,
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
    try:
        trial.set_user_attr("provenance", prov)
        trial.set_user_attr("stages", stage_info)
        trial.set_user_attr("wall_s", extra["wall_s"])
        if error:
            trial.set_user_attr("error", error[-4000:])
        if fail_kind:
            trial.set_user_attr("fail_kind", fail_kind)
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    use_allotted_cpus()
    run_job(Job.read(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
