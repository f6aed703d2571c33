"""Which GPU each worker gets: one device per process through CUDA_VISIBLE_DEVICES.

A narrow ResNet56 trial leaves an H200 mostly idle, so K trials share G GPUs, K/G per GPU, and
each process sees exactly one device (its cuda:0). The launcher's machine (local executor) and a
SLURM job's allocation (a packed job, the experts' stage job) use the same rule. Device names are
what the parent process shows: indices, or the ids in its own CUDA_VISIBLE_DEVICES (SLURM sets
that to the allocation's GPUs), so a child never sees a device its parent was not given.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from study.errors import ConfigError

__all__ = ["ENV", "THREADS_ENV", "child_env", "least_loaded", "spread", "threads_from_env",
           "visible_devices"]

ENV = "CUDA_VISIBLE_DEVICES"
# Set by whoever splits CPUs between the workers it starts (the local executor, a packed batch
# job, a stage job): the torch threads of one worker.
THREADS_ENV = "STUDY_THREADS"


def threads_from_env(environ: Mapping[str, str]) -> int | None:
    n = environ.get(THREADS_ENV, "")
    return int(n) if n.isdigit() and int(n) > 0 else None


def visible_devices(setting: Literal["auto", "none"] | Sequence[int] = "auto",
                    environ: dict[str, str] | None = None) -> list[str]:
    """The device ids this process may hand out. "auto": every device it sees; "none": none;
    a list: those indices among the ones it sees."""
    env = os.environ if environ is None else environ
    if setting == "none":
        return []
    shown = env.get(ENV)
    if shown is not None:
        ids = [x.strip() for x in shown.split(",") if x.strip()]
    else:
        # torch is imported only here, where no CUDA_VISIBLE_DEVICES says what this process
        # sees: `study status` and `study cancel` build executors and never need it (~1.3 s)
        import torch

        ids = [str(i) for i in range(torch.cuda.device_count())]
    if setting == "auto":
        return ids
    missing = [i for i in setting if i >= len(ids)]
    if missing and shown is None and not ids:
        # no GPU here (a CPU box, a test): the indices stand for themselves
        return [str(i) for i in setting]
    if missing:
        seen = f"{len(ids)} device(s) {ids}" if ids else "no device"
        raise ConfigError(f"key 'executor.gpus': {list(setting)} names device indices this "
                          f"machine does not show (it shows {seen}"
                          + (f", from {ENV}={shown}" if shown is not None else "")
                          + f"); allowed: indices below {len(ids)}, auto or none")
    return [ids[i] for i in setting]


def spread(n: int, devices: Sequence[str]) -> list[str | None]:
    """Device of each of n processes started together: round robin, so n/G per device."""
    return [devices[i % len(devices)] if devices else None for i in range(n)]


def least_loaded(devices: Sequence[str], in_use: Iterable[str | None]) -> str | None:
    """The device with the fewest workers now (the first such in `devices` order)."""
    if not devices:
        return None
    load = Counter(d for d in in_use if d is not None)
    return min(devices, key=lambda d: (load[d], devices.index(d)))


def child_env(device: str | None, base: dict[str, str] | None = None,
              hide_all: bool = False) -> dict[str, str]:
    """The environment of a worker process placed on `device` (None: unchanged, or no device
    at all with hide_all, for `executor.gpus: none`)."""
    env = dict(os.environ if base is None else base)
    if device is not None:
        env[ENV] = device
    elif hide_all:
        env[ENV] = ""
    return env
