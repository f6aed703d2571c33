"""A real time limit on the local cluster, the path of a day-long study on a cluster with short
limits: SLURM sends USR2 before the 1-minute limit, submitit requeues the job, the rerun
resumes from the epoch checkpoint; once the requeue budget is spent, the trial fails with
fail_kind "timeout" (not "code") and the launcher retries it, and the retry resumes from the
same checkpoint and completes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from figures import record
from optuna.trial import TrialState
from toy_studies import journal_study

ROOT = Path(__file__).resolve().parents[1]
STUDY = [sys.executable, "-m", "study.cli"]
# Distillation alone in the trial job (base and expert are stage jobs with 10 minutes). slurmctld
# looks at time limits every 30 s, so USR2, due 45 s before the 1-minute limit (15 s in), reaches
# a run 15-45 s after it starts, ~4-8 s of which is start-up. Unpaced, the epochs a run trains
# depended on the machine: 120 epochs of 1,200 images took ~1.0 s each on one 2-core box (three
# attempts) and ~0.5 s on another, whose first attempt finished them all. With every epoch held
# to at least 1.5 s (STUDY_EPOCH_FLOOR_S), a run trains at most 41/1.5 = 27 epochs and the first
# attempt (one requeue: two runs) at most 54 of the 72, however fast the machine; the retries
# (executor.retries=6: up to 12 runs more, ~20 epochs each) finish them from the checkpoint.
EPOCH_FLOOR_S = "1.5"
SETS = ["data.synthetic_train=1200", "data.val_size=100", "data.synthetic_test=100",
        "degradations=[jpeg]", "methods=[fusiondistill]", "base.epochs=1", "expert.epochs=1",
        "distill.epochs=72", "distill.milestones=[54]", "eval.test_level_step=50",
        "eval.val_level_step=50", "study.pruner=none", "executor.slurm.preset=local",
        "executor.slurm.time_min=1", "executor.slurm.stage_time_min=10",
        "executor.slurm.signal_delay_s=45", "executor.slurm.max_requeues=1", "executor.retries=6"]


@pytest.mark.slurm
@pytest.mark.slow
def test_time_limit_requeues_and_resumes(slurm_cluster: str, tmp_path: Path) -> None:
    name = f"tlimit{os.getpid()}"
    cmd = [*STUDY, "launch", "--space", "smoke.yaml", "--executor", "slurm", "--parallel", "1",
           "--n-trials", "1", "--results", str(tmp_path),
           *[x for s in [*SETS, f"study.name={name}"] for x in ("--set", s)]]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=840,
                       env={**os.environ, "STUDY_EPOCH_FLOOR_S": EPOCH_FLOOR_S})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    st = journal_study(tmp_path, name)
    first, *retries = st.trials
    final = retries[-1] if retries else first
    def log(t: object) -> str:
        job = t.user_attrs["job"]["job_id"]   # type: ignore[attr-defined]
        folder = tmp_path / name / "jobs" / "slurm" / job
        return "\n".join(p.read_text(errors="replace")
                         for p in sorted(folder.glob(f"{job}_0_log.*")))

    # the first attempt: USR2, requeued once (the same job id), resumed past epoch 1, then
    # out of requeues: a timeout failure whose reason names the setting to raise
    text = log(first)
    assert first.state == TrialState.FAIL and first.user_attrs["fail_kind"] == "timeout"
    assert "executor.slurm.time_min=1" in first.user_attrs["fail_reason"]
    assert re.search(r"Caught signal SIGUSR2.*this job is timed-out", text), text[-3000:]
    requeues = len(re.findall(r"Requeued job \d+", text))
    assert requeues == 1, text[-3000:]
    after = text.split("Requeued job", 1)[1]
    first_epoch_after = int(re.search(r"fusiondistill\s+epoch (\d+)/72", after).group(1))
    assert first_epoch_after > 1, after[:2000]                   # resumed, not restarted
    # the retries: the same values, one attempt more each, the last one to the end, resumed
    assert retries and final.state == TrialState.COMPLETE
    assert [t.user_attrs["attempt"] for t in st.trials] == list(range(1, len(st.trials) + 1))
    assert [t.user_attrs["retry_of"] for t in retries] == list(range(len(retries)))
    assert all(t.user_attrs["values"] == first.user_attrs["values"] for t in retries)
    assert all(t.user_attrs["fail_kind"] == "timeout" for t in st.trials[:-1])
    resumed = int(re.search(r"fusiondistill\s+resumed\s+from epoch (\d+)", log(final)).group(1))
    assert resumed >= first_epoch_after
    record("slurm_time_limit", attempts=len(st.trials), requeues_first_attempt=requeues,
           resumed_after_requeue=first_epoch_after, last_attempt_resumed_from=resumed,
           wall_s=(final.datetime_complete - first.datetime_start).total_seconds())
