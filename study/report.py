"""`study report`: the ablation report of a study (results/<study>/report.html) and the same
figures on optuna-dashboard.

Compute, then draw, as optuna.visualization does: every number comes from a pure function of the
Parquet results (`results.load`) or the study's storage and returns a DataFrame or a dict that the
tests check against hand computations; the `fig_*` functions only draw what those return.
The HTML is one self-contained file: plotly.js (about 4.8 MB) is embedded once in its head, so it
opens offline, on a login node without internet, or attached to an e-mail.

Two choices a reader should know:
- The baseline is the study file's own pipeline (its preset and overrides, the paper setting
  for the paper_* files) with nothing searched. When it lies inside the space, the launcher
  enqueues it exactly as the study's first trial (`study.baseline`, on by default); paired
  differences compare the best trial against it. Without one (outside the space, switched off,
  or not completed yet) the report says so and shows no differences.
- The best configuration is chosen on validation (the study's first objective); every number
  shown for it is on test, so the choice does not leak into what is reported.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import optuna_dashboard
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import plotly.offline
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots
from scipy import stats

from study import atomic, evaluation, published, results, storage, studyfile
from study.config import DEGRADATION_NAMES, METHOD_NAMES
from study.space import (
    KINDS,
    CategoricalParam,
    FixedParam,
    FloatParam,
    Param,
    SimplexParam,
    SubsetParam,
)

__all__ = [
    "PUSHED", "Analysis", "Rendered", "SeedTable", "analyse", "best_trial", "budget",
    "build_report", "export_png", "fig_budget", "fig_heatmap", "fig_history", "fig_importance",
    "fig_levels", "fig_paired", "fig_pareto", "fig_slices", "fig_surface", "fig_weights",
    "fusion_weights", "importances", "level_curves", "paired_differences", "baseline_trial",
    "pareto_front", "per_trial", "push_to_dashboard", "render", "seed_table",
    "slices", "subset_ablation", "surface", "t_interval",
]

CONFIDENCE = 0.95
COLUMNS = [*evaluation.TABLE_COLUMNS.values(), "Avg", "Clean"]
LEVEL_AXIS = {"jpeg": "JPEG quality (101 = not compressed)", "blur": "blur level (sigma/10 px)",
              "awgn": "noise sigma (0-255 scale)", "saltpepper": "salt-and-pepper level (p/100)"}
# One colour per method in every figure (plotly's default qualitative palette).
PALETTE = ["#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692"]
COLOR = dict(zip(METHOD_NAMES, PALETTE))
# Figures that optuna-dashboard does not draw itself; pushed into the study under these ids so
# that a second `study report` overwrites them instead of piling up copies.
PUSHED = ("levels", "paired", "subsets", "surface", "fusion_weights", "budget")
CHROMIUM = "/usr/bin/chromium"


# ---------------------------------------------------------------- compute: trials
def per_trial(df: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: trial, state, wall_s, device, value_*, param_* (JSON text parsed back
    to lists, dicts and strings), seeds (sorted list of replicate seeds with results)."""
    if df.empty:
        return pd.DataFrame(columns=["trial", "state", "wall_s", "device", "seeds"])
    keep = ["trial", "state", "wall_s", "device",
            *[c for c in df.columns if c.startswith(("value_", "param_"))]]
    out = df.drop_duplicates("trial")[keep].sort_values("trial").reset_index(drop=True)
    for c in out.columns:
        if c.startswith("param_") and pd.api.types.is_string_dtype(out[c]):
            out[c] = out[c].astype(object).map(lambda v: None if _missing(v) else json.loads(v))
    seeds = df.dropna(subset=["accuracy"]).groupby("trial").seed.unique()
    out["seeds"] = out.trial.map(lambda t: sorted(int(s) for s in seeds.get(t, [])))
    return out


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _complete(pt: pd.DataFrame) -> pd.DataFrame:
    if "value_0" not in pt:
        return pt.iloc[:0]
    return pt[(pt.state == "COMPLETE") & pt.value_0.notna()]


def pareto_front(pt: pd.DataFrame, directions: Sequence[str]) -> list[int]:
    """Trials no other completed trial dominates (all objectives at least as good, one better)."""
    done = _complete(pt)
    cols = [f"value_{i}" for i in range(len(directions))]
    sign = np.array([1.0 if d == "maximize" else -1.0 for d in directions])
    v = done[cols].to_numpy(dtype=float, na_value=np.nan) * sign       # larger is better
    ge = (v[:, None, :] >= v[None, :, :]).all(-1)                      # [j, i]: j >= i on all
    gt = (v[:, None, :] > v[None, :, :]).any(-1)
    dominated = (ge & gt).any(axis=0)
    return sorted(int(t) for t, d in zip(done.trial, dominated) if not d)


def best_trial(pt: pd.DataFrame, directions: Sequence[str]) -> int | None:
    """Best on validation: by the first objective; with several objectives, the Pareto-front
    trial best on the first. Ties go to the earlier trial."""
    done = _complete(pt)
    if len(directions) > 1:
        done = done[done.trial.isin(pareto_front(pt, directions))]
    if done.empty:
        return None
    sign = 1.0 if directions[0] == "maximize" else -1.0
    score = done.value_0.to_numpy(dtype=float) * sign
    return int(done.trial.iloc[int(np.argmax(score))])


