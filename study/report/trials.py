"""Which trials count: the search's (not `study confirm`'s re-runs), one row per trial, the
completed ones, the Pareto front, the best trial (chosen on validation) and the baseline trial
(the study file's own pipeline)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from study import results
from study.status import CONFIRM_ATTR, search_trials

__all__ = ["CONFIRM_ATTR", "baseline_trial", "best_trial", "completed", "is_missing",
           "pareto_front", "per_trial", "search_trials"]


def is_missing(v: Any) -> bool:
    """An inactive parameter's cell: None, pandas' NA or a float NaN, as Parquet gives it back."""
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def per_trial(df: pd.DataFrame, schema: results.Schema) -> pd.DataFrame:
    """One row per trial of the summary (results.load_summary): trial, state, wall_s, device,
    value_0, value_1... (the objectives in the study's order), param_* (each parameter's value
    as the space gives it: JSON text parsed back to lists and dicts), seeds (sorted list of
    replicate seeds with results)."""
    if df.empty:
        return pd.DataFrame(columns=["trial", "state", "wall_s", "device", "seeds"])
    df = df.rename(columns={name: f"value_{i}" for i, name in enumerate(schema.objectives)})
    keep = ["trial", "state", "wall_s", "device",
            *[c for c in df.columns if c.startswith(("value_", "param_"))]]
    out = df.drop_duplicates("trial")[keep].sort_values("trial").reset_index(drop=True)
    for name, column in schema.params.items():
        c = f"param_{name}"
        if c in out.columns:
            out[c] = out[c].astype(object).map(
                lambda v, col=column: None if is_missing(v) else col.value(v))
    seeds = df.drop_duplicates("trial").set_index("trial").seeds
    out["seeds"] = out.trial.map(lambda t: sorted(json.loads(seeds[t])))
    return out


def completed(pt: pd.DataFrame) -> pd.DataFrame:
    """The rows of `per_trial` that completed with a first objective value."""
    if "value_0" not in pt:
        return pt.iloc[:0]
    return pt[(pt.state == "COMPLETE") & pt.value_0.notna()]


def pareto_front(pt: pd.DataFrame, directions: Sequence[str]) -> list[int]:
    """Trials no other completed trial dominates (all objectives at least as good, one better)."""
    done = completed(pt)
    cols = [f"value_{i}" for i in range(len(directions))]
    sign = np.array([1.0 if d == "maximize" else -1.0 for d in directions])
    v = done[cols].to_numpy(dtype=float, na_value=np.nan) * sign       # larger is better
    ge = (v[:, None, :] >= v[None, :, :]).all(-1)                      # [j, i]: j >= i on all
    gt = (v[:, None, :] > v[None, :, :]).any(-1)
    dominated = (ge & gt).any(axis=0)
    return sorted(int(t) for t, d in zip(done.trial, dominated) if not d)


def best_trial(pt: pd.DataFrame, directions: Sequence[str]) -> int | None:
    """Best on validation: by the first objective; with several objectives, the Pareto-front
    trial best on the first. Ties go to the earlier trial."""
    done = completed(pt)
    if len(directions) > 1:
        done = done[done.trial.isin(pareto_front(pt, directions))]
    if done.empty:
        return None
    sign = 1.0 if directions[0] == "maximize" else -1.0
    score = done.value_0.to_numpy(dtype=float) * sign
    return int(done.trial.iloc[int(np.argmax(score))])


def baseline_trial(pt: pd.DataFrame, study: Any) -> tuple[int | None, str]:
    """The completed trial that runs the study file's own pipeline exactly (the launcher
    enqueued it with user attribute `baseline`), and a sentence for the report."""
    done = set(completed(pt).trial.astype(int)) if len(pt) else set()
    # a confirmation's re-runs of the baseline carry `baseline` too; trial 0 is the search's
    marked = [t for t in search_trials(study.get_trials(deepcopy=False))
              if t.user_attrs.get("baseline")]
    for t in marked:
        if t.number in done:
            return t.number, (f"Trial {t.number} is the baseline: the study file's own "
                              "pipeline, run exactly (enqueued as the study's first trial).")
    if marked:
        return None, ("The baseline trial (the study file's own pipeline) has not completed "
                      f"(trial {', '.join(str(t.number) for t in marked)}): no paired "
                      "differences yet.")
    why = study.user_attrs.get("baseline_skipped")
    return None, ("No baseline trial: " + (why or "this study was launched without one "
                                           "(study.baseline: false, or an older release)")
                  + ". Paired differences need it.")
