"""The control plane's edges, tried as a hostile user would: an executor this release does not
have, a GPU index the machine does not show, a garbage trial file, trials that diverge; and
what `launch --dry-run` says of where trials run. Each is the real command on a toy study."""

from __future__ import annotations

import platform
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from toy_studies import journal_study, run_cli

from study import config, executors, launcher, results, storage, studyfile
from study.errors import ConfigError
from study.executors import LocalExecutor

QUICK = ["data.synthetic_train=400", "data.val_size=100", "data.synthetic_test=100",
         "degradations=[jpeg, awgn]", "base.epochs=1", "expert.epochs=1", "distill.epochs=1",
         "distill.milestones=[]", "methods=[fusiondistill]", "eval.test_level_step=50",
         "eval.val_level_step=50", "study.pruner=none", "study.baseline=false"]


def _sets(*overrides: str) -> list[str]:
    return [x for o in (*QUICK, *overrides) for x in ("--set", o)]


def test_make_executor_refuses_a_backend_it_does_not_have() -> None:
    with pytest.raises(ConfigError, match=r"key 'executor.backend'.*'pbs'.*\['debug', "
                                          r"'local', 'slurm'\]"):
        executors.get("pbs")
    assert set(executors.EXECUTORS) == set(
        config.ExecutorSection.model_fields["backend"].annotation.__args__)


def test_a_gpu_index_the_machine_does_not_show_is_exit_2(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")   # this machine shows one device
    for extra in (["--dry-run"], []):
        rc, out, err = run_cli(["launch", "--space", "smoke", "--executor", "local",
                                "--results", str(tmp_path / "res"), *extra,
                                *_sets("executor.gpus=[3]", "study.name=gpu3")])
        assert rc == 2, out + err
        assert "Traceback" not in err and "key 'executor.gpus'" in err
        assert "[3]" in err and "shows 1 device(s) ['0']" in err and "smoke.yaml" in err
    assert not (tmp_path / "res" / "gpu3").exists()   # refused before anything is written


def test_dry_run_shows_where_trials_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    rc, out, err = run_cli(["launch", "--space", "smoke", "--executor", "local", "--parallel",
                            "8", "--dry-run", "--results", str(tmp_path),
                            "--set", "executor.gpus=[0, 1, 2, 3]"])
    assert rc == 0, err
    line = next(x for x in out.splitlines() if x.startswith("placement: "))
    assert "8 worker process(es) on GPUs ['0', '1', '2', '3']" in line
    assert all(f"2 on GPU {d}" in line for d in "0123"), line
    rc, out, _ = run_cli(["launch", "--space", "smoke", "--executor", "slurm", "--parallel",
                          "8", "--dry-run", "--results", str(tmp_path),
                          "--set", "executor.slurm.trials_per_job=4",
                          "--set", "executor.slurm.gpus_per_node=4"])
    assert rc == 0 and "as SLURM jobs of 4 trial(s), each job with 4 GPU(s)" in out
    assert not list(tmp_path.iterdir())   # a dry run writes nothing


def test_a_garbage_trial_file_is_moved_aside_not_a_crash(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    """A trial whose worker vanished leaving garbage where its Parquet file goes: the launcher
    moves the file aside with a warning and retries the trial (it had no usable result); the
    results loader skips such files the same way, and `study status` reads no Parquet at all
    (it counts from the storage), so it neither trips on the file nor moves it."""
    ld = studyfile.load("smoke", [*QUICK, "study.name=garbage"])
    url = storage.storage_url(ld.sf, tmp_path)
    store = storage.open_storage(url)
    st = storage.load_or_create(ld.sf, store, optuna.samplers.RandomSampler(seed=0),
                                optuna.pruners.NopPruner())
    sdir = storage.study_dir(tmp_path, "garbage")
    lau = launcher.Launcher(storage.StoredStudy(ld, st, store, url, sdir), LocalExecutor(),
                            cache_dir=str(tmp_path / "cache"), parallel=1, log=print)
    trial = st.ask()
    trial.set_user_attr("values", ld.space.sample(trial))
    trial.set_user_attr("job", {"kind": "local", "pid": 2**22 + 17, "marker": "gone.json",
                                "host": platform.node()})   # a pid no process has
    path = results.summary_path(sdir, trial.number)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PAR1 not a parquet file at all")
    lau.reconcile()                                   # ArrowInvalid before: every launch died
    out = capsys.readouterr()
    assert "is not a readable result file" in out.err and "moved aside" in out.err
    assert len(list(path.parent.glob("*.corrupt-*"))) == 1
    assert results.read_trial(sdir, 0).fail_kind.iloc[0] == "infrastructure"   # its FAIL file
    t0, retry = st.get_trials()
    assert t0.state == TrialState.FAIL and t0.user_attrs["fail_kind"] == "infrastructure"
    assert retry.state == TrialState.WAITING and retry.user_attrs["retry_of"] == 0
    # a finished trial's file gone bad: status and the loader go on without it
    path.write_bytes(b"\x00" * 64)
    assert results.load(sdir).empty
    path.write_bytes(b"\x00" * 64)
    rows = results.trial_path(sdir, trial.number)
    rows.parent.mkdir(parents=True, exist_ok=True)
    rows.write_bytes(b"\x00" * 64)
    rc, out_s, err = run_cli(["status", "--space", "smoke", "--results", str(tmp_path),
                              "--set", "study.name=garbage"])
    assert rc == 0 and "Traceback" not in err and "moved aside" not in err, err
    assert path.read_bytes() == rows.read_bytes() == b"\x00" * 64   # never opened as Parquet
    assert "failures: infrastructure 1" in out_s


def test_diverged_trials_fail_with_where_count_in_the_breaker_and_show_in_status(
        tmp_path: Path) -> None:
    """A learning rate of 1e30 sends the distillation loss to NaN in its first epoch: before,
    the trial completed at chance accuracy (or, with a NaN objective, ended FAIL 'unknown' that
    the breaker never counted, and every trial of the budget ran). Now each fails as
    `diverged`, naming the stage and epoch, and the breaker stops the launch (exit 3)."""
    argv = ["launch", "--space", "smoke", "--executor", "debug", "--n-trials", "5",
            "--results", str(tmp_path),
            *_sets("study.name=nan", "space.distill.lr=1e30", "study.stop_after_failures=2",
                   "study.sampler=random")]
    rc, out, err = run_cli(argv)
    assert rc == 3, out + err
    st = journal_study(tmp_path, "nan")
    failed = [t for t in st.trials if t.state == TrialState.FAIL]
    assert len(failed) == 2 and len(st.trials) == 2   # stopped: 3 trials never ran
    for t in failed:
        assert t.user_attrs["fail_kind"] == "diverged"
        assert "fusiondistill epoch 1 (seed 0): loss" in t.user_attrs["fail_reason"]
    assert "diverged" in err and "stop_after_failures=2" in err
    df = results.load(tmp_path / "nan")
    assert set(df.fail_kind) == {"diverged"} and set(df.state) == {"FAIL"}
    rc, out, _ = run_cli(["status", "--space", "smoke", "--results", str(tmp_path),
                          *_sets("study.name=nan")])
    assert rc == 0 and "failures: diverged 2" in out and "[diverged]" in out