def baseline_trial(pt: pd.DataFrame, study: Any) -> tuple[int | None, str]:
    """The completed trial that runs the study file's own pipeline exactly (the launcher
    enqueued it with user attribute `baseline`), and a sentence for the report."""
    done = set(_complete(pt).trial.astype(int)) if len(pt) else set()
    marked = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("baseline")]
    for t in marked:
        if t.number in done:
            return t.number, (f"Trial {t.number} is the baseline: the study file's own "
                              "pipeline, run exactly (enqueued as the study's first trial).")
    if marked:
        return None, ("The baseline trial (the study file's own pipeline) has not completed "
                      f"(trial {', '.join(str(t.number) for t in marked)}): no paired "
                      "differences yet.")
    why = study.user_attrs.get("baseline_skipped")
    return None, ("No baseline trial: " + (why or "this study was launched without one "
                                           "(study.baseline: false, or an older release)")
                  + ". Paired differences need it.")


OPTIMISTIC = ("Reference protocol (protocol: reference): every training image trained and the "
              "checkpoints were chosen on the test set, as the reference code does. These test "
              "numbers are optimistic; they are for comparing with the paper's tables only.")


def published_comparison(measured: pd.DataFrame, dataset: str | None
                         ) -> tuple[pd.DataFrame | None, str]:
    """The baseline's test table beside the paper's published one, and a note. Rows: methods
    both have; columns (measured, published, diff) x JPEG..Avg. CIFAR-10 has only a remark:
    the measured FusionDistill Avg minus the best of Scratch, Vanilla FT and Fusing."""
    if dataset == "cifar10":
        avg = measured["Avg"] if "Avg" in measured else pd.Series(dtype=float)
        others = [m for m in ("scratch", "vanilla_ft", "fusing") if m in avg.index]
        if "fusiondistill" in avg.index and others:
            gap = float(avg["fusiondistill"] - avg[others].max())
            return None, (f"{published.CIFAR10_NOTE} Measured here: {gap:+.1f} points over "
                          f"the best of {', '.join(others)}.")
        return None, published.CIFAR10_NOTE
    table = published.PUBLISHED.get(dataset or "")
    if table is None:
        return None, (f"The paper publishes no numbers for dataset '{dataset}': no comparison "
                      "(it has CIFAR-100 and Tiny ImageNet tables and a CIFAR-10 remark).")
    methods = [m for m in measured.index if m in table]
    cols = [c for c in published.COLUMNS if c in measured.columns]
    if not methods or not cols:
        return None, "No method of the paper's table was measured in the baseline trial."
    pub = pd.DataFrame({m: dict(zip(published.COLUMNS, table[m])) for m in methods}).T[cols]
    mes = measured.loc[methods, cols].astype(float)
    out = pd.concat({"measured": mes, "published": pub, "diff": mes - pub}, axis=1)
    return out, (f"The baseline trial's test accuracy beside the paper's published "
                 f"{dataset} table (mean over levels, %); diff = measured - published.")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


# ---------------------------------------------------------------- compute: accuracy
def t_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """Mean and half-width of the Student-t interval over axis 0 (the seeds); the half-width
    is NaN with one seed, where no interval exists."""
    x = np.asarray(samples, dtype=float)
    n = x.shape[0]
    mean = x.mean(axis=0)
    if n < 2:
        return mean, np.full_like(mean, np.nan)
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * x.std(axis=0, ddof=1) / math.sqrt(n)
    return mean, half


@dataclass(frozen=True)
class SeedTable:
    """The paper-style table (percent) over replicate seeds."""

    mean: pd.DataFrame   # methods x JPEG/Blur/AWGN/SAPN/Avg/Clean
    half: pd.DataFrame   # 95% t-interval half-widths, NaN with one seed
    seeds: list[int]


def seed_table(rows: pd.DataFrame, order: Sequence[str] | None = None) -> SeedTable:
    """evaluation.table per seed of one trial's rows (one split), then mean and interval."""
    rows = rows.dropna(subset=["accuracy"])
    seeds = sorted(int(s) for s in rows.seed.unique())
    tables = [evaluation.table(rows[rows.seed == s], order) for s in seeds]
    index = tables[0].index
    cols = [c for c in COLUMNS if any(c in t.columns for t in tables)]
    stack = np.stack([t.reindex(index=index, columns=cols).to_numpy(dtype=float, na_value=np.nan)
                      for t in tables])
    mean, half = t_interval(stack)
    return SeedTable(pd.DataFrame(mean, index=index, columns=cols),
                     pd.DataFrame(half, index=index, columns=cols), seeds)


