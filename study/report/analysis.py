"""Everything the report shows, computed in one pass (`analyse`) from the Parquet results and
the study's storage; the page, the figures and the dashboard note only draw and format it.

The search's analysis (best trial, tables, slices, importance...) rests on the search's trials
alone: `study confirm`'s re-runs (user attribute `confirm`) are new seeds of configurations the
search already has, and one lucky seed of a re-run is not a new best. They count in the budget
and the listing of all trials, and have their own section (the Confirmation `study confirm`
summarizes, passed in).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
import pandas as pd

from study import conclusions, results
from study.report.accuracy import (
    SeedTable,
    level_curves,
    paired_differences,
    seed_table,
    subset_ablation,
    subset_best_trials,
)
from study.report.budget import budget, projection
from study.report.comparison import published_comparison
from study.report.headline import best_against_baseline
from study.report.importance import Importance, importances
from study.report.learning import CurveScales, curve_scales, learning_curves, pruned_drawn
from study.report.listing import trial_listing
from study.report.parameters import fusion_weights, slices, surface
from study.report.tradeoffs import tradeoffs
from study.report.trials import (
    baseline_trial,
    best_trial,
    pareto_front,
    per_trial,
    search_trials,
)
from study.space import Param, SubsetParam

if TYPE_CHECKING:   # study.confirm imports study.status, which imports torch: see build_report
    from study.confirm import Confirmation

__all__ = ["BASELINE_HEADING", "BEST_HEADING", "Analysis", "analyse"]

# Headings of the paper-style tables (Analysis.tables), formatted with the trial number.
BASELINE_HEADING = "Baseline: the study file's pipeline (trial {})"
BEST_HEADING = "Best on validation (trial {})"


@dataclass
class Analysis:
    """Everything the report shows, computed; `render` only draws and formats it."""

    study_name: str
    objectives: list[str]          # "val.avg of fusiondistill (maximize)"
    objective_names: list[str]     # "fusiondistill val.avg", as optuna-dashboard names them
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
    importance: list[Importance]   # all trials first, then one per condition
    importance_note: str
    surface: pd.DataFrame | None
    weights: pd.DataFrame | None
    budget: dict[str, Any]
    stages: pd.DataFrame
    pareto: list[int]
    tradeoffs: pd.DataFrame            # each front trial against the baseline, per objective
    metrics: list[str]                 # each objective's metric, e.g. val.avg, cost.hours
    paired: pd.DataFrame | None
    in_flight: int
    learning: pd.DataFrame | None = None       # learning_curves: best, baseline, pruned
    scales: CurveScales | None = None          # one range per quantity for every panel
    compute: dict[str, Any] | None = None      # results.compute_summary
    # best against baseline on the objective's metric and on test: conclusions.compare
    verdicts: list[conclusions.Verdict] = field(default_factory=list)
    confirmation: Confirmation | None = None   # `study confirm`'s summary, when it ran
    reruns: int = 0                            # confirmation re-runs left out of the search's
    listing: pd.DataFrame | None = None        # every trial, for the sortable table


def analyse(res: results.StudyResults, study: Any, params: Sequence[Param],
            *, objectives: Sequence[Mapping[str, str]], methods: Sequence[str],
            study_name: str, dataset: str | None = None,
            protocol: str = "holdout", confirmation: Confirmation | None = None) -> Analysis:
    """All computations of the report. objectives: [{method, metric, direction}]. The counts,
    slices, importance, budget and listing come from the summary (one row per trial); the
    tables from the rows of the trials they show (best, baseline, each subset's best), the
    learning curves from those of the trials drawn: at 10,000 trials, reading every row took
    past 12 GB. The search's analysis leaves the confirmation's re-runs out."""
    directions = [o["direction"] for o in objectives]
    method = objectives[0]["method"]
    names = [f"{o['method']} {o['metric']}" for o in objectives]
    schema = results.Schema(
        tuple(results.objective_column(o["method"], o["metric"]) for o in objectives),
        {p.name: p.column for p in params})
    trials = study.get_trials(deepcopy=False)
    search = search_trials(trials)
    reruns = {t.number for t in trials} - {t.number for t in search}
    every = res.summary
    summary = every[~every.trial.isin(reruns)] if len(every) else every
    pt = per_trial(summary, schema)
    baseline, baseline_note = baseline_trial(pt, study)
    best = best_trial(pt, directions) if len(pt) else None
    subset_bests = {p.name: subset_best_trials(pt, p.name, directions[0])
                    for p in params if isinstance(p, SubsetParam)}
    df = res.rows({best, baseline, *(t for b in subset_bests.values() for t in b.values())})
    test = df[df.split == "test"] if len(df) else df
    tables = _test_tables(test, baseline, best, methods)
    curves = level_curves(test[test.trial == best]) if best is not None else None
    baseline_table = tables.get(BASELINE_HEADING.format(baseline))
    if baseline_table is not None:
        pub, pub_note = published_comparison(baseline_table.mean, dataset)
    else:
        pub, pub_note = None, ("No completed baseline trial: nothing to put beside the "
                               "paper's published numbers.")
    imp, imp_note = importances(search, params, directions[0])
    info, stages = budget(every)   # the confirmation's compute is spent too
    running = [t for t in trials if t.state in (optuna.trial.TrialState.RUNNING,
                                                 optuna.trial.TrialState.WAITING)]
    drawn = ({best, baseline if baseline is not None else _first(summary)}
             | set(pruned_drawn(summary.trial, summary.state) if len(summary) else []))
    learning = learning_curves(res.curves(drawn), best, baseline)
    front = pareto_front(pt, directions) if len(directions) > 1 and len(pt) else []
    return Analysis(
        study_name=study_name,
        objectives=[f"{o['metric']} of {o['method']} ({o['direction']})" for o in objectives],
        objective_names=names,
        directions=directions, method=method, methods=list(methods), per_trial=pt,
        baseline=baseline, baseline_note=baseline_note, published=pub, published_note=pub_note,
        protocol=protocol, best=best, tables=tables, level_step=_level_steps(df),
        curves=curves,
        subsets={name: subset_ablation(df, pt, name, method, bests)
                 for name, bests in subset_bests.items()},
        slices=slices(pt, params), importance=imp, importance_note=imp_note,
        surface=surface(pt), weights=fusion_weights(pt), budget=info, stages=stages,
        pareto=front, metrics=[o["metric"] for o in objectives],
        tradeoffs=tradeoffs(pt, front, baseline, names, [o["metric"] for o in objectives],
                            directions),
        paired=(paired_differences(df, best, baseline, method)
                if best is not None and baseline is not None else None),
        in_flight=len(running),
        learning=learning,
        scales=curve_scales(learning) if learning is not None else None,
        compute=projection(every, study),
        verdicts=best_against_baseline(df, best, baseline, method, objectives[0]["metric"]),
        confirmation=confirmation,
        reruns=len(reruns & set(every.trial.astype(int))) if len(every) else 0,
        listing=trial_listing(trials, every, params, names))


def _first(summary: pd.DataFrame) -> int | None:
    return int(summary.trial.min()) if len(summary) else None


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
