"""The HTML page of the report: one function per numbered section, each writing its headings,
notes, tables and figures onto a `Page` from the computed `Analysis`, in the order of SECTIONS.

The page is one self-contained file: plotly.js (about 4.8 MB) is embedded once in its head, so
it opens offline, on a login node without internet, or attached to an e-mail.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import plotly.offline

from study.published import OPTIMISTIC
from study.report.accuracy import SeedTable
from study.report.analysis import Analysis
from study.report.figures import (
    fig_budget,
    fig_heatmap,
    fig_history,
    fig_importance,
    fig_learning,
    fig_levels,
    fig_paired,
    fig_pareto,
    fig_slices,
    fig_surface,
    fig_weights,
)
from study.report.note import dashboard_note, state_counts
from study.report.trials import completed

__all__ = ["SECTIONS", "Page", "Rendered", "render"]

_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;
color:#222}h2{border-bottom:1px solid #ccc;margin-top:2em}p.note{color:#555;font-style:italic}
p.cap{color:#555;font-size:.9em}table.acc{border-collapse:collapse;margin:.5em 0 1em}
table.acc td,table.acc th{padding:.25em .7em;text-align:right;border-bottom:1px solid #eee}
table.acc th{background:#f5f5f5}"""


@dataclass(frozen=True)
class Rendered:
    html: str
    figures: dict[str, Any]   # name -> plotly Figure, in page order
    note: str                 # Markdown summary for optuna-dashboard


@dataclass
class Page:
    """The page being written: its HTML pieces in order, and its figures by name (the name is
    the figure's div id, `fig-<name>`, and its file name with --png)."""

    parts: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def add(self, piece: str) -> None:
        self.parts.append(piece)

    def section(self, title: str) -> None:
        self.add(f"<h2>{html.escape(title)}</h2>")

    def note(self, text: str) -> None:
        self.add(f'<p class="note">{html.escape(text)}</p>')

    def figure(self, name: str, fig: Any) -> None:
        self.figures[name] = fig
        self.add(fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{name}",
                             config={"displaylogo": False, "responsive": True}))

    def document(self, title: str) -> str:
        return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
                f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
                f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script></head>"
                f"<body>{''.join(self.parts)}</body></html>")


def render(a: Analysis, where: str = "report.html") -> Rendered:
    """Figures, the HTML page and the dashboard note from an Analysis; `where` is the report's
    path as the note names it."""
    page = Page()
    for write in SECTIONS:
        write(page, a)
    return Rendered(page.document(f"study report: {a.study_name}"), page.figures,
                    dashboard_note(a, where))


# ---------------------------------------------------------------- the sections, in page order
def _header(page: Page, a: Analysis) -> None:
    steps = ", ".join(f"{k}: every {v}th level" if v > 1 else f"{k}: every level"
                      for k, v in a.level_step.items())
    in_flight = f"; {a.in_flight} in flight" if a.in_flight else ""
    page.add(
        f"<h1>Study report: {html.escape(a.study_name)}</h1><p>{a.budget['trials']} trials "
        f"with results ({state_counts(a.budget['states']) or 'none'}{in_flight}). Objective: "
        f"{html.escape(', '.join(a.objectives))}. Level protocol: "
        f"{html.escape(steps or 'no results')}. Generated {time.strftime('%Y-%m-%d %H:%M')}.</p>")


def _paper_tables(page: Page, a: Analysis) -> None:
    page.section("1. Paper-style table (test accuracy, %)")
    if a.protocol == "reference":
        page.add(f"<p><b>{html.escape(OPTIMISTIC)}</b></p>")
    page.note(a.baseline_note)
    for heading, t in a.tables.items():
        n = len(t.seeds)
        how = (f"mean ± 95% t-interval half-width over {n} seeds {t.seeds}" if n > 1 else
               f"one seed ({t.seeds[0]}): no interval; set study.replicates to get one")
        page.add(f"<h3>{html.escape(heading)}</h3><p class='cap'>Mean over levels per "
                 f"degradation; Avg = mean of the degradations; {html.escape(how)}.</p>"
                 f"{_seed_table_html(t)}")
    if not a.tables:
        page.note("No completed trial with test results yet.")
    page.add("<h3>The baseline beside the paper's published numbers</h3>")
    page.note(a.published_note)
    if a.published is not None:
        page.add(a.published.to_html(classes="acc", border=0, float_format="{:.1f}".format,
                                     na_rep="-"))


def _level_curves(page: Page, a: Analysis) -> None:
    page.section("2. Accuracy against degradation level")
    if a.curves is not None and len(a.curves):
        page.figure("levels", fig_levels(a.curves, f"Test accuracy against level, best trial "
                                                   f"{a.best} (mean over seeds)"))
    else:
        page.note("No best trial with test results yet.")


def _subset_ablation(page: Page, a: Analysis) -> None:
    page.section("3. Degradation-subset ablation")
    if not a.subsets:
        page.note("The study does not search a subset of degradations or experts (a `subset` "
                  "parameter such as `degradations` or `fusion.experts`).")
    for name, t in a.subsets.items():
        if not len(t):
            page.note(f"{name}: no completed trial yet.")
            continue
        page.note(f"{name}: for each subset chosen, the trial best on validation among those "
                  f"that chose it, and its test accuracy (%) of {a.method} per evaluation "
                  "degradation (mean over seeds).")
        # the first subset parameter's figure is "subsets", the one optuna-dashboard gets
        figure_name = "subsets" if "subsets" not in page.figures else f"subsets-{name}"
        page.figure(figure_name, fig_heatmap(
            t, f"{name}: test accuracy of {a.method} (%) per subset"))