def level_curves(rows: pd.DataFrame) -> pd.DataFrame:
    """Accuracy (%) per (model, degradation, level), mean over seeds, from one trial's rows of
    one split; clean rows left out (they are the table's Clean column)."""
    rows = rows[(rows.degradation != "clean") & rows.accuracy.notna()]
    g = rows.groupby(["model", "degradation", "level"], sort=False)
    out = g.accuracy.mean().mul(100).rename("accuracy").to_frame()
    out["n_seeds"] = g.seed.nunique()
    out = out.reset_index()
    out["accuracy"] = out.accuracy.astype(float)
    return out.sort_values(["degradation", "model", "level"], key=_canonical).reset_index(
        drop=True)


def _canonical(s: pd.Series) -> pd.Series:
    order = {k: i for i, k in enumerate([*DEGRADATION_NAMES, *METHOD_NAMES])}
    return s.map(lambda v: order.get(v, v)) if s.dtype != "Int64" else s


def subset_ablation(df: pd.DataFrame, pt: pd.DataFrame, param: str, method: str,
                    direction: str, split: str = "test") -> pd.DataFrame:
    """Per chosen subset of `param` (degradations, fusion.experts): the trial best on
    validation among those that chose it, and its `split` accuracy (%) of `method` per
    evaluation degradation (mean over seeds). Index: the subset as 'jpeg+awgn'."""
    col = f"param_{param}"
    done = _complete(pt)
    if col not in done or done.empty:
        return pd.DataFrame(columns=["trial", "n_trials", *COLUMNS])
    done = done[done[col].map(lambda v: not _missing(v)).astype(bool)]
    records = []
    for label, group in done.groupby(done[col].map("+".join), sort=False):
        best = best_trial(group, [direction])
        rows = df[(df.trial == best) & (df.split == split) & (df.model == method)]
        if rows.accuracy.notna().any():
            t = seed_table(rows).mean.iloc[0]
            records.append({"subset": label, "trial": best, "n_trials": len(group),
                            "size": len(group[col].iloc[0]), **t.to_dict()})
    if not records:
        return pd.DataFrame(columns=["trial", "n_trials", *COLUMNS])
    out = pd.DataFrame(records).set_index("subset")
    return out.sort_values(["size", "subset"], ascending=[False, True]).drop(columns="size")


def paired_differences(df: pd.DataFrame, best: int, baseline: int, method: str,
                       split: str = "test") -> pd.DataFrame:
    """Best minus baseline, seed by seed (replicate r of both trials shares its seed, so
    the data split, initialisations and degraded copies are the same), for `method` on `split`.
    Index: JPEG.. Avg, Clean; columns best, baseline, diff, half (95% t half-width; NaN with one
    seed), lo, hi, n."""
    def per_seed(trial: int) -> dict[int, pd.Series]:
        rows = df[(df.trial == trial) & (df.split == split) & (df.model == method)]
        rows = rows.dropna(subset=["accuracy"])
        return {int(s): evaluation.table(rows[rows.seed == s]).iloc[0] for s in rows.seed.unique()}

    b, p = per_seed(best), per_seed(baseline)
    seeds = sorted(set(b) & set(p))
    if not seeds:
        return pd.DataFrame(columns=["best", "baseline", "diff", "half", "lo", "hi", "n"])
    cols = [c for c in COLUMNS if c in b[seeds[0]].index]
    bs = np.stack([b[s].reindex(cols).to_numpy(dtype=float, na_value=np.nan) for s in seeds])
    ps = np.stack([p[s].reindex(cols).to_numpy(dtype=float, na_value=np.nan) for s in seeds])
    diff, half = t_interval(bs - ps)
    return pd.DataFrame({"best": bs.mean(0), "baseline": ps.mean(0), "diff": diff, "half": half,
                         "lo": diff - half, "hi": diff + half, "n": len(seeds)}, index=cols)


# ---------------------------------------------------------------- compute: parameters
def slices(pt: pd.DataFrame, params: Sequence[Param]) -> pd.DataFrame:
    """Long table (param, kind, trial, x, value) of completed trials, one row per active
    searched parameter; subsets as 'jpeg+awgn', simplex weights left to fusion_weights."""
    done = _complete(pt)
    rows = []
    for p in params:
        col = f"param_{p.name}"
        if isinstance(p, (FixedParam, SimplexParam)) or col not in done:
            continue
        for _, r in done.iterrows():
            v = r[col]
            if not _missing(v):
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
    done = _complete(pt)
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
    done = _complete(pt)
    done = done[done[col].map(lambda v: isinstance(v, Mapping)).astype(bool)]
    items = [d for d in DEGRADATION_NAMES if any(d in w for w in done[col])]
    items += sorted({k for w in done[col] for k in w} - set(items))
    out = pd.DataFrame({"trial": done.trial.astype(int), "value": done.value_0.astype(float)})
    for k in items:
        out[k] = done[col].map(lambda w, k=k: float(w.get(k, 0.0))).to_numpy()
    return out.reset_index(drop=True)


