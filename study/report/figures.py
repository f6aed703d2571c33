"""The plotly figures of the report, each drawing one computed table (study/report/analysis.py)
and nothing else; one look for all of them (`_layout`) and one colour per method."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from study import results
from study.config import DEGRADATION_NAMES, METHOD_NAMES
from study.report.accuracy import COLUMNS
from study.report.trials import completed
from study.space import KINDS, CategoricalParam, FloatParam, SubsetParam

__all__ = ["COLOR", "LEVEL_AXIS", "PALETTE", "fig_budget", "fig_heatmap", "fig_history",
           "fig_importance", "fig_learning", "fig_levels", "fig_paired", "fig_pareto",
           "fig_slices", "fig_surface", "fig_weights"]

LEVEL_AXIS = {"jpeg": "JPEG quality (101 = not compressed)", "blur": "blur level (sigma/10 px)",
              "awgn": "noise sigma (0-255 scale)", "saltpepper": "salt-and-pepper level (p/100)"}
# One colour per method in every figure (plotly's default qualitative palette).
PALETTE = ["#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692"]
COLOR = dict(zip(METHOD_NAMES, PALETTE))


def _layout(fig: Any, title: str, height: int = 420) -> Any:
    """The look every figure shares: title top left, white template, legend under the plot."""
    fig.update_layout(title={"text": title, "x": 0.01}, height=height, template="plotly_white",
                      margin={"l": 60, "r": 20, "t": 70, "b": 50},
                      legend={"orientation": "h", "y": -0.18})
    return fig


def fig_levels(curves: pd.DataFrame, title: str) -> Any:
    """level_curves: one panel per evaluation degradation, one line per method."""
    degs = [d for d in DEGRADATION_NAMES if d in set(curves.degradation)]
    fig = make_subplots(rows=1, cols=len(degs), shared_yaxes=True,
                        subplot_titles=[results.TABLE_COLUMNS[d] for d in degs])
    for i, d in enumerate(degs, start=1):
        part = curves[curves.degradation == d]
        for m in dict.fromkeys(part.model):
            line = part[part.model == m]
            fig.add_trace(go.Scatter(
                x=line.level, y=line.accuracy, mode="lines+markers", name=m, legendgroup=m,
                showlegend=i == 1, line={"color": COLOR.get(m)}), row=1, col=i)
        fig.update_xaxes(title_text=LEVEL_AXIS.get(d, "level"), row=1, col=i)
    fig.update_yaxes(title_text="test accuracy (%)", row=1, col=1)
    return _layout(fig, title, 430)


def fig_heatmap(table: pd.DataFrame, title: str) -> Any:
    """subset_ablation: subsets x evaluation degradations, the accuracy written in each cell."""
    cols = [c for c in COLUMNS if c in table.columns]
    z = table[cols].to_numpy(dtype=float)
    fig = go.Figure(go.Heatmap(
        z=z, x=cols, y=[f"{s} (trial {t})" for s, t in zip(table.index, table.trial)],
        colorscale="Viridis", colorbar={"title": "%"},
        text=[[f"{v:.1f}" for v in row] for row in z], texttemplate="%{text}"))
    fig.update_xaxes(title_text="evaluation degradation")
    return _layout(fig, title, 160 + 45 * len(table))


def fig_importance(imp: pd.Series) -> Any:
    """importances: one bar per raw Optuna parameter, the most important at the top."""
    imp = imp.sort_values()
    fig = go.Figure(go.Bar(x=imp.to_numpy(), y=list(imp.index), orientation="h",
                           marker_color=PALETTE[0]))
    fig.update_xaxes(title_text="importance (PED-ANOVA, sums to 1)")
    return _layout(fig, "Parameter importance", 140 + 32 * len(imp))


def fig_slices(sl: pd.DataFrame, value_label: str) -> Any:
    """slices: the objective against each searched parameter, one panel each, three a row;
    a float axis turns logarithmic when its values span more than a factor of 20."""
    names = list(dict.fromkeys(sl.param))
    ncol = min(3, len(names))
    nrow = math.ceil(len(names) / ncol)
    fig = make_subplots(rows=nrow, cols=ncol, subplot_titles=names, shared_yaxes=True,
                        vertical_spacing=0.5 / nrow)
    for i, name in enumerate(names):
        part = sl[sl.param == name]
        r, c = i // ncol + 1, i % ncol + 1
        param_class = KINDS[part.kind.iloc[0]]   # the slices table holds the kind's name
        fig.add_trace(go.Scatter(
            x=part.x.astype(str) if issubclass(param_class, (CategoricalParam, SubsetParam))
            else part.x,
            y=part.value, mode="markers", text=[f"trial {t}" for t in part.trial],
            marker={"color": part.trial, "colorscale": "Blues", "size": 9,
                    "line": {"width": 1, "color": "#333"}}, showlegend=False), row=r, col=c)
        if issubclass(param_class, FloatParam) and (part.x.astype(float) > 0).all() and \
                part.x.astype(float).max() / part.x.astype(float).min() > 20:
            fig.update_xaxes(type="log", row=r, col=c)
    fig.update_yaxes(title_text=value_label, col=1)
    return _layout(fig, "Objective against each searched parameter (colour: trial number)",
                   80 + 260 * nrow)


def fig_surface(points: pd.DataFrame, x: str, y: str, value_label: str) -> Any:
    """surface: one labelled point per trial in the (x, y) plane, coloured by the objective."""
    fig = go.Figure(go.Scatter(
        x=points[x], y=points[y], mode="markers+text", text=[f"{t}" for t in points.trial],
        textposition="top center", marker={"color": points.value, "colorscale": "Viridis",
                                           "size": 14, "showscale": True,
                                           "colorbar": {"title": "objective"}},
        hovertext=[f"trial {t}: {v:.4f}" for t, v in zip(points.trial, points.value)]))
    fig.update_xaxes(title_text=x, type="log")
    fig.update_yaxes(title_text=y)
    return _layout(fig, f"{x} x {y} (colour: objective, label: trial)", 460)


def fig_weights(w: pd.DataFrame, value_label: str) -> Any:
    """fusion_weights: on the ternary simplex with three items, else one line per trial."""
    items = [c for c in w.columns if c not in ("trial", "value")]
    if len(items) == 3:
        a, b, c = items
        fig = go.Figure(go.Scatterternary(
            a=w[a], b=w[b], c=w[c], mode="markers", text=[f"trial {t}" for t in w.trial],
            marker={"color": w.value, "colorscale": "Viridis", "size": 12, "showscale": True,
                    "colorbar": {"title": "objective"}}))
        fig.update_layout(ternary={"aaxis_title": a, "baxis_title": b, "caxis_title": c})
        return _layout(fig, "Fusion coefficients on the simplex (colour: objective)", 520)
    # Parallel coordinates drawn as SVG lines: plotly's parcoords needs WebGL, which headless
    # browsers and some remote desktops lack.
    lo, hi = float(w.value.min()), float(w.value.max())
    fig = go.Figure()
    for _, r in w.iterrows():
        t = 0.5 if hi == lo else (r.value - lo) / (hi - lo)
        fig.add_trace(go.Scatter(x=items, y=[r[k] for k in items], mode="lines+markers",
                                 name=f"trial {int(r.trial)} ({r.value:.4f})",
                                 line={"color": sample_colorscale("Viridis", [t])[0]}))
    fig.update_yaxes(title_text="fusion weight", range=[0, 1])
    return _layout(fig, "Fusion coefficients per trial (colour: objective, yellow = best)",
                   440)


def fig_history(pt: pd.DataFrame, direction: str, value_label: str) -> Any:
    """per_trial: each completed trial's first objective, and the best so far as a step line."""
    done = completed(pt)
    v = done.value_0.astype(float)
    best = v.cummax() if direction == "maximize" else v.cummin()
    fig = go.Figure([go.Scatter(x=done.trial, y=v, mode="markers", name="trial",
                                marker={"size": 9, "color": PALETTE[0]}),
                     go.Scatter(x=done.trial, y=best, mode="lines", name="best so far",
                                line={"shape": "hv", "color": PALETTE[1]})])
    n = int(pt.trial.max()) + 1 if len(pt) else 1
    fig.update_xaxes(title_text="trial", dtick=max(1, math.ceil(n / 10)))   # whole trials only
    fig.update_yaxes(title_text=value_label)
    return _layout(fig, "Optimization history (completed trials)", 400)


