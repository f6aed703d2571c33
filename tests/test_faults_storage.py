"""Storage and disk faults (issue 7, "Nothing lost"): a disk that fills up mid-study, and eight
concurrent workers on each storage (journal file, SQLite, a real PostgreSQL server).

Real mounts (tmpfs), real worker processes, a real PostgreSQL cluster started here; no mocks.
Mounting and PostgreSQL need root on Linux (Debian: the test apt-installs postgresql when it is
missing); elsewhere these tests skip with the reason, except under CI=true, where they fail.
After each: the study completes, no finished result is lost, no trial is duplicated, Parquet and
storage agree, and every interrupted trial was retried or failed with a reason. The figures go
to test-artifacts/faults_storage.json and one printed line.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState
from toy_studies import free_port, wait

from study import results, storage
from study.cache import META, StageCache
from study.errors import DiskFullError
from study.launcher import FINISHED

# the column of the smoke study's objective
OBJECTIVE = results.objective_column("fusiondistill", "val.avg")

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[1]
STUDY = [sys.executable, "-m", "study.cli"]
ARTIFACT = ROOT / "test-artifacts" / "faults_storage.json"
# The smallest pipeline that still runs every stage kind: one degradation, 200 images, one epoch
# each. A worker is ~4 s of imports plus a few seconds of training; 8 of them share 2 cores.
QUICK = ["data.synthetic_train=200", "data.val_size=50", "data.synthetic_test=50",
         "degradations=[jpeg]", "base.epochs=1", "expert.epochs=1", "distill.epochs=1",
         "distill.milestones=[1]", "fusing.epochs=1", "fusing.milestones=[1]",
         "eval.test_level_step=50", "eval.val_level_step=50", "study.pruner=none",
         "methods=[fusiondistill]"]
NO_SPACE = ("No space left on device", "Disk quota exceeded", "disk full")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def _need_root() -> None:
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        _unavailable("mounts and a PostgreSQL server need root on Linux (Debian)")


def _record(kind: str, figures: dict) -> None:
    """Figures per test, merged into one file, and the one-line summary over all of them."""
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(ARTIFACT.read_text()) if ARTIFACT.exists() else {}
    old.pop("summary", None)
    old[kind] = figures
    disk = sum(v.get("disk_full_events", 0) for v in old.values())
    stores = {k.removeprefix("storage_"): v for k, v in old.items() if k.startswith("storage_")}
    summary = {"disk_full_events": disk,
               "workers_per_storage": {k: v["workers"] for k, v in stores.items()},
               "trials_per_storage": {k: v["finished"] for k, v in stores.items()},
               "lost": sum(v.get("lost", 0) for v in old.values()),
               "duplicated": sum(v.get("duplicated", 0) for v in old.values())}
    ARTIFACT.write_text(json.dumps({**old, "summary": summary}, indent=1, sort_keys=True))
    print(f"faults storage ({kind}): disk-full events {disk}; "
          + ", ".join(f"{k} {v['workers']} workers x {v['finished']} trials"
                      for k, v in stores.items())
          + f"; lost {summary['lost']}, duplicated {summary['duplicated']}")


def _check_nothing_lost(st: optuna.Study, sdir: Path, n_trials: int) -> dict[str, int]:
    """The invariants after every fault; returns the figures (lost, duplicated asserted 0)."""
    trials = st.get_trials()
    finished = {t.number: t for t in trials if t.state in FINISHED}
    counted = [t for t in finished.values() if not t.user_attrs.get("retried")]
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING,
                                                          TrialState.WAITING)]
    assert len(counted) == n_trials                                  # the study completed
    files = sorted(results.summary_dir(sdir).glob("trial-*.parquet"))
    per_file = {int(f.stem.split("-")[1]): pd.read_parquet(f) for f in files}
    df = results.load(sdir)                                          # the whole study loads
    assert set(df.trial) == set(per_file) == set(pd.read_parquet(results.summary_dir(sdir)).trial)
    for d in (results.trials_dir(sdir), results.summary_dir(sdir)):
        assert not list(d.glob(".*tmp*"))                            # no temp file left
    lost = len(set(finished) ^ set(per_file))       # finished without its file, or the reverse
    rows = ["trial", "seed", "model", "split", "degradation", "level"]
    duplicated = sum(1 for n, f in per_file.items() if set(f.trial) != {n})
    duplicated += int(df.duplicated(rows).sum())
    configs = [json.dumps(t.user_attrs["values"], sort_keys=True) for t in counted]
    duplicated += len(configs) - len(set(configs))
    for n, t in finished.items():
        f = per_file.get(n)
        if f is None:
            continue
        assert str(f.state.iloc[0]) == t.state.name, n               # storage and Parquet agree
        if t.state == TrialState.COMPLETE:
            assert float(f[OBJECTIVE].iloc[0]) == pytest.approx(t.value), n
        if t.state == TrialState.FAIL:                               # failed with a reason
            assert t.user_attrs.get("error") and t.user_attrs.get("fail_kind"), n
            assert str(f.error.iloc[0]), n
            if t.user_attrs.get("retried"):                          # ... retried once
                retries = [r for r in trials if r.user_attrs.get("retry_of") == n]
                assert len(retries) == 1, n
                if "values" in t.user_attrs:
                    assert retries[0].user_attrs["values"] == t.user_attrs["values"], n
                else:   # the disk filled between ask and sampling: what was drawn is kept
                    assert retries[0].params.items() >= t.params.items(), n
    assert lost == 0 and duplicated == 0, (lost, duplicated)
    return {"lost": lost, "duplicated": duplicated, "trials": len(trials),
            "finished": len(counted), "retried": len(finished) - len(counted),
            "complete": sum(t.state == TrialState.COMPLETE for t in counted)}


# ---------------------------------------------------------------------------- mounts
@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """mount(name, size) -> a fresh tmpfs of that size; every one is unmounted at the end,
    even on failure (lazily if a straggler still holds it, so no mount outlives the test)."""
    _need_root()
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path:
        d = tmp_path / name
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                            str(d)], capture_output=True, text=True)
        if r.returncode != 0:
            _unavailable(f"cannot mount a tmpfs: {r.stderr.strip()}")
        mounted.append(d)
        return d

    yield mount
    for d in reversed(mounted):
        if subprocess.run(["umount", str(d)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(d)], capture_output=True)


class Filler:
    """Keeps a disk full, as another user's job would: writes until ENOSPC, and again whenever
    something frees a page (a failed write's temp file removed), until stopped."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def fill(self) -> None:
        for chunk in (1 << 20, 1 << 16, 1 << 12):
            while True:
                try:
                    os.write(self.fd, b"\0" * chunk)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break

    def keep_full(self) -> None:
        def loop() -> None:
            while not self._stop.wait(0.02):
                self.fill()

        self.fill()
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def free(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        os.close(self.fd)
        self.path.unlink()


# ---------------------------------------------------------------------------- disk full
def test_each_write_on_a_full_disk_fails_whole_and_names_its_file(
        tmpfs: Callable[[str, str], Path]) -> None:
    """The journal, a Parquet file and a cache entry, each written onto a full disk: an error
    that names the file, nothing half-written left behind, and all fine once space is back."""
    disk = tmpfs("small", "1m")
    journal = disk / "s" / "optuna.journal"
    st = optuna.create_study(study_name="s", storage=storage.open_storage(str(journal)))
    done = st.ask()
    st.tell(done, 0.5)
    running = st.ask()
    before = journal.read_bytes()
    frame = results.trial_frame(study_name="s", trial=0, attempt=1, state="COMPLETE",
                                seed_rows=[(0, [{"model": "m", "split": "val",
                                                 "degradation": "jpeg", "level": 1,
                                                 "level_step": 1, "accuracy": 0.5,
                                                 "n_images": 10}])],
                                params={}, param_columns={}, stages={}, objectives={OBJECTIVE: 0.5},
                                extra={})
    results.write_trial(disk / "s", 0, frame, result_id=None)
    cache = StageCache(disk / "cache")
    filler = Filler(disk / "filler")
    filler.fill()
    events = 0

    # journal: a 12 kB attribute spans pages, so Optuna's own append would leave part of a
    # line, and the next append after space is freed would glue onto it and be lost
    with pytest.raises(DiskFullError, match=re.escape(str(journal))) as e:
        running.set_user_attr("notes", "x" * 12_000)
    assert e.value.errno == errno.ENOSPC and "study launch" in str(e.value)
    assert journal.read_bytes() == before                    # cut back to whole lines
    events += 1
    second = results.trial_path(disk / "s", 1)
    with pytest.raises(DiskFullError, match=re.escape(str(second))):
        results.write_trial(disk / "s", 1, frame.assign(trial=1), result_id=None)
    assert sorted(p.name for p in results.trials_dir(disk / "s").iterdir()) == [
        results.trial_path(disk / "s", 0).name]                 # no temp file left to fill it
    assert len(results.load(disk / "s")) == 1
    events += 1
    # 2 MB of weights: more than the disk has
    big = {"w": torch.zeros(500_000)}
    with pytest.raises(DiskFullError, match=re.escape(str(cache.entry("base", "k")))):
        cache.save_state("base", "k", big, {})
    assert not cache.entry("base", "k").exists() and not list((disk / "cache" / ".tmp").iterdir())
    assert cache.load_state("base", "k") is None and not cache.corrupt   # a miss, not a half
    events += 1

    filler.free()
    with open(journal, "ab") as f:     # and a writer killed mid-line (SIGKILL, node crash)
        f.write(b'{"op_code":6,"worker_id":"gone","trial_id":1,"st')
    st.tell(running, 0.25)                                    # the append after both
    st = optuna.load_study(study_name="s", storage=storage.open_storage(str(journal)))
    assert [t.state for t in st.trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert [t.value for t in st.trials] == [0.5, 0.25]
    cache.save_state("base", "k", {"w": big["w"][:10].clone()}, {})
    assert cache.load_state("base", "k") is not None
    _record("disk_full_writes", {"disk_full_events": events, "lost": 0, "duplicated": 0})


def _workers(sdir: Path) -> list[int]:
    """Worker processes of this study on this machine (their argv names a job file in it)."""
    marker = str(sdir / "jobs").encode()
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if marker in (p / "cmdline").read_bytes():
                    pids.append(int(p.name))
            except OSError:
                pass
    return pids


@pytest.mark.slow
def test_disk_full_mid_study_stops_clearly_and_resumes_without_loss(
        tmp_path: Path, tmpfs: Callable[[str, str], Path]) -> None:
    name, n_trials = "full", 4
    # 64 MiB: the study needs ~5 MB; the filler takes the rest once one trial is done, while
    # the second one builds (it waited for the first one's base and expert)
    disk = tmpfs("disk", "64m")
    res = disk / "results"
    sdir = res / name
    cmd = [*STUDY, "launch", "--space", "smoke.yaml", "--executor", "local", "--parallel", "2",
           "--n-trials", str(n_trials), "--results", str(res),
           *[x for s in [*QUICK, f"study.name={name}"] for x in ("--set", s)]]
    out = tmp_path / "launcher.log"           # off the full disk, so its last words survive

    def finished() -> dict[int, tuple[str, float | None]]:
        if not (sdir / "optuna.journal").exists():
            return {}
        st = optuna.load_study(study_name=name, storage=storage.open_storage(
            str(sdir / "optuna.journal")))
        return {t.number: (t.state.name, t.value) for t in st.get_trials()
                if t.state in FINISHED}

    filler: Filler | None = None
    with open(out, "wb") as log:
        launcher = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait(lambda: len(finished()) >= 1 or launcher.poll() is not None, 300), \
            out.read_text()[-3000:]
        assert launcher.poll() is None, out.read_text()[-3000:]
        before = finished()
        filler = Filler(disk / "filler")
        filler.keep_full()
        # no silent hang: the launcher stops on its own once it cannot write
        assert wait(lambda: launcher.poll() is not None, 300), "launcher hangs on a full disk"
        text = out.read_text()
        assert launcher.returncode == 2, text[-3000:]
        said = [ln for ln in text.splitlines() if ln.startswith("study: error: disk full")]
        assert said and str(disk) in said[0] and "study launch" in said[0], text[-3000:]
        assert "Traceback" not in text
        # its workers run on in their own sessions; they end once they cannot write either
        assert wait(lambda: not _workers(sdir), 300), _workers(sdir)

        # while still full: every file on the disk is whole
        journal = (sdir / "optuna.journal").read_bytes()
        assert journal.endswith(b"\n")                             # no fragment of a line
        st = optuna.load_study(study_name=name, storage=storage.open_storage(
            str(sdir / "optuna.journal")))
        assert {n: v for n, v in finished().items() if n in before} == before
        results.load(sdir)                                         # no truncated Parquet
        cache = StageCache(res / "cache")
        assert not list((res / "cache" / ".tmp").iterdir())        # no half entry left
        for meta in (res / "cache").glob("*/*/" + META):
            assert cache._verified(meta.parent.parent.name, meta.parent.name) is not None
        assert not cache.corrupt
        # what the workers could still say (their logs are on the full disk too)
        logs = [f.read_text(errors="replace") for f in (sdir / "jobs").glob("*.log")]
        worker_logs = sum(any(s in text for s in NO_SPACE) for text in logs)
        worker_named = sorted({Path(ln.split("cannot write ", 1)[1].split(" (", 1)[0]).name
                               for text in logs for ln in text.splitlines()
                               if "disk full: cannot write " in ln})

        filler.free()
        filler = None
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    finally:   # only on failure: our launcher and workers, before the unmount
        if filler is not None:
            filler.free()
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        for pid in _workers(sdir):
            os.kill(pid, 9)
    st = optuna.load_study(study_name=name, storage=storage.open_storage(
        str(sdir / "optuna.journal")))
    figures = _check_nothing_lost(st, sdir, n_trials)
    after = {t.number: (t.state.name, t.value) for t in st.get_trials()}
    assert {n: after[n] for n in before} == before                 # nothing finished lost
    # A trial the full disk stopped inside its pipeline is FAILed by the worker itself, with
    # the disk-full error (the worker calls that fail_kind "code", so it is not retried).
    failed = [t for t in st.get_trials() if t.state == TrialState.FAIL
              and not t.user_attrs.get("retried")]
    for t in failed:
        assert any(s in t.user_attrs["error"] for s in NO_SPACE), t.user_attrs["error"][-2000:]
    # The full disk is the only fault here: every attempt it interrupted (retried) and every
    # trial it failed is one disk-full event, and so is the launcher's stop.
    _record("disk_full_study", {**figures,
                                "disk_full_events": 1 + figures["retried"] + len(failed),
                                "launcher_stopped": 1, "launcher_named": str(Path(said[0].split(
                                    "cannot write ", 1)[1].split(" (", 1)[0]).relative_to(disk)),
                                "attempts_interrupted": figures["retried"],
                                "failed_by_disk_full": len(failed),
                                "worker_logs_disk_full": worker_logs,
                                "worker_named": worker_named,
                                "finished_before_fill": len(before)})


# ---------------------------------------------------------------------------- 8 workers
def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def _apt_install(package: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", package]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if r.returncode != 0:   # a fresh machine has no package lists yet
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=900)
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    return r


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A PostgreSQL cluster of our own on a free port of 127.0.0.1, run as the postgres user;
    yields its URL and stops it at the end."""
    _need_root()
    if _pg_bin() is None:
        if shutil.which("apt-get") is None:
            _unavailable("PostgreSQL is not installed and there is no apt-get")
        r = _apt_install("postgresql")
        if r.returncode != 0 or _pg_bin() is None:
            _unavailable(f"apt-get install postgresql failed: {r.stderr.strip()[-500:]}")
    try:
        import psycopg  # noqa: F401 - the driver SQLAlchemy uses for postgresql://
    except ImportError:
        _unavailable("psycopg is missing: pip install -e '.[dev]'")
    pg = pwd.getpwnam("postgres")
    bin_dir = _pg_bin()
    assert bin_dir is not None
    # under /tmp, not pytest's tmp dirs: those are 0700 root, and the server runs as postgres
    home = Path(tempfile.mkdtemp(prefix="study-pg-"))
    os.chown(home, pg.pw_uid, pg.pw_gid)
    as_pg = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = home / "data"
    try:
        subprocess.run([*as_pg, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust",
                        "-U", "postgres", "--no-sync"], check=True, capture_output=True,
                       timeout=120)
        # fsync off: a test server, never a power cut to survive; 2 cores spend less on it
        started = subprocess.run(
            [*as_pg, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(home / "log"), "-w",
             "-t", "60", "-o", f"-p {port} -k {home} -c listen_addresses=127.0.0.1 "
             "-c fsync=off -c max_connections=100", "start"],
            capture_output=True, text=True, timeout=120)
        if started.returncode != 0:
            log = (home / "log").read_text() if (home / "log").exists() else ""
            pytest.fail(f"PostgreSQL did not start: {started.stderr}{log[-2000:]}")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_pg, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w",
                        "stop"], capture_output=True, timeout=120)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One stage cache for the three storages: base and expert are trained once."""
    return tmp_path_factory.mktemp("cache")


def _max_overlap(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Most workers alive at once, from each worker's own start time to its trial's end."""
    edges = []
    for t in trials:
        w = t.user_attrs.get("worker")
        if w and t.datetime_complete:
            edges += [(w["started"], 1), (t.datetime_complete.timestamp(), -1)]
    level = peak = 0
    for _, step in sorted(edges):
        level += step
        peak = max(peak, level)
    return peak


def _sqlite_complete(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db, timeout=60) as con:
        try:
            return int(con.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'")
                       .fetchone()[0])
        except sqlite3.OperationalError:   # the launcher has not created the tables yet
            return 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["journal", "sqlite", "postgresql"])
def test_eight_workers_on_each_storage(kind: str, tmp_path: Path, shared_cache: Path,
                                       request: pytest.FixtureRequest) -> None:
    # 10 trials: a first wave of 8, then 2 asked while the first wave's workers still tell;
    # ~5 s of CPU each (4 s of it imports), so ~50 s of CPU per storage on the 2 cores (12
    # trials, 4 in the second wave, cost ~15 s more over the three storages for the same checks)
    name, n_trials, parallel = f"w8{kind}", 10, 8
    db = tmp_path / "study.db"
    url = {"journal": None, "sqlite": f"sqlite:///{db}",
           "postgresql": request.getfixturevalue("postgres") if kind == "postgresql"
           else None}[kind]
    sets = [*QUICK, f"study.name={name}", *([f"study.storage={url}"] if url else [])]
    cmd = [*STUDY, "launch", "--space", "smoke.yaml", "--executor", "local", "--parallel",
           str(parallel), "--n-trials", str(n_trials), "--results", str(tmp_path),
           "--cache", str(shared_cache), *[x for s in sets for x in ("--set", s)]]
    out = tmp_path / "launcher.log"
    # the first 8 workers wait for each other once registered: 8 really at the storage at once
    env = dict(os.environ, STUDY_RENDEZVOUS=f"{tmp_path / 'arrivals'}:{parallel}")
    with open(out, "wb") as log:
        launcher = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    env=env)
    held = 0.0
    try:
        if kind == "sqlite":
            # Another client's write transaction (the sqlite3 shell, a backup, a dashboard)
            # holds the database while the first wave tells: 8 s, past SQLite's default 5 s
            # busy timeout, after which a writer fails with "database is locked".
            assert wait(lambda: _sqlite_complete(db) >= 1 or launcher.poll() is not None,
                         300), out.read_text()[-3000:]
            con = sqlite3.connect(db, timeout=60, isolation_level=None)
            con.execute("BEGIN EXCLUSIVE")
            t0 = time.monotonic()
            time.sleep(8)     # the fault itself: the lock held, not a wait for a condition
            held = time.monotonic() - t0
            con.execute("ROLLBACK")
            con.close()
        launcher.wait(timeout=600)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    text = out.read_text()
    assert launcher.returncode == 0, text[-3000:]
    assert f"running {parallel}" in text                       # eight in flight at once
    st = optuna.load_study(study_name=name, storage=storage.open_storage(
        url or str(tmp_path / name / "optuna.journal")))
    trials = st.get_trials()
    # every trial completed: a storage error ("database is locked") would show as a FAIL
    bad = {t.number: t.user_attrs.get("error", "")[-1500:] for t in trials
           if t.state != TrialState.COMPLETE}
    assert not bad, bad
    figures = _check_nothing_lost(st, tmp_path / name, n_trials)
    overlap = _max_overlap(trials)
    assert overlap == parallel, f"at most {overlap} workers were alive at once"
    _record(f"storage_{kind}", {**figures, "workers": parallel,
                                "max_concurrent_workers": overlap,
                                **({"lock_held_s": round(held, 1)} if held else {})})