def importances(study: Any) -> tuple[pd.Series | None, str]:
    """PED-ANOVA importances of the first objective (Optuna's evaluator that needs no
    scikit-learn; fANOVA and mean-decrease-impurity do). It asks which parameters set the top
    10% of trials apart, so with a handful of trials it is a hint, not a measurement."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(done) < 2:
        return None, f"Parameter importance needs at least 2 completed trials ({len(done)} now)."
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    try:
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), target=target)
    except (RuntimeError, ValueError) as e:
        return None, f"Optuna could not compute importances: {e}"
    if not imp:
        return None, "No parameter varies across the completed trials."
    return pd.Series(imp, name="importance"), (
        f"PED-ANOVA over {len(done)} completed trials: how much each raw Optuna parameter "
        "sets the top 10% of trials apart from all (normalised to sum 1).")


def budget(df: pd.DataFrame) -> tuple[dict[str, Any], pd.DataFrame]:
    """Trials by state, compute time spent (sum of trial wall times) and saved by the stage
    cache (sum of a stage's recorded build time over trials that got it as a hit), per device.
    Stage information is the first replicate's (the worker records it so)."""
    first = df.drop_duplicates("trial")
    counts = {k: int(v) for k, v in first.state.value_counts().items()}
    stages = []
    for st in [c.removeprefix("hit_") for c in first.columns if c.startswith("hit_")]:
        hit = first[f"hit_{st}"].astype("boolean")
        b = first[f"build_s_{st}"].astype(float)
        stages.append({"stage": st, "built": int((hit == False).sum()),  # noqa: E712
                       "hits": int((hit == True).sum()),  # noqa: E712
                       "build_s": float(b[(hit == False).fillna(False)].sum()),  # noqa: E712
                       "saved_s": float(b[hit.fillna(False)].sum())})
    table = pd.DataFrame(stages, columns=["stage", "built", "hits", "build_s", "saved_s"])
    table = table[(table.built + table.hits) > 0].set_index("stage")
    wall = first.wall_s.astype(float)
    device = first.device.astype(object).fillna("none")
    info = {"states": counts, "trials": int(len(first)), "spent_s": float(wall.sum()),
            "saved_s": float(table.saved_s.sum()),
            "spent_s_by_device": {str(k): float(v) for k, v in wall.groupby(device).sum().items()}}
    return info, table


# ---------------------------------------------------------------- analysis
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
    pt = per_trial(df)
    p_trial, p_note = baseline_trial(pt, study)
    best = best_trial(pt, directions) if len(pt) else None
    tables: dict[str, SeedTable] = {}
    test = df[df.split == "test"] if len(df) else df
    for label, t in ((f"Baseline: the study file's pipeline (trial {p_trial})", p_trial),
                     (f"Best on validation (trial {best})", best)):
        if t is not None and test[test.trial == t].accuracy.notna().any():
            tables[label] = seed_table(test[test.trial == t], methods)
    curves = level_curves(test[test.trial == best]) if best is not None else None
    base_table = next((t for label, t in tables.items() if label.startswith("Baseline")), None)
    pub, pub_note = (published_comparison(base_table.mean, dataset) if base_table is not None
                     else (None, "No completed baseline trial: nothing to put beside the "
                           "paper's published numbers."))
    subsets = {p.name: subset_ablation(df, pt, p.name, method, directions[0])
               for p in params if isinstance(p, SubsetParam)}
    imp, imp_note = importances(study)
    info, stages = budget(df) if len(df) else ({"states": {}, "trials": 0, "spent_s": 0.0,
                                                "saved_s": 0.0, "spent_s_by_device": {}},
                                               pd.DataFrame())
    paired = (paired_differences(df, best, p_trial, method)
              if best is not None and p_trial is not None else None)
    steps = {s: int(df[df.split == s].level_step.dropna().min())
             for s in ("val", "test") if len(df) and df[df.split == s].level_step.notna().any()}
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,
                                                       optuna.trial.TrialState.WAITING))
    return Analysis(
        study_name=study_name,
        objectives=[f"{o['metric']} of {o['method']} ({o['direction']})" for o in objectives],
        directions=directions, method=method, methods=list(methods), per_trial=pt,
        baseline=p_trial, baseline_note=p_note, published=pub, published_note=pub_note,
        protocol=protocol,
        best=best, tables=tables, level_step=steps,
        curves=curves, subsets=subsets, slices=slices(pt, params), importance=imp,
        importance_note=imp_note, surface=surface(pt), weights=fusion_weights(pt),
        budget=info, stages=stages,
        pareto=pareto_front(pt, directions) if len(directions) > 1 and len(pt) else [],
        paired=paired, in_flight=len(running),
        learning=learning_curves(curves_df, best, p_trial), compute=_compute(df, pt, study))


# ---------------------------------------------------------------- draw
def _go() -> Any:
    return go


def _layout(fig: Any, title: str, height: int = 420) -> Any:
    fig.update_layout(title={"text": title, "x": 0.01}, height=height, template="plotly_white",
                      margin={"l": 60, "r": 20, "t": 70, "b": 50},
                      legend={"orientation": "h", "y": -0.18})
    return fig


