"""What the searched parameters did to the objective: one point per completed trial and active
parameter, the temperature x alpha surface, the fusion weights on their simplex (importances:
importance.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from study.config import degradation_names
from study.report.trials import completed, is_missing
from study.space import FixedParam, Param, SimplexParam, SubsetParam

__all__ = ["fusion_weights", "slices", "surface"]


def slices(pt: pd.DataFrame, params: Sequence[Param]) -> pd.DataFrame:
    """Long table (param, kind, trial, x, value) of completed trials, one row per active
    searched parameter; subsets as 'jpeg+awgn', simplex weights left to fusion_weights."""
    done = completed(pt)
    rows = []
    for p in params:
        col = f"param_{p.name}"
        if isinstance(p, (FixedParam, SimplexParam)) or col not in done:
            continue
        for _, r in done.iterrows():
            v = r[col]
            if not is_missing(v):
                rows.append({"param": p.name, "kind": p.kind, "trial": int(r.trial),
                             "x": "+".join(v) if isinstance(p, SubsetParam) else v,
                             "value": float(r.value_0)})
    return pd.DataFrame(rows, columns=["param", "kind", "trial", "x", "value"])


def surface(pt: pd.DataFrame, x: str = "distill.temperature", y: str = "distill.alpha"
            ) -> pd.DataFrame | None:
    """Completed trials that have both parameters active (trial, x, y, value); None if the
    study does not search both."""
    cx, cy = f"param_{x}", f"param_{y}"
    if cx not in pt or cy not in pt:
        return None
    done = completed(pt)
    done = done[done[cx].notna() & done[cy].notna()]
    return pd.DataFrame({"trial": done.trial.astype(int), x: done[cx].astype(float),
                         y: done[cy].astype(float), "value": done.value_0.astype(float)}
                        ).reset_index(drop=True)


def fusion_weights(pt: pd.DataFrame, param: str = "fusion.weights") -> pd.DataFrame | None:
    """Completed trials with simplex weights: trial, value, one column per item (0 where the
    item was not fused, which is where it sits on the simplex). None if not searched."""
    col = f"param_{param}"
    if col not in pt:
        return None
    done = completed(pt)
    done = done[done[col].map(lambda v: isinstance(v, Mapping)).astype(bool)]
    items = [d for d in degradation_names() if any(d in w for w in done[col])]
    items += sorted({k for w in done[col] for k in w} - set(items))
    out = pd.DataFrame({"trial": done.trial.astype(int), "value": done.value_0.astype(float)})
    for k in items:
        out[k] = done[col].map(lambda w, k=k: float(w.get(k, 0.0))).to_numpy()
    return out.reset_index(drop=True)

