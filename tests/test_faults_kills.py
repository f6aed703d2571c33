"""Kills and requeues (issue 7, "Nothing lost"): faults injected while a real study runs.

Local executor, one study: kill -9 of workers at seeded random times, three kills that land
inside writes (a cache entry, an epoch checkpoint, a Parquet file; study/faults.py), three kills
of the launcher each followed by `study launch` again, and two cache entries corrupted under the
running study. SLURM executor, one study: kill -9 of the worker inside trial jobs, the same three
write kills, `scontrol requeue` and `scancel` of trial jobs and of the shared-stage jobs.
After each: the study completes, no finished result is lost, no trial is duplicated, Parquet and
storage agree, and every interrupted trial was retried or failed with a reason. The figures go to
test-artifacts/faults_kills.json and one printed line per study.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from toy_studies import assert_parquet_schemas, journal_study, wait

from study import launcher, results, storage, studyfile
from study.cache import META
from study.executors import LocalExecutor
from study.executors.slurm import ALIVE, sacct_states

# the column of the smoke study's objective
OBJECTIVE = results.objective_column("fusiondistill", "val.avg")

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[1]
STUDY = [sys.executable, "-m", "study.cli"]
ARTIFACT = ROOT / "test-artifacts" / "faults_kills.json"
# Smaller than test_launch's QUICK (one degradation, 300 images): a trial is ~10 s of CPU, and
# these studies run ~40 attempts between them on 2 cores. distill.epochs=2, so an epoch
# checkpoint exists before the last epoch; retries=30, so no configuration runs out of retries
# under 20 kills and every interrupted trial ends retried.
QUICK = ["data.synthetic_train=300", "data.val_size=50", "data.synthetic_test=50",
         "degradations=[jpeg]", "base.epochs=1", "expert.epochs=1", "distill.epochs=2",
         "distill.milestones=[1]", "fusing.epochs=1", "fusing.milestones=[1]",
         "eval.test_level_step=50", "eval.val_level_step=50", "study.pruner=none",
         "methods=[fusiondistill]", "executor.retries=30"]
POINTS = ["cache_write", "epoch_write", "parquet_write"]


def _sets(*extra: str) -> list[str]:
    return [x for s in [*QUICK, *extra] for x in ("--set", s)]


def _trials(results: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    if not (results / name / "optuna.journal").exists():
        return []
    return journal_study(results, name).get_trials()


def _arm(folder: Path) -> str:
    """STUDY_FAULT for the three write points, each armed once (see study/faults.py)."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in POINTS:
        (folder / p).touch()
    return ",".join(f"{p}:{folder / p}" for p in POINTS)


def _hits(folder: Path) -> dict[str, dict]:
    return {p: json.loads((folder / f"{p}.hit").read_text()) for p in POINTS
            if (folder / f"{p}.hit").exists()}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _entries(cache: Path, stage: str) -> list[Path]:
    d = cache / stage
    return [e for e in d.iterdir() if (e / META).exists()] if d.is_dir() else []


