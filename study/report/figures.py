"""The plotly figures of the report, each drawing one computed table (study/report/analysis.py)
and nothing else; one look for all of them (`frame`: title, margins, legend) and one colour per
method."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from study import results
from study.config import METHOD_NAMES, degradation_names
from study.report.accuracy import table_columns
from study.report.importance import Importance
from study.report.learning import CurveScales
from study.report.tradeoffs import display_scale
from study.report.trials import completed
from study.space import KINDS, CategoricalParam, FloatParam, SubsetParam

__all__ = ["COLOR", "LEVEL_AXIS", "PALETTE", "fig_budget", "fig_heatmap", "fig_history",
           "fig_importance", "fig_learning", "fig_levels", "fig_paired", "fig_pareto",
           "fig_slices", "fig_surface", "fig_weights", "frame"]

# Which way each level axis runs: JPEG's level is a quality (higher = milder), the others a
# strength (higher = stronger), so "accuracy falls to the right" means opposite things.
# Two lines each, so that four panels side by side in a 560 px dashboard card keep them apart.
LEVEL_AXIS = {"jpeg": "JPEG quality<br>(higher = milder; 101 = none)",
              "blur": "blur sigma/10 px<br>(higher = stronger)",
              "awgn": "noise sigma, 0-255<br>(higher = stronger)",
              "saltpepper": "salt-and-pepper p/100<br>(higher = stronger)"}
# One colour per method in every figure (plotly's default qualitative palette).
PALETTE = ["#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692"]
COLOR = dict(zip(METHOD_NAMES, PALETTE))


# The margins every figure reserves, in pixels, so that no title overlaps another or the plot
# and none is clipped, in the report and in optuna-dashboard's 450 px cards alike (the tests
# measure every title's box in Chromium). Plotly's mode bar floats over the top right corner,
# 26 px from the figure's top edge in the dashboard's cards, so the title starts below it;
# subplot titles sit just above their panel, inside the top margin; the legend sits at the
# figure's foot, under the x axis title.
# The title's pad from the top edge: plotly draws a title's box 16 px above its pad, so the
# title's top lies 28 px down, clear of the mode bar's 26.
MODEBAR_PX = 44
TITLE_LINE_PX = 24          # one line of a 17 px title
SUBPLOT_TITLE_PX = 28       # a 16 px subplot title and its gap above the panel
TICKS_PX = 30               # x tick labels under the plot
SLANTED_TICKS_PX = 70       # slanted ones (tickangle): a 13-character stage name at 30 degrees
AXIS_TITLE_LINE_PX = 20     # one line of a 14 px axis title
LEGEND_ROW_PX = 26          # one row of a horizontal legend (12 px text)
REPORT_WIDTH_PX = 1150      # a figure's width in the page (max-width 1200 px, less padding)


def frame(fig: Any, title: str, height: int, *, width: int = REPORT_WIDTH_PX) -> Any:
    """The look every figure shares: white template, the title top left under the mode bar,
    wrapped to the `width` the figure is drawn at, and margins that hold the title, the
    subplot titles, the x tick labels, the axis titles and the legend rows at the foot."""
    text = "<br>".join(textwrap.wrap(title, width // 10))   # 17 px: ~9.5 px a character
    top = (MODEBAR_PX + TITLE_LINE_PX * (text.count("<br>") + 1) + 6
           + (SUBPLOT_TITLE_PX if fig.layout.annotations else 0))
    xaxes = list(fig.select_xaxes())
    lines = max((ax.title.text.count("<br>") + 1 for ax in xaxes if ax.title.text), default=0)
    ticks_px = SLANTED_TICKS_PX if any(ax.tickangle for ax in xaxes) else TICKS_PX
    fig.update_layout(
        title={"text": text, "x": 0.01, "xanchor": "left", "xref": "container", "y": 1,
               "yanchor": "top", "yref": "container", "pad": {"t": MODEBAR_PX},
               "font": {"size": 17}},
        height=height, template="plotly_white",
        margin={"l": 72, "r": 24, "t": top, "autoexpand": True,
                "b": ticks_px + AXIS_TITLE_LINE_PX * lines + LEGEND_ROW_PX * _legend_rows(
                    fig, width) + 8},
        legend={"orientation": "h", "x": 0, "xanchor": "left", "y": 0, "yanchor": "bottom",
                "yref": "container"})
    return fig


def _legend_rows(fig: Any, width: int) -> int:
    """How many rows the horizontal legend takes at `width`: an entry is ~40 px of symbol and
    gap and ~7 px a character of its name; none when plotly shows no legend (one trace, or
    none with showlegend)."""
    names = [t.name or "" for t in fig.data if t.showlegend is not False]
    if fig.layout.showlegend is False or len(names) < 2:
        return 0
    return math.ceil(sum(40 + 7 * len(n) for n in names) / (width - 40))


def _bar_title(label: str) -> dict[str, Any]:
    """A colour bar's title above it, a word a line: "fusiondistill val.avg" is wider than the
    bar and would run past the figure's right edge on one line."""
    return {"text": "<br>".join(label.split()), "side": "top"}


