"""Fail fast before a GPU-hour burns: commands refused up front, with one paragraph, exit 2.

Each case here once ran on into a traceback, a destroyed file or a leaked password: a storage
path naming someone's file (truncated), an in-memory database (each worker its own), a
password with an '@' (half of it printed), a resumed study past ~4,300 trials (a seed numpy
refuses), unreadable dataset files, a --cache that is a file, a dashboard port out of range or
taken. Every refusal must exit 2 with a message naming the key or flag and the path, print no
traceback, and leave nothing behind in the folders the command was given.

Most cases call `study.cli.main` in-process (milliseconds each); one module fixture launches a
study whose single trial is cut short (the pipeline is replaced by a pruning stub: this file
checks what surrounds a trial, not training), and two tests start real processes: the
dashboard serving after its checks, and the entry point printing no traceback.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from test_data import write_cifar10, write_imagefolder, write_tinyimagenet
from toy_studies import free_port, wait
from toy_studies import run_cli as _cli

from study import data, pipeline, storage, studyfile
from study.cache import StageCache
from study.commands import dashboard as dashboard_command
from study.errors import DataError, StudyError

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "search_spaces" / "smoke.yaml"
SMOKE_ARGS = ["--space", str(SMOKE)]
ENV_DB = "STUDY_BAD_COMMANDS_DB"           # the launched study's storage comes from here
LAUNCHED_SETS = ["study.name=badcmd", f"study.storage=sqlite:///${{{ENV_DB}}}",
                 "methods=[fusiondistill]", "degradations=[awgn, blur]"]


# ---------------------------------------------------------------- helpers
def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for a folder): what a refusal must not
    change."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def _refused(argv: list[str], folder: Path, *needles: str, also: Path | None = None) -> str:
    """Run `argv`; it must exit 2 with one 'study: error:' paragraph holding `needles`, no
    traceback, and leave `folder` (the fixtures and every path the command was given) and
    `also` (a launched study's results) exactly as they were."""
    if also is not None:
        kept = _tree(also)
    before = _tree(folder)
    rc, out, err = _cli(argv)
    assert rc == 2, f"exit {rc} for {argv}\nstdout: {out[-800:]}\nstderr: {err[-800:]}"
    assert "Traceback" not in err + out
    assert err.startswith("study: error:") and err.count("study: error:") == 1, err
    for n in needles:
        assert n in err, f"{n!r} missing from the message of {argv}:\n{err}"
    after = _tree(folder)
    assert sorted(set(after) - set(before)) == [], f"{argv} created {set(after) - set(before)}"
    changed = [k for k in before if before[k] != after.get(k)]
    assert changed == [], f"{argv} changed or removed {changed}"
    if also is not None:
        assert _tree(also) == kept, f"{argv} changed {also}"
    return err


def _study_file(folder: Path, **study: object) -> Path:
    raw = yaml.safe_load(SMOKE.read_text())
    raw["study"].update(study)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# ---------------------------------------------------------------- 1. storage never destroyed
def _sqlite_file(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.execute("create table notes (x)")
    con.commit()
    con.close()
    return path


def _text(content: str) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        path.write_text(content)
        return path
    return write


FOREIGN = {
    # a journal opened on it would cut everything after its last newline: here all of it
    "notes_no_newline": _text("my notes, no newline"),
    "notes_with_lines": _text("line one\nline two\n"),
    "json_lines_not_optuna": _text('{"a": 1}\n'),
    "sqlite_database": _sqlite_file,
}


@pytest.mark.parametrize("kind", FOREIGN)
@pytest.mark.parametrize("how", ["study_file", "set"])
def test_storage_naming_a_foreign_file_is_refused_untouched(kind: str, how: str,
                                                            tmp_path: Path) -> None:
    target = FOREIGN[kind](tmp_path / "foreign.dat")
    assert target.stat().st_size > 0
    if how == "study_file":
        args = ["--space", str(_study_file(tmp_path, storage=str(target)))]
    else:
        args = [*SMOKE_ARGS, "--set", f"study.storage={target}"]
    for cmd in (["launch", "--executor", "debug", "--n-trials", "1"], ["launch", "--dry-run"],
                ["status"]):
        err = _refused([*cmd, *args, "--results", str(tmp_path / "res")], tmp_path,
                       "study.storage", str(target))
        assert "not an Optuna journal" in err or "SQLite database" in err
    if kind == "sqlite_database":
        assert f"sqlite:///{target}" in err   # the way to use it is in the message


def test_empty_file_and_a_journal_are_accepted_as_journals(tmp_path: Path) -> None:
    empty = tmp_path / "empty.journal"
    empty.write_bytes(b"")
    assert storage.check(str(empty)) == str(empty)
    store = storage.open_storage(str(empty))
    optuna.create_study(study_name="s", storage=store)
    assert empty.read_bytes().startswith(b'{"op_code":')
    # a journal whose last line a killed writer left half-written is still a journal
    with open(empty, "ab") as f:
        f.write(b'{"op_code":4,"worker_id":"x-1","study_id":0,"da')
    assert storage.check(str(empty)) == str(empty)
    torn = tmp_path / "torn.journal"
    torn.write_bytes(b'{"op_code":0,"worker_id":"w"')      # only the torn first line
    assert storage.check(str(torn)) == str(torn)


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://",
                                 "sqlite:///file::memory:?cache=shared",
                                 "sqlite:///file:db?mode=memory&uri=true"])
