"""GPU placement: each worker process sees exactly one device, K trials spread over G GPUs.

This machine has no GPU, so the device lists are fake (CUDA_VISIBLE_DEVICES of the launcher or
of a SLURM allocation, or `executor.gpus` as a list); what is asserted is the environment each
worker really ran with, as it recorded it in its trial and its Parquet row.
"""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
from toy_studies import journal_study

from study.errors import ConfigError
from study.executors import placement
from study.executors.slurm import PackedTrialJob, StageJob, stage_groups

QUICK = ["data.synthetic_train=300", "data.val_size=60", "data.synthetic_test=60",
         "degradations=[jpeg]", "base.epochs=1", "base.milestones=[1]", "expert.epochs=1",
         "distill.epochs=1", "distill.milestones=[1]", "methods=[fusiondistill]",
         "eval.test_level_step=50", "eval.val_level_step=50", "study.pruner=none"]


def test_visible_devices_and_spread() -> None:
    assert placement.visible_devices("auto", {"CUDA_VISIBLE_DEVICES": "2,5"}) == ["2", "5"]
    assert placement.visible_devices([1], {"CUDA_VISIBLE_DEVICES": "2,5"}) == ["5"]
    assert placement.visible_devices("none", {"CUDA_VISIBLE_DEVICES": "2,5"}) == []
    with pytest.raises(ConfigError, match=r"key 'executor.gpus'.*indices below 2"):
        placement.visible_devices([3], {"CUDA_VISIBLE_DEVICES": "2,5"})
    assert placement.spread(5, ["0", "1"]) == ["0", "1", "0", "1", "0"]
    assert placement.spread(2, []) == [None, None]
    assert placement.least_loaded(["0", "1", "2"], ["0", "1", None, "0"]) == "2"
    assert placement.least_loaded(["0", "1"], ["1"]) == "0"


def test_packed_slurm_job_spreads_its_trials_over_the_allocation() -> None:
    job = PackedTrialJob([f"/jobs/trial-{i:06d}.json" for i in range(8)])
    envs = job.environments({"CUDA_VISIBLE_DEVICES": "0,1,2,3", "SLURM_CPUS_PER_TASK": "32"})
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "2", "3"] * 2
    assert {e["STUDY_THREADS"] for e in envs} == {"4"}
    alone = PackedTrialJob(["/jobs/a.json", "/jobs/b.json"]).environments(
        {"SLURM_CPUS_PER_TASK": "2"})   # a CPU job: no device to hand out
    assert all("CUDA_VISIBLE_DEVICES" not in e for e in alone)


def _record_device(folder: str, stage: str, seed: int) -> str:
    device = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    Path(folder, f"{stage}@{seed}").write_text(f"{device} {os.environ['STUDY_THREADS']}")
    return device


def test_expert_stage_job_trains_each_expert_on_its_own_gpu(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")   # a 4-GPU allocation
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "8")
    experts = [(f"expert_{d}", 0) for d in ("jpeg", "blur", "awgn", "saltpepper")]
    seen = StageJob(partial(_record_device, str(tmp_path)), experts)()
    assert seen == ["4", "5", "6", "7"]
    assert {(tmp_path / f"{s}@0").read_text() for s, _ in experts} == {
        "4 2", "5 2", "6 2", "7 2"}


def test_stage_jobs_group_the_experts_on_a_multi_gpu_node() -> None:
    """4 GPUs per job: the base alone, then ONE job for the four experts of a seed; with one
    GPU per job, one job per expert as before."""
    experts = [(f"expert_{d}", 0) for d in ("jpeg", "blur", "awgn", "saltpepper")]
    plan = [("base", 0), *experts, ("base", 1), ("expert_jpeg", 1)]
    assert stage_groups(plan, 4) == [[("base", 0)], experts, [("base", 1)], [("expert_jpeg", 1)]]
    assert stage_groups(plan, 1) == [[x] for x in plan]
    assert stage_groups(experts, 2) == [experts[:2], experts[2:]]   # base already cached


@pytest.mark.slow   # a local study: two worker processes, ~9 s on 2 cores
def test_local_workers_each_get_their_own_gpu(tmp_path: Path) -> None:
    """Two trials in flight on two (fake) GPUs: one each, recorded in storage and Parquet."""
    sets = [*QUICK, "study.name=gpus", "executor.gpus=[0, 1]"]
    argv = ["launch", "--space", "smoke.yaml", "--executor", "local", "--parallel", "2",
            "--n-trials", "2", "--results", str(tmp_path),
            *[x for s in sets for x in ("--set", s)]]
    r = subprocess.run([sys.executable, "-m", "study.cli", *argv], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    st = journal_study(tmp_path, "gpus")
    assert sorted(t.user_attrs["worker"]["gpu"] for t in st.trials) == ["0", "1"]
    assert sorted(t.user_attrs["job"]["gpu"] for t in st.trials) == ["0", "1"]
    df = pd.read_parquet(tmp_path / "gpus" / "summary")
    assert sorted(df.drop_duplicates("trial").gpu) == ["0", "1"]
    assert set(df.amp) == {"none"}
