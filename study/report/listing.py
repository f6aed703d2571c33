"""Every trial of the study in one table, for the page's sortable listing: the search's trials
and `study confirm`'s re-runs, finished or not, from the storage (a trial the launcher failed
before it ran has no result file) and the worker's wall time from the results where recorded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from study.report.trials import CONFIRM_ATTR
from study.space import Param

__all__ = ["REASON_CHARS", "trial_listing"]

# A failure's reason in one line of the table; the note and `study status` carry it whole.
REASON_CHARS = 120


def trial_listing(trials: Sequence[FrozenTrial], df: pd.DataFrame, params: Sequence[Param],
                  objectives: Sequence[str]) -> pd.DataFrame:
    """One row per trial: trial, state, role (baseline, search, or the confirmation re-run of
    trial N with seed S), one column per searched parameter (its value as the space gives it,
    None where inactive), one per objective (named as in `objectives`), "duration (s)" (the
    worker's wall time, else ask to tell in the storage), failure (its kind), reason (one
    line), attempt."""
    wall = (df.drop_duplicates("trial").set_index("trial").wall_s.astype(float).dropna()
            if len(df) and "wall_s" in df else pd.Series(dtype=float))
    names = [p.name for p in params if p.searched]
    rows = []
    for t in trials:
        values = t.user_attrs.get("values") or {}
        objective = list(t.values) if t.values is not None else [None] * len(objectives)
        rows.append({
            "trial": t.number, "state": _state(t), "role": _role(t),
            **{n: values.get(n) for n in names},
            **dict(zip(objectives, objective)),
            "duration (s)": float(wall[t.number]) if t.number in wall.index else (
                t.duration.total_seconds() if t.duration is not None else None),
            "failure": t.user_attrs.get("fail_kind"),
            "reason": _one_line(t.user_attrs.get("fail_reason")),
            "attempt": int(t.user_attrs.get("attempt", 1))})
    return pd.DataFrame(rows, columns=["trial", "state", "role", *names, *objectives,
                                       "duration (s)", "failure", "reason", "attempt"])


def _state(t: FrozenTrial) -> str:
    # a FAIL the launcher retried is not a failure of the study: its retry is another row
    retried = t.state == TrialState.FAIL and t.user_attrs.get("retried")
    return t.state.name + (" (retried)" if retried else "")


def _role(t: FrozenTrial) -> str:
    rerun: dict[str, Any] | None = t.user_attrs.get(CONFIRM_ATTR)
    if rerun:
        return f"confirm trial {rerun['of']}, seed {rerun['seed']}"
    return "baseline" if t.user_attrs.get("baseline") else "search"


def _one_line(reason: str | None) -> str | None:
    if not reason:
        return None
    line = " ".join(reason.split())
    return line if len(line) <= REASON_CHARS else line[:REASON_CHARS - 3] + "..."
