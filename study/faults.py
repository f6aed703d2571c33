"""Fault injection for the fault suite (tests/test_faults_kills.py): a worker that kills itself
with SIGKILL in the middle of a write, part of the bytes on disk. A write lasts milliseconds, so
no kill from outside hits one reliably; this does, exactly once per armed point.

    STUDY_FAULT="<point>:<token file>[,<point>:<token file> ...]"

points: cache_write (a stage cache entry, in its temp dir), epoch_write (an epoch checkpoint, in
its temp file), parquet_write (a trial's Parquet file, in its temp file). The first process to
reach an armed point claims its token by deleting it (exactly one process wins an unlink), writes
<token>.hit naming itself and the file, cuts the file to half its bytes and SIGKILLs itself.
Only workers crash (python -m study.worker, a submitit job): the launcher writes Parquet files
too (when it fails a trial), and killing the launcher is a fault of its own, injected from outside.
Unset, a write pays one environment lookup.

Two more hooks shape timing, not faults: `rendezvous` (workers meet before they use the storage)
and `pace_epoch` (a training epoch lasts at least a given time, so a test of a real time limit
does the same number of epochs per run on a fast machine as on a slow one).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

WORKER_MAINS = ("study.worker", "submitit.core._submit")


def crash_midway(point: str, path: Path) -> None:
    spec = os.environ.get("STUDY_FAULT")
    if not spec:
        return
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if main_spec is None or main_spec.name not in WORKER_MAINS:
        return
    for item in spec.split(","):
        name, _, token = item.partition(":")
        if name != point:
            continue
        try:
            os.unlink(token)
        except FileNotFoundError:
            continue   # armed once: another process took it
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.truncate(size // 2)
            os.fsync(f.fileno())
        Path(token + ".hit").write_text(json.dumps(
            {"point": point, "pid": os.getpid(), "file": str(path), "bytes_on_disk": size // 2,
             "of": size, "slurm_job_id": os.environ.get("SLURM_JOB_ID")}))
        os.kill(os.getpid(), signal.SIGKILL)


def rendezvous() -> None:
    """STUDY_RENDEZVOUS="<folder>:<n>" (the storage concurrency test): a registered worker waits,
    at most 300 s, until n workers have arrived, so n of them really use the storage at once. On
    2 cores a toy trial ends before the 8th worker has imported torch (~4 s), so without this
    8 in flight meant 5 or 6 alive together. Later workers find n arrivals and go straight on."""
    spec = os.environ.get("STUDY_RENDEZVOUS")
    if not spec:
        return
    folder, _, n = spec.rpartition(":")
    arrivals = Path(folder)
    arrivals.mkdir(parents=True, exist_ok=True)
    (arrivals / str(os.getpid())).touch()
    deadline = time.monotonic() + 300
    while sum(1 for _ in arrivals.iterdir()) < int(n) and time.monotonic() < deadline:
        time.sleep(0.1)


def pace_epoch(started: float) -> None:
    """STUDY_EPOCH_FLOOR_S="<seconds>" (the SLURM time-limit test): an epoch that began at
    `started` (time.perf_counter) lasts at least that long. The test needs the first attempt's
    two runs to fall short of the whole schedule and its retries to finish it; a run lives
    15-45 s (slurmctld looks at time limits every 30 s), so the epochs a run trains depend on
    the machine: 120 toy epochs took ~1.0 s each on one 2-core box and ~0.5 s on another, where
    the first attempt finished all 120 and the test failed. With a floor the epochs per run
    are bounded whatever the machine: a slower one only trains fewer."""
    floor = os.environ.get("STUDY_EPOCH_FLOOR_S")
    if floor:
        time.sleep(max(0.0, float(floor) - (time.perf_counter() - started)))
