"""The local single-node SLURM cluster from slurm/ runs submitit jobs for real.

Needs root on Debian (the script apt-installs slurm-wlm, munge, slurmdbd, mariadb-server);
elsewhere the tests skip with the reason, except under CI=true, where they fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest
import submitit
from submitit.core.utils import UncompletedJobError
from toy_studies import wait

pytestmark = pytest.mark.slurm

@pytest.fixture(autouse=True)
def _by_value(slurm_cluster: str) -> Iterator[None]:
    # The jobs cannot import this test module (tests/ is not on their sys.path), so its
    # functions travel by value instead of by reference.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _executor(folder: Path, **params: object) -> submitit.AutoExecutor:
    # cluster= explicitly: with srun on PATH and no SLURM_CONF, auto-detection fails.
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(timeout_min=5, slurm_partition="debug", cpus_per_task=1, **params)
    return executor


def _add_in_job(a: int, b: int) -> tuple[int, str | None]:
    return a + b, os.environ.get("SLURM_JOB_ID")


def _sleep_span(seconds: float) -> tuple[float, float]:
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def _squeue_state(job_id: str) -> str:
    out = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True
    ).stdout
    return out.strip()


def _sacct_state(job_id: str) -> str:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"], capture_output=True, text=True
    ).stdout
    return out.strip()


def test_submit_returns_result_from_a_slurm_job(slurm_cluster: str, tmp_path: Path) -> None:
    job = _executor(tmp_path).submit(_add_in_job, 2, 3)
    total, job_id_inside = job.result()
    assert total == 5
    # The function really ran as that SLURM job, not in-process.
    assert job_id_inside == job.job_id


def test_job_array_of_four_runs_concurrently(slurm_cluster: str, tmp_path: Path) -> None:
    executor = _executor(tmp_path, slurm_array_parallelism=4)
    # 4 s of sleep leaves room for the ~1 s staggered start of 4 pythons on 2 cores.
    jobs = executor.map_array(_sleep_span, [4.0] * 4)
    assert len({job.job_id.split("_")[0] for job in jobs}) == 1, "expected one job array"
    spans = [job.result() for job in jobs]
    latest_start = max(start for start, _ in spans)
    earliest_end = min(end for _, end in spans)
    assert latest_start < earliest_end, f"array tasks did not overlap: {spans}"


def test_scancel_makes_result_raise_uncompleted(slurm_cluster: str, tmp_path: Path) -> None:
    job = _executor(tmp_path).submit(time.sleep, 300)
    try:
        assert wait(lambda: _squeue_state(job.job_id) == "RUNNING", timeout=30)
        subprocess.run(["scancel", job.job_id], check=True)
        # job.result() has no deadline of its own: run it in a daemon thread and give up
        # after 60 s (it took ~16 s on this setup: submitit polls sacct every few seconds).
        outcome: list[BaseException | object] = []

        def collect() -> None:
            try:
                outcome.append(job.result())
            except BaseException as error:  # noqa: BLE001
                outcome.append(error)

        waiter = threading.Thread(target=collect, daemon=True)
        waiter.start()
        waiter.join(timeout=60)
        assert outcome, "job.result() still waiting 60 s after scancel"
        assert isinstance(outcome[0], UncompletedJobError), outcome[0]
    finally:
        subprocess.run(["scancel", job.job_id], capture_output=True)


def test_sacct_lists_a_finished_job(slurm_cluster: str, tmp_path: Path) -> None:
    job = _executor(tmp_path).submit(_add_in_job, 1, 1)
    assert job.result()[0] == 2
    # slurmctld forwards job records to slurmdbd asynchronously; allow it a few seconds.
    assert wait(lambda: _sacct_state(job.job_id) == "COMPLETED", timeout=20), _sacct_state(
        job.job_id
    )