def test_in_memory_storage_is_refused(url: str, tmp_path: Path) -> None:
    space = _study_file(tmp_path, storage=url)
    for cmd in (["launch", "--executor", "debug", "--n-trials", "1"], ["launch", "--dry-run"]):
        _refused([*cmd, "--space", str(space), "--results", str(tmp_path / "res")], tmp_path,
                 str(space), "study.storage", "in-memory database", "every worker")


def test_in_memory_storage_given_with_set_is_refused(tmp_path: Path) -> None:
    """`--set study.storage=sqlite:///:memory:` ends in ':', which YAML reads as a mapping;
    the override keeps it the string it is, refused for what it is."""
    _refused(["launch", *SMOKE_ARGS, "--set", "study.storage=sqlite:///:memory:",
              "--results", str(tmp_path / "res")], tmp_path, "study.storage", "in-memory")


def test_a_refused_url_is_not_echoed(tmp_path: Path) -> None:
    """A URL the schema refuses (unknown scheme) is not printed back: it may hold a password."""
    err = _refused(["launch", "--dry-run", *SMOKE_ARGS, "--set",
                    "study.storage=redis://u:hunter2pw@h/0", "--results", str(tmp_path / "r")],
                   tmp_path, "study.storage", "unknown storage scheme")
    assert "hunter2pw" not in err


def test_journal_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    _refused(["launch", "--dry-run", *SMOKE_ARGS, "--set", f"study.storage={tmp_path / 'dir'}",
              "--results", str(tmp_path / "res")], tmp_path, "study.storage", "is a directory")


# ---------------------------------------------------------------- 2. secrets
# (url, the secret parts that must never show, what must still show)
MASKED = [
    ("postgresql://u:se@cret@db.example:5432/optuna", ["se@cret", "cret"],
     "postgresql://u:***@db.example:5432/optuna"),
    ("postgresql://u:p/ss:w@db/optuna", ["p/ss", "ss:w"], "postgresql://u:***@db/optuna"),
    ("postgresql://u:p%40ss@db/optuna", ["p%40ss", "40ss"], "postgresql://u:***@db/optuna"),
    ("mysql+pymysql://root:hunter22@127.0.0.1/optuna", ["hunter22"],
     "mysql+pymysql://root:***@127.0.0.1/optuna"),
    ("postgresql://db/optuna?user=u&password=hunter22&sslmode=require", ["hunter22"],
     "postgresql://db/optuna?user=u&password=***&sslmode=require"),
    ("postgresql://u:${STUDY_DB_PASSWORD}@db/optuna", [],
     "postgresql://u:${STUDY_DB_PASSWORD}@db/optuna"),   # a reference, not the secret
    ("postgresql://u@db/optuna", [], "postgresql://u@db/optuna"),
    ("/scratch/me/optuna.journal", [], "/scratch/me/optuna.journal"),
]


@pytest.mark.parametrize("url,secrets,shown", MASKED, ids=[m[2][:28] for m in MASKED])
def test_masked_hides_the_password(url: str, secrets: list[str], shown: str) -> None:
    out = storage.masked(url)
    assert out == shown
    for s in secrets:
        assert s not in out


