"""Long work you can watch: progress lines of `study run`, heartbeats in `study status`, learning
curves as Parquet and in the report, the prune cleanup; real code at toy scale on CPU."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from toy_studies import journal_study, wait

from study import cli, progress, report, results, train
from study.executors.local import pid_alive

ROOT = Path(__file__).resolve().parents[1]
STUDY = [sys.executable, "-m", "study.cli"]
# The smoke study shrunk to ~10 s on a busy 2-core box: two degradations, few images, one
# method (base, two experts, the fused model, FusionDistill), few evaluation levels.
TOY = ["data.synthetic_train=300", "data.val_size=60", "data.synthetic_test=60",
       "degradations=[jpeg, awgn]", "base.epochs=3", "expert.epochs=1", "distill.epochs=2",
       "distill.milestones=[1]", "methods=[fusiondistill]", "eval.test_level_step=50",
       "eval.val_level_step=50", "study.pruner=none"]
# one thread per process: several test processes share two cores
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "STUDY_THREADS": "1"}
LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] (?P<stage>\S+)\s+epoch (?P<epoch>\d+)/(?P<epochs>\d+)"
                  r"(?P<pct> +\d+%)?  loss \d+\.\d{4}(  val (?P<val>\d\.\d{3}))?  [\d,]+ img/s  "
                  r"elapsed (?P<elapsed>\S+)  ETA \S+$")


def _sets(*extra: str) -> list[str]:
    return [x for s in [*TOY, *extra] for x in ("--set", s)]


# ---------------------------------------------------------------- progress lines
class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_line_rate_with_a_fake_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """info level in a log: within an epoch a line every STUDY_PROGRESS_S seconds; at epoch
    ends at most one every tenth of it, but always the stage's first and last epoch."""
    clock = _Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    lines: list[tuple[float, str]] = []
    hub = progress.Progress(progress.LineDisplay(lambda s: lines.append((clock.t, s)), 30.0))
    with hub.stage("base", 100) as sp:
        sp.begin(epochs=20, start=0)
        for epoch in range(20):
            for step in range(1, 101):
                clock.t += 0.5           # a 50 s epoch: steps of 0.5 s
                sp.step(epoch, step, step * 64, torch.tensor(2.0 * step))
            sp.end_epoch({"epoch": epoch + 1, "loss": 2.0, "val": 0.5, "images_per_s": 128.0})
    texts = [s for _, s in lines]
    assert all(LINE.match(s) for s in texts), texts[:3]
    ends = [(t, s) for t, s in lines if "%" not in s]
    ticks = [(t, s) for t, s in lines if "%" in s]
    assert len(ends) == 20                      # 50 s epochs: every epoch end is 3 s apart
    assert ticks and all(b - a >= 30.0 for (a, _), (b, _) in zip(ticks, ticks[1:]))
    # short epochs: a line every 3 s at most, and the first and the last epoch
    lines.clear()
    with hub.stage("expert_jpeg", 10) as sp:
        sp.begin(epochs=200, start=0)
        for epoch in range(200):
            for step in range(1, 11):
                clock.t += 0.01          # 0.1 s epochs
                sp.step(epoch, step, step * 64, torch.tensor(1.0))
            sp.end_epoch({"epoch": epoch + 1, "loss": 1.0, "images_per_s": 6400.0})
    epochs = [int(LINE.match(s)["epoch"]) for _, s in lines]
    assert epochs[0] == 1 and epochs[-1] == 200
    assert 6 <= len(epochs) <= 9                # 20 s of training: one line per 3 s, plus ends
    assert all(b - a >= 3.0 for (a, _), (b, _) in zip(lines[1:-1], lines[2:-1]))


