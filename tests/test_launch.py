"""`study launch`: Optuna studies over the pipeline, resume, retries, Parquet, dashboard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from toy_studies import assert_parquet_schemas, finished, free_port, journal_study

from study import cli, launcher, results, storage, studyfile
from study.executors import LocalExecutor
from study.jobs import Job

# the column of the smoke study's objective
OBJECTIVE = results.objective_column("fusiondistill", "val.avg")

ROOT = Path(__file__).resolve().parents[1]
STUDY = [sys.executable, "-m", "study.cli"]
SHIPPED = sorted((ROOT / "search_spaces").glob("*.yaml"))
# A pipeline of a few seconds: one degradation, one epoch per stage, few levels.
QUICK = ["data.synthetic_train=500", "data.val_size=100", "data.synthetic_test=100",
         "degradations=[jpeg, awgn]", "base.epochs=1", "expert.epochs=1", "distill.epochs=2",
         "distill.milestones=[1]", "fusing.epochs=1", "fusing.milestones=[1]",
         "eval.test_level_step=50", "eval.val_level_step=50", "study.pruner=none"]
# QUICK with FusionDistill alone (the objective's method; it still trains base and experts), on
# 300 images, one epoch: what the in-process launches below check is the launcher (resume, top-up,
# refusal, job file), not the other six methods (~2/3 of a QUICK trial) nor a second epoch. 5
# debug trials: 19 s with QUICK. The local study below runs all seven methods.
QUICK_FD = [*QUICK, "methods=[fusiondistill]", "data.synthetic_train=300", "data.val_size=60",
            "data.synthetic_test=60", "distill.epochs=1", "distill.milestones=[]"]
# The shipped smoke study's every degradation and method, on fewer images, epochs and evaluation
# levels: the smoke preset's own scale is test_pipeline's acceptance run (`study run`).
SMOKE_SMALL = ["data.synthetic_train=500", "data.val_size=100", "data.synthetic_test=100",
               "base.epochs=1", "expert.epochs=1", "expert.t_max=1", "scratch.epochs=1",
               "scratch.milestones=[1]", "vanilla_ft.epochs=1", "vanilla_ft.milestones=[1]",
               "fusing.epochs=1", "fusing.milestones=[1]", "eval.test_level_step=50",
               "eval.val_level_step=50"]
SCHEMA = ["study", "trial", "attempt", "state", "seed", "model", "split", "degradation",
          "level", "accuracy", "n_images", "wall_s", "git_commit", "host", "device",
          "key_base", "hit_base", "param_distill.loss", "param_fusion.method"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_space_dry_runs(path: Path, capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    assert cli.main(["launch", "--space", str(path), "--dry-run", "--results",
                     str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "search space" in out and "fixed pipeline" in out and "each trial runs" in out
    assert not (tmp_path / path.stem).exists()   # a dry run writes nothing


def test_debug_study_runs_resumes_and_tops_up(tmp_path: Path) -> None:
    args = ["launch", "--space", "smoke.yaml", "--executor", "debug", "--results", str(tmp_path),
            *[x for s in QUICK_FD for x in ("--set", s)], "--set", "study.name=dbg"]
    assert cli.main([*args, "--n-trials", "3"]) == 0
    st = journal_study(tmp_path, "dbg")
    assert len(finished(st)) == 3
    assert st.metric_names == ["fusiondistill val.avg"]         # the dashboard's label
    assert st.trials[0].user_attrs["baseline"] is True           # the file's own pipeline
    df = results.load(tmp_path / "dbg")   # rows with their summary's columns
    assert sorted(df.trial.unique()) == [0, 1, 2]
    assert set(SCHEMA) <= set(df.columns)
    first_trial_rows = df[df.trial == 0]
    assert not first_trial_rows.hit_base.dropna().any()              # built in trial 0
    assert df[df.trial > 0].hit_expert_jpeg.dropna().all()           # reused afterwards
    assert cli.main([*args, "--n-trials", "5"]) == 0
    st = journal_study(tmp_path, "dbg")
    assert len(finished(st)) == 5 and len(st.trials) == 5
    assert cli.main([*args, "--n-trials", "5"]) == 0                # nothing to do
    assert len(journal_study(tmp_path, "dbg").trials) == 5
    # the resumed launcher did not replay the first one's random draws
    configs = {json.dumps(t.user_attrs["values"], sort_keys=True) for t in st.trials}
    assert len(configs) == 5
    # the stored values reproduce a trial's configuration
    t = st.trials[3]
    values = t.user_attrs["values"]
    ld = studyfile.load("smoke.yaml", [*QUICK_FD, "study.name=dbg"])
    cfg = ld.trial_config(values).pipeline
    assert cfg.distill.loss == values["distill.loss"]
    assert cfg.fusion.method == values["fusion.method"]


def test_incompatible_change_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    args = ["launch", "--space", "smoke.yaml", "--executor", "debug", "--results", str(tmp_path),
            *[x for s in QUICK_FD for x in ("--set", s)], "--set", "study.name=fp"]
    assert cli.main([*args, "--n-trials", "1"]) == 0
    capsys.readouterr()
    assert cli.main([*args, "--n-trials", "2", "--set", "distill.epochs=3"]) == 2
    err = capsys.readouterr().err
    assert "different pipeline" in err and "study.name" in err


def test_code_error_fails_once_with_traceback(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from study import pipeline

    def boom(self: pipeline.Pipeline) -> None:
        raise ZeroDivisionError("injected bug")

    monkeypatch.setattr(pipeline.Pipeline, "run", boom)
    args = ["launch", "--space", "smoke.yaml", "--executor", "debug", "--results", str(tmp_path),
            *[x for s in QUICK for x in ("--set", s)], "--set", "study.name=err"]
    # two failures, under the breaker's 3, then the end of the launch: none completed, exit 3
    assert cli.main([*args, "--n-trials", "2"]) == 3
    st = journal_study(tmp_path, "err")
    assert [t.state for t in st.trials] == [TrialState.FAIL, TrialState.FAIL]   # no retries
    assert all(t.user_attrs["fail_kind"] == "code" for t in st.trials)
    reason = "ZeroDivisionError: injected bug (at test_launch.py:"
    assert all(t.user_attrs["fail_reason"].startswith(reason) for t in st.trials)
    df = pd.read_parquet(tmp_path / "err" / "summary")
    assert (df.state == "FAIL").all() and df.error.str.contains("ZeroDivisionError").all()
    assert df.fail_reason.str.startswith(reason).all() and not df.fail_reason.str.contains(
        "\n").any()


def test_trial_out_of_requeues_is_retried_and_completes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What submitit raises in a job that reached its time limit once too often: the first run
    of the trial gets it (as a real job would at epoch 28 of 40), the retry runs for real.
    Each trial runs through the SLURM job's own entry point (TrialJob, which hands the worker
    the SLURM executor's failure classifier), in this process instead of a cluster's."""
    from submitit.core.utils import UncompletedJobError

    from study import executors, pipeline
    from study.executors.slurm import TrialJob

    class SlurmJobsInline(executors.DebugExecutor):
        def submit(self, trials: Sequence[executors.JobFiles]) -> executors.Handle:
            for t in trials:
                TrialJob(str(t.job))()
            return {"kind": self.name}

    monkeypatch.setitem(executors.EXECUTORS, "debug", SlurmJobsInline)
    real_run, calls = pipeline.Pipeline.run, []

    def times_out_once(self: pipeline.Pipeline) -> pipeline.PipelineResult:
        calls.append(1)
        if len(calls) == 1:
            raise UncompletedJobError("Job not requeued because: timed-out too many times.")
        return real_run(self)

    monkeypatch.setattr(pipeline.Pipeline, "run", times_out_once)
    args = ["launch", "--space", "smoke.yaml", "--executor", "debug", "--results", str(tmp_path),
            *[x for s in QUICK for x in ("--set", s)], "--set", "study.name=tmo",
            "--set", "study.baseline=false", "--set", "degradations=[jpeg]",
            "--set", "methods=[fusiondistill]", "--parallel", "1", "--n-trials", "1"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    st = journal_study(tmp_path, "tmo")
    first, retry = st.trials
    assert first.state == TrialState.FAIL and first.user_attrs["fail_kind"] == "timeout"
    assert "executor.slurm.time_min=" in first.user_attrs["fail_reason"]
    assert first.user_attrs["retried"] is True and "1 retried" in out
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["attempt"] == 2
    assert retry.user_attrs["values"] == first.user_attrs["values"]
    df = pd.read_parquet(tmp_path / "tmo" / "summary")
    assert set(df.groupby("trial").fail_kind.first().fillna("-")) == {"timeout", "-"}
    assert assert_parquet_schemas(tmp_path / "tmo") == 2     # a FAIL file and a COMPLETE one


def test_circuit_breaker_stops_a_study_whose_trials_all_fail(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from study import pipeline

    def boom(self: pipeline.Pipeline) -> None:
        raise ZeroDivisionError("injected bug")

    monkeypatch.setattr(pipeline.Pipeline, "run", boom)
    args = ["launch", "--space", "smoke.yaml", "--executor", "debug", "--results", str(tmp_path),
            *[x for s in QUICK for x in ("--set", s)], "--set", "study.name=brk"]
    assert cli.main([*args, "--n-trials", "20"]) == 3
    err = capsys.readouterr().err
    st = journal_study(tmp_path, "brk")
    assert len(st.trials) == 3                         # K = 3 (the default), not 20
    assert "its first 3 finished trials ([0, 1, 2])" in err
    assert "study.stop_after_failures=3" in err and "ZeroDivisionError: injected bug" in err
    assert "Traceback" not in err
    assert "first 3" in st.user_attrs["halted"]["reason"]
    status = ["status", "--space", "smoke.yaml", "--results", str(tmp_path),
              *[x for s in QUICK for x in ("--set", s)], "--set", "study.name=brk"]
    assert cli.main(status) == 0
    out = capsys.readouterr().out
    assert "halted: its first 3 finished trials" in out and "failures: code 3" in out
    assert "trial 2 [code]: ZeroDivisionError: injected bug (at test_launch.py:" in out
    # after a "fix" that is not one, with the breaker off: the study resumes and runs on
    assert cli.main([*args, "--n-trials", "5", "--set", "study.stop_after_failures=0"]) == 3
    assert "none completed" in capsys.readouterr().err
    st = journal_study(tmp_path, "brk")
    assert len(st.trials) == 5 and st.user_attrs["halted"] is None


def _ld(tmp_path: Path, name: str) -> tuple[studyfile.LoadedStudy, optuna.Study, str]:
    ld = studyfile.load("smoke.yaml", [*QUICK, f"study.name={name}"])
    url = storage.storage_url(ld.sf, tmp_path)
    st = storage.load_or_create(ld.sf, storage.open_storage(url),
                                optuna.samplers.RandomSampler(seed=0),
                                optuna.pruners.NopPruner())
    return ld, st, url


def _launcher(tmp_path: Path, ld: studyfile.LoadedStudy, st: optuna.Study, url: str
              ) -> launcher.Launcher:
    stored = storage.StoredStudy(ld, st, storage.open_storage(url), url,
                                 storage.study_dir(tmp_path, ld.sf.study.name))
    return launcher.Launcher(stored, LocalExecutor(), cache_dir=str(tmp_path / "cache"),
                             parallel=1, log=lambda m: None)


def test_vanished_worker_is_retried_with_the_same_params(tmp_path: Path) -> None:
    ld, st, url = _ld(tmp_path, "van")
    trial = st.ask()
    values = ld.space.sample(trial)
    trial.set_user_attr("values", values)
    trial.set_user_attr("attempt", 1)
    dead = subprocess.Popen(["true"])
    dead.wait()
    trial.set_user_attr("job", {"kind": "local", "pid": dead.pid, "host": os.uname().nodename,
                                "marker": "x"})
    _launcher(tmp_path, ld, st, url).reconcile()
    t0 = st.trials[0]
    assert t0.state == TrialState.FAIL and t0.user_attrs["retried"]
    assert t0.user_attrs["fail_kind"] == "infrastructure"
    df = results.read_trial(tmp_path / "van", 0)
    assert df.state.iloc[0] == "FAIL" and "vanished" in df.error.iloc[0]
    retry = st.ask()                                 # the enqueued retry comes next
    assert ld.space.sample(retry) == values and retry.user_attrs["attempt"] == 2


def test_result_written_before_a_kill_is_recovered_not_rerun(tmp_path: Path) -> None:
    ld, st, url = _ld(tmp_path, "rec")
    trial = st.ask()
    trial.set_user_attr("values", ld.space.sample(trial))
    trial.set_user_attr("job", {"kind": "local", "pid": 999999, "host": os.uname().nodename,
                                "marker": "x"})
    df = results.trial_frame(study_name="rec", trial=0, attempt=1, state="COMPLETE",
                             seed_rows=[(0, [{"model": "fusiondistill", "split": "val",
                                              "degradation": "jpeg", "level": 1,
                                              "level_step": 1, "accuracy": 0.5,
                                              "n_images": 10}])],
                             params={}, param_columns={}, stages={}, objectives={OBJECTIVE: 0.5},
                             extra={})
    results.write_trial(tmp_path / "rec", 0, df, result_id=None)
    _launcher(tmp_path, ld, st, url).reconcile()
    assert st.trials[0].state == TrialState.COMPLETE and st.trials[0].value == 0.5


@pytest.mark.slow
def test_local_study_of_4_then_5_then_dashboard(tmp_path: Path) -> None:
    """The shipped smoke study (its space, sampler, pruner, every degradation and method) at
    SMOKE_SMALL's scale, local executor, parallel 2: a study, then topped up (4 and 5 trials: 8
    and 10 took 4 minutes of CI for the same checks; the preset's scale took 2)."""
    base = [*STUDY, "launch", "--space", "search_spaces/smoke.yaml", "--executor", "local",
            "--parallel", "2", "--results", str(tmp_path),
            *[x for s in SMOKE_SMALL for x in ("--set", s)]]
    r = subprocess.run([*base, "--n-trials", "4"], cwd=ROOT, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    st = journal_study(tmp_path, "smoke")
    assert len(finished(st)) == 4
    df = results.load(tmp_path / "smoke")
    assert df.trial.nunique() == 4 and set(SCHEMA) <= set(df.columns)
    assert assert_parquet_schemas(tmp_path / "smoke") == 4
    # base and experts were trained once for the whole study: one miss, hits afterwards
    per_trial = df.groupby("trial").first()
    for stage in ["base", "expert_jpeg", "expert_blur", "expert_awgn", "expert_saltpepper"]:
        assert (per_trial[f"hit_{stage}"] == False).sum() == 1, stage  # noqa: E712
    assert len(list((tmp_path / "cache" / "base").iterdir())) == 1
    assert len(list((tmp_path / "cache" / "expert").iterdir())) == 4
    r = subprocess.run([*base, "--n-trials", "5"], cwd=ROOT, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    st = journal_study(tmp_path, "smoke")
    assert len(finished(st)) == 5 and len(st.trials) == 5
    assert pd.read_parquet(tmp_path / "smoke" / "summary").trial.nunique() == 5
    status = subprocess.run([*STUDY, "status", "--space", "smoke.yaml", "--results",
                             str(tmp_path), *[x for s in SMOKE_SMALL for x in ("--set", s)]],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "5/4 done" not in status.stdout
    assert "best trial" in status.stdout and "expert 4" in status.stdout

    port = free_port()
    dash = subprocess.Popen(["optuna-dashboard", str(tmp_path / "smoke" / "optuna.journal"),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PATH": f"{Path(sys.executable).parent}:"
                                 f"{os.environ['PATH']}"})
    try:
        studies = None
        for _ in range(60):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies",
                                            timeout=2) as resp:
                    studies = json.loads(resp.read())
                break
            except OSError:
                time.sleep(0.5)
        assert studies is not None, "optuna-dashboard did not answer"
        summaries = studies.get("study_summaries", studies.get("studies", []))
        names = [s["study_name"] for s in summaries]
        assert "smoke" in names
        sid = summaries[names.index("smoke")]["study_id"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{sid}",
                                    timeout=10) as resp:
            detail = json.loads(resp.read())
        assert len(detail["trials"]) == 5
    finally:
        dash.terminate()
        dash.wait(timeout=30)


@pytest.mark.slow
def test_killed_launcher_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    sets = [x for s in [*QUICK, "study.name=kill", "methods=[fusiondistill]"]
            for x in ("--set", s)]
    cmd = [*STUDY, "launch", "--space", "search_spaces/smoke.yaml", "--executor", "local",
           "--parallel", "2", "--results", str(tmp_path), "--n-trials", "5", *sets]
    journal = tmp_path / "kill" / "optuna.journal"
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline:
        if journal.exists() and len(finished(journal_study(tmp_path, "kill"))) >= 1:
            break
        time.sleep(0.5)
    p.send_signal(signal.SIGKILL)   # the launcher dies; its workers run on in their sessions
    p.wait()
    assert len(finished(journal_study(tmp_path, "kill"))) < 5
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    st = journal_study(tmp_path, "kill")
    done = finished(st)
    assert len(done) == 5
    df = pd.read_parquet(tmp_path / "kill" / "summary")
    stored = {t.number for t in st.trials if t.state in launcher.FINISHED}
    assert set(df.trial.unique()) == stored                     # storage and Parquet agree
    assert not [t for t in st.trials if t.state == TrialState.RUNNING]
    # no configuration ran twice (every space has a continuous parameter, distill.lr)
    values = [json.dumps(t.user_attrs["values"], sort_keys=True) for t in done]
    assert len(set(values)) == len(values)


def test_job_file_carries_the_resolved_tree(tmp_path: Path) -> None:
    """Workers run the tree the launcher validated (no YAML re-read, immune to later edits)."""
    space = tmp_path / "mine.yaml"
    space.write_text((ROOT / "search_spaces" / "smoke.yaml").read_text())
    sets = [*QUICK_FD, "study.name=tree", "distill.temperature=3.5"]
    assert cli.main(["launch", "--space", str(space), "--executor", "debug", "--results",
                     str(tmp_path), "--n-trials", "1",
                     *[x for s in sets for x in ("--set", s)]]) == 0
    job = Job.read(tmp_path / "tree" / "jobs" / "trial-000000.json")
    assert job.tree == studyfile.load(str(space), [*sets, "executor.backend=debug"]).tree
    space.write_text("study: [not, a, study]\n")           # edited while the study runs
    ld = studyfile.from_tree(job.tree, job.study_file)
    assert ld.sf.pipeline.distill.temperature == 3.5 and ld.sf.study.name == "tree"