def _corrupt_under_lock(cache: Path, stage: str, how: str) -> Path:
    """Truncate or flip a byte of a stage's only entry while holding its flock, so the damage
    lands between two loads, as a bad disk or a half copy would, not inside a reader's load."""
    entry = _entries(cache, stage)[0]
    with open(cache / ".locks" / f"{stage}-{entry.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = entry / "state.pt"
        data = state.read_bytes()
        if how == "truncate":
            state.write_bytes(data[: len(data) // 3])
        else:
            mid = len(data) // 2
            state.write_bytes(data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1:])
        fcntl.flock(lock, fcntl.LOCK_UN)
    return entry


def _check_nothing_lost(results: Path, name: str, n_trials: int) -> dict[str, int]:
    """The invariants of every fault; returns lost and duplicated (asserted 0) for the figures."""
    st = journal_study(results, name)
    trials = st.get_trials()
    finished = {t.number: t for t in trials if t.state in launcher.FINISHED}
    counted = [t for t in finished.values() if not t.user_attrs.get("retried")]
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    assert len(counted) == n_trials                                  # the study completed
    files = sorted((results / name / "summary").glob("trial-*.parquet"))
    assert_parquet_schemas(results / name)     # FAIL files of the launcher included
    per_file = {int(f.stem.split("-")[1]): pd.read_parquet(f) for f in files}
    df = pd.read_parquet(results / name / "summary")  # the whole study loads, temp files ignored
    pd.read_parquet(results / name / "trials")        # and so do its rows
    assert set(df.trial) == set(per_file)
    # lost: finished in storage without its Parquet file, or the reverse
    lost = len(set(finished) ^ set(per_file))
    # duplicated: a trial number in two files or twice as attempts, a configuration done twice
    dup_numbers = sum(1 for n, f in per_file.items() if set(f.trial) != {n}
                      or f.attempt.nunique() != 1)
    configs = [json.dumps(t.user_attrs["values"], sort_keys=True) for t in counted]
    duplicated = dup_numbers + len(configs) - len(set(configs))
    for n, t in finished.items():
        f = per_file.get(n)
        if f is None:
            continue
        assert str(f.state.iloc[0]) == t.state.name, n              # storage and Parquet agree
        if t.state == TrialState.COMPLETE:
            assert float(f[OBJECTIVE].iloc[0]) == pytest.approx(t.value), n
        if t.state == TrialState.FAIL:                               # failed with a reason ...
            assert t.user_attrs.get("error") and t.user_attrs.get("fail_kind"), n
            assert t.user_attrs["fail_kind"] != "code", t.user_attrs["error"][-2000:]
            if t.user_attrs.get("retried"):                          # ... and retried once
                retries = [r for r in trials if r.user_attrs.get("retry_of") == n]
                assert len(retries) == 1, n
                assert retries[0].user_attrs["values"] == t.user_attrs["values"], n
    assert lost == 0 and duplicated == 0, (lost, duplicated)
    return {"lost": lost, "duplicated": duplicated, "trials": len(trials),
            "finished": len(counted), "retried": len(finished) - len(counted)}


def _record(kind: str, figures: dict) -> None:
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(ARTIFACT.read_text()) if ARTIFACT.exists() else {}
    ARTIFACT.write_text(json.dumps({**old, kind: figures}, indent=1, sort_keys=True))
    print(f"faults ({kind}): " + ", ".join(f"{k} {v}" for k, v in figures.items()
                                            if not isinstance(v, (dict, list))))


# ------------------------------------------------ kills in windows of milliseconds, placed by hand
# A kill from outside lands in these windows too rarely to test; the state it leaves is built here.

def _launcher(tmp_path: Path, name: str) -> tuple[launcher.Launcher, optuna.Study]:
    ld = studyfile.load("smoke.yaml", [*QUICK, f"study.name={name}"])
    url = storage.storage_url(ld.sf, tmp_path)
    store = storage.open_storage(url)
    st = storage.load_or_create(ld.sf, store, optuna.samplers.RandomSampler(seed=0),
                                optuna.pruners.NopPruner())
    stored = storage.StoredStudy(ld, st, store, url, storage.study_dir(tmp_path, name))
    return launcher.Launcher(stored, LocalExecutor(), cache_dir=str(tmp_path / "cache"),
                             parallel=1, retries=2, log=lambda m: None), st


def test_launcher_killed_between_ask_and_submit(tmp_path: Path) -> None:
    launcher, st = _launcher(tmp_path, "asked")
    trial = st.ask()                                  # the killed launcher got this far
    trial.set_user_attr("values", launcher.ld.space.sample(trial))
    job_path = launcher.job_path(trial.number)
    job_path.parent.mkdir(parents=True)
    # ... or started the worker too, not recording its pid: that one is adopted, not failed
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                               str(job_path)])
    try:
        assert wait(lambda: launcher.executor.started(job_path), 30)
        launcher.reconcile()
        assert st.trials[0].state == TrialState.RUNNING
    finally:
        worker.kill()
        worker.wait()
    launcher.reconcile()                              # at once, not after 180 s of grace
    t0 = st.trials[0]
    assert t0.state == TrialState.FAIL and t0.user_attrs["retried"]
    assert "vanished" in t0.user_attrs["error"]