def _parameter_effects(page: Page, a: Analysis) -> None:
    page.section("4. Effects of the searched parameters")
    value_label = a.objectives[0]
    page.note(a.importance_note)
    if a.importance is not None:
        page.figure("importance", fig_importance(a.importance))
    if len(a.slices):
        page.figure("slices", fig_slices(a.slices, value_label))
    if a.surface is None:
        page.note("The study does not search both distill.temperature and distill.alpha.")
    elif len(a.surface):
        page.figure("surface", fig_surface(a.surface, "distill.temperature", "distill.alpha",
                                           value_label))
    else:
        page.note("No completed trial has both distill.temperature and distill.alpha active.")
    if a.weights is None:
        page.note("The study does not search fusion.weights (a simplex parameter).")
    elif len(a.weights):
        page.figure("fusion_weights", fig_weights(a.weights, value_label))
    else:
        page.note("No completed trial used fusion.weights.")


def _history_and_budget(page: Page, a: Analysis) -> None:
    page.section("5. Optimization history and compute budget")
    if len(completed(a.per_trial)):
        page.figure("history", fig_history(a.per_trial, a.directions[0], a.objectives[0]))
    b = a.budget
    by_device = ", ".join(f"{k} {v / 3600:.3f} h" for k, v in b["spent_s_by_device"].items())
    page.add(
        f"<p>Trials: {state_counts(b['states']) or 'none'}. Compute spent: "
        f"<b>{b['spent_s'] / 3600:.3f} device-hours</b> ({html.escape(by_device or '-')}; "
        f"sum of trial wall times, one device per trial). Saved by the stage cache: "
        f"<b>{b['saved_s'] / 3600:.3f} h</b> (recorded build time of every stage a trial "
        "found cached; first replicate only).</p>")
    page.add(_projection_html(a.compute))
    if len(a.stages):
        minutes = a.stages.assign(build_min=a.stages.build_s / 60,
                                  saved_min=a.stages.saved_s / 60
                                  ).drop(columns=["build_s", "saved_s"])
        page.add(minutes.to_html(classes="acc", border=0, float_format="{:.2f}".format,
                                 index_names=False))
        page.figure("budget", fig_budget(a.stages))
    _pareto_front(page, a)


def _pareto_front(page: Page, a: Analysis) -> None:
    if len(a.directions) < 2:
        page.note("Single objective: no Pareto front.")
    elif a.pareto:
        page.figure("pareto", fig_pareto(a.per_trial, a.pareto, a.objectives))
        page.note(f"Pareto front: trials {a.pareto}.")
    else:
        page.note("No completed trial yet, so no Pareto front.")


def _paired_differences(page: Page, a: Analysis) -> None:
    page.section("6. Paired differences against the baseline")
    if a.paired is None:
        page.note("Needs both a baseline trial and a best trial. " + a.baseline_note)
    elif a.best == a.baseline:
        page.note(f"The best configuration is the baseline (trial {a.best}): no difference.")
    elif not len(a.paired):
        page.note("The best and baseline trials share no seed.")
    else:
        n = int(a.paired.n.iloc[0])
        page.note(f"Trial {a.best} minus trial {a.baseline}, {a.method}, test accuracy points; "
                  + (f"mean and 95% t-interval over {n} paired seeds." if n > 1 else
                     "one seed: the difference alone, no interval is possible (set "
                     "study.replicates)."))
        shown = a.paired[["best", "baseline", "diff", "lo", "hi", "n"]]
        page.add(shown.to_html(classes="acc", border=0, float_format="{:.2f}".format,
                               na_rep="-"))
        page.figure("paired", fig_paired(a.paired, a.method))


def _learning_curves(page: Page, a: Analysis) -> None:
    page.section("7. Learning curves")
    if a.learning is None or not len(a.learning):
        page.note("No learning curves yet (results/<study>/curves/, written by each trial's "
                  "worker).")
        return
    page.note("Per epoch, from results/<study>/curves/ (pandas.read_parquet of that folder). "
              "Stages a trial found in the cache show the history recorded when they were "
              "built, so base and experts coincide for trials that share them. First seed of "
              "each trial.")
    page.figure("learning", fig_learning(a.learning))


SECTIONS: tuple[Callable[[Page, Analysis], None], ...] = (
    _header, _paper_tables, _level_curves, _subset_ablation, _parameter_effects,
    _history_and_budget, _paired_differences, _learning_curves)


# ---------------------------------------------------------------- pieces of the sections
def _seed_table_html(t: SeedTable) -> str:
    """Each cell as 'mean ± half-width' (one decimal), the mean alone with one seed."""
    cells = t.mean.copy().astype(object)
    for i in range(cells.shape[0]):
        for j in range(cells.shape[1]):
            m, h = t.mean.iat[i, j], t.half.iat[i, j]
            cells.iat[i, j] = ("-" if math.isnan(m) else f"{m:.1f}" if math.isnan(h)
                               else f"{m:.1f} ± {h:.1f}")
    return cells.to_html(classes="acc", border=0, escape=True, index_names=False)


def _projection_html(compute: dict[str, Any] | None) -> str:
    """The device-hours the trials still to run will take; nothing without a target or a
    timed trial."""
    c = compute
    if not c or c.get("mean_trial_s") is None or not c.get("remaining"):
        return ""
    return (f"<p>Projected for the {c['remaining']} trials still to run (the study's "
            f"target): {c['remaining']} x {c['mean_trial_s'] / 60:.1f} min (mean trial wall "
            f"time, shared stages built once left out) = <b>{c['projected_s'] / 3600:.3f} "
            "device-hours</b>.</p>")