def fig_levels(curves: pd.DataFrame, title: str) -> Any:
    degs = [d for d in DEGRADATION_NAMES if d in set(curves.degradation)]
    fig = make_subplots(rows=1, cols=len(degs), shared_yaxes=True,
                        subplot_titles=[evaluation.TABLE_COLUMNS[d] for d in degs])
    for i, d in enumerate(degs, start=1):
        part = curves[curves.degradation == d]
        for m in dict.fromkeys(part.model):
            line = part[part.model == m]
            fig.add_trace(_go().Scatter(
                x=line.level, y=line.accuracy, mode="lines+markers", name=m, legendgroup=m,
                showlegend=i == 1, line={"color": COLOR.get(m)}), row=1, col=i)
        fig.update_xaxes(title_text=LEVEL_AXIS.get(d, "level"), row=1, col=i)
    fig.update_yaxes(title_text="test accuracy (%)", row=1, col=1)
    return _layout(fig, title, 430)


def fig_heatmap(table: pd.DataFrame, title: str) -> Any:
    cols = [c for c in COLUMNS if c in table.columns]
    z = table[cols].to_numpy(dtype=float)
    fig = _go().Figure(_go().Heatmap(
        z=z, x=cols, y=[f"{s} (trial {t})" for s, t in zip(table.index, table.trial)],
        colorscale="Viridis", colorbar={"title": "%"},
        text=[[f"{v:.1f}" for v in row] for row in z], texttemplate="%{text}"))
    fig.update_xaxes(title_text="evaluation degradation")
    return _layout(fig, title, 160 + 45 * len(table))


def fig_importance(imp: pd.Series) -> Any:
    imp = imp.sort_values()
    fig = _go().Figure(_go().Bar(x=imp.to_numpy(), y=list(imp.index), orientation="h",
                                 marker_color=PALETTE[0]))
    fig.update_xaxes(title_text="importance (PED-ANOVA, sums to 1)")
    return _layout(fig, "Parameter importance", 140 + 32 * len(imp))


