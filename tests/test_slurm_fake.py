"""The SLURM executor's decisions against a fake sbatch/sacct/squeue/scancel on PATH: states the
real single-node cluster reaches only slowly or never (NODE_FAIL, OUT_OF_MEMORY, accounting
down, a job sacct does not know yet). The real cluster runs the same code in test_slurm_*."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from study import adapter, launcher, results, storage, studyfile
from study.executors import slurm
from study.executors.base import JobFiles

# the column of the smoke study's objective
OBJECTIVE = results.objective_column("fusiondistill", "val.avg")

QUICK = ["data.synthetic_train=300", "data.val_size=60", "data.synthetic_test=60",
         "executor.backend=slurm", "executor.slurm.time_min=7",
         "executor.slurm.signal_delay_s=30"]

FAKE = r'''#!/usr/bin/env python3
"""A fake SLURM command: its state is a JSON file (FAKE_SLURM_STATE)."""
import json, os, sys
path = os.environ["FAKE_SLURM_STATE"]
state = json.load(open(path))
cmd, args = os.path.basename(sys.argv[0]), sys.argv[1:]
state.setdefault("calls", []).append([cmd, *args])
if cmd == "sbatch":
    state["next"] = state.get("next", 100) + 1
    jid = str(state["next"])
    script = open(args[-1]).read()
    state.setdefault("scripts", {})[jid] = script
    state.setdefault("jobs", {})[jid] = "PENDING"
    print(f"Submitted batch job {jid}")
elif cmd == "sacct":
    if state.get("accounting_down"):
        print("sacct: error: Problem talking to the database", file=sys.stderr)
        json.dump(state, open(path, "w"))
        sys.exit(1)
    ids = args[args.index("-j") + 1].split(",")
    for j in ids:
        if j in state.get("jobs", {}):
            print(f"{j}|{state['jobs'][j]}")
elif cmd == "squeue":
    ids = args[args.index("-j") + 1].split(",")
    for j in ids:
        if state.get("jobs", {}).get(j) in ("PENDING", "RUNNING"):
            print(f"{j} {state['jobs'][j]}")
elif cmd == "scancel":
    for j in args:
        state["jobs"][j] = "CANCELLED by 0"
json.dump(state, open(path, "w"))
'''


@pytest.fixture()
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for cmd in ("sbatch", "sacct", "squeue", "scancel"):
        p = bin_dir / cmd
        p.write_text(FAKE)
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    state = tmp_path / "slurm-state.json"
    state.write_text("{}")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_STATE", str(state))
    return state


def _set_jobs(state: Path, **kw: object) -> None:
    s = json.loads(state.read_text())
    s.update(kw)
    state.write_text(json.dumps(s))


def test_states_parsed_with_squeue_fallback(fake_slurm: Path) -> None:
    _set_jobs(fake_slurm, jobs={"11": "RUNNING", "12": "CANCELLED by 0", "13": "NODE_FAIL"})
    assert slurm.sacct_states(["11", "12", "13", "99"]) == {
        "11": "RUNNING", "12": "CANCELLED", "13": "NODE_FAIL"}
    _set_jobs(fake_slurm, accounting_down=True)     # slurmdbd down: squeue still knows
    assert slurm.sacct_states(["11", "12"]) == {"11": "RUNNING"}


@pytest.mark.parametrize(("state", "alive"), [
    ("PENDING", True), ("RUNNING", True), ("REQUEUED", True), ("COMPLETING", True),
    ("SUSPENDED", True), ("COMPLETED", False), ("FAILED", False), ("TIMEOUT", False),
    ("NODE_FAIL", False), ("OUT_OF_MEMORY", False), ("PREEMPTED", False),
    ("CANCELLED by 0", False), ("BOOT_FAIL", False), ("DEADLINE", False)])
def test_alive_by_sacct_state(fake_slurm: Path, tmp_path: Path, state: str, alive: bool) -> None:
    _set_jobs(fake_slurm, jobs={"21": state})
    ex = slurm.SlurmExecutor(studyfile.load("smoke.yaml", QUICK).sf.executor.slurm,
                             tmp_path / "jobs", "s")
    ex.refresh([{"kind": "slurm", "job_id": "21"}])
    assert ex.alive({"kind": "slurm", "job_id": "21", "submitted": time.time() - 3600},
                    None) is alive


def test_job_sacct_does_not_know_yet(fake_slurm: Path, tmp_path: Path) -> None:
    ex = slurm.SlurmExecutor(studyfile.load("smoke.yaml", QUICK).sf.executor.slurm,
                             tmp_path / "jobs", "s")
    ex.refresh([{"kind": "slurm", "job_id": "31"}])
    assert ex.alive({"job_id": "31", "submitted": time.time()}, None)          # just submitted
    old = time.time() - slurm.UNKNOWN_GRACE_S - 1
    assert not ex.alive({"job_id": "31", "submitted": old}, None)              # vanished


def test_submission_script_dependencies_and_requeue_budget(fake_slurm: Path,
                                                           tmp_path: Path) -> None:
    sets = [*QUICK, "executor.slurm.max_requeues=4", "executor.parallel=2",
            "executor.slurm.trials_per_job=2"]
    ex = slurm.SlurmExecutor(studyfile.load("smoke.yaml", sets).sf.executor.slurm,
                             tmp_path / "jobs", "s")
    ex.dependency = ["7"]
    _set_jobs(fake_slurm, jobs={"7": "RUNNING"})
    files = [JobFiles(tmp_path / f"trial-{i}.json", tmp_path / f"trial-{i}.log")
             for i in range(2)]
    handle = ex.submit(files)
    script = json.loads(fake_slurm.read_text())["scripts"][handle["job_id"]]
    assert handle["packed"] == 2
    assert "#SBATCH --time=7" in script and "#SBATCH --signal=USR2@30" in script
    assert "#SBATCH --dependency=afterany:7" in script
    assert "#SBATCH --open-mode=append" in script
    # the requeue budget reaches submitit (its countdown of timeouts), not only the docs
    assert adapter.requeue_budget(ex.auto_executor("x", 7)) == 4
    _set_jobs(fake_slurm, jobs={"7": "COMPLETED", handle["job_id"]: "RUNNING"})
    second = ex.submit(files[:1])                   # the stage job ended: no dependency now
    script = json.loads(fake_slurm.read_text())["scripts"][second["job_id"]]
    assert "--dependency" not in script and "packed" not in second


def test_reconcile_decides_per_state(fake_slurm: Path, tmp_path: Path) -> None:
    """Three trials in flight: RUNNING stays; NODE_FAIL without a result is an infrastructure
    failure, retried; COMPLETED with its Parquet file (the worker died before telling) is
    recovered, not rerun."""
    ld = studyfile.load("smoke.yaml", [*QUICK, "study.name=fk"])
    url = storage.storage_url(ld.sf, tmp_path)
    store = storage.open_storage(url)
    st = storage.load_or_create(ld.sf, store, optuna.samplers.RandomSampler(seed=0),
                                optuna.pruners.NopPruner())
    stored = storage.StoredStudy(ld, st, store, url, storage.study_dir(tmp_path, "fk"))
    ex = slurm.SlurmExecutor(ld.sf.executor.slurm, tmp_path / "jobs", "fk")
    lau = launcher.Launcher(stored, ex, cache_dir=str(tmp_path / "cache"), parallel=3,
                            retries=2, log=lambda m: None)
    jobs = {"41": "RUNNING", "42": "NODE_FAIL", "43": "COMPLETED"}
    for jid in jobs:
        trial = st.ask()
        trial.set_user_attr("values", ld.space.sample(trial))
        trial.set_user_attr("job", {"kind": "slurm", "job_id": jid, "submitted": 0})
    _set_jobs(fake_slurm, jobs=jobs)
    results.write_trial(stored.study_dir, 2, results.trial_frame(
        study_name="fk", trial=2, attempt=1, state="COMPLETE", seed_rows=[], params={},
        param_columns={}, stages={}, objectives={OBJECTIVE: 0.75}, extra={}), result_id=None)
    lau.reconcile()
    running, node_fail, done = st.trials[:3]
    assert running.state == TrialState.RUNNING
    assert node_fail.state == TrialState.FAIL and node_fail.user_attrs["retried"]
    assert node_fail.user_attrs["fail_kind"] == "infrastructure"
    assert done.state == TrialState.COMPLETE and done.value == 0.75
    assert [t.user_attrs.get("retry_of") for t in st.trials[3:]] == [1]
    calls = [c[0] for c in json.loads(fake_slurm.read_text())["calls"]]
    assert calls.count("sacct") == 1                # one sacct call for every job in flight
