"""Compute: trials by state, device time spent (the trials' wall times) and saved by the stage
cache (the recorded build time of every stage a trial found cached), and the projection for the
trials the study still has to run."""

from __future__ import annotations

from typing import Any

import pandas as pd

from study import results

__all__ = ["budget", "projection"]


def budget(df: pd.DataFrame) -> tuple[dict[str, Any], pd.DataFrame]:
    """Trials by state, compute time spent (sum of trial wall times) and saved by the stage
    cache (sum of a stage's recorded build time over trials that got it as a hit), per device.
    Stage information is the first replicate's (the worker records it so). A study without
    result files yet (launched, nothing finished) has spent nothing."""
    if not len(df):
        return ({"states": {}, "trials": 0, "spent_s": 0.0, "saved_s": 0.0,
                 "spent_s_by_device": {}}, pd.DataFrame())
    first = df.drop_duplicates("trial")
    counts = {k: int(v) for k, v in first.state.value_counts().items()}
    stages = []
    for st in [c.removeprefix("hit_") for c in first.columns if c.startswith("hit_")]:
        hit = first[f"hit_{st}"].astype("boolean")
        b = first[f"build_s_{st}"].astype(float)
        stages.append({"stage": st, "built": int((hit == False).sum()),  # noqa: E712
                       "hits": int((hit == True).sum()),  # noqa: E712
                       "build_s": float(b[(hit == False).fillna(False)].sum()),  # noqa: E712
                       "saved_s": float(b[hit.fillna(False)].sum())})
    table = pd.DataFrame(stages, columns=["stage", "built", "hits", "build_s", "saved_s"])
    table = table[(table.built + table.hits) > 0].set_index("stage")
    wall = first.wall_s.astype(float)
    device = first.device.astype(object).fillna("none")
    info = {"states": counts, "trials": int(len(first)), "spent_s": float(wall.sum()),
            "saved_s": float(table.saved_s.sum()),
            "spent_s_by_device": {str(k): float(v) for k, v in wall.groupby(device).sum().items()}}
    return info, table


def projection(df: pd.DataFrame, study: Any) -> dict[str, Any]:
    """results.compute_summary with the trials still to run: the study's target (user attribute
    `n_trials`, set by `study launch` and `study confirm`, which counts the re-runs too) minus
    the trials with results; 0 without a target."""
    target = study.user_attrs.get("n_trials") if hasattr(study, "user_attrs") else None
    done = df.trial.nunique() if len(df) else 0
    return results.compute_summary(df, (int(target) - done) if target else 0)
