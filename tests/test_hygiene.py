"""The suite's own guards: what a test starts ends with it, and no test runs forever."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib
from reaper import processes_naming, reap

ROOT = Path(__file__).resolve().parents[1]


def test_reaper_stops_processes_in_other_sessions_and_groups(tmp_path: Path) -> None:
    marker = tmp_path / "job.json"
    # a launcher-like parent and a worker-like child in a session of its own, as local
    # workers are: killing the parent's process group would miss the child
    code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(300)', sys.argv[1]], start_new_session=True); "
            "time.sleep(300)")
    parent = subprocess.Popen([sys.executable, "-c", code, str(marker)])
    try:
        deadline = 50
        while len(processes_naming(marker)) < 2 and deadline:
            subprocess.run(["sleep", "0.1"])
            deadline -= 1
        assert len(processes_naming(marker)) == 2
        found = reap(tmp_path, grace_s=2)
        assert found["processes"] == 2 and processes_naming(tmp_path) == []
        assert parent.wait(timeout=10) != 0                      # killed, not finished
    finally:
        parent.kill()
        parent.wait()


def test_every_test_has_a_time_limit() -> None:
    """pytest-timeout bounds each test: a hang fails that test instead of eating CI's 90 min."""
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"][
        "ini_options"]
    assert 0 < int(options["timeout"]) <= 1200
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["dev"]
    assert any(d.startswith("pytest-timeout") for d in dev)
