"""The report's headline: the best trial against the baseline, with what the noise allows one
to say about the difference (conclusions.compare), on the objective's metric (where the best was
chosen) and on its test counterpart (where it is reported)."""

from __future__ import annotations

import pandas as pd

from study import conclusions

__all__ = ["best_against_baseline", "headline_metrics"]


def headline_metrics(metric: str) -> list[str]:
    """The objective's metric, and its test counterpart when the objective is a validation
    one: `val.avg` -> [val.avg, test.avg]."""
    split, _, aggregate = metric.partition(".")
    return [metric] + ([f"test.{aggregate}"] if split == "val" else [])


def best_against_baseline(df: pd.DataFrame, best: int | None, baseline: int | None,
                          method: str, metric: str) -> list[conclusions.Verdict]:
    """One verdict per headline metric: an interval over the replicate seeds the two trials
    share when there are 2 or more, else the binomial noise band of one seed. None where there
    is no baseline, no best, the best is the baseline, or a split has no rows to compare."""
    if best is None or baseline is None or best == baseline or not len(df):
        return []
    rows = {t: df[df.trial == t].dropna(subset=["accuracy"]) for t in (best, baseline)}
    out = []
    for m in headline_metrics(metric):
        split = m.partition(".")[0]
        if all(((r.split == split) & (r.model == method)).any() for r in rows.values()):
            out.append(conclusions.compare(rows[best].to_dict("records"),
                                           rows[baseline].to_dict("records"), method, m))
    return out