def test_password_never_reaches_the_terminal(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDY_TEST_PASSWORD", "hunter22pw")
    # port 1 on localhost: nothing listens, so the driver fails fast with its own message
    cases = {   # url: (what the message says, what it must never say)
        "postgresql://u:se@cret@127.0.0.1:1/db": ("%40", ["se@cret", "cret"]),
        "postgresql://u:hunter22@127.0.0.1:1/db": ("cannot open storage", ["hunter22"]),
        "postgresql://u:${STUDY_TEST_PASSWORD}@127.0.0.1:1/db": (
            "cannot open storage", ["hunter22pw"]),
        "postgresql://u:${STUDY_NO_SUCH_VARIABLE}@127.0.0.1:1/db": (
            "STUDY_NO_SUCH_VARIABLE, which is not set", []),
    }
    for url, (needle, secrets) in cases.items():
        for cmd in (["launch", "--n-trials", "1"], ["status"],
                    ["dashboard", "--port", str(free_port())]):
            argv = [*cmd, *SMOKE_ARGS, "--set", f"study.storage={url}", "--results",
                    str(tmp_path / "res")]
            err = _refused(argv, tmp_path, "study.storage", needle)
            for s in secrets:
                assert s not in err, f"{s!r} leaked by {cmd}: {err}"


def test_dry_run_prints_the_storage_masked(tmp_path: Path) -> None:
    rc, out, err = _cli(["launch", "--dry-run", *SMOKE_ARGS, "--set",
                         "study.storage=postgresql://u:hunter22@db.example/optuna",
                         "--results", str(tmp_path / "res")])
    assert rc == 0, err
    assert "storage postgresql://u:***@db.example/optuna" in out and "hunter22" not in out
    assert not (tmp_path / "res").exists()


# ---------------------------------------------------------------- a launched study
@dataclass
class Launched:
    results: Path
    db: Path
    sets: list[str]
    rc: int
    out: str


def _pruned_at_once(self: pipeline.Pipeline) -> None:
    raise optuna.TrialPruned("stub pipeline: this file checks what surrounds a trial")


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launched]:
    """A study launched for real with the debug executor: storage from ${STUDY_BAD_COMMANDS_DB}
    (expanded by the launcher and by the worker when they open it), one trial, whose pipeline
    is a stub that prunes at once (so the launch ends in exit 3: no trial completed)."""
    root = tmp_path_factory.mktemp("launched")
    db = root / "secret-place" / "optuna.db"
    db.parent.mkdir()
    sets = [x for s in LAUNCHED_SETS for x in ("--set", s)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_DB, str(db))
        with pytest.MonkeyPatch.context() as stub:
            stub.setattr(pipeline.Pipeline, "run", _pruned_at_once)
            rc, out, err = _cli(["launch", *SMOKE_ARGS, *sets, "--executor", "debug",
                                 "--n-trials", "1", "--results", str(root / "res")])
        yield Launched(root / "res", db, sets, rc, out + err)


def test_storage_reference_is_expanded_only_when_opened(launched: Launched) -> None:
    assert launched.rc == 3, launched.out[-2000:]   # ran, pruned, none completed
    st = optuna.load_study(study_name="badcmd", storage=f"sqlite:///{launched.db}")
    (trial,) = st.trials
    assert trial.state == optuna.trial.TrialState.PRUNED   # told by the worker, through ${...}
    assert "pid" in trial.user_attrs["worker"]
    job = launched.results / "badcmd" / "jobs" / "trial-000000.json"
    text = job.read_text()
    assert json.loads(text)["storage"] == f"sqlite:///${{{ENV_DB}}}"
    assert str(launched.db) not in text and "secret-place" not in launched.out
    # 0600: the job file holds the resolved tree, storage URL included
    assert stat.S_IMODE(job.stat().st_mode) == 0o600
    request = launched.results / "badcmd" / "launcher.json"
    if request.exists():    # written by --detach only
        assert stat.S_IMODE(request.stat().st_mode) == 0o600


def test_launch_refused_by_the_lock_leaves_the_running_study_alone(launched: Launched,
                                                                   tmp_path: Path) -> None:
    """Another launcher holds the study: a second `study launch` must not reset its target,
    undo a `study cancel` in progress or enqueue anything."""
    sdir = launched.results / "badcmd"
    st = optuna.load_study(study_name="badcmd", storage=f"sqlite:///{launched.db}")
    st.set_user_attr("cancelled", True)
    before = (st.user_attrs["n_trials"], len(st.trials))
    with open(sdir / "launcher.lock", "a+") as held, pytest.MonkeyPatch.context() as mp:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)     # the running launcher
        mp.setenv(ENV_DB, str(launched.db))
        _refused(["launch", *SMOKE_ARGS, *launched.sets, "--n-trials", "50", "--results",
                  str(launched.results)], tmp_path, "another launcher is running")
    st = optuna.load_study(study_name="badcmd", storage=f"sqlite:///{launched.db}")
    assert (st.user_attrs["n_trials"], len(st.trials)) == before
    assert st.user_attrs["cancelled"] is True
    st.set_user_attr("cancelled", False)