def fig_budget(stages: pd.DataFrame) -> Any:
    """budget's stage table: minutes spent building each stage beside minutes the cache saved."""
    fig = go.Figure([go.Bar(x=list(stages.index), y=stages.build_s / 60, name="built (spent)",
                            marker_color=PALETTE[0]),
                     go.Bar(x=list(stages.index), y=stages.saved_s / 60,
                            name="cache hits (saved)", marker_color=PALETTE[2])])
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="minutes")
    return _layout(fig, "Stage build time: spent vs saved by the cache", 400)


def fig_pareto(pt: pd.DataFrame, front: Sequence[int], labels: Sequence[str]) -> Any:
    """The first two objectives of every completed trial, the Pareto front in colour."""
    done = completed(pt)
    on = done.trial.isin(front)
    fig = go.Figure([
        go.Scatter(x=done[~on].value_0, y=done[~on].value_1, mode="markers", name="dominated",
                   marker={"color": "#bbb", "size": 9}, text=[f"trial {t}" for t in
                                                                done[~on].trial]),
        go.Scatter(x=done[on].value_0, y=done[on].value_1, mode="markers", name="Pareto front",
                   marker={"color": PALETTE[1], "size": 11},
                   text=[f"trial {t}" for t in done[on].trial])])
    fig.update_xaxes(title_text=labels[0])
    fig.update_yaxes(title_text=labels[1])
    return _layout(fig, "Pareto front", 440)