def fig_levels(curves: pd.DataFrame, title: str) -> Any:
    """level_curves: one panel per evaluation degradation, one line per method."""
    degs = [d for d in degradation_names() if d in set(curves.degradation)]
    fig = make_subplots(rows=1, cols=len(degs), shared_yaxes=True,
                        subplot_titles=[results.TABLE_COLUMNS.get(d, d) for d in degs])
    for i, d in enumerate(degs, start=1):
        part = curves[curves.degradation == d]
        for m in dict.fromkeys(part.model):
            line = part[part.model == m]
            fig.add_trace(go.Scatter(
                x=line.level, y=line.accuracy, mode="lines+markers", name=m, legendgroup=m,
                showlegend=i == 1, line={"color": COLOR.get(m)}), row=1, col=i)
        fig.update_xaxes(title_text=LEVEL_AXIS.get(d, "level"), row=1, col=i)
    fig.update_yaxes(title_text="test accuracy (%)", row=1, col=1)
    return frame(fig, title, 450)


def fig_heatmap(table: pd.DataFrame, title: str) -> Any:
    """subset_ablation: subsets x evaluation degradations, the accuracy written in each cell."""
    cols = [c for c in table_columns() if c in table.columns]
    z = table[cols].to_numpy(dtype=float)
    fig = go.Figure(go.Heatmap(
        z=z, x=cols, y=[f"{s} (trial {t})" for s, t in zip(table.index, table.trial)],
        colorscale="Viridis", colorbar={"title": "%"},
        text=[[f"{v:.1f}" for v in row] for row in z], texttemplate="%{text}"))
    fig.update_xaxes(title_text="evaluation degradation")
    return frame(fig, title, 200 + 45 * len(table))


def fig_importance(sets: Sequence[Importance]) -> Any:
    """importances: one panel per computation (all trials, then each condition, named with the
    trials it rests on), one bar per raw Optuna parameter, the conditional ones in another
    colour, the most important at the top of each panel."""
    heights = [max(len(s.values), 1) for s in sets]
    fig = make_subplots(rows=len(sets), cols=1, row_heights=heights, shared_xaxes=True,
                        vertical_spacing=min(0.12, 0.5 / len(sets)),
                        subplot_titles=[s.title for s in sets])
    for i, s in enumerate(sets, start=1):
        v = s.values.sort_values()
        fig.add_trace(go.Bar(x=v.to_numpy(), y=list(v.index), orientation="h", showlegend=False,
                             marker_color=[PALETTE[1] if n in s.own else PALETTE[0]
                                           for n in v.index]),
                      row=i, col=1)
    fig.update_xaxes(range=[0, 1])
    fig.update_xaxes(title_text="importance (PED-ANOVA, sums to 1 per panel)", row=len(sets),
                     col=1)
    return frame(fig, "Parameter importance (red: a conditional parameter, judged where active)",
                 120 + 60 * len(sets) + 26 * sum(heights))


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
    return frame(fig, f"{value_label} against each searched parameter (colour: trial number)",
                 120 + 260 * nrow)


