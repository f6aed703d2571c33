"""Why a trial failed: the kinds, which of them a retry can fix, which the circuit breaker
counts, and the one-line reason of a worker's own error.

Every FAIL carries `fail_kind` and a one-line `fail_reason` (in storage, in its Parquet file,
in `study status`); the traceback stays in `error` and the trial's log.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pydantic

from study.errors import StudyError

__all__ = ["BREAKER_KINDS", "KINDS", "RETRYABLE", "classify_error", "divergence",
           "failure_line", "failure_lines"]

KINDS = {
    "code": "the trial's own exception: a retry would repeat it",
    "config": "its configuration or data is invalid (whole-space validation should have "
              "caught it)",
    "diverged": "a stage kept weights from after its training loss became non-finite",
    "infrastructure": "its job vanished: scancel, node failure, OOM kill, preemption",
    "timeout": "its job kept reaching its time limit and ran out of requeues",
    "disk_full": "a write found the disk full: the launcher stops, the trial is retried",
    "cancelled": "`study cancel` or the circuit breaker stopped it",
}
# Retried with the same parameters (the retry resumes from the stage cache and the epoch
# checkpoint): the cluster's fault, not the configuration's.
RETRYABLE = frozenset({"infrastructure", "timeout"})
# Counted by the circuit breaker: the study's own fault, which every further trial of the same
# space is likely to repeat, burning GPU-hours on tracebacks.
BREAKER_KINDS = frozenset({"code", "config", "diverged"})


def classify_error(error: BaseException) -> tuple[str, str]:
    """(kind, one-line reason) of an exception a worker caught from its pipeline."""
    first_line = (str(error).strip().splitlines() or [""])[0][:300]
    if any(s in str(error) for s in ("No space left on device", "Disk quota exceeded")):
        # a library wrapped the OSError (torch.save: RuntimeError): the launcher stops on the
        # full disk itself, and neither a retry nor the breaker would help
        return "disk_full", f"{type(error).__name__}: {first_line}"
    if isinstance(error, (StudyError, pydantic.ValidationError)):
        return "config", f"{type(error).__name__}: {first_line}"
    frames = traceback.extract_tb(error.__traceback__)
    where = ""
    if frames:
        f = frames[-1]
        where = f" (at {Path(f.filename).name}:{f.lineno} in {f.name})"
    return "code", f"{type(error).__name__}: {first_line}{where}"


def divergence(stages: Iterable[tuple[Any, str, Sequence[Mapping[str, Any]], int | None]]
               ) -> str | None:
    """Where a trial's training diverged, from each stage's (seed, name, epoch records, kept
    epoch): a stage whose kept weights come from an epoch with a non-finite mean loss, e.g.
    "fusiondistill epoch 1 (seed 0): loss nan". A loss that went NaN after the kept epoch
    (best_val selection kept an earlier one) does not count: the stage's network is sound.
    None when every stage kept sound weights."""
    for seed, stage, records, kept in stages:
        if not records:
            continue
        epoch = kept if kept is not None else records[-1].get("epoch")
        rec = next((r for r in records if r.get("epoch") == epoch), records[-1])
        loss = rec.get("loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            first = next(r.get("epoch") for r in records
                         if isinstance(r.get("loss"), float) and not math.isfinite(r["loss"]))
            return (f"{stage} epoch {first} (seed {seed}): loss {loss}, and its kept weights "
                    f"(epoch {rec.get('epoch')}) come from after that")
    return None


def failure_line(attrs: Mapping[str, Any], number: int) -> str:
    """`trial 7 [code] (retried): ZeroDivisionError: ... (at fusion.py:120 in fuse)` from a
    trial's user attributes."""
    retried = " (retried)" if attrs.get("retried") else ""
    return (f"trial {number} [{attrs.get('fail_kind') or 'unknown'}]{retried}: "
            f"{attrs.get('fail_reason') or '(no reason recorded)'}")


def failure_lines(failed: Sequence[tuple[int, Mapping[str, Any]]], limit: int = 5
                  ) -> list[str]:
    """`study status`: the failures by cause, and the last ones' one-line reasons;
    `failed` is (number, user attributes) of each FAIL trial."""
    if not failed:
        return []
    kinds: dict[str, int] = {}
    for _, attrs in failed:
        kind = attrs.get("fail_kind") or "unknown"
        kinds[kind] = kinds.get(kind, 0) + 1
    out = ["failures: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))]
    return out + ["  " + failure_line(attrs, n) for n, attrs in failed[-limit:]]
