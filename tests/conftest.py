"""Shared fixtures: the real single-node SLURM cluster of slurm/local_cluster.sh.

It needs root on Debian (the script apt-installs slurm-wlm, munge, slurmdbd, mariadb-server);
elsewhere SLURM tests skip with the reason, except under CI=true, where they fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from reaper import reaped

SCRIPT = Path(__file__).resolve().parents[1] / "slurm" / "local_cluster.sh"
STATE_DIR = os.environ.get("STUDY_SLURM_DIR", "/tmp/study-slurm")
# rc 2 from the script: this machine cannot host the cluster (not root, no apt, no packages).
RC_UNSUPPORTED = 2


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but the SLURM cluster cannot start: {reason}")
    print(f"skipping SLURM tests: {reason}")
    pytest.skip(reason)


def _script(command: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), command, STATE_DIR],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[str]:
    """Starts the cluster (or reuses a running one) and exports SLURM_CONF; yields its path."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        _unavailable("the local SLURM cluster needs root on Linux (Debian)")
    was_running = _script("status").returncode == 0
    started = _script("start")
    if started.returncode == RC_UNSUPPORTED:
        _unavailable(started.stderr.strip().splitlines()[-1])
    if started.returncode != 0:
        pytest.fail(f"{SCRIPT} start failed:\n{started.stderr[-3000:]}")
    conf = started.stdout.strip().splitlines()[-1].removeprefix("export SLURM_CONF=")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield conf
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous
    if not was_running:
        _script("stop", timeout=120)


# What the study's own commands export for the workers they start (progress.py, options.py,
# executors/slurm.py), as the session found them. Only these go back after every test: a
# module's fixture may set other STUDY_* variables for its tests (test_bad_commands.py keeps
# its storage path in one), and resetting every STUDY_* name removed that path mid-module.
_EXPORTED = ("STUDY_LOG_LEVEL", "STUDY_PROGRESS_S", "STUDY_THREADS", "CUDA_VISIBLE_DEVICES")
_SESSION_EXPORTED = {k: os.environ.get(k) for k in _EXPORTED}


@pytest.fixture(autouse=True)
def _environment_restored() -> Iterator[None]:
    """What a test's in-process command puts into os.environ ends with the test. `--log-level
    warning` (or `--quiet`) on an in-process `study launch` sets STUDY_LOG_LEVEL for the workers
    it starts; left behind, it silenced the stage lines of every later test's subprocesses, and
    three tests that read those lines failed in a full run although each passed alone. A
    module's fixture runs before this snapshot, so the exported settings also go back to what
    the session started with."""
    saved = dict(os.environ)
    yield
    for k, v in _SESSION_EXPORTED.items():
        if v is None:
            saved.pop(k, None)
        else:
            saved[k] = v
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Pipelines run in this process on one torch thread. On a 2-core box that also runs a
    launch's workers (or anything else), two OpenMP threads spin-wait on each other: an
    in-process study took 130 s instead of 13. One thread is what every in-process test after
    test_bench.py already had (it sets one), so a file run alone now runs as in the suite.
    Workers in their own processes take their executor's share (STUDY_THREADS), as in a study."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _reap_what_the_test_started(request: pytest.FixtureRequest) -> Iterator[None]:
    """Launchers, workers, servers and SLURM jobs of a test end with it, pass or fail: each
    names the test's tmp_path in its command line."""
    if "tmp_path" not in request.fixturenames:
        yield
        return
    with reaped(request.getfixturevalue("tmp_path")):
        yield


@pytest.hookimpl(tryfirst=True)   # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs the SLURM cluster is slow too: `-m "not slow"` never starts the
    cluster (its start, and a job's way through sbatch and sacct, take seconds each)."""
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()) and not item.get_closest_marker(
                "slurm"):
            item.add_marker(pytest.mark.slurm)
        if item.get_closest_marker("slurm") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


# A test of the quick loop (`-m "not slow"`, ~3 minutes for ~800 tests on 2 cores) that takes
# over this long, set-up included, should carry @pytest.mark.slow: its longest tests take ~6 s
# on an idle box. Reported, not failed: the same test takes 2-3x longer on a loaded box.
SLOW_S = 10.0
_UNMARKED_SLOW: list[tuple[str, float]] = []
_SPENT: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # setup + call + teardown: a module fixture's work lands on its first test's setup
    _SPENT[report.nodeid] = _SPENT.get(report.nodeid, 0.0) + report.duration
    if report.when == "teardown":
        spent = _SPENT.pop(report.nodeid)
        if spent > SLOW_S and "slow" not in report.keywords:
            _UNMARKED_SLOW.append((report.nodeid, spent))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _UNMARKED_SLOW:
        terminalreporter.write_sep("-", f"tests over {SLOW_S:.0f} s without the slow mark")
        for nodeid, s in sorted(_UNMARKED_SLOW, key=lambda x: -x[1]):
            terminalreporter.write_line(f"{s:7.1f}s {nodeid}")
