"""`study report`: the ablation report of a study (results/<study>/report.html) and the same
figures on optuna-dashboard.

Compute, then draw, as optuna.visualization does: every number comes from a pure function of the
Parquet results (one summary row per trial, `results.load_summary`, and the long rows of the few
trials a table shows, `results.load_rows`) or the study's storage and returns a DataFrame or a
dict that the tests check against hand computations; the `fig_*` functions only draw what those
return.

    trials      which trials count: the search's (not `study confirm`'s re-runs), one row
                each, completed, Pareto front, best, baseline
    headline    best against baseline with what the noise allows (conclusions.compare)
    accuracy    seed tables with t-intervals, accuracy per level, subset ablation, paired diffs
    comparison  the baseline beside the paper's published tables
    parameters  slices per parameter, temperature x alpha, fusion weights
    importance  PED-ANOVA over all trials, and per condition over the trials where active
    budget      compute spent, saved by the stage cache, projected for the trials to come
    learning    which epoch records the learning curves draw, on which shared scales
    listing     every trial in one table (the page's sortable table)
    analysis    Analysis: all of the above in one pass (`analyse`)
    figures     fig_*: one plotly figure per computed table; frame: titles and margins
    page        render: the HTML page, one function per numbered section
    note        the Markdown note for optuna-dashboard
    dashboard   push_to_dashboard: the figures the dashboard lacks (fitted to its cards), and
                the note
    png         export_png (--png)

Two choices a reader should know:
- The baseline is the study file's own pipeline (its preset and overrides, the paper setting
  for the paper_* files) with nothing searched. When it lies inside the space, the launcher
  enqueues it exactly as the study's first trial (`study.baseline`, on by default); paired
  differences compare the best trial against it. Without one (outside the space, switched off,
  or not completed yet) the report says so and shows no differences.
- The best configuration is chosen on validation (the study's first objective); every number
  shown for it is on test, so the choice does not leak into what is reported. Its lead over the
  baseline is stated with its noise (conclusions.compare); `study confirm`'s re-runs, which
  measure it over new seeds, have their own section and stay out of the search's analysis.

The report imports no torch (tests/test_report_imports.py): it runs on a login node that only
has the results and the storage.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from study import atomic, confirm, results, storage, studyfile
from study.errors import DiskFullError, StudyError
from study.published import OPTIMISTIC  # shown in section 1; callers read report.OPTIMISTIC
from study.report.accuracy import (
    COLUMNS,
    CONFIDENCE,
    SeedTable,
    level_curves,
    paired_differences,
    seed_table,
    subset_ablation,
    t_interval,
)
from study.report.analysis import Analysis, analyse
from study.report.budget import budget
from study.report.comparison import published_comparison
from study.report.dashboard import PUSHED, card_figure, push_to_dashboard
from study.report.figures import (
    COLOR,
    LEVEL_AXIS,
    PALETTE,
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
from study.report.headline import best_against_baseline
from study.report.importance import MIN_TRIALS, Importance, importances
from study.report.learning import CurveScales, curve_scales, learning_curves
from study.report.listing import trial_listing
from study.report.page import Rendered, render
from study.report.parameters import fusion_weights, slices, surface
from study.report.png import CHROMIUM, export_png
from study.report.tradeoffs import tradeoffs
from study.report.trials import (
    CONFIRM_ATTR,
    baseline_trial,
    best_trial,
    pareto_front,
    per_trial,
    search_trials,
)

__all__ = [
    "CHROMIUM", "COLOR", "COLUMNS", "CONFIDENCE", "CONFIRM_ATTR", "LEVEL_AXIS", "MIN_TRIALS",
    "OPTIMISTIC", "PALETTE", "PUSHED", "Analysis", "CurveScales", "Importance", "Rendered",
    "SeedTable", "analyse", "baseline_trial", "best_against_baseline", "best_trial", "budget",
    "build_report", "card_figure", "curve_scales", "export_png", "fig_budget", "fig_heatmap",
    "fig_history", "fig_importance", "fig_learning", "fig_levels", "fig_paired", "fig_pareto",
    "fig_slices", "fig_surface", "fig_weights", "fusion_weights", "importances",
    "learning_curves", "level_curves", "paired_differences", "pareto_front", "per_trial",
    "published_comparison", "push_to_dashboard", "render", "search_trials", "seed_table",
    "slices", "subset_ablation", "surface", "t_interval", "tradeoffs", "trial_listing",
]


def build_report(study_file: str, overrides: Sequence[str] = (),
                 results_dir: str | Path = "results", *, png: bool = False, push: bool = True,
                 log: Callable[[str], None] = print) -> Path:
    """Write results/<study>/report.html from the study's Parquet results and storage, push
    the main figures and a summary note to optuna-dashboard; returns the HTML path."""
    t0 = time.perf_counter()
    ld = studyfile.load(study_file, list(overrides), check_space=False)   # runs no trial
    sf = ld.sf
    st, _ = storage.open_existing(sf, results_dir)
    sdir = storage.study_dir(results_dir, sf.study.name)
    if sdir.is_dir() and not os.access(sdir, os.W_OK | os.X_OK):
        raise _unwritable(sdir, "not writable by this user or on a read-only file system")
    trials = st.get_trials(deepcopy=False)
    # the summary and only the rows it shows; the compacted summary is refreshed on the way
    res = results.StudyResults.on_disk(
        sdir, {t.number: t.user_attrs.get("result_id") for t in trials},
        results.Schema.of(sf.study.objectives, ld.space.params), refresh=sdir.is_dir())
    confirmation = None
    if st.user_attrs.get(CONFIRM_ATTR):   # the plan `study confirm` keeps in the study
        confirmation = confirm.summarize(trials, sdir, ld)
    a = analyse(res, st, ld.space.params,
                objectives=[o.model_dump() for o in sf.study.objectives],
                methods=sf.pipeline.methods, study_name=sf.study.name,
                dataset=sf.pipeline.data.dataset, protocol=sf.pipeline.protocol,
                confirmation=confirmation)
    out = sdir / "report.html"
    rendered = render(a, str(out))
    try:
        sdir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out, rendered.html)   # a browser open on the old report sees no half
    except DiskFullError:
        raise
    except OSError as e:   # what os.access cannot tell: root on NFS, ACLs
        raise _unwritable(sdir, e.strerror or str(e)) from None
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


def _unwritable(sdir: Path, why: str) -> StudyError:
    return StudyError(
        f"study report: cannot write into the study folder {sdir} ({why}); the report "
        "(report.html) goes there, so the folder must be writable. Copy the results folder "
        "(it holds the study's journal and trial files) somewhere writable and give that "
        "as --results.")
