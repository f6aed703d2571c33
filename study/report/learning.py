"""Which epoch records the learning-curve figure draws (the best trial, the baseline and the
pruned trials, from the per-epoch files each trial's worker writes: results.load_curves), and
the one scale per quantity that every panel shares, so panels compare at a glance."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

__all__ = ["MAX_PRUNED", "CurveScales", "curve_scales", "learning_curves", "pruned_drawn"]

# The pruned trials the figure draws: the latest this many (the pruner's decisions with the most
# evidence behind them). At 10,000 smoke trials all 1,428 pruned ones made 27,000 traces that
# took ~45 s of a ~60 s report, and a grey mass no one reads.
MAX_PRUNED = 30


def pruned_drawn(trials: pd.Series, states: pd.Series) -> list[int]:
    """The pruned trials the figure draws, of `trials` with their `states`."""
    return sorted(int(t) for t in trials[states == "PRUNED"])[-MAX_PRUNED:]


def learning_curves(curves: pd.DataFrame | None, best: int | None, baseline: int | None
                    ) -> pd.DataFrame | None:
    """The epoch records (results.load_curves) of the best trial, the baseline (the first
    trial where the study has none) and the latest pruned trials (pruned_drawn) up to where
    they stopped; first seed
    of each trial. Column `role`: best, baseline or pruned (a trial both best and baseline is
    drawn once, as best); `val_pct`: the validation accuracy in percent, as the report's other
    accuracies."""
    if curves is None or not len(curves):
        return None
    c = curves[curves.epoch.notna()]
    if not len(c):
        return None
    first_seed = c.groupby("trial").seed.transform("min")
    c = c[(c.seed == first_seed) | c.seed.isna()]
    if baseline is None:
        baseline = int(c.trial.min())
    first = c.drop_duplicates("trial")
    parts = []
    for role, trials in (("best", [best] if best is not None else []),
                         ("baseline", [baseline] if baseline != best else []),
                         ("pruned", pruned_drawn(first.trial, first.state))):
        part = c[c.trial.isin(trials)]
        if len(part):
            parts.append(part.assign(role=role))
    if not parts:
        return None
    out = pd.concat(parts, ignore_index=True)
    return out.assign(val_pct=out.val.astype(float) * 100)


@dataclass(frozen=True)
class CurveScales:
    """One axis range per quantity for every panel (None: no panel has it), and the epochs."""

    val: tuple[float, float] | None     # validation accuracy, percent
    loss: tuple[float, float] | None    # training loss
    epochs: tuple[float, float]         # x range: half an epoch beyond the first and last
    dtick: int                          # whole epochs between x ticks


# At most this many ticks on an epoch axis: 200 epochs get a tick every 20, not 200 labels.
MAX_TICKS = 10


def curve_scales(lc: pd.DataFrame) -> CurveScales:
    """The shared ranges of learning_curves' records: each quantity's finite minimum to
    maximum over every stage and trial, padded by 5% (a flat line by 1 point or 0.05 of loss)
    so no point sits on the frame; validation kept within 0-100, the loss (cross-entropy,
    cosine distance, KD: never negative) above 0."""
    first, last = int(lc.epoch.min()), int(lc.epoch.max())
    val, loss = _padded(lc.val_pct, 1.0), _padded(lc.loss, 0.05)
    return CurveScales(
        val=(max(val[0], 0.0), min(val[1], 100.0)) if val else None,
        loss=(max(loss[0], 0.0), loss[1]) if loss else None, epochs=(first - 0.5, last + 0.5),
        dtick=max(1, math.ceil((last - first + 1) / MAX_TICKS)))


def _padded(s: pd.Series, flat: float) -> tuple[float, float] | None:
    x = pd.to_numeric(s, errors="coerce").astype(float)
    x = x[x.map(math.isfinite)]
    if not len(x):
        return None
    lo, hi = float(x.min()), float(x.max())
    pad = 0.05 * (hi - lo) if hi > lo else flat
    return lo - pad, hi + pad
