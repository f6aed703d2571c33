"""The study note on optuna-dashboard: the report's headline numbers in Markdown (the dashboard
renders notes as Markdown), so the study page says what the HTML report says, in short."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from study.report.analysis import Analysis
from study.report.trials import is_missing

if TYPE_CHECKING:   # study.confirm imports torch through study.status: see build_report
    from study.confirm import Confirmation

__all__ = ["claim_sentence", "dashboard_note", "format_value", "markdown_table", "state_counts"]


def dashboard_note(a: Analysis, where: str) -> str:
    """The dashboard's study note: the headline numbers, in Markdown; `where` is the path of
    the full report."""
    s = a.budget["states"]
    lines = [f"## study report ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"Trials: {state_counts(s)}. "
             f"Compute spent {a.budget['spent_s'] / 3600:.3f} device-hours, saved by the "
             f"stage cache {a.budget['saved_s'] / 3600:.3f} h.", "", a.baseline_note, ""]
    if a.verdicts:
        lines += [f"Best trial {a.best} against the baseline (trial {a.baseline}):", "",
                  *[f"- {v.sentence()}" for v in a.verdicts], ""]
    lines += _confirmation_lines(a)
    if a.best is not None:
        row = a.per_trial[a.per_trial.trial == a.best].iloc[0]
        params = {c.removeprefix("param_"): row[c] for c in a.per_trial.columns
                  if c.startswith("param_") and not is_missing(row[c])}
        lines += [f"Best on validation: trial {a.best}, {a.objectives[0]} = "
                  f"{float(row.value_0):.4f}; " + ", ".join(f"`{k}` = {format_value(v)}"
                                                            for k, v in params.items()), ""]
        if a.reruns:   # the dashboard ranks every trial of the storage, the re-runs too
            lines += [f"(optuna-dashboard's Best Trial card counts the {a.reruns} re-runs of "
                      "`study confirm` too: new seeds of configurations the search already "
                      f"has. The search's best is trial {a.best}.)", ""]
    for heading, t in a.tables.items():
        lines += [f"### {heading}: test accuracy (%)", "", markdown_table(t.mean), ""]
    if a.paired is not None and len(a.paired) and a.best != a.baseline:
        shown = a.paired[["diff", "lo", "hi", "n"]]
        lines += [f"### Best minus baseline ({a.method}, test, points)", "",
                  markdown_table(shown, digits=2), ""]
    lines.append("The figures on this page titled like the report's were pushed by `study "
                 f"report`; the full report is {where}.")
    return "\n".join(lines)


def _confirmation_lines(a: Analysis) -> list[str]:
    """`study confirm`'s result: each configuration over the new seeds, the choice, the
    verdict (the same numbers as the report's confirmation section)."""
    c = a.confirmation
    if c is None:
        return []
    rows = pd.DataFrame(
        {f"{c.metric} mean": [r.interval("val")[0] for r in c.configs],
         "+-": [r.interval("val")[1] for r in c.configs],
         f"{c.test_metric} mean": [r.interval("test")[0] for r in c.configs],
         "+- ": [r.interval("test")[1] for r in c.configs]},
        index=[(f"baseline (trial {r.trial})" if r.role == "baseline" else f"trial {r.trial}")
               + (" (chosen)" if r.trial == c.chosen else "") for r in c.configs])
    out = [f"### Confirmation over new seeds {c.seeds} ({c.method}, points, mean +- 95%)", "",
           markdown_table(rows, digits=2), ""]
    if c.chosen is None or c.verdict is None:
        return [*out, claim_sentence(c) + ".", ""]
    return [*out, f"Chosen on validation: trial {c.chosen}. {c.verdict.sentence()}", "",
            f"**Verdict: {claim_sentence(c)}.**", ""]


def claim_sentence(c: Confirmation) -> str:
    """The confirmation's verdict in words (Confirmation.claim), as the page and note say it."""
    if c.chosen is None or c.verdict is None:
        return "not enough finished re-runs to compare yet (2 seeds per configuration)"
    return (f"trial {c.chosen}'s configuration beats the baseline on test" if c.claim else
            f"no claim: trial {c.chosen}'s configuration is not shown to beat the baseline on "
            "test")


def state_counts(states: Mapping[str, int]) -> str:
    """Trials by state as the page and the note write them: 'complete 4, fail 1'."""
    return ", ".join(f"{k.lower()} {v}" for k, v in sorted(states.items()))


def format_value(v: Any) -> str:
    """A parameter value in a line of text: floats to 3 significant digits, containers
    recursively, so a simplex of weights stays short ({jpeg: 0.432, awgn: 0.568})."""
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{k}: {format_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    return str(v)


def markdown_table(frame: pd.DataFrame, digits: int = 1) -> str:
    """A numeric frame as a Markdown table, NaN as '-'."""
    def cell(v: Any) -> str:
        return "-" if is_missing(v) else f"{float(v):.{digits}f}"

    head = "| | " + " | ".join(map(str, frame.columns)) + " |"
    sep = "|---" * (len(frame.columns) + 1) + "|"
    body = ["| " + str(i) + " | " + " | ".join(cell(v) for v in row) + " |"
            for i, row in zip(frame.index, frame.to_numpy(dtype=float, na_value=np.nan))]
    return "\n".join([head, sep, *body])
