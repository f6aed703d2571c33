"""One process per trial on this machine, each in its own session so it outlives a killed
launcher (`study launch` again adopts it). Liveness is read from /proc, never from a pid alone:
pids are recycled, so a process counts only if its command line names the trial's job file."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

from optuna.trial import FrozenTrial

from study.config import ExecutorSection
from study.executors import placement
from study.executors.base import Driver, Executor, Handle, JobFiles

GpuSetting = Literal["auto", "none"] | list[int]

WORKER_MODULE = "study.worker"


def pid_alive(pid: int, marker: str) -> bool:
    """Alive and really ours (its command line contains `marker`), not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return marker.encode() in f.read()
    except (OSError, IndexError):
        return False


def kill_local(handles: Sequence[Handle]) -> None:
    """SIGTERM to the process group of every handle that names a pid on this machine (workers
    and drivers lead their own session, so their children go too)."""
    for h in handles:
        if h.get("pid") and h.get("host", platform.node()) == platform.node():
            with contextlib.suppress(OSError):
                os.killpg(int(h["pid"]), signal.SIGTERM)


def start_process_driver(driver: Driver) -> Handle:
    with open(driver.log, "ab") as log:
        p = subprocess.Popen(driver.argv, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    return {"kind": "local", "pid": p.pid, "host": platform.node(), "log": str(driver.log)}


def stop_process_driver(handle: Handle, wait_s: float) -> None:
    if not handle.get("pid") or handle.get("host") != platform.node():
        return
    kill_local([handle])
    deadline = time.time() + wait_s
    while time.time() < deadline and pid_alive(int(handle["pid"]), "study.launcher"):
        time.sleep(0.5)


class LocalExecutor(Executor):
    name: ClassVar[str] = "local"

    def __init__(self, threads: int | None = None, gpus: GpuSetting = "auto"):
        self.threads = threads     # torch threads per worker: the CPUs split between trials
        self.devices = placement.visible_devices(gpus)
        self.hide_gpus = gpus == "none"
        self._in_use: list[str | None] = []   # the device of every trial in flight
        self._children: list[subprocess.Popen[bytes]] = []

    @classmethod
    def from_settings(cls, settings: ExecutorSection, study_dir: Path, study_name: str
                      ) -> LocalExecutor:
        # the cores split between the trials in flight: 2 on a 2-core box at --parallel 1
        return cls(threads=max(1, (os.cpu_count() or 1) // settings.parallel),
                   gpus=settings.gpus)

    def submit(self, trials: Sequence[JobFiles]) -> Handle:
        (t,) = trials   # one process per trial: trials_per_submission is 1
        device = placement.least_loaded(self.devices, self._in_use)
        self._in_use.append(device)
        env = placement.child_env(device, hide_all=self.hide_gpus)
        if self.threads:
            env[placement.THREADS_ENV] = str(self.threads)
        with open(t.log, "ab") as log:
            # argv list, no shell: user values never reach a shell string.
            p = subprocess.Popen([sys.executable, "-m", WORKER_MODULE, str(t.job)],
                                 stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=env, start_new_session=True)
        self._children.append(p)
        return {"kind": self.name, "pid": p.pid, "host": platform.node(), "marker": str(t.job),
                "submitted": time.time(), "gpu": device}

    def alive(self, handle: Handle, trial: FrozenTrial) -> bool:
        self.poll()
        registered = trial.user_attrs.get("worker") or {}
        if registered.get("host", handle.get("host")) != platform.node():
            return True   # another machine's process: cannot look, assume alive
        pid = registered.get("pid") or handle.get("pid")
        return pid is not None and pid_alive(int(pid), handle.get("marker", WORKER_MODULE))

    def started(self, job: Path) -> bool | None:
        if not Path("/proc").is_dir():
            return None
        return any(pid_alive(int(p.name), str(job)) for p in Path("/proc").iterdir()
                   if p.name.isdigit())

    def refresh(self, handles: Sequence[Handle]) -> None:
        self.poll()
        # the trials in flight, this launcher's and those it adopted from an earlier one
        self._in_use = [h.get("gpu") for h in handles if h.get("kind") == self.name]

    def poll(self) -> None:
        self._children = [p for p in self._children if p.poll() is None]   # reap zombies

    def cancel(self, handles: Sequence[Handle]) -> None:
        kill_local(handles)

    def describe(self, handles: Sequence[Handle]) -> list[str]:
        return [line + (f", gpu {h['gpu']}" if h.get("gpu") else "")
                for line, h in zip(super().describe(handles), handles, strict=True)]

    def describe_placement(self, parallel: int) -> str:
        threads = f"{self.threads} torch thread(s) each" if self.threads else "all CPUs"
        if self.hide_gpus or not self.devices:
            return f"{parallel} worker process(es) on this machine's CPU, {threads}"
        share = placement.spread(parallel, self.devices)
        per = {d: share.count(d) for d in self.devices}
        return (f"{parallel} worker process(es) on GPUs {self.devices} (CUDA_VISIBLE_DEVICES), "
                + ", ".join(f"{n} on GPU {d}" for d, n in per.items()) + f"; {threads}")

    def start_driver(self, driver: Driver) -> Handle:
        return start_process_driver(driver)

    def stop_driver(self, handle: Handle, wait_s: float) -> None:
        stop_process_driver(handle, wait_s)