def test_status_of_the_launched_study_masks_and_checks_its_flags(launched: Launched,
                                                                 tmp_path: Path) -> None:
    base = ["status", *SMOKE_ARGS, *launched.sets, "--results", str(launched.results)]
    rc, out, err = _cli(base)
    assert rc == 0, err
    assert f"${{{ENV_DB}}}" in out and "secret-place" not in out
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    res = launched.results
    _refused([*base, "--cache", str(blocker)], tmp_path, "--cache", str(blocker),
             "not a directory", also=res)
    _refused([*base, "--stale-after", "0"], tmp_path, "--stale-after", also=res)
    _refused([*base, "--watch", "-1"], tmp_path, "--watch", also=res)


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused dashboard must never reach the server (which would block the test)."""
    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("the dashboard server was started")
    monkeypatch.setattr(dashboard_command.optuna_dashboard, "run_server", started)


@pytest.mark.usefixtures("no_server")
def test_dashboard_refuses_bad_port_and_host_before_serving(launched: Launched,
                                                             tmp_path: Path) -> None:
    base = ["dashboard", *SMOKE_ARGS, *launched.sets, "--results", str(launched.results)]
    for port in ("70000", "0", "-1", "65536"):
        _refused([*base, "--port", port], tmp_path, "--port", "1..65535", port,
                 also=launched.results)
    for host in ("no such host!", "256.1.1.1"):
        _refused([*base, "--host", host, "--port", str(free_port())], tmp_path, "--host",
                 repr(host), also=launched.results)
    # an address that resolves but is not this machine's (TEST-NET-1, RFC 5737)
    _refused([*base, "--host", "192.0.2.1", "--port", str(free_port())], tmp_path,
             "--host", "192.0.2.1", "address of this machine", also=launched.results)


@pytest.mark.usefixtures("no_server")
def test_dashboard_refuses_a_port_in_use(launched: Launched, tmp_path: Path) -> None:
    base = ["dashboard", *SMOKE_ARGS, *launched.sets, "--results", str(launched.results)]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _refused([*base, "--port", str(port)], tmp_path, f"--port {port}", "already in use",
                 also=launched.results)


def test_dashboard_serves_once_its_checks_pass(launched: Launched, tmp_path: Path) -> None:
    """The real server in its own process, on a free port: the checks leave the port free."""
    port = free_port()
    env = {**os.environ, ENV_DB: str(launched.db), "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1"}
    dash = subprocess.Popen([sys.executable, "-m", "study.cli", "dashboard", *SMOKE_ARGS,
                             *launched.sets, "--results", str(launched.results), "--port",
                             str(port), "--host", "127.0.0.1"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        answer: dict[str, object] = {}

        def served() -> bool:
            if dash.poll() is not None:
                return True    # exited: the assertion below shows why
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies",
                                            timeout=2) as resp:
                    answer.update(json.loads(resp.read()))
                return True
            except OSError:
                return False

        assert wait(served, timeout=90, interval=0.3)
        assert dash.poll() is None, dash.communicate(timeout=10)[0][-2000:]
        summaries = answer.get("study_summaries", answer.get("studies", []))
        assert "badcmd" in [s["study_name"] for s in summaries]   # type: ignore[index]
    finally:
        dash.kill()
        out = dash.communicate(timeout=30)[0]
    assert "secret-place" not in out and "Traceback" not in out


# ---------------------------------------------------------------- 3. the resume seed
def test_resume_seed_stays_in_numpy_range() -> None:
    top = 2**32 - 1
    old = top + 1_000_003 * 10_000            # what a resume at 10,000 trials used to pass
    with pytest.raises(ValueError):
        np.random.RandomState(old)
    seeds = {storage.resume_seed(top, n) for n in range(10_000, 10_050)}
    assert len(seeds) == 50 and all(0 <= s < 2**32 for s in seeds)
    assert storage.resume_seed(7, 0) == 7                     # a fresh study: the file's seed
    assert storage.resume_seed(7, 3) == 7 + 3 * 1_000_003     # below the wrap: as before
    assert 0 <= storage.resume_seed(-5, 0) < 2**32
    ld = studyfile.load(str(SMOKE), [f"study.seed={top}"])
    for sampler in ("tpe", "random", "nsga2"):
        sf = ld.sf.model_copy(update={"study": ld.sf.study.model_copy(
            update={"sampler": sampler})})
        s = storage.make_sampler(sf, ld.space.grid(), parallel=2, resumed_at=10_000)
        st = optuna.create_study(sampler=s)
        st.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)   # the rng works
        assert len(st.trials) == 2


# ---------------------------------------------------------------- 4. study run: data and cache
def _imagefolder_empty_image(root: Path) -> Path:
    write_imagefolder(root)
    (root / "train" / "cat" / "3.png").write_bytes(b"")
    return root / "train" / "cat" / "3.png"


def _imagefolder_truncated(root: Path) -> Path:
    write_imagefolder(root)
    bad = root / "train" / "dog" / "1.png"
    bad.write_bytes(bad.read_bytes()[:60])
    return bad


def _imagefolder_stray_text(root: Path) -> Path:
    write_imagefolder(root)
    (root / "test" / "dog" / "README.txt").write_text("where these came from")
    return root / "test" / "dog" / "README.txt"


def _tiny_empty_jpeg(root: Path) -> Path:
    write_tinyimagenet(root / "tiny-imagenet-200")
    bad = sorted((root / "tiny-imagenet-200" / "train").rglob("*.JPEG"))[2]
    bad.write_bytes(b"")
    return bad


def _cifar_empty_batch(root: Path) -> Path:
    write_cifar10(root)
    bad = root / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(b"")
    return bad


def _cifar_truncated_batch(root: Path) -> Path:
    write_cifar10(root)
    bad = root / "cifar-10-batches-py" / "data_batch_2"
    bad.write_bytes(bad.read_bytes()[:5000])
    return bad


def _cifar_cut_at_the_end(root: Path) -> Path:
    write_cifar10(root)
    bad = root / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(bad.read_bytes()[:-2])
    return bad


# layout, fixture writer (returns the bad file), what the message says about it
BAD_DATA = {
    "imagefolder_empty_image": ("imagefolder", _imagefolder_empty_image, "empty (0 bytes)"),
    "imagefolder_truncated_png": ("imagefolder", _imagefolder_truncated, "truncated"),
    "imagefolder_stray_txt": ("imagefolder", _imagefolder_stray_text, "not an image"),
    "tinyimagenet_empty_jpeg": ("tinyimagenet", _tiny_empty_jpeg, "empty (0 bytes)"),
    "cifar_empty_batch": ("cifar10", _cifar_empty_batch, "empty (0 bytes)"),
    "cifar_truncated_batch": ("cifar10", _cifar_truncated_batch, "truncated"),
    "cifar_cut_at_the_end": ("cifar10", _cifar_cut_at_the_end, "truncated"),
}


@pytest.mark.parametrize("case", BAD_DATA)
def test_run_refuses_unreadable_data_before_training(case: str, tmp_path: Path) -> None:
    dataset, write, says = BAD_DATA[case]
    bad = write(tmp_path / "data")
    err = _refused(["run", *SMOKE_ARGS, "--set", f"data.dataset={dataset}", "--set",
                    f"data.root={tmp_path / 'data'}", "--set", "data.val_size=2",
                    "--results", str(tmp_path / "res")], tmp_path,
                   str(SMOKE), "pipeline.data.root", str(bad), says)
    assert "pickle can run code" not in err   # damage is not called an attack


def test_run_refuses_a_validation_split_the_files_cannot_give(tmp_path: Path) -> None:
    """The config cannot know a folder's size: the 30 training images of the CIFAR files
    leave none to train on with val_size 30."""
    write_cifar10(tmp_path / "data")
    _refused(["run", *SMOKE_ARGS, "--set", "data.dataset=cifar10", "--set",
              f"data.root={tmp_path / 'data'}", "--set", "data.val_size=30", "--results",
              str(tmp_path / "res")], tmp_path, "pipeline.data.val_size",
             "leaves no training images", "only 30", "val_size <= 29")


def test_data_errors_are_data_errors_and_value_errors(tmp_path: Path) -> None:
    bad = _cifar_truncated_batch(tmp_path)
    with pytest.raises(DataError) as e:
        data.load_dataset("cifar10", str(tmp_path))
    assert isinstance(e.value, ValueError) and str(bad) in str(e.value)
    with pytest.raises(data.DataFormatError) as e:
        data.split_validation(data.Split(np.zeros((4, 2, 2, 3), np.uint8),
                                         np.arange(4, dtype=np.int64) % 2), 4, 0)
    assert e.value.field == "val_size"


@pytest.mark.parametrize("cmd", ["run", "launch", "launch_dry", "bench", "download"])
def test_a_cache_or_root_that_is_no_directory_is_refused(cmd: str, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    argv = {"run": ["run", *SMOKE_ARGS],
            "launch": ["launch", *SMOKE_ARGS, "--executor", "debug", "--n-trials", "1"],
            "launch_dry": ["launch", "--dry-run", *SMOKE_ARGS],
            "bench": ["bench", "--device", "cpu", "--model", "tiny", "--stages", "eval"],
            "download": ["data", "download", "--dataset", "cifar10"]}[cmd]
    flag = "--root" if cmd == "download" else "--cache"
    extra = [] if cmd in ("bench", "download") else ["--results", str(tmp_path / "res")]
    for value, says in ((blocker, "is a file"), (blocker / "sub", "is a file"),
                        (Path("/proc/study-no-such-dir"), "cannot create")):
        _refused([*argv, *extra, flag, str(value)], tmp_path, flag, str(value), says)
    assert blocker.read_text() == "keep me"


def test_launch_refuses_results_that_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for cmd in (["launch", "--executor", "debug", "--n-trials", "1"], ["launch", "--dry-run"],
                ["status"], ["report"], ["cancel"]):
        _refused([*cmd, *SMOKE_ARGS, "--results", str(blocker)], tmp_path, "--results",
                 str(blocker), "not a directory")


def test_stage_cache_on_a_file_says_so_in_a_worker_too(tmp_path: Path) -> None:
    """What a worker sees when its job's cache is no directory: one paragraph, not a
    NotADirectoryError traceback in every trial's log."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StudyError, match=f"stage cache {blocker}: cannot create"):
        with StageCache(blocker).lock("base", "k"):
            pass
    assert StageCache(blocker).summary() == {}


