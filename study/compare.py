"""`study compare`: several launched studies side by side, computed (the page that draws it is
study/report/compare_page.py).

For each study, what its own report's headline says: trials by state, the best trial (chosen on
validation, as the report chooses it), the baseline trial, best minus baseline with what the
noise allows (conclusions.compare through report.headline), compute spent. Then the parameters
searched, by config path, in two or more of the studies: the objective against each one, study
by study, and each study's best value of it.

Studies are comparable number for number only when they measure the same thing: the same
first objective (method, metric, direction; the one the best is chosen on and the slices
plot) on the same dataset. When they do not, the comparison says so in words and still shows
every number, each on its own study's objective.

Read as the report reads a study: one summary row per trial (results.load_summary) and the rows
of the best and baseline trials only; the storage through storage.open_study. No torch.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from study import conclusions, results, storage, studyfile
from study.errors import StudyError
from study.report.budget import budget
from study.report.headline import best_against_baseline
from study.report.parameters import slices
from study.report.trials import (
    baseline_trial,
    best_trial,
    completed,
    is_missing,
    per_trial,
    search_trials,
)
from study.space import Param

__all__ = ["MIN_STUDIES", "Comparison", "Side", "compare_studies", "default_name",
           "load_side", "mismatch_notes", "shared_parameters"]

# Fewer than two studies is a report (`study report`), not a comparison.
MIN_STUDIES = 2


@dataclass(frozen=True)
class Side:
    """One study, as its row of the comparison shows it."""

    name: str
    source: str                        # the study file
    dataset: str
    objectives: list[tuple[str, str, str]]   # (method, metric, direction), the study's order
    states: dict[str, int]             # the search's trials by state (storage)
    reruns: int                        # `study confirm`'s re-runs, left out of the rest
    best: int | None
    best_value: float | None           # the first objective, as the study records it
    baseline: int | None
    baseline_value: float | None
    baseline_note: str
    verdicts: list[conclusions.Verdict]   # best against baseline, metric and test counterpart
    compute_h: float | None            # device-hours, sum of trial wall times; None: untimed
    params: dict[str, Param]           # searched parameters by config path
    points: pd.DataFrame               # report.parameters.slices: param, kind, trial, x, value
    best_params: dict[str, Any]        # the best trial's value of each active parameter

    @property
    def objective(self) -> tuple[str, str, str]:
        return self.objectives[0]

    @property
    def objective_text(self) -> str:
        return "; ".join(f"{metric} of {method} ({direction})"
                         for method, metric, direction in self.objectives)

    @property
    def difference(self) -> float | None:
        """Best minus baseline on the first objective, as the study records it."""
        if self.best_value is None or self.baseline_value is None:
            return None
        return self.best_value - self.baseline_value


@dataclass(frozen=True)
class Comparison:
    sides: list[Side]
    shared: dict[str, list[str]]       # config path -> the studies that search it, in order
    notes: list[str] = field(default_factory=list)   # objectives or datasets differ

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sides]


def load_side(study_file: str, overrides: Sequence[str], results_dir: str) -> Side:
    """One launched study, computed; a study never launched in `results_dir` is a
    StudyError naming its file (storage.open_study)."""
    ld = studyfile.load(study_file, list(overrides), check_space=False)   # runs no trial
    stored = storage.open_study(ld, results_dir)
    sf = ld.sf
    trials = stored.study.get_trials(deepcopy=False)
    search = search_trials(trials)
    reruns = {t.number for t in trials} - {t.number for t in search}
    schema = results.Schema.of(sf.study.objectives, ld.space.params)
    # refresh=False: a comparison writes its page and nothing else, not even a compacted cache
    res = results.StudyResults.on_disk(
        stored.study_dir, {t.number: t.user_attrs.get("result_id") for t in trials}, schema)
    every = res.summary
    summary = every[~every.trial.isin(reruns)] if len(every) else every
    pt = per_trial(summary, schema)
    directions = [o.direction for o in sf.study.objectives]
    best = best_trial(pt, directions) if len(pt) else None
    baseline, baseline_note = baseline_trial(pt, stored.study)
    first = sf.study.objectives[0]
    searched = [p for p in ld.space.params if p.searched]
    spent = budget(every)[0]["spent_s"] if len(every) else math.nan
    return Side(
        name=sf.study.name, source=ld.source, dataset=sf.pipeline.data.dataset,
        objectives=[(o.method, o.metric, o.direction) for o in sf.study.objectives],
        states=dict(collections.Counter(t.state.name for t in search)),
        reruns=len(reruns), best=best, best_value=_value(pt, best),
        baseline=baseline, baseline_value=_value(pt, baseline), baseline_note=baseline_note,
        verdicts=best_against_baseline(res.rows({best, baseline}), best, baseline,
                                       first.method, first.metric),
        compute_h=spent / 3600 if spent > 0 else None,
        params={p.name: p for p in searched}, points=slices(pt, searched),
        best_params=_best_params(pt, best))


def _value(pt: pd.DataFrame, trial: int | None) -> float | None:
    if trial is None:
        return None
    row = completed(pt)[completed(pt).trial == trial]
    return float(row.value_0.iloc[0]) if len(row) else None


def _best_params(pt: pd.DataFrame, best: int | None) -> dict[str, Any]:
    if best is None:
        return {}
    row = pt[pt.trial == best].iloc[0]
    return {c.removeprefix("param_"): row[c] for c in pt.columns
            if c.startswith("param_") and not is_missing(row[c])}


def shared_parameters(sides: Sequence[Side]) -> dict[str, list[str]]:
    """Config path -> the studies (in the order given) that search it, for the paths two or
    more of them search; in the order the first of them lists its parameters."""
    searched_by: dict[str, list[str]] = {}
    for s in sides:
        for name in s.params:
            searched_by.setdefault(name, []).append(s.name)
    return {name: who for name, who in searched_by.items() if len(who) >= MIN_STUDIES}


def mismatch_notes(sides: Sequence[Side]) -> list[str]:
    """Plain sentences for what makes the studies' values not comparable: a different first
    objective (method, metric or direction), a different dataset. None when they agree."""
    notes = []
    objectives = {s.objective for s in sides}
    if len(objectives) > 1:
        each = "; ".join(f"{s.name}: {s.objective[1]} of {s.objective[0]} ({s.objective[2]})"
                         for s in sides)
        notes.append(
            f"The studies' objectives differ ({each}). Their values are not comparable: a "
            "number of one study says nothing about a number of another, and a higher one is "
            "not better. They are shown side by side all the same, each on its own study's "
            "objective; compare each study's best with its own baseline instead.")
    datasets = {s.dataset for s in sides}
    if len(datasets) > 1:
        each = "; ".join(f"{s.name}: {s.dataset}" for s in sides)
        notes.append(f"The studies run on different datasets ({each}): the same metric on "
                     "different images is not comparable across studies either.")
    return notes


def compare_studies(study_files: Sequence[str], overrides: Sequence[str],
                    results_dir: str) -> Comparison:
    """Every study file's study, loaded before anything is written; the same study named
    twice is refused (its row would only repeat)."""
    sides = [load_side(f, overrides, results_dir) for f in study_files]
    seen: dict[str, str] = {}
    for s in sides:
        if s.name in seen:
            raise StudyError(f"study compare: {seen[s.name]} and {s.source} are the same study "
                             f"'{s.name}'; give study files of different studies")
        seen[s.name] = s.source
    return Comparison(sides, shared_parameters(sides), mismatch_notes(sides))


def default_name(names: Sequence[str]) -> str:
    """The page's file name in --results: compare-<nameA>-<nameB>....html."""
    return "compare-" + "-".join(names) + ".html"
