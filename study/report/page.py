"""The HTML page of the report: one function per numbered section, each writing its headings,
notes, tables and figures onto a `Page` from the computed `Analysis`, in the order of SECTIONS.

The page is one self-contained file: plotly.js (about 4.8 MB) is embedded once in its head, and
the few lines that sort the table of trials are the page's own (_SORT_JS), so it opens offline,
on a login node without internet, or attached to an e-mail.
"""

from __future__ import annotations

import html
import math
import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
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
from study.report.learning import MAX_PRUNED
from study.report.note import claim_sentence, dashboard_note, format_value, state_counts
from study.report.trials import completed, is_missing

if TYPE_CHECKING:
    from study.confirm import Confirmation

__all__ = ["SECTIONS", "Page", "Rendered", "render"]

_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;
color:#222}h2{border-bottom:1px solid #ccc;margin-top:2em}p.note{color:#555;font-style:italic}
p.cap{color:#555;font-size:.9em}table.acc{border-collapse:collapse;margin:.5em 0 1em}
table.acc td,table.acc th{padding:.25em .7em;text-align:right;border-bottom:1px solid #eee}
table.acc th{background:#f5f5f5}table.sortable th{cursor:pointer;user-select:none;text-align:left}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
table.acc td.text{text-align:left}table.sortable td{white-space:nowrap}
div.scroll{max-height:36em;overflow:auto}
div.headline{background:#f6f8fa;border-left:4px solid #636EFA;padding:.3em 1em;margin:1em 0}"""

# Clicking a header of a table.sortable sorts its rows by that column, again reverses it.
# A cell's data-v (a number) sorts numerically, missing values last; other cells by their text.
_SORT_JS = """document.querySelectorAll("table.sortable th").forEach((th, col) => {
th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], up = th.getAttribute("aria-sort") !== "ascending";
  th.parentNode.querySelectorAll("th").forEach(h => h.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", up ? "ascending" : "descending");
  const key = r => { const c = r.cells[th.cellIndex], v = c.dataset.v;
    return v === undefined ? c.textContent : v === "" ? null : parseFloat(v); };
  [...body.rows].sort((a, b) => { const x = key(a), y = key(b);
    if (x === null || y === null) return (x === null) - (y === null);
    const d = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(y);
    return up ? d : -d; }).forEach(r => body.appendChild(r));
});});"""


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
    sections: int = 0

    def add(self, piece: str) -> None:
        self.parts.append(piece)

    def section(self, title: str, anchor: str = "") -> None:
        """The next numbered section (numbered as written: a section a study lacks leaves no
        gap); `anchor` is its id, for links from the headline."""
        self.sections += 1
        where = f' id="{anchor}"' if anchor else ""
        self.add(f"<h2{where}>{self.sections}. {html.escape(title)}</h2>")

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
                f"<body>{''.join(self.parts)}<script>{_SORT_JS}</script></body></html>")


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
    in_flight += f"; {a.reruns} of them confirmation re-runs" if a.reruns else ""
    page.add(
        f"<h1>Study report: {html.escape(a.study_name)}</h1><p>{a.budget['trials']} trials "
        f"with results ({state_counts(a.budget['states']) or 'none'}{in_flight}). Objective: "
        f"{html.escape(', '.join(a.objectives))}. Level protocol: "
        f"{html.escape(steps or 'no results')}. Generated {time.strftime('%Y-%m-%d %H:%M')}.</p>")
    _headline(page, a)


def _headline(page: Page, a: Analysis) -> None:
    """The best trial against the baseline with what the noise allows one to say
    (conclusions.compare), and the confirmation's verdict where `study confirm` ran."""
    if a.verdicts:
        lines = [f"<li>{html.escape(v.sentence())}</li>" for v in a.verdicts]
        head = f"Best trial {a.best} against the baseline (trial {a.baseline}):"
    elif a.best is not None and a.best == a.baseline:
        lines, head = [], (f"The baseline (trial {a.best}) is the best trial: the search found "
                           "nothing better on validation.")
    else:
        lines, head = [], "No comparison of the best trial with the baseline. " + a.baseline_note
    c = a.confirmation
    if c is not None:
        lines.append(f"<li><a href='#confirmation'>Confirmation over new seeds</a>: "
                     f"{html.escape(claim_sentence(c))}</li>")
    page.add(f"<div class='headline'><p><b>{html.escape(head)}</b></p>"
             + (f"<ul>{''.join(lines)}</ul>" if lines else "") + "</div>")


def _paper_tables(page: Page, a: Analysis) -> None:
    page.section("Paper-style table (test accuracy, %)")
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
    page.section("Accuracy against degradation level")
    if a.curves is not None and len(a.curves):
        n = int(a.curves.n_seeds.max())
        seeds = f"mean over {n} seeds" if n > 1 else "one seed"
        page.figure("levels", fig_levels(a.curves, f"Test accuracy against level, best trial "
                                                   f"{a.best} ({seeds})"))
    else:
        page.note("No best trial with test results yet.")


def _subset_ablation(page: Page, a: Analysis) -> None:
    page.section("Degradation-subset ablation")
    if not a.subsets:
        page.note("The study does not search a subset of degradations or experts (a `subset` "
                  "parameter such as `degradations` or `fusion.experts`).")
    for name, t in a.subsets.items():
        if not len(t):
            page.note(f"{name}: no completed trial yet.")
            continue
        page.note(f"{name}: for each subset chosen, the trial best on validation among those "
                  f"that chose it, and its test accuracy (%) of {a.method} per evaluation "
                  f"degradation ({_seeds_words(a)}).")
        # the first subset parameter's figure is "subsets", the one optuna-dashboard gets
        figure_name = "subsets" if "subsets" not in page.figures else f"subsets-{name}"
        page.figure(figure_name, fig_heatmap(
            t, f"{name}: test accuracy of {a.method} (%) per subset"))


def _parameter_effects(page: Page, a: Analysis) -> None:
    page.section("Effects of the searched parameters")
    value_label = a.objective_names[0]
    page.note(a.importance_note)
    for s in a.importance:
        if s.note:
            page.note(f"{s.title}: {s.note}.")
    if a.importance:
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
    page.section("Optimization history and compute budget")
    if len(completed(a.per_trial)):
        page.figure("history", fig_history(a.per_trial, a.directions[0], a.objective_names[0]))
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


def _pareto_front(page: Page, a: Analysis) -> None:
    if len(a.directions) < 2:
        return                      # one objective: the best trial says it all
    page.section("Pareto front and trade-offs")
    if not a.pareto:
        page.note("No completed trial yet, so no Pareto front.")
        return
    page.note(f"{len(a.pareto)} trial(s) on the Pareto front of "
              f"{len(completed(a.per_trial))} completed: no other trial is at least as good on "
              f"every objective ({', '.join(a.objectives)}) and better on one. Accuracies in "
              "%, the cost in device hours (the build time of every stage the network comes "
              "from). Each front trial against the baseline: its difference per objective "
              "(positive = higher) and what it trades. One seed per trial: a difference of a "
              "point or two is within the noise of one accuracy (the paired section and "
              "`study confirm` say how much).")
    page.figure("pareto", fig_pareto(a.per_trial, a.pareto, a.objective_names, a.metrics,
                                     a.baseline))
    page.add(a.tradeoffs.to_html(classes="acc", border=0, index=False, na_rep="-",
                                 float_format="{:.4g}".format))


def _paired_differences(page: Page, a: Analysis) -> None:
    page.section("Paired differences against the baseline")
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
    page.section("Learning curves")
    if a.learning is None or a.scales is None or not len(a.learning):
        page.note("No learning curves yet (results/<study>/curves/, written by each trial's "
                  "worker).")
        return
    page.note("Per epoch, from results/<study>/curves/ (pandas.read_parquet of that folder). "
              "Stages a trial found in the cache show the history recorded when they were "
              "built, so base and experts coincide for trials that share them. First seed of "
              f"each trial; pruned trials in grey (the latest {MAX_PRUNED} at most), up to the "
              "epoch where they stopped. Every "
              "accuracy panel shares one y range, every loss panel another.")
    page.figure("learning", fig_learning(a.learning, a.scales))


def _confirmation(page: Page, a: Analysis) -> None:
    c = a.confirmation
    if c is None:
        return
    page.section("Confirmation over new seeds (study confirm)", anchor="confirmation")
    page.note(f"`study confirm` re-ran the baseline and the search's top trials by {c.metric} "
              f"with new seeds {c.seeds}, each as a trial of its own (left out of the search's "
              "analysis in the other sections). The configuration with the best mean "
              f"{c.metric} over them is chosen, test playing no part in the choice; on test it "
              "is then compared with the baseline, paired seed by seed.")
    page.add(_confirmation_html(c))
    if c.chosen is None or c.verdict is None:
        page.note(f"Verdict: {claim_sentence(c)}; `study confirm` again resumes it.")
        return
    page.add(f"<p>Chosen on validation: <b>trial {c.chosen}</b>. "
             f"{html.escape(c.verdict.sentence())}</p>"
             f"<p><b>Verdict: {html.escape(claim_sentence(c))}.</b></p>")


def _all_trials(page: Page, a: Analysis) -> None:
    page.section("All trials")
    if a.listing is None or not len(a.listing):
        page.note("The study has no trial yet.")
        return
    page.note("Every trial of the study, the confirmation's re-runs included; click a header "
              "to sort by it, again to reverse. Parameters as the space gives them (blank: "
              "inactive); duration: the worker's wall time (else ask to tell); reason: the "
              "failure's first line.")
    page.add(f"<div class='scroll'>{_sortable_html(a.listing)}</div>")


SECTIONS: tuple[Callable[[Page, Analysis], None], ...] = (
    _header, _paper_tables, _confirmation, _level_curves, _subset_ablation,
    _parameter_effects, _pareto_front, _history_and_budget, _all_trials, _paired_differences,
    _learning_curves)


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


def _seeds_words(a: Analysis) -> str:
    n = int(a.curves.n_seeds.max()) if a.curves is not None and len(a.curves) else 1
    return f"mean over {n} seeds" if n > 1 else "one seed"


def _confirmation_html(c: Confirmation) -> str:
    """One row per configuration: its seeds, and mean ± 95% half-width on val and on test."""
    def cell(mean: float, half: float) -> str:
        return ("-" if math.isnan(mean) else f"{mean:.2f}" if math.isnan(half)
                else f"{mean:.2f} ± {half:.2f}")

    rows = []
    for r in c.configs:
        name = f"baseline (trial {r.trial})" if r.role == "baseline" else f"trial {r.trial}"
        chosen = " <b>(chosen)</b>" if r.trial == c.chosen else ""
        rows.append(f"<tr><td class='text'>{html.escape(name)}{chosen}</td><td>{len(r.test)}"
                    f"</td><td>{cell(*r.interval('val'))}</td><td>{cell(*r.interval('test'))}"
                    "</td></tr>")
    return (f"<table class='acc'><thead><tr><th>configuration</th><th>seeds</th>"
            f"<th>{html.escape(c.metric)} (picks)</th><th>{html.escape(c.test_metric)} "
            f"(reports)</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
            f"<p class='cap'>{html.escape(c.method)}, points: mean ± 95% t-interval "
            "half-width over the new seeds.</p>")


def _sortable_html(frame: pd.DataFrame) -> str:
    """A table whose headers sort it (_SORT_JS): numbers carry their value in data-v (missing:
    empty, sorted last), other values their text; floats to 4 significant digits."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = []
        for v in row:
            if is_missing(v):
                cells.append("<td data-v=''></td>")
            elif isinstance(v, numbers.Real) and not isinstance(v, bool):
                text = str(int(v)) if isinstance(v, numbers.Integral) else f"{float(v):.4g}"
                cells.append(f"<td data-v='{float(v)!r}'>{text}</td>")
            else:
                cells.append(f"<td class='text'>{html.escape(format_value(v))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (f"<table class='acc sortable' id='trials'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


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
