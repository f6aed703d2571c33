"""The trade-offs of a study with several objectives: each Pareto-front trial against the
baseline, objective by objective, and whether it beats the baseline on every objective or
trades one for another.

Accuracies are compared in percentage points and the cost objective (config.COST_METRIC) in
hours, each in the direction the study file gives it: "better" means higher for a maximized
objective and lower for a minimized one.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from study.config import COST_METRIC
from study.report.trials import completed

__all__ = ["display_scale", "tradeoffs"]


def display_scale(metric: str) -> tuple[float, str]:
    """How an objective is shown: accuracies (fractions) as %, the cost as hours."""
    return (1.0, "h") if metric == COST_METRIC else (100.0, "%")


def tradeoffs(pt: pd.DataFrame, front: Sequence[int], baseline: int | None,
              names: Sequence[str], metrics: Sequence[str], directions: Sequence[str]
              ) -> pd.DataFrame:
    """One row per front trial: each objective's value and its difference from the baseline
    (`Δ <name>`, in the objective's display unit), and a verdict: "better on ..., worse on
    none", "trades ... for ..." naming what it gives up, or "is the baseline". Empty without a
    front; the difference columns are absent without a completed baseline."""
    done = completed(pt).set_index("trial")
    base = done.loc[baseline] if baseline is not None and baseline in done.index else None
    rows = []
    for t in front:
        row: dict[str, object] = {"trial": t}
        better: list[str] = []
        worse: list[str] = []
        for i, (name, metric, direction) in enumerate(zip(names, metrics, directions,
                                                          strict=True)):
            scale, unit = display_scale(metric)
            value = float(done.at[t, f"value_{i}"])
            row[f"{name} ({unit})"] = value * scale
            if base is None:
                continue
            diff = (value - float(base[f"value_{i}"])) * scale
            row[f"Δ {name}"] = diff
            gain = diff if direction == "maximize" else -diff
            (better if gain > 0 else worse if gain < 0 else []).append(name)
        if base is not None:
            row["against the baseline"] = (
                "is the baseline" if t == baseline else
                f"better on {', '.join(better)}, worse on none" if better and not worse else
                f"trades {', '.join(worse)} for {', '.join(better)}" if better else
                "ties or trails it")
        rows.append(row)
    return pd.DataFrame(rows)