def fig_slices(sl: pd.DataFrame, value_label: str) -> Any:
    names = list(dict.fromkeys(sl.param))
    ncol = min(3, len(names))
    nrow = math.ceil(len(names) / ncol)
    fig = make_subplots(rows=nrow, cols=ncol, subplot_titles=names, shared_yaxes=True,
                        vertical_spacing=0.5 / nrow)
    for i, name in enumerate(names):
        part = sl[sl.param == name]
        r, c = i // ncol + 1, i % ncol + 1
        param_class = KINDS[part.kind.iloc[0]]   # the slices table holds the kind's name
        fig.add_trace(_go().Scatter(
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


def fig_surface(sf: pd.DataFrame, x: str, y: str, value_label: str) -> Any:
    fig = _go().Figure(_go().Scatter(
        x=sf[x], y=sf[y], mode="markers+text", text=[f"{t}" for t in sf.trial],
        textposition="top center", marker={"color": sf.value, "colorscale": "Viridis",
                                           "size": 14, "showscale": True,
                                           "colorbar": {"title": "objective"}},
        hovertext=[f"trial {t}: {v:.4f}" for t, v in zip(sf.trial, sf.value)]))
    fig.update_xaxes(title_text=x, type="log")
    fig.update_yaxes(title_text=y)
    return _layout(fig, f"{x} x {y} (colour: objective, label: trial)", 460)


def fig_weights(w: pd.DataFrame, value_label: str) -> Any:
    items = [c for c in w.columns if c not in ("trial", "value")]
    go = _go()
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
    done = _complete(pt)
    v = done.value_0.astype(float)
    best = v.cummax() if direction == "maximize" else v.cummin()
    go = _go()
    fig = go.Figure([go.Scatter(x=done.trial, y=v, mode="markers", name="trial",
                                marker={"size": 9, "color": PALETTE[0]}),
                     go.Scatter(x=done.trial, y=best, mode="lines", name="best so far",
                                line={"shape": "hv", "color": PALETTE[1]})])
    n = int(pt.trial.max()) + 1 if len(pt) else 1
    fig.update_xaxes(title_text="trial", dtick=max(1, math.ceil(n / 10)))   # whole trials only
    fig.update_yaxes(title_text=value_label)
    return _layout(fig, "Optimization history (completed trials)", 400)


def fig_budget(stages: pd.DataFrame) -> Any:
    go = _go()
    fig = go.Figure([go.Bar(x=list(stages.index), y=stages.build_s / 60, name="built (spent)",
                            marker_color=PALETTE[0]),
                     go.Bar(x=list(stages.index), y=stages.saved_s / 60,
                            name="cache hits (saved)", marker_color=PALETTE[2])])
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="minutes")
    return _layout(fig, "Stage build time: spent vs saved by the cache", 400)


def fig_pareto(pt: pd.DataFrame, front: Sequence[int], labels: Sequence[str]) -> Any:
    done = _complete(pt)
    on = done.trial.isin(front)
    go = _go()
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
    err = paired.half.fillna(0).to_numpy()
    fig = _go().Figure(_go().Bar(
        x=list(paired.index), y=paired["diff"], marker_color=PALETTE[2],
        error_y={"type": "data", "array": err, "visible": bool(paired.half.notna().any())}))
    fig.add_hline(y=0, line_color="#444")
    fig.update_yaxes(title_text="best - baseline (accuracy points)")
    n = int(paired.n.iloc[0])
    what = f"95% t-interval, {n} seeds" if n > 1 else "one seed, no interval"
    return _layout(fig, f"Best - baseline, {method}, test ({what})", 400)


# ---------------------------------------------------------------- render
@dataclass(frozen=True)
class Rendered:
    html: str
    figures: dict[str, Any]   # name -> plotly Figure, in page order
    note: str                 # Markdown summary for optuna-dashboard


def _table_html(t: SeedTable) -> str:
    cells = t.mean.copy().astype(object)
    for i in range(cells.shape[0]):
        for j in range(cells.shape[1]):
            m, h = t.mean.iat[i, j], t.half.iat[i, j]
            cells.iat[i, j] = ("-" if math.isnan(m) else f"{m:.1f}" if math.isnan(h)
                               else f"{m:.1f} ± {h:.1f}")
    return cells.to_html(classes="acc", border=0, escape=True, index_names=False)


def _md_table(frame: pd.DataFrame, digits: int = 1) -> str:
    """A numeric frame as a Markdown table (optuna-dashboard renders Markdown notes)."""
    def cell(v: Any) -> str:
        return "-" if _missing(v) else f"{float(v):.{digits}f}"

    head = "| | " + " | ".join(map(str, frame.columns)) + " |"
    sep = "|---" * (len(frame.columns) + 1) + "|"
    body = ["| " + str(i) + " | " + " | ".join(cell(v) for v in row) + " |"
            for i, row in zip(frame.index, frame.to_numpy(dtype=float, na_value=np.nan))]
    return "\n".join([head, sep, *body])


def render(a: Analysis, where: str = "report.html") -> Rendered:
    """Figures, the HTML page and the dashboard note from an Analysis; `where` is the report's
    path as the note names it."""
    esc = html.escape
    value_label = a.objectives[0]
    figs: dict[str, Any] = {}
    parts: list[str] = []

    def section(title: str) -> None:
        parts.append(f"<h2>{esc(title)}</h2>")

    def note(text: str) -> None:
        parts.append(f'<p class="note">{esc(text)}</p>')

    def figure(name: str, fig: Any) -> None:
        figs[name] = fig
        parts.append(fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{name}",
                                 config={"displaylogo": False, "responsive": True}))

    s = a.budget["states"]
    steps = ", ".join(f"{k}: every {v}th level" if v > 1 else f"{k}: every level"
                      for k, v in a.level_step.items())
    parts.append(
        f"<h1>Study report: {esc(a.study_name)}</h1><p>{a.budget['trials']} trials with "
        f"results ({', '.join(f'{k.lower()} {v}' for k, v in sorted(s.items())) or 'none'}"
        f"{f'; {a.in_flight} in flight' if a.in_flight else ''}). Objective: "
        f"{esc(', '.join(a.objectives))}. Level protocol: {esc(steps or 'no results')}. "
        f"Generated {time.strftime('%Y-%m-%d %H:%M')}.</p>")

    section("1. Paper-style table (test accuracy, %)")
    if a.protocol == "reference":
        parts.append(f"<p><b>{esc(OPTIMISTIC)}</b></p>")
    note(a.baseline_note)
    for label, t in a.tables.items():
        n = len(t.seeds)
        how = (f"mean ± 95% t-interval half-width over {n} seeds {t.seeds}" if n > 1 else
               f"one seed ({t.seeds[0]}): no interval; set study.replicates to get one")
        parts.append(f"<h3>{esc(label)}</h3><p class='cap'>Mean over levels per degradation; "
                     f"Avg = mean of the degradations; {esc(how)}.</p>{_table_html(t)}")
    if not a.tables:
        note("No completed trial with test results yet.")
    parts.append("<h3>The baseline beside the paper's published numbers</h3>")
    note(a.published_note)
    if a.published is not None:
        parts.append(a.published.to_html(classes="acc", border=0, float_format="{:.1f}".format,
                                         na_rep="-"))

    section("2. Accuracy against degradation level")
    if a.curves is not None and len(a.curves):
        figure("levels", fig_levels(a.curves, f"Test accuracy against level, best trial "
                                              f"{a.best} (mean over seeds)"))
    else:
        note("No best trial with test results yet.")

    section("3. Degradation-subset ablation")
    if not a.subsets:
        note("The study does not search a subset of degradations or experts (a `subset` "
             "parameter such as `degradations` or `fusion.experts`).")
    for name, t in a.subsets.items():
        if len(t):
            note(f"{name}: for each subset chosen, the trial best on validation among those "
                 f"that chose it, and its test accuracy (%) of {a.method} per evaluation "
                 "degradation (mean over seeds).")
            figure("subsets" if "subsets" not in figs else f"subsets-{name}", fig_heatmap(
                t, f"{name}: test accuracy of {a.method} (%) per subset"))
        else:
            note(f"{name}: no completed trial yet.")

    section("4. Effects of the searched parameters")
    note(a.importance_note)
    if a.importance is not None:
        figure("importance", fig_importance(a.importance))
    if len(a.slices):
        figure("slices", fig_slices(a.slices, value_label))
    if a.surface is None:
        note("The study does not search both distill.temperature and distill.alpha.")
    elif len(a.surface):
        figure("surface", fig_surface(a.surface, "distill.temperature", "distill.alpha",
                                      value_label))
    else:
        note("No completed trial has both distill.temperature and distill.alpha active.")
    if a.weights is None:
        note("The study does not search fusion.weights (a simplex parameter).")
    elif len(a.weights):
        figure("fusion_weights", fig_weights(a.weights, value_label))
    else:
        note("No completed trial used fusion.weights.")

    section("5. Optimization history and compute budget")
    if len(_complete(a.per_trial)):
        figure("history", fig_history(a.per_trial, a.directions[0], value_label))
    b = a.budget
    by_dev = ", ".join(f"{k} {v / 3600:.3f} h" for k, v in b["spent_s_by_device"].items())
    parts.append(
        f"<p>Trials: {', '.join(f'{k.lower()} {v}' for k, v in sorted(s.items())) or 'none'}. "
        f"Compute spent: <b>{b['spent_s'] / 3600:.3f} device-hours</b> ({esc(by_dev or '-')}; "
        f"sum of trial wall times, one device per trial). Saved by the stage cache: "
        f"<b>{b['saved_s'] / 3600:.3f} h</b> (recorded build time of every stage a trial "
        "found cached; first replicate only).</p>")
    parts.append(_projection_html(a))
    if len(a.stages):
        st = a.stages.assign(build_min=a.stages.build_s / 60, saved_min=a.stages.saved_s / 60
                             ).drop(columns=["build_s", "saved_s"])
        parts.append(st.to_html(classes="acc", border=0, float_format="{:.2f}".format,
                                index_names=False))
        figure("budget", fig_budget(a.stages))
    if len(a.directions) > 1:
        if a.pareto:
            figure("pareto", fig_pareto(a.per_trial, a.pareto, a.objectives))
            note(f"Pareto front: trials {a.pareto}.")
        else:
            note("No completed trial yet, so no Pareto front.")
    else:
        note("Single objective: no Pareto front.")

    section("6. Paired differences against the baseline")
    if a.paired is None:
        note("Needs both a baseline trial and a best trial. " + a.baseline_note)
    elif a.best == a.baseline:
        note(f"The best configuration is the baseline (trial {a.best}): no difference.")
    elif not len(a.paired):
        note("The best and baseline trials share no seed.")
    else:
        n = int(a.paired.n.iloc[0])
        note(f"Trial {a.best} minus trial {a.baseline}, {a.method}, test accuracy points; " + (
            f"mean and 95% t-interval over {n} paired seeds." if n > 1 else
            "one seed: the difference alone, no interval is possible (set study.replicates)."))
        shown = a.paired[["best", "baseline", "diff", "lo", "hi", "n"]]
        parts.append(shown.to_html(classes="acc", border=0, float_format="{:.2f}".format,
                                   na_rep="-"))
        figure("paired", fig_paired(a.paired, a.method))

    _render_learning(a, section, note, figure)
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>study report: {esc(a.study_name)}</title><style>{_CSS}</style>"
        f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script></head>"
        f"<body>{''.join(parts)}</body></html>")
    return Rendered(page, figs, _note(a, where))


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;
color:#222}h2{border-bottom:1px solid #ccc;margin-top:2em}p.note{color:#555;font-style:italic}
p.cap{color:#555;font-size:.9em}table.acc{border-collapse:collapse;margin:.5em 0 1em}
table.acc td,table.acc th{padding:.25em .7em;text-align:right;border-bottom:1px solid #eee}
table.acc th{background:#f5f5f5}"""


def _note(a: Analysis, where: str) -> str:
    """The dashboard's study note: the headline numbers, in Markdown."""
    s = a.budget["states"]
    lines = [f"## study report ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"Trials: {', '.join(f'{k.lower()} {v}' for k, v in sorted(s.items()))}. "
             f"Compute spent {a.budget['spent_s'] / 3600:.3f} device-hours, saved by the "
             f"stage cache {a.budget['saved_s'] / 3600:.3f} h.", "", a.baseline_note, ""]
    if a.best is not None:
        row = a.per_trial[a.per_trial.trial == a.best].iloc[0]
        params = {c.removeprefix("param_"): row[c] for c in a.per_trial.columns
                  if c.startswith("param_") and not _missing(row[c])}
        lines += [f"Best on validation: trial {a.best}, {a.objectives[0]} = "
                  f"{float(row.value_0):.4f}; " + ", ".join(f"`{k}` = {_fmt(v)}"
                                                            for k, v in params.items()), ""]
    for label, t in a.tables.items():
        lines += [f"### {label}: test accuracy (%)", "", _md_table(t.mean), ""]
    if a.paired is not None and len(a.paired) and a.best != a.baseline:
        shown = a.paired[["diff", "lo", "hi", "n"]]
        lines += [f"### Best minus baseline ({a.method}, test, points)", "",
                  _md_table(shown, digits=2), ""]
    lines.append("The figures on this page titled like the report's were pushed by `study "
                 f"report`; the full report is {where}.")
    return "\n".join(lines)


# ---------------------------------------------------------------- outputs
def push_to_dashboard(study: Any, rendered: Rendered) -> list[str]:
    """The figures optuna-dashboard does not draw itself, and the summary note, into the
    study's system attributes (where the dashboard's study page reads them)."""
    ids = []
    for name, fig in rendered.figures.items():
        if name.split("-")[0] in PUSHED:
            gid = f"report-{name}".replace(".", "_")
            optuna_dashboard.save_plotly_graph_object(study, fig, graph_object_id=gid)
            ids.append(gid)
    optuna_dashboard.save_note(study, rendered.note)
    return ids


def export_png(figures: Mapping[str, Any], out_dir: Path, log: Callable[[str], None]) -> int:
    """PNG files via kaleido, which drives a system Chromium; a note and no files when either
    is missing (kaleido is not a dependency: `pip install kaleido` adds it)."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        log("--png: kaleido is not installed (pip install kaleido); no PNG files written")
        return 0
    browser = os.environ.get("BROWSER_PATH") or shutil.which("chromium") or (
        CHROMIUM if Path(CHROMIUM).exists() else None)
    if browser is None:
        log("--png: no chromium found (apt-get install chromium); no PNG files written")
        return 0
    os.environ.setdefault("BROWSER_PATH", browser)   # where kaleido >= 1 looks for a browser
    out_dir.mkdir(parents=True, exist_ok=True)
    # One browser for all figures: write_image per figure starts one each (~6 s apiece here).
    pio.write_images(list(figures.values()), [out_dir / f"{n}.png" for n in figures], width=1200)
    log(f"--png: {len(figures)} figures in {out_dir}")
    return len(figures)


def build_report(study_file: str, overrides: Sequence[str] = (),
                 results_dir: str | Path = "results", *, png: bool = False, push: bool = True,
                 log: Callable[[str], None] = print) -> Path:
    """Write results/<study>/report.html from the study's Parquet results and storage, push
    the main figures and a summary note to optuna-dashboard; returns the HTML path."""
    t0 = time.perf_counter()
    ld = studyfile.load(study_file, list(overrides))
    sf = ld.sf
    st, _ = storage.open_existing(sf, results_dir)
    sdir = storage.study_dir(results_dir, sf.study.name)
    df = results.load(sdir)
    a = analyse(df, st, ld.space.params,
                objectives=[o.model_dump() for o in sf.study.objectives],
                methods=sf.pipeline.methods, study_name=sf.study.name,
                dataset=sf.pipeline.data.dataset, protocol=sf.pipeline.protocol,
                curves_df=results.load_curves(sdir))
    out = sdir / "report.html"
    rendered = render(a, str(out))
    sdir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out, rendered.html)   # a browser open on the old report never sees half
    log(f"report: {out} ({len(rendered.figures)} figures, {out.stat().st_size / 1e6:.1f} MB)")
    log(a.published_note)
    if a.published is not None:
        log(a.published.round(1).to_string())
    if push:
        ids = push_to_dashboard(st, rendered)
        log(f"dashboard: {len(ids)} figures and a note pushed to study '{sf.study.name}' "
            f"(`study dashboard --space {study_file}` shows them)")
    if png:
        export_png(rendered.figures, sdir / "report_png", log)
    log(f"report took {time.perf_counter() - t0:.1f}s")
    return out


# ---------------------------------------------------------------- learning curves and compute
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


def _render_learning(a: Analysis, section: Callable[[str], None], note: Callable[[str], None],
                     figure: Callable[[str, Any], None]) -> None:
    section("7. Learning curves")
    if a.learning is None or not len(a.learning):
        note("No learning curves yet (results/<study>/curves/, written by each trial's "
             "worker).")
        return
    note("Per epoch, from results/<study>/curves/ (pandas.read_parquet of that folder). "
         "Stages a trial found in the cache show the history recorded when they were built, "
         "so base and experts coincide for trials that share them. First seed of each trial.")
    figure("learning", fig_learning(a.learning))


def _compute(df: pd.DataFrame, pt: pd.DataFrame, study: Any) -> dict[str, Any]:
    target = study.user_attrs.get("n_trials") if hasattr(study, "user_attrs") else None
    return results.compute_summary(df, (int(target) - len(pt)) if target else 0)


def _projection_html(a: Analysis) -> str:
    c = a.compute
    if not c or c.get("mean_trial_s") is None or not c.get("remaining"):
        return ""
    return (f"<p>Projected for the {c['remaining']} trials still to run (the study's "
            f"target): {c['remaining']} x {c['mean_trial_s'] / 60:.1f} min (mean trial wall "
            f"time, shared stages built once left out) = <b>{c['projected_s'] / 3600:.3f} "
            "device-hours</b>.</p>")
