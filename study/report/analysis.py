"""Everything the report shows, computed in one pass (`analyse`) from the Parquet results and
the study's storage; the page, the figures and the dashboard note only draw and format it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import pandas as pd

from study import results
from study.report.accuracy import (
    SeedTable,
    level_curves,
    paired_differences,
    seed_table,
    subset_ablation,
)
from study.report.budget import budget, projection
from study.report.comparison import published_comparison
from study.report.learning import learning_curves
from study.report.parameters import fusion_weights, importances, slices, surface
from study.report.trials import baseline_trial, best_trial, pareto_front, per_trial
from study.space import Param, SubsetParam

__all__ = ["BASELINE_HEADING", "BEST_HEADING", "Analysis", "analyse"]

# Headings of the paper-style tables (Analysis.tables), formatted with the trial number.
BASELINE_HEADING = "Baseline: the study file's pipeline (trial {})"
BEST_HEADING = "Best on validation (trial {})"


@dataclass
class Analysis:
    """Everything the report shows, computed; `render` only draws and formats it."""

    study_name: str
    objectives: list[str]          # "val.avg of fusiondistill (maximize)"
    directions: list[str]
    method: str                    # the first objective's method: the one ablations follow
    methods: list[str]
    per_trial: pd.DataFrame
    baseline: int | None
    baseline_note: str
    published: pd.DataFrame | None   # the baseline beside the paper's table
    published_note: str
    protocol: str                    # holdout, or reference (optimistic: test picks)
    best: int | None
    tables: dict[str, SeedTable]   # heading -> test table
    level_step: dict[str, int]     # split -> level step of the protocol
    curves: pd.DataFrame | None
    subsets: dict[str, pd.DataFrame]
    slices: pd.DataFrame
    importance: pd.Series | None
    importance_note: str
    surface: pd.DataFrame | None
    weights: pd.DataFrame | None
    budget: dict[str, Any]
    stages: pd.DataFrame
    pareto: list[int]
    paired: pd.DataFrame | None
    in_flight: int
    learning: pd.DataFrame | None = None       # learning_curves: best, baseline, pruned
    compute: dict[str, Any] | None = None      # results.compute_summary


def analyse(df: pd.DataFrame, study: Any, params: Sequence[Param],
            *, objectives: Sequence[Mapping[str, str]], methods: Sequence[str],
            study_name: str, dataset: str | None = None,
            protocol: str = "holdout", curves_df: pd.DataFrame | None = None) -> Analysis:
    """All computations of the report. objectives: [{method, metric, direction}]."""
    directions = [o["direction"] for o in objectives]
    method = objectives[0]["method"]
    schema = results.Schema(
        tuple(results.objective_column(o["method"], o["metric"]) for o in objectives),
        {p.name: p.column for p in params})
    pt = per_trial(df, schema)
    baseline, baseline_note = baseline_trial(pt, study)
    best = best_trial(pt, directions) if len(pt) else None
    test = df[df.split == "test"] if len(df) else df
    tables = _test_tables(test, baseline, best, methods)
    curves = level_curves(test[test.trial == best]) if best is not None else None
    baseline_table = tables.get(BASELINE_HEADING.format(baseline))
    if baseline_table is not None:
        pub, pub_note = published_comparison(baseline_table.mean, dataset)
    else:
        pub, pub_note = None, ("No completed baseline trial: nothing to put beside the "
                               "paper's published numbers.")
    imp, imp_note = importances(study)
    info, stages = budget(df)
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,
                                                       optuna.trial.TrialState.WAITING))
    return Analysis(
        study_name=study_name,
        objectives=[f"{o['metric']} of {o['method']} ({o['direction']})" for o in objectives],
        directions=directions, method=method, methods=list(methods), per_trial=pt,
        baseline=baseline, baseline_note=baseline_note, published=pub, published_note=pub_note,
        protocol=protocol, best=best, tables=tables, level_step=_level_steps(df),
        curves=curves,
        subsets={p.name: subset_ablation(df, pt, p.name, method, directions[0])
                 for p in params if isinstance(p, SubsetParam)},
        slices=slices(pt, params), importance=imp, importance_note=imp_note,
        surface=surface(pt), weights=fusion_weights(pt), budget=info, stages=stages,
        pareto=pareto_front(pt, directions) if len(directions) > 1 and len(pt) else [],
        paired=(paired_differences(df, best, baseline, method)
                if best is not None and baseline is not None else None),
        in_flight=len(running),
        learning=learning_curves(curves_df, best, baseline),
        compute=projection(df, pt, study))


def _test_tables(test: pd.DataFrame, baseline: int | None, best: int | None,
                 methods: Sequence[str]) -> dict[str, SeedTable]:
    """Heading -> paper-style test table of the baseline and of the best trial, for those with
    test results (the same trial under both headings when the baseline is the best)."""
    tables = {}
    for heading, trial in ((BASELINE_HEADING, baseline), (BEST_HEADING, best)):
        if trial is not None and test[test.trial == trial].accuracy.notna().any():
            tables[heading.format(trial)] = seed_table(test[test.trial == trial], methods)
    return tables


def _level_steps(df: pd.DataFrame) -> dict[str, int]:
    """Split -> the level step its rows were evaluated with (1: every level of the protocol)."""
    return {s: int(df[df.split == s].level_step.dropna().min())
            for s in ("val", "test") if len(df) and df[df.split == s].level_step.notna().any()}