def test_launcher_killed_inside_fail_before_the_retry(tmp_path: Path) -> None:
    launcher, st = _launcher(tmp_path, "infail")
    trial = st.ask()
    values = launcher.ld.space.sample(trial)
    trial.set_user_attr("values", values)
    trial.set_user_attr("job", {"kind": "local", "pid": 999999, "host": os.uname().nodename,
                                "marker": "x"})
    # fail() had set the reason and written the FAIL file when the launcher was killed
    trial.set_user_attr("error", "the worker vanished")
    trial.set_user_attr("fail_kind", "infrastructure")
    trial.set_user_attr("retried", True)
    results.write_trial(launcher.sdir, trial.number, results.trial_frame(
        study_name="infail", trial=trial.number, attempt=1, state="FAIL", seed_rows=[],
        params=values, param_columns={}, stages={}, objectives={OBJECTIVE: None},
        extra={"error": "the worker vanished", "fail_kind": "infrastructure"}), result_id=None)
    launcher.reconcile()
    launcher.reconcile()                              # and again: one retry, not two
    assert st.trials[0].state == TrialState.FAIL
    retries = [t for t in st.get_trials() if t.user_attrs.get("retry_of") == 0]
    assert len(retries) == 1
    retry = st.ask()
    assert launcher.ld.space.sample(retry) == values and retry.user_attrs["attempt"] == 2


def test_worker_that_told_meanwhile_is_recovered_not_refailed(tmp_path: Path) -> None:
    """The worker writes its file, tells and exits between the launcher's read of RUNNING and
    its own tell (CI saw "Cannot tell a COMPLETE trial" here): the launcher leaves the result."""
    launcher, st = _launcher(tmp_path, "told")
    trial = st.ask()
    trial.set_user_attr("values", launcher.ld.space.sample(trial))
    stale = st.trials[0]                              # the launcher's snapshot: RUNNING
    results.write_trial(launcher.sdir, 0, results.trial_frame(
        study_name="told", trial=0, attempt=1, state="COMPLETE", seed_rows=[], params={},
        param_columns={}, stages={}, objectives={OBJECTIVE: 0.25}, extra={}), result_id=None)
    st.tell(0, [0.25])                                # the worker, meanwhile
    launcher.fail(stale, "the worker vanished", "infrastructure", retry=True)
    t0 = st.trials[0]
    assert t0.state == TrialState.COMPLETE and t0.value == 0.25
    assert not t0.user_attrs.get("retried") and len(st.trials) == 1
    assert results.read_trial(launcher.sdir, 0).state.iloc[0] == "COMPLETE"


def test_timeout_budget_failure_is_classified_and_retried(tmp_path: Path) -> None:
    """submitit gave up requeueing a job that kept reaching its time limit: the worker calls
    that "timeout" with a reason naming time_min, the launcher retries it (its checkpoints let
    the retry finish) up to executor.retries, and the breaker does not count it."""
    from submitit.core.utils import UncompletedJobError

    from study import failures
    from study.executors import SlurmExecutor
    launcher, st = _launcher(tmp_path, "tmo")
    err = UncompletedJobError("Job not requeued because: timed-out too many times.")
    settings = launcher.ld.sf.executor
    kind, reason = SlurmExecutor.classify_failure(err, settings)
    assert kind == "timeout" and "executor.slurm.time_min=" in reason and "\n" not in reason
    assert SlurmExecutor.classify_failure(ValueError("bad"), settings) is None
    assert failures.classify_error(ValueError("bad\nvalue"))[0] == "code"
    assert failures.classify_error(RuntimeError("PytorchStreamWriter failed: No space left on "
                                                "device"))[0] == "disk_full"
    for attempt in (1, 4):                            # the worker's part (retries=2)
        trial = st.ask()
        trial.set_user_attr("values", launcher.ld.space.sample(trial))
        trial.set_user_attr("attempt", attempt)
        trial.set_user_attr("fail_kind", kind)
        trial.set_user_attr("fail_reason", reason)
        trial.set_user_attr("retried", attempt <= launcher.retries)
        st.tell(trial.number, state=TrialState.FAIL)
    launcher.reconcile()
    launcher.reconcile()                              # decided once: still one retry
    first, last = st.trials[0], st.trials[1]
    assert first.user_attrs["retried"] is True and last.user_attrs["retried"] is False
    retries = [t for t in st.get_trials() if t.user_attrs.get("retry_of") is not None]
    assert [t.user_attrs["retry_of"] for t in retries] == [0]
    assert retries[0].user_attrs["attempt"] == 2
    assert launcher.breaker(st.get_trials()) is None   # the cluster's fault, not the study's