def test_quiet_and_bad_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(progress.ENV_LEVEL, "quiet")
    assert type(progress.Progress.from_env().display) is progress.Display
    monkeypatch.setenv(progress.ENV_LEVEL, "loud")
    assert cli.main(["run", "--space", "smoke.yaml"]) == 2            # one paragraph, exit 2
    monkeypatch.setenv(progress.ENV_LEVEL, "info")
    monkeypatch.setenv(progress.ENV_LINE_S, "-1")
    assert cli.main(["run", "--space", "smoke.yaml"]) == 2


def test_fit_records_and_progress_calls_are_backward_compatible() -> None:
    """train.fit without `progress` trains exactly as with it; records carry lr and speed."""
    from study import augment
    from study.data import make_synthetic
    from study.models import build_model

    ds = make_synthetic(120, 20, seed=0)

    def run(watch: progress.StageProgress | None) -> train.FitResult:
        torch.manual_seed(0)
        model = build_model("tiny", 10)
        stream = augment.TrainStream(ds.train, ds.mean, ds.std, degradations=["jpeg"],
                                     batch_size=32, cutout=0, cutout_on="none",
                                     share="nothing", salt_value=1, seed=0, device="cpu")
        opt = train.make_optimizer(model.parameters(), "sgd", 0.1, 0.9, 0.0)
        sched = train.make_scheduler(opt, "multistep", 2, [1], 0.1, None)
        return train.fit(model, epochs=2, optimizer=opt, scheduler=sched, batches=stream.epoch,
                         loss_fn=lambda m, b: torch.nn.functional.cross_entropy(
                             m(b.degraded)[0], b.labels),
                         validate=None, select="last", progress=watch)

    hub = progress.Progress()
    with hub.stage("expert_jpeg", 4) as watch:
        watched = run(watch)
    plain = run(None)
    for k, v in plain.state.items():
        assert torch.equal(v, watched.state[k]), k
    assert [r["lr"] for r in plain.history] == pytest.approx([0.1, 0.01])
    assert [r["images"] for r in plain.history] == [120, 120]
    assert all(r["images_per_s"] > 0 and r["wall_s"] > 0 for r in plain.history)
    assert hub.records["expert_jpeg"] == watched.history


@pytest.mark.slow
def test_study_run_log_shows_progress_at_a_readable_rate(tmp_path: Path) -> None:
    """A log (stdout not a terminal): a line per stage epoch with stage, epoch/total, loss,
    val, images/s, elapsed and ETA; lines within an epoch no faster than STUDY_PROGRESS_S."""
    every = 0.5   # snapshots come every progress.TICK_S = 0.5 s at most
    cmd = [*STUDY, "run", "--space", "search_spaces/smoke.yaml", "--results", str(tmp_path),
           *_sets("base.epochs=1", "data.synthetic_train=1500", "base.batch_size=16"),
           "--progress-interval", str(every)]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=ENV)
    got: list[tuple[float, str]] = []
    try:
        assert p.stdout is not None
        for line in p.stdout:
            got.append((time.monotonic(), line.rstrip("\n")))
        assert p.wait(timeout=600) == 0, p.stderr.read() if p.stderr else ""
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    lines = [(t, s) for t, s in got if LINE.match(s)]
    by_stage: dict[str, list[tuple[float, re.Match[str]]]] = {}
    for t, s in lines:
        m = LINE.match(s)
        assert m is not None
        by_stage.setdefault(m["stage"], []).append((t, m))
    assert set(by_stage) == {"base", "expert_jpeg", "expert_awgn", "fusiondistill"}
    for stage, ms in by_stage.items():
        ends = [m for _, m in ms if not m["pct"]]
        assert ends[-1]["epoch"] == ends[-1]["epochs"], stage      # the last epoch is shown
        assert all(m["val"] is not None for m in ends), stage      # validated every epoch
        ticks = [t for t, m in ms if m["pct"]]
        # lines reach the pipe as they are printed; 0.2 s of slack for a busy reader
        assert all(b - a >= every - 0.2 for a, b in zip(ticks, ticks[1:])), stage
    # base: one long epoch (~2-4 s here); a line within it once it outlasts the interval
    # (its line's elapsed, whole seconds, counts the epoch, not loading the data before it)
    base_s = by_stage["base"][-1][1]["elapsed"]
    if re.fullmatch(r"\d+s", base_s) and int(base_s[:-1]) >= 4 * every:
        assert any(m["pct"] for _, m in by_stage["base"])
    evals = [s for _, s in got if re.match(r"^\[.+\] eval (val|test) +level \d+/\d+", s)]
    assert not evals                           # info level: evaluation too short for a line
    assert "evaluated val" in "\n".join(s for _, s in got)


