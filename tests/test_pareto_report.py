"""A multi-objective, cost-aware study end to end: search_spaces/pareto_smoke.yaml (degraded
Avg and clean accuracy maximized, cost.hours minimized) launched at toy scale; its objective
values recomputed from the trial's own record; the dashboard's names for all three; the report's
Pareto front and trade-off table, drawn in headless Chromium with nothing overlapping, and a
screenshot kept in test-artifacts/."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from optuna.trial import TrialState
from test_report import ARTIFACTS, TITLES_JS, _browser, _layout_faults
from toy_studies import journal_study

from study import cli, report, stages, studyfile

TOY = ["data.synthetic_train=300", "data.val_size=60", "data.synthetic_test=60",
       "base.epochs=1", "base.milestones=[]", "expert.epochs=1", "expert.t_max=1",
       "eval.test_level_step=50", "eval.val_level_step=50", "study.sampler=random"]
N = 5


@pytest.mark.slow
def test_a_cost_aware_study_reports_its_pareto_front_in_chromium(tmp_path: Path) -> None:
    sets = [x for s in TOY for x in ("--set", s)]
    assert cli.main(["launch", "--space", "pareto_smoke", "--executor", "debug", "--n-trials",
                     str(N), "--results", str(tmp_path), "--log-level", "warning", *sets]) == 0
    st = journal_study(tmp_path, "pareto_smoke")
    done = [t for t in st.trials if t.state == TrialState.COMPLETE]
    assert len(done) == N
    assert st.metric_names == ["fusiondistill val.avg", "fusiondistill val.clean",
                               "fusiondistill cost.hours"]       # what the dashboard shows

    # cost.hours: the build hours of the stages FusionDistill comes from, from the summary's
    # own record of each stage (a cache hit at its recorded build time), not the trial's wall
    # (the launcher builds the shared base and experts before the trials)
    ld = studyfile.load("pareto_smoke", TOY)
    summary = pd.read_parquet(tmp_path / "pareto_smoke" / "summary").set_index("trial")
    for t in done:
        cfg = ld.trial_config(t.user_attrs["values"]).pipeline
        lineage = stages.lineage(cfg, ["fusiondistill"])
        assert lineage == {"base", "modelsoups", "fusiondistill",
                           *(f"expert_{d}" for d in cfg.degradations)}
        # a stage this trial never loaded (the base behind cached experts) at the build
        # time trial 0, which built everything, recorded
        hours = sum(next(float(summary.at[n, f"build_s_{s}"]) for n in (t.number, 0)
                         if not pd.isna(summary.at[n, f"build_s_{s}"])) for s in lineage) / 3600
        assert t.values[2] == pytest.approx(hours, rel=1e-9)
        # more than the trial's own distillation: the shared stages count, built or not
        assert t.values[2] > summary.at[t.number, "build_s_fusiondistill"] / 3600
        assert all(math.isfinite(v) for v in t.values)

    out = report.build_report("pareto_smoke", TOY, tmp_path, push=False, log=lambda s: None)
    page = out.read_text()
    assert "Pareto front and trade-offs" in page and 'id="fig-pareto"' in page
    assert "against the baseline" in page and "cost.hours (h)" in page
    with _browser(tmp_path / "profile") as b:
        b.open(out.as_uri(), "document.querySelector('#fig-pareto .main-svg')")
        panels = b.js("document.querySelectorAll('#fig-pareto .subplot').length")
        assert panels == 2                  # val.avg against val.clean, against cost.hours
        figures = b.js(TITLES_JS)
        faults = _layout_faults({"fig-pareto": figures["fig-pareto"]})
        assert not faults, "\n".join(faults)
        names = b.js("[...document.querySelectorAll('#fig-pareto g.legend text')]"
                     ".map(t => t.textContent)")
        assert {"Pareto front", "baseline"} <= set(names), json.dumps(names)
        b.js("document.getElementById('fig-pareto').scrollIntoView()")
        b.screenshot(ARTIFACTS / "pareto_report.png")
    assert (ARTIFACTS / "pareto_report.png").stat().st_size > 50_000
