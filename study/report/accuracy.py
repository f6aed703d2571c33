"""Test accuracy of one trial over its replicate seeds: the paper-style table with Student-t
intervals, accuracy per level, the best trial per chosen subset, and best minus baseline seed
by seed. Every number is percent of the test images, from `results.paper_table` per seed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from study import results
from study.config import METHOD_NAMES, degradation_names
from study.report.trials import best_trial, completed, is_missing

__all__ = ["COLUMNS", "CONFIDENCE", "SeedTable", "level_curves", "paired_differences",
           "seed_table", "subset_ablation", "t_interval", "table_columns"]

CONFIDENCE = 0.95
COLUMNS = [*results.TABLE_COLUMNS.values(), "Avg", "Clean"]   # the paper's


def table_columns() -> list[str]:
    """The paper table's columns with every installed degradation (a plugin's by its name)."""
    return [*(results.TABLE_COLUMNS.get(d, d) for d in degradation_names()), "Avg", "Clean"]


def t_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """Mean and half-width of the Student-t interval over axis 0 (the seeds); the half-width
    is NaN with one seed, where no interval exists."""
    x = np.asarray(samples, dtype=float)
    n = x.shape[0]
    mean = x.mean(axis=0)
    if n < 2:
        return mean, np.full_like(mean, np.nan)
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * x.std(axis=0, ddof=1) / math.sqrt(n)
    return mean, half


@dataclass(frozen=True)
class SeedTable:
    """The paper-style table (percent) over replicate seeds."""

    mean: pd.DataFrame   # methods x JPEG/Blur/AWGN/SAPN/Avg/Clean
    half: pd.DataFrame   # 95% t-interval half-widths, NaN with one seed
    seeds: list[int]


def seed_table(rows: pd.DataFrame, order: Sequence[str] | None = None) -> SeedTable:
    """results.paper_table per seed of one trial's rows (one split), then mean and interval."""
    rows = rows.dropna(subset=["accuracy"])
    seeds = sorted(int(s) for s in rows.seed.unique())
    tables = [results.paper_table(rows[rows.seed == s], order) for s in seeds]
    index = tables[0].index
    cols = [c for c in table_columns() if any(c in t.columns for t in tables)]
    stack = np.stack([t.reindex(index=index, columns=cols).to_numpy(dtype=float, na_value=np.nan)
                      for t in tables])
    mean, half = t_interval(stack)
    return SeedTable(pd.DataFrame(mean, index=index, columns=cols),
                     pd.DataFrame(half, index=index, columns=cols), seeds)


def level_curves(rows: pd.DataFrame) -> pd.DataFrame:
    """Accuracy (%) per (model, degradation, level), mean over seeds, from one trial's rows of
    one split; clean rows left out (they are the table's Clean column)."""
    rows = rows[(rows.degradation != "clean") & rows.accuracy.notna()]
    g = rows.groupby(["model", "degradation", "level"], sort=False)
    out = g.accuracy.mean().mul(100).rename("accuracy").to_frame()
    out["n_seeds"] = g.seed.nunique()
    out = out.reset_index()
    out["accuracy"] = out.accuracy.astype(float)
    return out.sort_values(["degradation", "model", "level"], key=_registry_order).reset_index(
        drop=True)


def _registry_order(s: pd.Series) -> pd.Series:
    """Sort key: degradations and methods in the order the config declares them (jpeg before
    awgn, oracle before fusiondistill), not alphabetically; levels as numbers."""
    order = {k: i for i, k in enumerate([*degradation_names(), *METHOD_NAMES])}
    return s.map(lambda v: order.get(v, v)) if s.dtype != "Int64" else s


def subset_best_trials(pt: pd.DataFrame, param: str, direction: str) -> dict[str, int]:
    """Per chosen subset of `param` (degradations, fusion.experts), as 'jpeg+awgn': the trial
    best on validation among those that chose it."""
    col = f"param_{param}"
    done = completed(pt)
    if col not in done or done.empty:
        return {}
    done = done[done[col].map(lambda v: not is_missing(v)).astype(bool)]
    out = {}
    for label, group in done.groupby(done[col].map("+".join), sort=False):
        best = best_trial(group, [direction])
        if best is not None:
            out[str(label)] = best
    return out


def subset_ablation(df: pd.DataFrame, pt: pd.DataFrame, param: str, method: str,
                    bests: dict[str, int], split: str = "test") -> pd.DataFrame:
    """Per chosen subset of `param` (its best trial: subset_best_trials), that trial's `split`
    accuracy (%) of `method` per evaluation degradation (mean over seeds), from `df`, rows
    holding at least those trials'. Index: the subset as 'jpeg+awgn'."""
    col = f"param_{param}"
    done = completed(pt)
    if col not in done or done.empty:
        return pd.DataFrame(columns=["trial", "n_trials", *COLUMNS])
    done = done[done[col].map(lambda v: not is_missing(v)).astype(bool)]
    records = []
    for label, group in done.groupby(done[col].map("+".join), sort=False):
        best = bests.get(str(label))
        rows = df[(df.trial == best) & (df.split == split) & (df.model == method)]
        if rows.accuracy.notna().any():
            t = seed_table(rows).mean.iloc[0]
            records.append({"subset": label, "trial": best, "n_trials": len(group),
                            "size": len(group[col].iloc[0]), **t.to_dict()})
    if not records:
        return pd.DataFrame(columns=["trial", "n_trials", *COLUMNS])
    out = pd.DataFrame(records).set_index("subset")
    return out.sort_values(["size", "subset"], ascending=[False, True]).drop(columns="size")


def paired_differences(df: pd.DataFrame, best: int, baseline: int, method: str,
                       split: str = "test") -> pd.DataFrame:
    """Best minus baseline, seed by seed (replicate r of both trials shares its seed, so
    the data split, initialisations and degraded copies are the same), for `method` on `split`.
    Index: JPEG.. Avg, Clean; columns best, baseline, diff, half (95% t half-width; NaN with one
    seed), lo, hi, n."""
    def per_seed(trial: int) -> dict[int, pd.Series]:
        rows = df[(df.trial == trial) & (df.split == split) & (df.model == method)]
        rows = rows.dropna(subset=["accuracy"])
        return {int(s): results.paper_table(rows[rows.seed == s]).iloc[0]
                for s in rows.seed.unique()}

    b, p = per_seed(best), per_seed(baseline)
    seeds = sorted(set(b) & set(p))
    if not seeds:
        return pd.DataFrame(columns=["best", "baseline", "diff", "half", "lo", "hi", "n"])
    cols = [c for c in table_columns() if c in b[seeds[0]].index]
    bs = np.stack([b[s].reindex(cols).to_numpy(dtype=float, na_value=np.nan) for s in seeds])
    ps = np.stack([p[s].reindex(cols).to_numpy(dtype=float, na_value=np.nan) for s in seeds])
    diff, half = t_interval(bs - ps)
    return pd.DataFrame({"best": bs.mean(0), "baseline": ps.mean(0), "diff": diff, "half": half,
                         "lo": diff - half, "hi": diff + half, "n": len(seeds)}, index=cols)