def fig_paired(paired: pd.DataFrame, method: str) -> Any:
    """paired_differences: best - baseline per column, with the t-interval where there is one."""
    err = paired.half.fillna(0).to_numpy()
    fig = go.Figure(go.Bar(
        x=list(paired.index), y=paired["diff"], marker_color=PALETTE[2],
        error_y={"type": "data", "array": err, "visible": bool(paired.half.notna().any())}))
    fig.add_hline(y=0, line_color="#444")
    fig.update_yaxes(title_text="best - baseline (accuracy points)")
    n = int(paired.n.iloc[0])
    what = f"95% t-interval, {n} seeds" if n > 1 else "one seed, no interval"
    return _layout(fig, f"Best - baseline, {method}, test ({what})", 400)


def fig_learning(lc: pd.DataFrame) -> Any:
    """Per trained stage: validation accuracy against epoch (the loss where a stage has no
    validation), best against baseline, pruned trials in grey where they stopped."""
    order = {name: i for i, name in enumerate(results.STAGES)}
    names = sorted(set(lc.stage), key=lambda n: (order.get(n, len(order)), n))
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=names, vertical_spacing=0.12)
    colour = {"best": PALETTE[1], "baseline": PALETTE[0], "pruned": "#BBBBBB"}
    shown: set[str] = set()
    for i, name in enumerate(names):
        part = lc[lc.stage == name]
        y = "val" if part.val.notna().any() else "loss"
        for (role, trial), g in part.groupby(["role", "trial"], sort=False):
            g = g.sort_values("epoch")
            fig.add_trace(go.Scatter(
                x=g.epoch.astype(float), y=g[y].astype(float), mode="lines+markers",
                name=f"{role}" if role == "pruned" else f"{role} (trial {trial})",
                legendgroup=str(role), showlegend=role not in shown,
                line={"color": colour[str(role)], "width": 1 if role == "pruned" else 2.5},
                marker={"size": 4 if role == "pruned" else 6},
                hovertemplate=f"trial {trial}, epoch %{{x}}: {y} %{{y:.4f}}<extra></extra>"),
                row=i // cols + 1, col=i % cols + 1)
            shown.add(str(role))
        fig.update_yaxes(title_text="val accuracy" if y == "val" else "train loss",
                         row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(title_text="epoch")
    return _layout(fig, "Learning curves per stage: best trial vs baseline, pruned trials "
                   "where they stopped", max(420, 300 * rows))
