"""Which epoch records the learning-curve figure draws: the best trial, the baseline and the
pruned trials, from the per-epoch files each trial's worker writes (results.load_curves)."""

from __future__ import annotations

import pandas as pd

__all__ = ["learning_curves"]


def learning_curves(curves: pd.DataFrame | None, best: int | None, baseline: int | None
                    ) -> pd.DataFrame | None:
    """The epoch records (results.load_curves) of the best trial, the baseline (the first
    trial where the study has none) and every pruned trial up to where it stopped; first seed
    of each trial. Column `role`: best, baseline or pruned (a trial both best and baseline is
    drawn once, as best)."""
    if curves is None or not len(curves):
        return None
    c = curves[curves.epoch.notna()]
    if not len(c):
        return None
    first_seed = c.groupby("trial").seed.transform("min")
    c = c[(c.seed == first_seed) | c.seed.isna()]
    if baseline is None:
        baseline = int(c.trial.min())
    parts = []
    for role, trials in (("best", [best] if best is not None else []),
                         ("baseline", [baseline] if baseline != best else []),
                         ("pruned", sorted(set(c[c.state == "PRUNED"].trial)))):
        part = c[c.trial.isin(trials)]
        if len(part):
            parts.append(part.assign(role=role))
    if not parts:
        return None
    return pd.concat(parts, ignore_index=True)