# ---------------------------------------------------------------- heartbeats in status
def _kill_group(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


# the watched study: FusionDistill trains 400 epochs, long enough to be looked at
WATCH = ["study.name=watch", "distill.epochs=400", "distill.milestones=[300]", "base.epochs=1"]


def _kill_strays(results_dir: Path) -> None:
    """Every process whose command line names this test's results folder (the launcher, and
    its workers: their job files are under it), registered or not."""
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid() and pid_alive(int(d.name),
                                                                         str(results_dir)):
            _kill_group(int(d.name))


def _workers(results_dir: Path, name: str) -> dict[int, int]:
    """trial -> worker pid, from the storage (each worker registers itself)."""
    journal = results_dir / name / "optuna.journal"
    if not journal.exists():
        return {}
    return {t.number: int(t.user_attrs["worker"]["pid"])
            for t in journal_study(results_dir, name).get_trials()
            if "worker" in t.user_attrs}


@pytest.fixture
def running_study(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """A toy study on the local executor, two trials whose FusionDistill trains long enough
    to be watched; every process it starts is killed afterwards, also on failure."""
    env = {**ENV, progress.ENV_HEARTBEAT_S: "1"}
    cmd = [*STUDY, "launch", "--space", "search_spaces/smoke.yaml", "--executor", "local",
           "--parallel", "2", "--n-trials", "2", "--results", str(tmp_path),
           *_sets(*WATCH)]
    launcher = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        yield tmp_path, launcher
    finally:
        _kill_group(launcher.pid)
        launcher.wait()
        for pid in _workers(tmp_path, "watch").values():
            if pid_alive(pid, "study.worker"):
                _kill_group(pid)
        _kill_strays(tmp_path)


def _status(results_dir: Path, *extra: str) -> str:
    r = subprocess.run([*STUDY, "status", "--space", "smoke.yaml", "--results",
                        str(results_dir), *_sets(*WATCH), *extra], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.slow
def test_status_rows_from_heartbeats_and_a_stale_one(
        running_study: tuple[Path, subprocess.Popen[bytes]]) -> None:
    results_dir, launcher = running_study
    jobs = results_dir / "watch" / "jobs"

    def training() -> list[dict[str, object]]:
        beats = [progress.read_heartbeat(jobs / f"trial-{n:06d}.heartbeat.json")
                 for n in (0, 1)]
        return [b for b in beats if b and b.get("stage") == "fusiondistill"]

    assert wait(lambda: len(training()) == 2, timeout=400), "no trial reached fusiondistill"
    hb = training()[0]
    assert {"stage", "epoch", "epochs", "images_per_s", "eta_s", "host", "pid",
            "updated_at", "interval_s"} <= set(hb)
    assert hb["epochs"] == 400 and hb["interval_s"] == 1.0
    out = _status(results_dir)
    rows = re.findall(r"^    fusiondistill epoch (\d+)/400 \(\d+%\).* img/s, stage ETA \S+, "
                      r".* pid (\d+), beat \d+s ago$", out, re.M)
    assert len(rows) == 2, out
    assert "STALE" not in out
    # the `progress` user attribute is refreshed at most every 10 s, the heartbeat every 1 s
    assert wait(lambda: all("fusiondistill" in (t.user_attrs.get("progress") or {})
                            for t in journal_study(results_dir, "watch").trials), 60)
    # the launcher dies first (it would retry a dead worker's trial), then one worker: its
    # trial stays RUNNING in the storage and its heartbeat stops
    _kill_group(launcher.pid)
    launcher.wait()
    workers = _workers(results_dir, "watch")
    victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    assert wait(lambda: not pid_alive(victim, "study.worker"), timeout=30)
    # its last beat three intervals of 1 s old, and a margin: stale from then on
    beat = jobs / "trial-000000.heartbeat.json"
    assert wait(lambda: time.time() - float((progress.read_heartbeat(beat) or {})[
        "updated_at"]) > 3 * 1.0 + 0.5, timeout=30, interval=0.1)
    out = _status(results_dir)
    stale = [ln for ln in out.splitlines() if "STALE" in ln]
    assert len(stale) == 1 and f"pid {victim}" in stale[0], out
    assert "(> 3s = 3 x its 1s interval)" in stale[0]
    assert "1 trial(s) with a stale heartbeat" in out
    assert "compute:" not in out               # no trial has finished: nothing measured yet
    # --watch redraws until Ctrl-C, which exits 0
    w = subprocess.Popen([*STUDY, "status", "--space", "smoke.yaml", "--results",
                          str(results_dir), *_sets(*WATCH), "--watch", "1"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=ENV)
    seen: list[str] = []

    def read() -> None:
        assert w.stdout is not None
        seen.extend(w.stdout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert wait(lambda: sum("--- every 1s" in ln for ln in seen) >= 2, timeout=120)
        w.send_signal(signal.SIGINT)            # Ctrl-C
        assert w.wait(timeout=60) == 0, w.stderr.read() if w.stderr else ""
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()
    reader.join(timeout=10)
    assert sum("in flight:" in ln for ln in seen) >= 2


# ---------------------------------------------------------------- curves, report, prune
@pytest.mark.slow
def test_curves_schema_report_figure_and_prune_cleanup(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    monkeypatch.setenv("STUDY_THREADS", "1")
    monkeypatch.setenv(progress.ENV_LEVEL, "info")   # --quiet below sets it: restored after
    args = ["launch", "--space", "smoke.yaml", "--executor", "debug", "--results",
            str(tmp_path), "--quiet", *_sets("study.name=curves")]
    assert cli.main([*args, "--n-trials", "2"]) == 0
    # a third trial the pruner stops after its first FusionDistill epoch
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: True)
    assert cli.main([*args, "--n-trials", "3"]) == 0
    sdir = tmp_path / "curves"
    df = pd.read_parquet(sdir / "curves")                      # one call, the whole study
    assert list(df.columns) == list(results.CURVE_COLUMNS)
    for path in sorted((sdir / "curves").glob("trial-*.parquet")):
        part = pd.read_parquet(path)
        assert {c: str(t) for c, t in part.dtypes.items()} == results.CURVE_COLUMNS, path
    trials = {t.number: t for t in journal_study(tmp_path, "curves").trials}
    assert trials[2].state == optuna.trial.TrialState.PRUNED
    stages = ["base", "expert_jpeg", "expert_awgn", "fusiondistill"]
    for n in (0, 1):
        got = df[df.trial == n]
        assert set(got.stage) == set(stages)
        assert got.groupby("stage").epoch.max().to_dict() == {"base": 3, "expert_jpeg": 1,
                                                               "expert_awgn": 1,
                                                               "fusiondistill": 2}
    # trial 1 found base and experts cached: their curves are trial 0's, from the cache meta
    hits = df[(df.trial == 1) & df.hit]
    assert set(hits.stage) == {"base", "expert_jpeg", "expert_awgn"}
    for stage in hits.stage.unique():
        a = df[(df.trial == 0) & (df.stage == stage)].val.tolist()
        assert hits[hits.stage == stage].val.tolist() == a
    pruned = df[df.trial == 2]
    assert (pruned.state == "PRUNED").all()
    assert pruned[pruned.stage == "fusiondistill"].epoch.tolist() == [1]   # where it stopped
    assert df[["loss", "lr", "images_per_s", "wall_s"]].notna().all().all()
    # the pruned stage's epoch checkpoint is gone; nothing else is left in .work
    assert not list((tmp_path / "cache" / ".work").glob("fusiondistill-*.pt"))
    # heartbeats: the last beat of each trial names its final state
    beat = json.loads((sdir / "jobs" / "trial-000002.heartbeat.json").read_text())
    assert beat["state"] == "PRUNED" and beat["progress"]["fusiondistill"] == "1/2"
    # the report draws them
    out = report.build_report("smoke.yaml", [f"{k}" for k in [*TOY, "study.name=curves"]],
                              tmp_path, push=False, log=lambda s: None)
    page = out.read_text()
    assert 'id="fig-learning"' in page
    assert re.search(r"<h2[^>]*>\d+\. Learning curves</h2>", page)   # numbered in page order
    lc = report.learning_curves(results.load_curves(sdir), 1, 0)
    assert lc is not None and set(lc.role) == {"best", "baseline", "pruned"}
    # the compute summary, from the trials' Parquet files
    summary = results.compute_summary(results.load(sdir), remaining=5)
    assert summary["stages"]["base"]["built"] == 1 and summary["stages"]["base"]["hits"] == 2
    assert summary["saved_s"] > 0 and summary["projected_s"] == pytest.approx(
        5 * summary["mean_trial_s"])
    capsys.readouterr()
    assert cli.main(["status", "--space", "smoke.yaml", "--results", str(tmp_path),
                     *_sets("study.name=curves")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^compute: [\d.]+ device-hours spent by 3 trials; stages built [\d.]+ h, "
                     r"saved by the cache [\d.]+ h$", out, re.M), out
    assert re.search(r"^  base +built 1 \([\d.]+ h\), cache hits 2 \(saved [\d.]+ h\)$", out,
                     re.M), out


def test_metric_names_label_the_objectives() -> None:
    from study import studyfile

    ld = studyfile.load("smoke.yaml", [])
    names = results.metric_names(ld.sf)
    assert names == ["fusiondistill val.avg"]
    st = optuna.create_study(directions=["maximize"])
    st.set_metric_names(names)
    assert st.metric_names == names


def test_heartbeat_thread_beats_and_the_status_row_reads_it(tmp_path: Path) -> None:
    path = progress.heartbeat_path(tmp_path, 7)
    beat = progress.Heartbeat(path, {"trial": 7}, interval_s=0.2).start()
    try:
        beat(progress.Snapshot("base", "train", 3, 200, 2, 230, 20000, 120.0, 3600.0,
                               images_per_s=2500.0, loss=1.5, val=0.61))
        first = progress.read_heartbeat(path)
        assert first is not None
        assert wait(lambda: (progress.read_heartbeat(path) or {}).get("updated_at", 0)
                    > first["updated_at"] and (progress.read_heartbeat(path) or {}).get(
                        "stage") == "base", timeout=10, interval=0.1)
    finally:
        beat.stop("COMPLETE")
    hb = progress.read_heartbeat(path)
    assert hb is not None and hb["state"] == "COMPLETE" and hb["progress"] == {"base": "2/200"}
    text, stale = progress.describe_heartbeat(hb, now=hb["updated_at"] + 0.1)
    assert not stale and text.startswith("base epoch 3/200 (1%), val 0.610, 2,500 img/s, "
                                         "stage ETA 1h00m")
    text, stale = progress.describe_heartbeat(hb, now=hb["updated_at"] + 100)
    assert stale and "(> 1s = 3 x its 0.2s interval)" in text
    text, stale = progress.describe_heartbeat(hb, now=hb["updated_at"] + 100, stale_after=600)
    assert not stale
