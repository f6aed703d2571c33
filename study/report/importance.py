"""Parameter importance, computed honestly: Optuna's PED-ANOVA over the completed trials of the
search, and, for each conditional parameter (one with a `when`), over only the trials where it
is active, together with the parameters every trial has.

Why per condition: `distill.temperature` exists only in trials with `distill.loss: logit`. Over
all trials, its importance would mix what the temperature does with what choosing the logit
loss does (the trials without it form a regime of their own), so it is computed over the trials
that have it, where the question "which temperatures set the best trials apart" means something.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import optuna
import pandas as pd
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from study.space import Param

__all__ = ["MIN_TRIALS", "Importance", "condition_text", "importances"]

# PED-ANOVA contrasts the top 10% of trials (its target_quantile) with all of them. The top 10%
# of n trials is ceil(n / 10) trials: one below 11, two from 11 to 20. Below 20 trials, one
# lucky trial is at least half of what sets "the best" apart, so the bars say what one or two
# trials have in common, which chance decides as much as the parameter does (Optuna's own
# documentation asks for at least 5 trials in the top quantile, i.e. 50 trials).
MIN_TRIALS = 20
TOP_QUANTILE = 0.1   # PedAnovaImportanceEvaluator's default target_quantile


@dataclass(frozen=True)
class Importance:
    """One PED-ANOVA computation: which trials it rests on and what it says about which raw
    Optuna parameters (normalised to sum 1 within this computation)."""

    condition: str | None       # None: every completed trial; else "distill.loss = logit"
    conditional: tuple[str, ...]   # the space parameters active only under `condition`
    own: tuple[str, ...]        # their raw Optuna parameters (bars of their own colour)
    n_trials: int
    values: pd.Series           # raw Optuna parameter -> importance, largest first
    note: str                   # why the values say little: few trials, no contrast; or ""

    @property
    def title(self) -> str:
        where = (f"all {self.n_trials} completed trials" if self.condition is None else
                 f"{', '.join(self.conditional)} (conditional: when {self.condition}): the "
                 f"{self.n_trials} completed trials where active")
        return where + (f" (under {MIN_TRIALS}: a hint)" if self.n_trials < MIN_TRIALS else "")


def condition_text(p: Param) -> str:
    """A parameter's `when` as the report writes it: "distill.loss = logit"."""
    return " and ".join(f"{k} = {v[0]}" if len(v) == 1 else f"{k} in {list(v)}"
                        for k, v in p.when.items())


def importances(trials: Sequence[FrozenTrial], params: Sequence[Param], direction: str
                ) -> tuple[list[Importance], str]:
    """PED-ANOVA importances of the first objective: one computation over every completed trial
    for the parameters every trial has, then one per condition (parameters sharing one `when`)
    over the trials where they are active, with the always-active parameters beside them; and
    a note for the page."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None
            and math.isfinite(t.values[0])]
    if len(done) < 2:
        return [], f"Parameter importance needs at least 2 completed trials ({len(done)} now)."
    always = [r for p in params if not p.when for r in p.raw_names()
              if all(r in t.params for t in done)]
    conditions: dict[str, list[Param]] = {}
    for p in params:
        if p.when and p.raw_names():
            conditions.setdefault(condition_text(p), []).append(p)
    out = [_compute(done, always, direction, None, (), ())]
    for cond, ps in conditions.items():
        raw = [r for p in ps for r in p.raw_names()]
        active = [t for t in done if any(r in t.params for r in raw)]
        if len(active) >= 2:
            present = [r for r in raw if any(r in t.params for t in active)]
            out.append(_compute(active, always + present, direction, cond,
                                tuple(p.name for p in ps), tuple(present)))
    skipped = [f"{', '.join(p.name for p in ps)} (when {cond})" for cond, ps in
               conditions.items() if all(c.condition != cond for c in out)]
    note = (f"PED-ANOVA (Optuna's default evaluator): how much each raw Optuna parameter sets "
            f"the top {TOP_QUANTILE:.0%} of trials apart from the rest, normalised to sum 1 "
            "within each panel. A conditional parameter is judged only over the trials where "
            "it is active, beside the parameters every trial has; each panel names the trials "
            "it rests on.")
    if any(c.n_trials < MIN_TRIALS for c in out):
        note += (f" Under {MIN_TRIALS} trials the top {TOP_QUANTILE:.0%} is one or two trials, "
                 "so a panel resting on fewer says what those have in common: a hint, not a "
                 "measurement.")
    if skipped:
        note += f" Active in fewer than 2 completed trials, so not assessed: {'; '.join(skipped)}."
    return out, note


def _compute(trials: Sequence[FrozenTrial], names: list[str], direction: str,
             condition: str | None, conditional: tuple[str, ...], own: tuple[str, ...]
             ) -> Importance:
    """PED-ANOVA over `trials` alone, through Optuna's public API: an in-memory study holding
    only them, their first objective as its single one (so a multi-objective study is judged
    on the objective that picks the best trial, in its own direction)."""
    with _quiet():
        study = optuna.create_study(direction=StudyDirection[direction.upper()])
        study.add_trials([optuna.trial.create_trial(
            params=t.params, distributions=t.distributions, value=float(t.values[0]))
            for t in trials])
        raw = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), params=names,
            normalize=False) if names else {}
    total = sum(raw.values())
    # Optuna's own normalisation spreads a zero total evenly, drawing equal bars for "nothing
    # sets the top apart"; here a zero total stays zero and is said in words.
    values = pd.Series({k: v / total if total else 0.0 for k, v in raw.items()},
                       name="importance", dtype=float).sort_values(ascending=False)
    note = ("" if total else "no parameter sets the top trials apart (their values do not "
            "differ from the rest's)")
    return Importance(condition, conditional, own, len(trials), values, note)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Optuna logs every in-memory study it creates at INFO (one per panel here) and warns of
    small regimes, which the panels' trial counts and the note already say in words."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        optuna.logging.set_verbosity(level)