def fig_surface(points: pd.DataFrame, x: str, y: str, value_label: str) -> Any:
    """surface: one labelled point per trial in the (x, y) plane, coloured by the objective."""
    fig = go.Figure(go.Scatter(
        x=points[x], y=points[y], mode="markers+text", text=[f"{t}" for t in points.trial],
        textposition="top center", marker={"color": points.value, "colorscale": "Viridis",
                                           "size": 14, "showscale": True,
                                           "colorbar": {"title": _bar_title(value_label)}},
        hovertext=[f"trial {t}: {v:.4f}" for t, v in zip(points.trial, points.value)]))
    fig.update_xaxes(title_text=x, type="log")
    fig.update_yaxes(title_text=y)
    return frame(fig, f"{x} x {y} (colour: {value_label}, label: trial)", 460)


def fig_weights(w: pd.DataFrame, value_label: str) -> Any:
    """fusion_weights: on the ternary simplex with three items, else one line per trial."""
    items = [c for c in w.columns if c not in ("trial", "value")]
    if len(items) == 3:
        a, b, c = items
        fig = go.Figure(go.Scatterternary(
            a=w[a], b=w[b], c=w[c], mode="markers", text=[f"trial {t}" for t in w.trial],
            marker={"color": w.value, "colorscale": "Viridis", "size": 12, "showscale": True,
                    "colorbar": {"title": _bar_title(value_label)}}))
        fig.update_layout(ternary={"aaxis_title": a, "baxis_title": b, "caxis_title": c})
        return frame(fig, f"Fusion coefficients on the simplex (colour: {value_label})", 520)
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
    return frame(fig, f"Fusion coefficients per trial (colour: {value_label}, yellow = best)",
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
    return frame(fig, f"Optimization history: {value_label} of the completed trials", 420)


def fig_budget(stages: pd.DataFrame) -> Any:
    """budget's stage table: minutes spent building each stage beside minutes the cache saved."""
    fig = go.Figure([go.Bar(x=list(stages.index), y=stages.build_s / 60, name="built (spent)",
                            marker_color=PALETTE[0]),
                     go.Bar(x=list(stages.index), y=stages.saved_s / 60,
                            name="cache hits (saved)", marker_color=PALETTE[2])])
    fig.update_layout(barmode="group")
    fig.update_xaxes(tickangle=-30)   # stage names side by side run into each other in a card
    fig.update_yaxes(title_text="minutes")
    return frame(fig, "Stage build time: spent vs saved by the cache", 420)


def fig_pareto(pt: pd.DataFrame, front: Sequence[int], labels: Sequence[str],
               metrics: Sequence[str], baseline: int | None) -> Any:
    """The first objective against each other one (a panel each), every completed trial: the
    Pareto front in colour, the dominated in grey, the baseline as a black diamond."""
    done = completed(pt)
    on = done.trial.isin(front)
    x_scale, x_unit = display_scale(metrics[0])
    others = range(1, len(labels))
    fig = make_subplots(rows=1, cols=len(others), horizontal_spacing=0.12)
    for col, i in enumerate(others, start=1):
        y_scale, y_unit = display_scale(metrics[i])
        groups = [("dominated", done[~on], {"color": "#bbb", "size": 9}),
                  ("Pareto front", done[on], {"color": PALETTE[1], "size": 11}),
                  ("baseline", done[done.trial == baseline],
                   {"color": "#000", "size": 13, "symbol": "diamond-open"})]
        for name, part, marker in groups:
            fig.add_trace(go.Scatter(
                x=part.value_0 * x_scale, y=part[f"value_{i}"] * y_scale, mode="markers",
                name=name, marker=marker, legendgroup=name, showlegend=col == 1,
                text=[f"trial {t}" for t in part.trial]), row=1, col=col)
        fig.update_xaxes(title_text=f"{labels[0]} ({x_unit})", row=1, col=col)
        fig.update_yaxes(title_text=f"{labels[i]} ({y_unit})", row=1, col=col)
    return frame(fig, f"Pareto front: {labels[0]} against "
                      f"{', '.join(labels[i] for i in others)}", 440)


def fig_paired(paired: pd.DataFrame, method: str) -> Any:
    """paired_differences: best - baseline per column, with the t-interval where there is one."""
    err = paired.half.fillna(0).to_numpy()
    fig = go.Figure(go.Bar(
        x=list(paired.index), y=paired["diff"], marker_color=PALETTE[2],
        error_y={"type": "data", "array": err, "visible": bool(paired.half.notna().any())}))
    fig.add_hline(y=0, line_color="#444")
    fig.update_yaxes(title_text="best - baseline (points)")
    n = int(paired.n.iloc[0])
    what = f"95% t-interval, {n} seeds" if n > 1 else "one seed, no interval"
    return frame(fig, f"Best - baseline, {method}, test ({what})", 420)


def fig_learning(lc: pd.DataFrame, scales: CurveScales) -> Any:
    """Per trained stage, two panels one above the other: validation accuracy (%) and training
    loss against the epoch, best against baseline, pruned trials in grey where they stopped.
    Every accuracy panel has the same y range, every loss panel too, and the epochs are whole
    numbers (curve_scales)."""
    order = {name: i for i, name in enumerate(results.STAGES)}
    names = sorted(set(lc.stage), key=lambda n: (order.get(n, len(order)), n))
    cols = min(3, len(names))
    rows = 2 * math.ceil(len(names) / cols)
    titles = [""] * (rows * cols)
    for i, name in enumerate(names):
        r, c = 2 * (i // cols), i % cols
        titles[r * cols + c] = f"{name}: val accuracy (%)"
        titles[(r + 1) * cols + c] = f"{name}: training loss"
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.07,
                        vertical_spacing=0.45 / rows)
    colour = {"best": PALETTE[1], "baseline": PALETTE[0], "pruned": "#BBBBBB"}
    shown: set[str] = set()
    for i, name in enumerate(names):
        part = lc[lc.stage == name]
        r, c = 2 * (i // cols) + 1, i % cols + 1
        for (role, trial), g in part.groupby(["role", "trial"], sort=False):
            g = g.sort_values("epoch")
            for dr, y, what in ((0, "val_pct", "val accuracy %"), (1, "loss", "training loss")):
                fig.add_trace(go.Scatter(
                    x=g.epoch.astype(float), y=g[y].astype(float), mode="lines+markers",
                    name=f"{role}" if role == "pruned" else f"{role} (trial {trial})",
                    legendgroup=str(role), showlegend=role not in shown,
                    line={"color": colour[str(role)], "width": 1 if role == "pruned" else 2.5},
                    marker={"size": 4 if role == "pruned" else 6},
                    hovertemplate=f"trial {trial}, epoch %{{x}}: {what} %{{y:.4f}}"
                                  "<extra></extra>"), row=r + dr, col=c)
                shown.add(str(role))
        fig.update_yaxes(range=scales.val, row=r, col=c)
        fig.update_yaxes(range=scales.loss, row=r + 1, col=c)
        fig.update_xaxes(title_text="epoch", row=r + 1, col=c)
    for i in range(len(names), rows // 2 * cols):   # the empty places of the last row
        r, c = 2 * (i // cols) + 1, i % cols + 1
        for dr in (0, 1):
            fig.update_xaxes(visible=False, row=r + dr, col=c)
            fig.update_yaxes(visible=False, row=r + dr, col=c)
    fig.update_xaxes(range=list(scales.epochs), tick0=0, dtick=scales.dtick)
    return frame(fig, "Learning curves: validation accuracy (upper panels) and training loss "
                 "(lower panels) per epoch, best trial vs baseline", 150 + 250 * rows)
