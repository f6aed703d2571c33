"""`executor.retries`: a configuration whose worker keeps vanishing (or keeps timing out) runs
exactly 1 + executor.retries times, each attempt counted, through the launcher's real paths.

docs/design.md: "retries trials whose worker vanished (up to `executor.retries` times, with the
same parameters)". One retry too few loses results a cluster hiccup should not cost; one too
many spends GPU hours on a configuration that cannot run. The oracle is that sentence: for
retries = k the study holds k + 1 trials of the same parameters, attempts 1 .. k + 1, each but
the last marked retried.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from toy_studies import journal_study

from study import cli, executors, launcher, storage, studyfile
from study.executors import LocalExecutor

# A pipeline of a few seconds, as tests/test_launch.py runs it (no trial trains here: every
# worker vanishes or times out before its pipeline starts).
QUICK = ["data.synthetic_train=500", "data.val_size=100", "data.synthetic_test=100",
         "degradations=[jpeg, awgn]", "base.epochs=1", "expert.epochs=1", "distill.epochs=2",
         "distill.milestones=[1]", "fusing.epochs=1", "fusing.milestones=[1]",
         "eval.test_level_step=50", "eval.val_level_step=50", "study.pruner=none",
         "study.baseline=false"]


def _sets(*overrides: str) -> list[str]:
    return [x for s in [*QUICK, *overrides] for x in ("--set", s)]


def _check_chain(trials: list[FrozenTrial], retries: int, fail_kind: str) -> None:
    """k + 1 attempts of one configuration, each a FAIL of `fail_kind`, chained by retry_of,
    all but the last retried."""
    assert len(trials) == retries + 1, [t.user_attrs.get("attempt") for t in trials]
    assert [t.user_attrs["attempt"] for t in trials] == list(range(1, retries + 2))
    assert all(t.state == TrialState.FAIL for t in trials)
    assert all(t.user_attrs["fail_kind"] == fail_kind for t in trials)
    assert [bool(t.user_attrs.get("retried")) for t in trials] == [True] * retries + [False]
    assert [t.user_attrs.get("retry_of") for t in trials] == [None, *range(retries)]
    assert all(t.user_attrs["values"] == trials[0].user_attrs["values"] for t in trials)
    assert all(t.params == trials[0].params for t in trials)


# ---------------------------------------------------------------- reconcile, attempt by attempt
@pytest.mark.parametrize("retries", [0, 1, 3])
def test_a_vanished_worker_is_retried_exactly_executor_retries_times(
        retries: int, tmp_path: Path) -> None:
    """Each attempt's worker is a process that already ended (how tests/test_launch.py
    simulates a vanished worker); the launcher's reconcile fails it and enqueues the retry
    until the attempts run out."""
    name = f"van{retries}"
    ld = studyfile.load("smoke.yaml", [*QUICK, f"study.name={name}",
                                       f"executor.retries={retries}"])
    url = storage.storage_url(ld.sf, tmp_path)
    store = storage.open_storage(url)
    st = storage.load_or_create(ld.sf, store, optuna.samplers.RandomSampler(seed=0),
                                optuna.pruners.NopPruner())
    stored = storage.StoredStudy(ld, st, store, url, storage.study_dir(tmp_path, name))
    # as `study launch` builds it (launcher._launch_locked): the retries of the study file
    launch = launcher.Launcher(stored, LocalExecutor(), cache_dir=str(tmp_path / "cache"),
                               parallel=1, retries=ld.sf.executor.retries, log=lambda m: None)
    for _ in range(retries + 5):            # bounded: a runaway retry loop fails, not hangs
        trial = st.ask()                    # a new trial first, then each enqueued retry
        trial.set_user_attr("values", ld.space.sample(trial))
        if trial.user_attrs.get("attempt") is None:
            trial.set_user_attr("attempt", 1)
        dead = subprocess.Popen(["true", str(launch.job_path(trial.number))])
        dead.wait()
        trial.set_user_attr("job", {"kind": "local", "pid": dead.pid,
                                    "host": os.uname().nodename,
                                    "marker": str(launch.job_path(trial.number))})
        launch.reconcile()
        if not st.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            break
    _check_chain(st.get_trials(), retries, "infrastructure")


# ---------------------------------------------------------------- `study launch`, end to end
class VanishingWorkers(LocalExecutor):
    """The local executor whose every worker dies at once, before it registers with its trial
    (a node lost, an OOM kill): a real process, ended and reaped by the time submit returns."""

    def submit(self, trials: Sequence[executors.JobFiles]) -> executors.Handle:
        (t,) = trials
        p = subprocess.Popen(["true", str(t.job)])
        p.wait()
        return {"kind": self.name, "pid": p.pid, "host": platform.node(), "marker": str(t.job),
                "submitted": time.time(), "gpu": None}


@pytest.mark.parametrize("retries", [0, 2])
def test_study_launch_runs_a_vanishing_configuration_retries_plus_one_times(
        retries: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole `study launch`: executor.retries from the study file to the launcher, the
    launcher's loop, reconcile and retry. One trial asked; it never completes: exit 3."""
    monkeypatch.setitem(executors.EXECUTORS, "local", VanishingWorkers)
    name = f"gone{retries}"
    rc = cli.main(["launch", "--space", "smoke.yaml", "--executor", "local", "--parallel", "1",
                   "--results", str(tmp_path), "--n-trials", "1",
                   *_sets(f"study.name={name}", f"executor.retries={retries}")])
    assert rc == 3   # finished trials, none completed
    _check_chain(journal_study(tmp_path, name).get_trials(), retries, "infrastructure")


def test_a_trial_that_keeps_timing_out_is_retried_executor_retries_times(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that reports its own retryable failure (a SLURM job out of requeues after time
    limits, classified `timeout` by the SLURM executor): the worker marks it retried while
    attempts remain, the launcher enqueues the retry. Run as in tests/test_launch.py: each
    trial through the SLURM job's entry point, in this process; the pipeline raises what
    submitit raises there, every time."""
    from submitit.core.utils import UncompletedJobError

    from study import pipeline
    from study.executors.slurm import TrialJob

    class SlurmJobsInline(executors.DebugExecutor):
        def submit(self, trials: Sequence[executors.JobFiles]) -> executors.Handle:
            for t in trials:
                TrialJob(str(t.job))()
            return {"kind": self.name}

    def times_out(self: pipeline.Pipeline) -> pipeline.PipelineResult:
        raise UncompletedJobError("Job not requeued because: timed-out too many times.")

    monkeypatch.setitem(executors.EXECUTORS, "debug", SlurmJobsInline)
    monkeypatch.setattr(pipeline.Pipeline, "run", times_out)
    retries = 2
    rc = cli.main(["launch", "--space", "smoke.yaml", "--executor", "debug", "--parallel", "1",
                   "--results", str(tmp_path), "--n-trials", "1",
                   *_sets("study.name=tmo", f"executor.retries={retries}",
                          "degradations=[jpeg]", "methods=[fusiondistill]")])
    assert rc == 3
    trials = journal_study(tmp_path, "tmo").get_trials()
    _check_chain(trials, retries, "timeout")
    assert all("executor.slurm.time_min" in t.user_attrs["fail_reason"] for t in trials)
