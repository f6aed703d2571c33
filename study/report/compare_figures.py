"""The figures of `study compare` (study/compare.py computes what they draw): one shared
parameter against each study's objective, every study on the same axes, in the report's look
(figures.frame) and palette."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from study.report.figures import PALETTE, frame
from study.space import CategoricalParam, FloatParam, SubsetParam

__all__ = ["fig_shared", "study_colors"]

# A float axis turns logarithmic when its values span more than this factor (as the report's
# slices): 3e-4..3e-3 learning rates bunch up at the left on a linear axis.
LOG_SPAN = 20


def study_colors(names: Sequence[str]) -> dict[str, str]:
    """One colour per study, in the order given, on every figure of the page."""
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def fig_shared(points: Mapping[str, pd.DataFrame], best: Mapping[str, tuple[int, Any] | None],
               kinds: Mapping[str, type], param: str, value_label: str, *,
               comparable: bool = True) -> Any:
    """points: study -> its slices rows of `param` (trial, x, value); best: study -> (best
    trial, its value of `param`) where active; kinds: study -> the parameter's class there.
    One colour per study, each study's best trial a star. Values read as text (a category, a
    subset) when any study searches the parameter as one, so the axes stay one. comparable:
    whether the studies share their objective; the title says so when they do not."""
    colors = study_colors(list(points))
    as_text = any(issubclass(k, (CategoricalParam, SubsetParam)) for k in kinds.values())
    fig = go.Figure()
    for name, part in points.items():
        x = part.x.astype(str) if as_text else part.x
        fig.add_trace(go.Scatter(
            x=x, y=part.value, mode="markers", name=name, legendgroup=name,
            text=[f"{name}, trial {t}" for t in part.trial],
            marker={"color": colors[name], "size": 9, "line": {"width": 1, "color": "#333"}}))
        b = best.get(name)
        here = part[part.trial == b[0]] if b is not None else part.iloc[:0]
        if len(here):
            fig.add_trace(go.Scatter(
                x=here.x.astype(str) if as_text else here.x, y=here.value, mode="markers",
                name=f"{name} best", legendgroup=name, showlegend=False,
                text=[f"{name}, best trial {b[0] if b else ''}"],
                marker={"color": colors[name], "size": 18, "symbol": "star",
                        "line": {"width": 1, "color": "#333"}}))
    xs = pd.concat([p.x for p in points.values()]) if points else pd.Series(dtype=float)
    numeric = (not as_text and all(issubclass(k, FloatParam) for k in kinds.values())
               and len(xs) and (xs.astype(float) > 0).all())
    if numeric and xs.astype(float).max() / xs.astype(float).min() > LOG_SPAN:
        fig.update_xaxes(type="log")
    fig.update_xaxes(title_text=param)
    fig.update_yaxes(title_text=value_label)
    caveat = "" if comparable else ", values not comparable across studies"
    return frame(fig, f"{value_label} against {param}, study by study (star: each study's "
                      f"best trial{caveat})", 460)
