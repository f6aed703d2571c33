"""The HTML page of `study compare`: the computed Comparison (study/compare.py) drawn on the
report's Page (self-contained: plotly.js embedded once, opens offline), one function per
numbered section, in the order of SECTIONS."""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from typing import Any

from study.compare import Comparison, Side
from study.report.compare_figures import fig_shared
from study.report.note import format_value, state_counts
from study.report.page import Page

__all__ = ["SECTIONS", "render_comparison"]


def render_comparison(c: Comparison) -> tuple[str, dict[str, Any]]:
    """The page's HTML and its figures by name (in page order)."""
    page = Page()
    for write in SECTIONS:
        write(page, c)
    return page.document(f"study compare: {', '.join(c.names)}"), page.figures


def value_label(c: Comparison) -> str:
    """The y axis of the shared-parameter figures: the objective when every study has the
    same, else each point's own study's (short: a long axis title runs into the figure's)."""
    if comparable(c):
        method, metric, _ = c.sides[0].objective
        return f"{method} {metric}"
    return "each study's own objective"


def comparable(c: Comparison) -> bool:
    return len({s.objective for s in c.sides}) == 1


# ---------------------------------------------------------------- the sections, in page order
def _header(page: Page, c: Comparison) -> None:
    files = ", ".join(f"{s.name} ({s.source})" for s in c.sides)
    page.add(f"<h1>Study comparison: {html.escape(', '.join(c.names))}</h1><p>"
             f"{len(c.sides)} studies: {html.escape(files)}. Each study's best trial is chosen "
             "on validation by its first objective, as its own report chooses it; the "
             "re-runs of study confirm are left out. Generated "
             f"{time.strftime('%Y-%m-%d %H:%M')}.</p>")
    if c.notes:
        page.add("<div class='headline' id='not-comparable'>" + "".join(
            f"<p><b>{html.escape(n)}</b></p>" for n in c.notes) + "</div>")


def _best_against_baseline(page: Page, c: Comparison) -> None:
    page.section("Best against baseline, study by study", anchor="studies")
    page.note("Values as each study records its first objective (a fraction); best - baseline "
              "on the same scale. What the noise allows is the report's headline: a paired "
              "interval over the replicate seeds, or with one seed the binomial noise band of "
              "a finite evaluation, on the objective's metric and on test.")
    head = ["study", "objective", "trials", "best trial", "best", "baseline trial", "baseline",
            "best - baseline", "what the noise allows", "device-hours"]
    rows = "".join(_study_row(s) for s in c.sides)
    page.add("<table class='acc' id='studies-table'><thead><tr>"
             + "".join(f"<th>{html.escape(h)}</th>" for h in head)
             + f"</tr></thead><tbody>{rows}</tbody></table>")


def _study_row(s: Side) -> str:
    trials = state_counts(s.states) or "none"
    if s.reruns:
        trials += f" (+{s.reruns} confirmation re-runs)"
    cells = [s.name, s.objective_text, trials, _trial(s.best), _number(s.best_value),
             _trial(s.baseline), _number(s.baseline_value), _number(s.difference, sign=True),
             _noise(s),
             # 3 significant digits: a toy study spends 1e-3 h, a real one hundreds
             "-" if s.compute_h is None else f"{s.compute_h:.3g}"]
    text = {0, 1, 2, 8}   # columns of words, left aligned
    return "<tr data-study='" + html.escape(s.name) + "'>" + "".join(
        f"<td{' class=text' if i in text else ''}>{html.escape(v)}</td>"
        for i, v in enumerate(cells)) + "</tr>"


def _noise(s: Side) -> str:
    if s.verdicts:
        return " ".join(v.sentence() for v in s.verdicts)
    if s.best is not None and s.best == s.baseline:
        return (f"The baseline (trial {s.best}) is the best trial: the search found nothing "
                "better on validation.")
    if s.baseline is None:
        return s.baseline_note
    return "No best trial with evaluation rows to compare yet."


def _shared_parameters(page: Page, c: Comparison) -> None:
    page.section("Shared parameters", anchor="shared")
    if not c.shared:
        each = "; ".join(f"{s.name}: {', '.join(s.params) or 'nothing'}" for s in c.sides)
        page.note("No parameter (by config path) is searched in two or more of these studies. "
                  f"Searched: {each}.")
        return
    page.note("The parameters searched, by config path, in two or more of the studies: each "
              "completed trial's first objective against the parameter where it was active, "
              "one colour per study on the same axes, each study's best trial a star; and what "
              "each study searched and chose.")
    label = value_label(c)
    sides = {s.name: s for s in c.sides}
    for param, names in c.shared.items():
        page.add(f"<h3 id='shared-{html.escape(param)}'>{html.escape(param)}</h3>")
        page.add(_shared_table(param, [sides[n] for n in names]))
        points = {n: sides[n].points[sides[n].points.param == param] for n in names}
        if not any(len(p) for p in points.values()):
            page.note(f"{param}: no completed trial with it active yet.")
            continue
        best = {n: _best_value(sides[n], param) for n in names}
        kinds = {n: type(sides[n].params[param]) for n in names}
        page.figure(f"shared-{param.replace('.', '_')}",
                    fig_shared(points, best, kinds, param, label,
                               comparable=comparable(c)))


def _best_value(s: Side, param: str) -> tuple[int, Any] | None:
    """The study's best trial and its value of `param`; None without one or where inactive."""
    if s.best is None or param not in s.best_params:
        return None
    return s.best, s.best_params[param]


def _shared_table(param: str, sides: list[Side]) -> str:
    rows = []
    for s in sides:
        p = s.params[param]
        active = int((s.points.param == param).sum())
        chosen = (format_value(s.best_params[param]) if param in s.best_params else
                  "inactive" if s.best is not None else "no best trial yet")
        rows.append(f"<tr><td class='text'>{html.escape(s.name)}</td><td class='text'>"
                    f"{html.escape(p.display())}</td><td>{active}</td><td class='text'>"
                    f"{html.escape(chosen)}</td></tr>")
    return ("<table class='acc shared'><thead><tr><th>study</th><th>searched</th>"
            "<th>completed trials with it active</th><th>best trial's value</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _trial(t: int | None) -> str:
    return "-" if t is None else str(t)


def _number(v: float | None, *, sign: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.4f}" if sign else f"{v:.4f}"


SECTIONS: list[Callable[[Page, Comparison], None]] = [
    _header, _best_against_baseline, _shared_parameters]