def test_breaker_counts_runs_of_code_and_config_failures(tmp_path: Path) -> None:
    launcher, st = _launcher(tmp_path, "runs")
    launcher.stop_after_failures = 2
    kinds = ["code", None, "config", "infrastructure", "code", "config"]
    for kind in kinds:
        trial = st.ask()
        if kind is None:
            st.tell(trial.number, [0.5])
            continue
        trial.set_user_attr("fail_kind", kind)
        st.tell(trial.number, state=TrialState.FAIL)
    # runs by completion order: [0], [2] (3 breaks it: infrastructure), then [4, 5]
    why = launcher.breaker(st.get_trials())
    assert why is not None and "a run of 2 finished trials ([4, 5])" in why
    assert launcher.breaker(st.get_trials()[:5]) is None
    launcher.started = time.time() + 60               # a later launch: older failures ignored
    assert launcher.breaker(st.get_trials()) is None


def test_worker_never_overwrites_a_result_on_disk(tmp_path: Path) -> None:
    """A cancelled SLURM job runs on for KillWait (5 s here) after the launcher failed its
    trial: its own result must not replace the FAIL file that matches the storage."""
    def frame(state: str) -> pd.DataFrame:
        return results.trial_frame(study_name="w", trial=0, attempt=1, state=state,
                                   seed_rows=[], params={}, param_columns={}, stages={},
                                   objectives={OBJECTIVE: None}, extra={})

    assert results.write_trial(tmp_path, 0, frame("FAIL"), result_id="a") is not None
    assert results.write_trial(tmp_path, 0, frame("COMPLETE"), result_id="a",
                               replace=False) is None   # the launcher's FAIL file wins
    assert results.read_trial(tmp_path, 0).state.iloc[0] == "FAIL"
    assert [p.name for p in (tmp_path / "summary").iterdir()] == ["trial-000000.parquet"]
    assert not (tmp_path / "trials").exists()           # the winner had no rows, nor has it now


# ---------------------------------------------------------------------------- local executor
N_WORKER_KILLS = 20
LAUNCHER_KILLS_AFTER = (3, 9, 15)    # worker kills done when the launcher is killed


