"""`study launch` against the real local SLURM cluster: a job per trial, shared stages as a job
graph, requeue, scancel, code errors, --detach, cancel; and the generated sbatch script."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from figures import record
from optuna.trial import TrialState
from toy_studies import finished, journal_study, wait

from study.executors.slurm import sbatch_script
from study.studyfile import load

ROOT = Path(__file__).resolve().parents[1]
STUDY = [sys.executable, "-m", "study.cli"]
GOLDEN = Path(__file__).parent / "golden"
QUICK = ["data.synthetic_train=500", "data.val_size=100", "data.synthetic_test=100",
         "degradations=[jpeg, awgn]", "base.epochs=1", "expert.epochs=1", "distill.epochs=2",
         "distill.milestones=[1]", "fusing.epochs=1", "fusing.milestones=[1]",
         "eval.test_level_step=50", "eval.val_level_step=50", "study.pruner=none",
         "methods=[fusiondistill]", "executor.slurm.preset=local"]


def _sets(*extra: str) -> list[str]:
    return [x for s in [*QUICK, *extra] for x in ("--set", s)]


def _sacct(*fields: str) -> list[dict[str, str]]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-a", "-S", "now-1hours", "-o",
                          ",".join(fields)], capture_output=True, text=True, timeout=60).stdout
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line]


@pytest.mark.parametrize("preset", ["local", "gpu", "node"])
def test_generated_sbatch_script_matches_golden_file(preset: str, tmp_path: Path) -> None:
    sf = load("smoke.yaml", [f"executor.slurm.preset={preset}", "executor.slurm.account=proj42"],
              check_space=False).sf
    text = sbatch_script(sf.executor.slurm, tmp_path / "jobs")
    text = text.replace(str(tmp_path), "<folder>").replace(sys.executable, "<python>")
    golden = GOLDEN / f"sbatch_{preset}.sh"
    if os.environ.get("STUDY_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()
    assert "#SBATCH --account=proj42" in text and "#SBATCH --signal=USR2@" in text


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_study_with_stage_graph_and_packed_trials(slurm_cluster: str,
                                                        tmp_path: Path) -> None:
    """Shared stages as a job graph; two trials per job (processes sharing the job), so 5 trials
    at parallel 4 are 3 jobs: two full packs, then the last trial alone."""
    name = f"graph{os.getpid()}"
    cmd = [*STUDY, "launch", "--space", "smoke.yaml", "--executor", "slurm", "--parallel", "4",
           "--n-trials", "5", "--results", str(tmp_path),
           *_sets(f"study.name={name}", "executor.slurm.trials_per_job=2")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    st = journal_study(tmp_path, name)
    assert len(finished(st)) == 5 and all(t.state == TrialState.COMPLETE for t in st.trials)
    per_job: dict[str, list[int]] = {}
    for t in st.trials:
        per_job.setdefault(t.user_attrs["job"]["job_id"], []).append(t.number)
    assert sorted(len(v) for v in per_job.values()) == [1, 2, 2]
    # each trial of a pack ran in its own process and logged to its own file
    pids = {t.user_attrs["worker"]["pid"] for t in st.trials}
    assert len(pids) == 5
    packed = [t for t in st.trials if t.user_attrs["job"].get("packed") == 2]
    assert len(packed) == 4
    assert all("COMPLETE" in (tmp_path / name / "jobs" / f"trial-{t.number:06d}.log").read_text()
               for t in packed)
    jobs = [j for j in _sacct("JobIDRaw", "JobName", "Start", "End", "State")
            if j["JobName"].startswith(f"study-{name}")]
    by_name: dict[str, list[dict[str, str]]] = {}
    for j in jobs:
        by_name.setdefault(j["JobName"], []).append(j)
    # base and each expert ran as exactly one job; the trials as three more
    assert len(by_name[f"study-{name}-base"]) == 1
    assert len(by_name[f"study-{name}-expert_jpeg"]) == 1
    assert len(by_name[f"study-{name}-expert_awgn"]) == 1
    assert {j["JobIDRaw"] for j in by_name[f"study-{name}"]} == set(per_job)
    base_end = by_name[f"study-{name}-base"][0]["End"]
    experts_end = max(by_name[f"study-{name}-expert_{d}"][0]["End"] for d in ("jpeg", "awgn"))
    assert all(by_name[f"study-{name}-expert_{d}"][0]["Start"] >= base_end
               for d in ("jpeg", "awgn"))
    assert all(t["Start"] >= experts_end for t in by_name[f"study-{name}"])
    df = pd.read_parquet(tmp_path / name / "summary")
    assert df.trial.nunique() == 5
    assert df.groupby("trial").first().hit_expert_jpeg.all()     # no trial trained an expert
    assert df.host.notna().all() and df.device.eq("cpu").all()


@pytest.mark.slurm
def test_config_error_fails_once_and_the_launch_exits_3(slurm_cluster: str,
                                                       tmp_path: Path) -> None:
    """A trial job whose data is missing. (A requeue that resumes and a scancel that retries
    are test_faults_kills' SLURM study and test_slurm_timelimit's real time limit.)"""
    name = f"faults{os.getpid()}"
    # a trial whose data is missing fails once as a configuration error, not retried; the
    # launch ends with no completed trial: exit 3
    bad = [*STUDY, "launch", "--space", "smoke.yaml", "--executor", "slurm", "--n-trials", "1",
           "--results", str(tmp_path),
           *_sets(f"study.name={name}-err", "data.dataset=imagefolder",
                  f"data.root={tmp_path}/missing")]
    r = subprocess.run(bad, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 3, r.stdout[-3000:] + r.stderr[-3000:]
    assert "none completed" in r.stderr and "DataNotFoundError" in r.stderr
    st = journal_study(tmp_path, f"{name}-err")
    assert [t.state for t in st.trials] == [TrialState.FAIL]
    assert st.trials[0].user_attrs["fail_kind"] == "config"
    df = pd.read_parquet(tmp_path / f"{name}-err" / "summary")
    assert "DataNotFoundError" in df.error.iloc[0]


@pytest.mark.slurm
@pytest.mark.slow
def test_detach_returns_fast_and_study_completes(slurm_cluster: str, tmp_path: Path) -> None:
    name = f"detach{os.getpid()}"
    cmd = [*STUDY, "launch", "--space", "smoke.yaml", "--executor", "slurm", "--parallel", "2",
           "--n-trials", "2", "--detach", "--results", str(tmp_path),
           *_sets(f"study.name={name}")]
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    record("slurm_detach", seconds=took)
    assert "detached" in r.stdout
    # it returned before any trial could finish: the driver job runs them, not this command
    assert finished(journal_study(tmp_path, name)) == []
    driver = journal_study(tmp_path, name).user_attrs["driver"]
    assert driver["kind"] == "slurm"
    status = [*STUDY, "status", "--space", "smoke.yaml", "--results", str(tmp_path),
              *_sets(f"study.name={name}")]
    s = subprocess.run(status, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert s.returncode == 0 and f"launcher: slurm job {driver['job_id']}" in s.stdout
    assert wait(lambda: len(finished(journal_study(tmp_path, name))) == 2, 900)
    # no launcher process anywhere: the driver job ends by itself
    assert wait(lambda: not [j for j in _sacct("JobIDRaw", "State")
                              if j["JobIDRaw"] == driver["job_id"]
                              and j["State"] in ("RUNNING", "PENDING")], 120)
    s = subprocess.run(status, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert re.search(r"2/2 done \(complete 2", s.stdout), s.stdout
    assert not [p for p in subprocess.run(["pgrep", "-af", f"study.name={name}"],
                                          capture_output=True, text=True).stdout.splitlines()
                if "pgrep" not in p]
    json.dumps(driver)


@pytest.mark.slurm
def test_cancel_stops_a_detached_study(slurm_cluster: str, tmp_path: Path) -> None:
    name = f"cancel{os.getpid()}"
    sets = _sets(f"study.name={name}", "distill.epochs=20", "distill.milestones=[10]")
    cmd = [*STUDY, "launch", "--space", "smoke.yaml", "--executor", "slurm", "--parallel", "2",
           "--n-trials", "4", "--detach", "--results", str(tmp_path), *sets]
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=120).returncode == 0
    assert wait(lambda: any(t.state == TrialState.RUNNING and "job" in t.user_attrs
                             for t in journal_study(tmp_path, name).trials), 300)
    r = subprocess.run([*STUDY, "cancel", "--space", "smoke.yaml", "--results", str(tmp_path),
                        *sets], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    st = journal_study(tmp_path, name)
    assert not [t for t in st.trials if t.state == TrialState.RUNNING]
    assert any(t.user_attrs.get("fail_kind") == "cancelled" for t in st.trials)
    ids = [t.user_attrs["job"]["job_id"] for t in st.trials if "job" in t.user_attrs]
    ids.append(st.user_attrs["driver"]["job_id"])
    assert wait(lambda: not [j for j in _sacct("JobIDRaw", "State") if j["JobIDRaw"] in ids
                              and j["State"] in ("RUNNING", "PENDING")], 60)
