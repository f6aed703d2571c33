"""Looking at the studies the tests launch: their journal, their finished trials, and waiting
for a condition instead of sleeping a guessed time."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import optuna

from study import launcher, storage


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
