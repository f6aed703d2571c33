"""Every process and SLURM job a test started ends with the test, also when it fails.

A test's launchers, workers, dashboards and SLURM jobs all name its tmp_path in their command
line (results folder, job file, submitit folder): that is how they are found, whatever session
or process group they put themselves in (local workers start their own session, so killing a
launcher's group would miss them). The conftest fixture wraps every test that uses tmp_path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


def processes_naming(path: Path) -> list[int]:
    """Pids (other than this one) whose command line contains `path`."""
    marker, me, pids = str(path).encode(), os.getpid(), []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != me:
            with contextlib.suppress(OSError):
                if marker in (p / "cmdline").read_bytes():
                    pids.append(int(p.name))
    return pids


def slurm_jobs_naming(path: Path) -> list[str]:
    """Jobs in the queue whose batch script or working folder lies under `path`."""
    if not shutil.which("squeue") or not os.environ.get("SLURM_CONF"):
        return []
    try:
        out = subprocess.run(["squeue", "-h", "-o", "%i|%o|%Z"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.split("|", 1)[0] for line in out.splitlines() if str(path) in line]


def reap(path: Path, grace_s: float = 5.0) -> dict[str, int]:
    """Cancel the jobs and stop the processes that name `path`: SIGTERM, then SIGKILL after
    `grace_s`. Returns what it found, for the test log."""
    jobs = slurm_jobs_naming(path)
    if jobs:
        subprocess.run(["scancel", *jobs], capture_output=True, timeout=60)
    pids = processes_naming(path)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and processes_naming(path):
        time.sleep(0.1)
    for pid in processes_naming(path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return {"jobs": len(jobs), "processes": len(pids)}


@contextlib.contextmanager
def reaped(path: Path) -> Iterator[None]:
    """Whatever the block started under `path` is gone when it exits, however it exits."""
    try:
        yield
    finally:
        left = reap(path)
        if any(left.values()):
            print(f"reaper: stopped {left['processes']} processes and cancelled {left['jobs']} "
                  f"SLURM jobs left behind under {path}")