@pytest.mark.slow
def test_local_study_survives_worker_and_launcher_kills_and_corrupt_entries(
        tmp_path: Path) -> None:
    name, n_trials = "kills", 3
    rng = random.Random(7)   # the kill times, reproducible
    faults = tmp_path / "faults"
    env = {**os.environ, "STUDY_FAULT": _arm(faults)}

    def command() -> list[str]:
        return [*STUDY, "launch", "--space", "smoke.yaml", "--executor", "local", "--parallel",
                "2", "--n-trials", str(n_trials), "--results", str(tmp_path),
                *_sets(f"study.name={name}")]

    log = open(tmp_path / "launcher.log", "ab")  # noqa: SIM115 - every launcher appends
    launcher = subprocess.Popen(command(), cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    kill_at: dict[int, float] = {}       # worker pid -> when to kill it
    early: dict[int, bool] = {}          # worker pid -> killed counting from its start
    delay: dict[int, float] = {}
    worker_kills: list[dict] = []
    launcher_kills, corrupted = 0, []
    cache = tmp_path / "cache"
    deadline = time.monotonic() + 600
    while (launcher.poll() is None or launcher.returncode == -signal.SIGKILL
           or (launcher.returncode == 0 and len(worker_kills) < N_WORKER_KILLS)):
        assert time.monotonic() < deadline, (tmp_path / "launcher.log").read_text()[-4000:]
        if launcher.poll() is not None:
            if launcher.returncode == 0:         # finished before every kill landed (a fast
                n_trials += 1                    # attempt escaped its kill): one trial more
            # killed by us, or topped up: `study launch` again
            launcher = subprocess.Popen(command(), cwd=ROOT, env=env, stdout=log,
                                        stderr=subprocess.STDOUT)
        now = time.monotonic()
        running = [t for t in _trials(tmp_path, name) if t.state == TrialState.RUNNING
                   and "job" in t.user_attrs]
        for t in running:
            pid = int((t.user_attrs.get("worker") or t.user_attrs["job"])["pid"])
            # A quarter of the kills within 4 s of the start (mostly while importing, ~5 s,
            # before the worker registers), the rest within 3 s of registering (training,
            # evaluation, writing): a warm trial runs ~5 s after registering, so nearly every
            # attempt dies until the 20 kills are spent.
            if pid not in early:
                early[pid] = rng.random() < 0.25
                delay[pid] = rng.uniform(0.2, 4.0) if early[pid] else rng.uniform(0.0, 3.0)
            if pid not in kill_at and (early[pid] or "worker" in t.user_attrs):
                kill_at[pid] = now + delay[pid]
            if (len(worker_kills) < N_WORKER_KILLS and now >= kill_at.get(pid, now + 1)
                    and _alive(pid)):
                os.kill(pid, signal.SIGKILL)
                worker_kills.append({"trial": t.number, "pid": pid,
                                     "registered": "worker" in t.user_attrs})
                if len(worker_kills) in LAUNCHER_KILLS_AFTER:
                    launcher.send_signal(signal.SIGKILL)   # its workers run on, unseen
                    launcher.wait()
                    launcher_kills += 1
        # once base and expert are cached, damage both: the next new configuration loads the
        # expert (its distillation teacher), whose rebuild loads the base
        if not corrupted and _entries(cache, "base") and _entries(cache, "expert"):
            corrupted = [_corrupt_under_lock(cache, "base", "truncate"),
                         _corrupt_under_lock(cache, "expert", "flip")]
        time.sleep(0.2)   # the monitor's tick, not a wait for a condition
    log.close()
    assert launcher.returncode == 0, (tmp_path / "launcher.log").read_text()[-4000:]
    assert len(worker_kills) == N_WORKER_KILLS and launcher_kills == len(LAUNCHER_KILLS_AFTER)

    hits = _hits(faults)
    assert sorted(hits) == POINTS, hits                     # each write was hit, once
    assert not any((faults / p).exists() for p in POINTS)
    figures = _check_nothing_lost(tmp_path, name, n_trials)
    # the corrupt entries were caught by checksum, moved aside and rebuilt, never loaded:
    # no trial failed (a truncated state.pt loaded would raise), and the new entries verify
    assert corrupted
    aside = sorted(p for s in ("base", "expert") for p in (cache / s).glob("*.corrupt-*"))
    assert len(aside) == len(corrupted), aside
    for entry in corrupted:
        meta = json.loads((entry / META).read_text())
        assert hashlib.sha256((entry / "state.pt").read_bytes()).hexdigest() == \
            meta["sha256"]["state.pt"]
    _record("local", {**figures, "worker_kills_outside": len(worker_kills),
                      "worker_kills_unregistered": sum(not k["registered"]
                                                       for k in worker_kills),
                      "worker_kills_in_writes": len(hits), "launcher_kills": launcher_kills,
                      "kills_survived": len(worker_kills) + len(hits) + launcher_kills,
                      "corrupt_caught": len(aside), "hits": hits})


# ---------------------------------------------------------------------------- SLURM executor
N_SLURM_KILLS = 4


def _state(job_id: str) -> str:
    return sacct_states([job_id]).get(job_id, "UNKNOWN")


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_study_survives_kills_requeues_and_cancels(slurm_cluster: str,
                                                         tmp_path: Path) -> None:
    name, n_trials = f"kslurm{os.getpid()}", 2
    rng = random.Random(11)
    faults = tmp_path / "faults"
    faults.mkdir()
    # the write faults are named now (the jobs inherit the launcher's environment) and armed
    # once the shared stages are done, so they land in trial workers, not in the stage jobs
    env = {**os.environ, "STUDY_FAULT": ",".join(f"{p}:{faults / p}" for p in POINTS)}
    cmd = [*STUDY, "launch", "--space", "smoke.yaml", "--executor", "slurm", "--parallel", "2",
           "--n-trials", str(n_trials), "--results", str(tmp_path),
           # 8 distillation epochs and a kill 0-1 s after a worker registers: a retried trial
           # resumes from its epoch checkpoint, so each attempt is shorter than the last, and
           # with every test copy cached after the first trial 2 epochs left too few to kill
           *_sets(f"study.name={name}", "executor.slurm.preset=local", "distill.epochs=8",
                  "distill.milestones=[4]")]
    log = open(tmp_path / "launcher.log", "ab")  # noqa: SIM115
    launcher = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def tail() -> str:
        return (tmp_path / "launcher.log").read_text()[-4000:]

    # shared-stage jobs: requeue the base job while it runs, scancel the expert job while it
    # runs (it waits for the base); the trials depend on both with afterany
    journal = tmp_path / name / "optuna.journal"
    assert wait(lambda: journal.exists()
                and "stage_jobs" in journal_study(tmp_path, name).user_attrs, 300), tail()
    stage_jobs = journal_study(tmp_path, name).user_attrs["stage_jobs"]
    # the executor's handles of the stage jobs
    base_job = next(v["job_id"] for k, v in stage_jobs.items() if k.startswith("base@"))
    expert_job = next(v["job_id"] for k, v in stage_jobs.items()
                      if k.startswith("expert_jpeg@"))
    assert wait(lambda: _state(base_job) == "RUNNING", 300), _state(base_job)
    subprocess.run(["scontrol", "requeue", base_job], check=True, timeout=60)
    assert wait(lambda: _state(expert_job) in ("RUNNING", "COMPLETED"), 300), tail()
    subprocess.run(["scancel", expert_job], check=True, timeout=60)
    assert wait(lambda: _state(base_job) not in ALIVE and _state(expert_job) not in ALIVE,
                 300)
    stage_states = {"base": _state(base_job), "expert_jpeg": _state(expert_job)}
    for p in POINTS:
        (faults / p).touch()

    def running() -> list[optuna.trial.FrozenTrial]:
        return [t for t in _trials(tmp_path, name) if t.state == TrialState.RUNNING
                and "worker" in t.user_attrs and t.user_attrs.get("job", {}).get("job_id")]

    # trial jobs: requeue one (A), scancel another (B), kill -9 the worker inside the others
    assert wait(lambda: running(), 600), tail()
    a = running()[0]
    subprocess.run(["scontrol", "requeue", a.user_attrs["job"]["job_id"]], check=True,
                   timeout=60)
    assert wait(lambda: [t for t in running() if t.number != a.number], 600), tail()
    b = next(t for t in running() if t.number != a.number)
    subprocess.run(["scancel", b.user_attrs["job"]["job_id"]], check=True, timeout=60)
    kills: list[dict] = []
    kill_at: dict[int, float] = {}
    deadline = time.monotonic() + 600
    while launcher.poll() is None:
        assert time.monotonic() < deadline, tail()
        now = time.monotonic()
        for t in running():
            if t.number in (a.number, b.number) or len(kills) >= N_SLURM_KILLS:
                continue
            pid = int(t.user_attrs["worker"]["pid"])   # the submitit process running run_job
            kill_at.setdefault(pid, now + rng.uniform(0.0, 1.0))
            if now >= kill_at[pid] and _alive(pid):
                os.kill(pid, signal.SIGKILL)
                kills.append({"trial": t.number, "job": t.user_attrs["job"]["job_id"]})
        time.sleep(0.2)   # the monitor's tick
    log.close()
    assert launcher.returncode == 0, tail()
    assert len(kills) == N_SLURM_KILLS, kills

    hits = _hits(faults)
    assert sorted(hits) == POINTS, hits
    figures = _check_nothing_lost(tmp_path, name, n_trials)
    st = journal_study(tmp_path, name)
    by_number = {t.number: t for t in st.trials}
    # a killed or cancelled job: its trial was seen failed and retried, or had written its
    # result before dying and was recovered from it
    for n in [k["trial"] for k in kills] + [b.number]:
        t = by_number[n]
        assert t.user_attrs.get("retried") or t.state == TrialState.COMPLETE, n
    # the requeued trial resumed in its own job, not as a retry, unless a write fault hit it
    a_final = by_number[a.number]
    a_hit = any(h.get("slurm_job_id") == a.user_attrs["job"]["job_id"] for h in hits.values())
    assert a_final.state == TrialState.COMPLETE or a_hit, a_final.user_attrs
    if not a_hit:
        assert a_final.user_attrs.get("attempt", 1) == 1
    # the stages were built once each in the end, whoever built them
    assert len(_entries(tmp_path / "cache", "base")) == 1
    assert len(_entries(tmp_path / "cache", "expert")) == 1
    _record("slurm", {**figures, "worker_kills_outside": len(kills),
                      "worker_kills_in_writes": len(hits),
                      "kills_survived": len(kills) + len(hits),
                      "requeues": 2, "cancels": 2, "stage_jobs": stage_states,
                      "hits": hits})