# ---------------------------------------------------------------- 6. other flags
@pytest.mark.parametrize("flags,needle", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--n-train", "-5"], "--n-train"),
    (["--batch-size", "0"], "--batch-size"),
    (["--eval-images", "0"], "--eval-images"),
    (["--procs", "0"], "--procs"),
    (["--jpeg-bank-step", "0"], "--jpeg-bank-step"),
    (["--warmup", "-1"], "--warmup must be >= 0"),
    (["--workers", "-2"], "--workers must be >= 0"),
], ids=lambda v: v if isinstance(v, str) else v[0])
def test_bench_numbers_are_checked_first(flags: list[str], needle: str, tmp_path: Path) -> None:
    _refused(["bench", "--device", "cpu", "--model", "tiny", *flags], tmp_path, needle)


def test_bench_json_path_is_checked_before_the_bench_runs(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    _refused(["bench", "--device", "cpu", "--model", "tiny", "--json", str(tmp_path / "out")],
             tmp_path, "--json", "is a directory")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    _refused(["bench", "--device", "cpu", "--model", "tiny", "--json",
              str(blocker / "bench.json")], tmp_path, "--json", "is a file")


# ---------------------------------------------------------------- in real processes
def test_no_traceback_reaches_the_terminal(tmp_path: Path) -> None:
    """The entry point itself, where the exit status and stderr are the process's own."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    runs = {
        "cache": (["run", *SMOKE_ARGS, "--cache", "/proc/study-no-such-dir"], "--cache"),
        "port": (["dashboard", *SMOKE_ARGS, "--port", "70000"], "--port"),
        "storage": (["launch", *SMOKE_ARGS, "--set", f"study.storage={blocker}"],
                    "study.storage"),
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        for k, (argv, _) in runs.items():   # each imports torch (~4 s of CPU): in parallel
            procs[k] = subprocess.Popen(
                [sys.executable, "-m", "study.cli", *argv, "--results", str(tmp_path / k)],
                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True)
        t0 = time.monotonic()
        for k, p in procs.items():
            out, err = p.communicate(timeout=max(10.0, 180 - (time.monotonic() - t0)))
            assert p.returncode == 2, f"{k}: exit {p.returncode}\n{err[-1500:]}"
            assert "Traceback" not in out + err and runs[k][1] in err, f"{k}: {err[-1500:]}"
            assert not (tmp_path / k).exists(), k
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert blocker.read_text() == "x"
