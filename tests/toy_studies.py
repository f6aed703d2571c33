"""Looking at the studies the tests launch: their journal, their finished trials, and waiting
for a condition instead of sleeping a guessed time."""

from __future__ import annotations

import contextlib
import io
import socket
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pyarrow.parquet as pq

from study import cli, launcher, results, storage


def journal_study(results: Path, name: str) -> optuna.Study:
    """The study `name` in its default journal under the results folder `results`."""
    return optuna.load_study(study_name=name, storage=storage.open_storage(
        str(results / name / "optuna.journal")))


def finished(st: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that count toward n_trials: finished, and not a FAIL that was retried."""
    return [t for t in st.get_trials() if t.state in launcher.FINISHED
            and not t.user_attrs.get("retried")]


def wait(predicate: Callable[[], object], timeout: float, interval: float = 0.5) -> bool:
    """True as soon as `predicate()` holds; its last answer after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_parquet_schemas(study_dir: Path) -> int:
    """Every summary file of a study has one schema, file by file, and so has every rows file:
    reading a folder as one dataset would paper over a file whose column is all-null (type
    null) or typed otherwise, which breaks a reader that opens files one at a time. Returns
    how many summary files (trials) it checked."""
    counted = {}
    for folder, required in (("summary", ["study", "trial", "attempt", "state",
                                          *results.EXTRA_COLUMNS, *results.SUMMARY_FACTS]),
                             ("trials", list(results.ROW_COLUMNS))):
        files = sorted((study_dir / folder).glob("trial-*.parquet"))
        if folder == "summary":
            assert files, f"no summary files under {study_dir}"
        first = pq.read_schema(files[0]).remove_metadata() if files else None
        for f in files:
            schema = pq.read_schema(f).remove_metadata()
            assert first is not None and schema.equals(first), (
                f"{f.name} differs from {files[0].name}:\n{set(schema) ^ set(first or [])}")
        if first is not None:
            missing = [c for c in required if c not in first.names]
            assert not missing, missing
            for name in required:   # never "null", whatever the state
                assert str(first.field(name).type) != "null", name
        counted[folder] = len(files)
    return counted["summary"]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`study ARGV` in-process: (exit code, stdout, stderr). Any exception fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except SystemExit as e:     # argparse: usage error
            rc = int(e.code or 0)
    return rc, out.getvalue(), err.getvalue()
