"""`study report`: computed tables against hand computations from the Parquet results, the HTML in
a real headless Chromium, and the pushed figures and note through optuna-dashboard's HTTP API.

One real study at toy scale (module fixture, ~35 s on 2 cores): 2 replicate seeds, a searched
subset of degradations, simplex fusion weights, temperature and alpha. Its first four trials are
fixed (the paper setting first) so every section has something to show; the fifth is sampled
through `study launch`; then `study confirm --top 1 --seeds 2` re-runs the baseline and the best
with two new seeds (trials 5-8), which the search's analysis leaves out.

The pages are driven in a real headless Chromium over the DevTools protocol (`Browser`): the
report and optuna-dashboard's study page, screenshots kept in test-artifacts/.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from figures import record
from toy_studies import free_port

from study import cli, report, results, storage, studyfile, worker

# the column of the smoke study's objective
OBJECTIVE = results.objective_column("fusiondistill", "val.avg")

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
NAME = "rep"
STUDY_FILE = f"""
study:
  name: {NAME}
  objectives: [{{method: fusiondistill, metric: val.avg, direction: maximize}}]
  sampler: random
  pruner: none
  replicates: 2
executor: {{backend: debug}}
pipeline:
  preset: smoke
  device: cpu
  data: {{synthetic_train: 300, val_size: 100, synthetic_test: 100}}
  degradations: [jpeg, awgn]
  methods: [oracle, ensemble, modelsoups, fusing, fusiondistill]
  eval: {{test_level_step: 25, val_level_step: 50, degradations: [jpeg, awgn]}}
  base: {{epochs: 1, milestones: []}}
  expert: {{epochs: 1}}
  fusing: {{epochs: 1, milestones: []}}
  distill: {{epochs: 1, milestones: []}}
space:
  degradations: {{type: subset, of: [jpeg, awgn]}}
  fusion.method: {{type: categorical, choices: [uniform, weighted]}}
  fusion.weights: {{type: simplex, over: degradations, when: {{fusion.method: weighted}}}}
  distill.loss: {{type: categorical, choices: [feature, logit]}}
  distill.temperature: {{type: float, low: 1.0, high: 8.0, log: true,
                        when: {{distill.loss: logit}}}}
  distill.alpha: {{type: float, low: 0.1, high: 0.99, when: {{distill.loss: logit}}}}
"""
# Raw Optuna parameters of the fixed trials; trial 0 is the pipeline as the file sets it.
FIXED = [
    {"degradations.jpeg": True, "degradations.awgn": True, "fusion.method": "uniform",
     "distill.loss": "feature"},
    {"degradations.jpeg": True, "degradations.awgn": True, "fusion.method": "weighted",
     "fusion.weights.jpeg": 0.3, "fusion.weights.awgn": 0.6, "distill.loss": "logit",
     "distill.temperature": 4.0, "distill.alpha": 0.5},
    {"degradations.jpeg": True, "degradations.awgn": False, "fusion.method": "uniform",
     "distill.loss": "logit", "distill.temperature": 2.0, "distill.alpha": 0.9},
    {"degradations.jpeg": False, "degradations.awgn": True, "fusion.method": "weighted",
     "fusion.weights.jpeg": 0.5, "fusion.weights.awgn": 0.5, "distill.loss": "feature"},
]
N_TRIALS = 5           # the search's
CONFIRM = ["--top", "1", "--seeds", "2"]
N_RERUNS = 4           # the baseline and the best, two new seeds each
FIGURES = {"levels", "subsets", "importance", "slices", "surface", "fusion_weights", "history",
           "budget", "paired", "learning"}
T975_DF1 = 12.706204736174707    # Student t 97.5% quantile, 1 degree of freedom (2 seeds)
T975_DF2 = 4.302652729911275     # 2 degrees of freedom (3 seeds)


@dataclass(frozen=True)
class Built:
    space: str
    results: Path
    every: pd.DataFrame      # every trial's rows, the confirmation's re-runs included
    study: optuna.Study
    ld: studyfile.LoadedStudy
    report_s: float
    out: str

    @property
    def html(self) -> Path:
        return self.results / NAME / "report.html"

    @property
    def df(self) -> pd.DataFrame:
        """The search's rows: its trials are 0..N_TRIALS-1, the re-runs come after them."""
        return self.every[self.every.trial < N_TRIALS]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    # One thread: with two OpenMP threads on a 2-core box that something else also uses, the
    # study took 150 s instead of 25 s (threads spin-waiting on each other).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield _build(tmp_path_factory.mktemp("report"))
    finally:
        torch.set_num_threads(threads)


def _build(tmp: Path) -> Built:
    space = tmp / "rep.yaml"
    space.write_text(STUDY_FILE)
    res = tmp / "results"
    ld = studyfile.load(str(space), [])
    url = storage.storage_url(ld.sf, res)
    st = optuna.create_study(study_name=NAME, storage=storage.open_storage(url),
                             directions=["maximize"])
    # The fixed trials go through the worker's own code (worker.run_job), each asked right
    # after it is enqueued, as the launcher asks.
    baseline, _ = ld.space.baseline(ld.sf.model_dump())
    assert baseline is not None and ld.space.raw_params(baseline) == FIXED[0]
    for i, params in enumerate(FIXED):   # trial 0 as the launcher enqueues the baseline
        st.enqueue_trial(params, user_attrs={"baseline": True, "baseline_values": baseline}
                         if i == 0 else None)
        trial = st.ask()
        values = ld.space.sample(trial)
        trial.set_user_attr("values", baseline if i == 0 else values)
        trial.set_user_attr("attempt", 1)
        job = worker.Job(study_file=str(space), overrides=[], results=str(res),
                            cache=str(res / "cache"), storage=url, study_name=NAME,
                            trial=trial.number)
        assert worker.run_job(job, log=lambda m: None) == "COMPLETE"
    assert cli.main(["launch", "--space", str(space), "--results", str(res),
                     "--n-trials", str(N_TRIALS)]) == 0
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["confirm", "--space", str(space), "--results", str(res), *CONFIRM]) == 0
    t0 = time.perf_counter()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli.main(["report", "--space", str(space), "--results", str(res)]) == 0
    seconds = time.perf_counter() - t0
    return Built(str(space), res, results.load(res / NAME),
                 optuna.load_study(study_name=NAME, storage=storage.open_storage(url)), ld,
                 seconds, buf.getvalue())


def _analysis(b: Built, df: pd.DataFrame | None = None) -> report.Analysis:
    """analyse as build_report calls it: every trial's rows (it leaves the re-runs out)."""
    sf = b.ld.sf
    return report.analyse(results.StudyResults.in_memory(b.every if df is None else df),
                          b.study, b.ld.space.params,
                          objectives=[o.model_dump() for o in sf.study.objectives],
                          methods=sf.pipeline.methods, study_name=NAME)


def _hand_best(df: pd.DataFrame) -> int:
    v = df[df.state == "COMPLETE"].groupby("trial")[OBJECTIVE].first().astype(float)
    return int(v.idxmax())


def _np(frame: pd.DataFrame | pd.Series) -> np.ndarray:
    return frame.to_numpy(dtype=float, na_value=np.nan)


def _figures(b: Built) -> set[str]:
    # the paired-difference figure exists only when the best trial is not the paper setting
    return FIGURES - ({"paired"} if _hand_best(b.df) == 0 else set())


def _hand_table(df: pd.DataFrame, trial: int, seed: int) -> pd.DataFrame:
    rows = df[(df.trial == trial) & (df.split == "test") & (df.seed == seed)]
    return results.paper_table(rows, ["oracle", "ensemble", "modelsoups", "fusing",
                                      "fusiondistill"])


# ---------------------------------------------------------------- the real study
@pytest.mark.slow
def test_report_cli_writes_a_self_contained_html(built: Built) -> None:
    assert built.html.exists()
    record("study_report", seconds=built.report_s)
    import plotly.offline

    text = built.html.read_text()
    plotly_js = plotly.offline.get_plotlyjs()
    assert text.count(plotly_js) == 1                                   # embedded once, whole
    page = text.replace(plotly_js, "")      # its own code mentions URLs (links it may draw)
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|<iframe|@import", page)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched
    ids = set(re.findall(r'<div id="fig-([\w.-]+)" class="plotly-graph-div"', text))
    assert ids == _figures(built)
    assert f"dashboard: {len(set(report.PUSHED) & ids)} figures" in built.out


@pytest.mark.slow
def test_paper_and_best_tables_equal_paper_table_per_seed(built: Built) -> None:
    df, a = built.df, _analysis(built)
    best = _hand_best(df)
    assert (a.best, a.baseline) == (best, 0)
    assert a.baseline_note.startswith("Trial 0 is the baseline")
    assert sorted(df.seed.unique()) == [0, 1]
    for label, trial in (("Baseline: the study file's pipeline (trial 0)", 0),
                         (f"Best on validation (trial {best})", best)):
        t = a.tables[label]
        t0, t1 = _hand_table(df, trial, 0), _hand_table(df, trial, 1)
        assert t.seeds == [0, 1]
        assert list(t.mean.index) == list(t0.index)
        np.testing.assert_allclose(_np(t.mean), _np(t0 + t1) / 2)
        # two seeds: half-width = t(0.975, 1) * sd / sqrt(2) = t * |x0 - x1| / 2
        np.testing.assert_allclose(_np(t.half), T975_DF1 * _np((t0 - t1).abs()) / 2)
    # one panel per evaluation degradation, one line per method, every test level
    c = a.curves
    assert set(c.degradation) == {"jpeg", "awgn"}
    assert sorted(c[c.degradation == "jpeg"].level.unique()) == [1, 26, 51, 76, 101]
    rows = df[(df.trial == best) & (df.split == "test") & (df.model == "fusing")
              & (df.degradation == "awgn") & (df.level == 25)]
    got = c[(c.model == "fusing") & (c.degradation == "awgn") & (c.level == 25)].accuracy
    assert got.item() == pytest.approx(100 * rows.accuracy.astype(float).mean())


@pytest.mark.slow
def test_budget_is_the_sum_of_wall_times_and_of_cached_build_times(built: Built) -> None:
    info, stages = report.budget(built.every)    # the confirmation's compute is spent too
    first = built.every.drop_duplicates("trial")
    n = N_TRIALS + N_RERUNS
    assert info["states"] == {"COMPLETE": n} and info["trials"] == n
    assert info["spent_s"] == pytest.approx(float(first.wall_s.astype(float).sum()))
    saved = 0.0
    for _, row in first.iterrows():
        for st in results.STAGES:
            if row[f"hit_{st}"] is True:
                saved += float(row[f"build_s_{st}"])
    assert saved > 0                                   # base and experts were reused
    assert info["saved_s"] == pytest.approx(saved)
    # built once for the search's seed and once for each new seed of the confirmation
    assert stages.loc["expert_jpeg", "built"] == 1 + 2 and stages.loc["expert_jpeg", "hits"] >= 2


@pytest.mark.slow
def test_subset_ablation_picks_the_validation_best_per_subset(built: Built) -> None:
    df, a = built.df, _analysis(built)
    t = a.subsets["degradations"]
    pt = report.per_trial(df, results.Schema.of(built.ld.sf.study.objectives,
                                                built.ld.space.params))
    chosen = pt.set_index("trial")["param_degradations"].map("+".join)
    assert set(t.index) == set(chosen) and {"jpeg+awgn", "jpeg", "awgn"} <= set(t.index)
    vals = pt.set_index("trial").value_0.astype(float)
    for subset, row in t.iterrows():
        members = chosen[chosen == subset].index
        assert row.trial == int(vals[members].idxmax()) and row.n_trials == len(members)
        hand = np.mean([_hand_table(df, row.trial, s).loc["fusiondistill", "JPEG"]
                        for s in (0, 1)])
        assert row.JPEG == pytest.approx(hand)


def _fixed_outcome(b: Built, beaten: bool, df: pd.DataFrame | None = None
                   ) -> tuple[pd.DataFrame, report.Analysis]:
    """The search's rows with the outcome fixed, whatever the toy training gave: the
    baseline's validation objective put below every trial's (beaten: the best is another
    trial) or above (not beaten: the best is the baseline). The test rows are untouched, so
    the tables and paired differences are the real ones; the re-runs stay out (analyse leaves
    them out by the storage)."""
    df = (b.every if df is None else df).copy()
    others = df.loc[df.trial != 0, OBJECTIVE].astype(float)
    df[OBJECTIVE] = df[OBJECTIVE].astype("Float64")
    df.loc[df.trial == 0, OBJECTIVE] = others.min() - 1 if beaten else others.max() + 1
    a = _analysis(b, df)
    assert a.baseline == 0 and (a.best != 0) == beaten
    assert a.best == _hand_best(df[df.trial < N_TRIALS])
    return df[df.trial < N_TRIALS], a


def _check_paired(df: pd.DataFrame, a: report.Analysis) -> None:
    """a.paired against the test tables of the best and the baseline, seed by seed."""
    best = a.best
    d = [(_hand_table(df, best, s) - _hand_table(df, 0, s)).loc["fusiondistill"] for s in (0, 1)]
    p = a.paired
    assert list(p.index) == ["JPEG", "AWGN", "Avg", "Clean"] and (p.n == 2).all()
    np.testing.assert_allclose(p["diff"].to_numpy(), _np((d[0] + d[1]) / 2))
    np.testing.assert_allclose(p.half.to_numpy(), T975_DF1 * _np((d[0] - d[1]).abs()) / 2)
    np.testing.assert_allclose((p.hi - p.lo).to_numpy(), 2 * p.half.to_numpy())


@pytest.mark.slow
def test_paired_differences_are_seed_by_seed(built: Built) -> None:
    # the search as it came out (either outcome: the same hand computation holds)
    _check_paired(built.df, _analysis(built))
    # a best that is not the baseline, fixed: the differences of two trained networks
    df, a = _fixed_outcome(built, beaten=True)
    _check_paired(df, a)
    assert "The best configuration is the baseline" not in report.render(a).html
    # the baseline is the best, fixed: no difference, and the report says so
    df, a = _fixed_outcome(built, beaten=False)
    _check_paired(df, a)
    assert (a.paired["diff"] == 0).all() and (a.paired.half == 0).all()
    assert a.verdicts == []
    html = report.render(a).html
    assert "The best configuration is the baseline (trial 0): no difference." in html
    assert "The baseline (trial 0) is the best trial: the search found nothing better" in html


@pytest.mark.slow
def test_one_seed_report_says_no_interval_is_possible(built: Built) -> None:
    a = _analysis(built, built.df[built.df.seed == 0])
    t = next(iter(a.tables.values()))
    assert t.seeds == [0] and t.half.isna().all().all()
    r = report.render(a)
    assert "one seed (0): no interval" in r.html
    title = r.figures["levels"].layout.title.text
    assert "(one seed)" in title and "mean over" not in title
    # the best against the baseline on one seed, with the outcome fixed both ways
    one_seed = built.every[built.every.seed == 0]
    _, a = _fixed_outcome(built, beaten=True, df=one_seed)
    r = report.render(a)
    assert a.paired.half.isna().all() and "no interval is possible" in r.html
    # one seed: the binomial noise band of the evaluation's images, in plain words
    assert [v.how for v in a.verdicts] == ["binomial", "binomial"]
    assert "binomial noise alone spans" in r.html
    _, a = _fixed_outcome(built, beaten=False, df=one_seed)
    r = report.render(a)
    assert a.verdicts == [] and "no interval is possible" not in r.html
    assert "binomial noise alone spans" not in r.html


@pytest.mark.slow
def test_parameter_sections(built: Built) -> None:
    a = _analysis(built)
    pt = a.per_trial
    logit = set(pt[pt["param_distill.loss"] == "logit"].trial)
    weighted = set(pt[pt["param_fusion.method"] == "weighted"].trial)
    every, *conditional = a.importance
    assert every.condition is None and every.n_trials == N_TRIALS      # the search's only
    assert every.values.sum() == pytest.approx(1.0)
    assert not {"distill.temperature", "distill.alpha"} & set(every.values.index)
    by = {s.condition: s for s in conditional}
    assert set(by) == {"distill.loss = logit", "fusion.method = weighted"}
    t = by["distill.loss = logit"]
    assert t.conditional == ("distill.temperature", "distill.alpha")
    assert t.n_trials == len(logit) and set(t.own) == {"distill.temperature", "distill.alpha"}
    assert {"distill.temperature", "degradations.jpeg"} <= set(t.values.index)
    assert by["fusion.method = weighted"].n_trials == len(weighted)
    assert "distill.loss = logit" in t.title and f"{len(logit)} completed trials" in t.title
    assert "a hint" in t.title and f"Under {report.MIN_TRIALS} trials" in a.importance_note
    assert {"fusion.method", "distill.loss"} <= set(a.slices.param)
    s = a.surface
    assert set(s.trial) == logit
    assert s.loc[s.trial == 1, "distill.temperature"].item() == pytest.approx(4.0)
    w = a.weights
    assert list(w.columns) == ["trial", "value", "jpeg", "awgn"]
    np.testing.assert_allclose(w[["jpeg", "awgn"]].sum(axis=1), 1.0)
    # trial 1: u = (0.3, 0.6) -> w_i = -log u_i / sum_j -log u_j (space.py's simplex)
    e = -np.log([0.3, 0.6])
    np.testing.assert_allclose(w.loc[w.trial == 1, ["jpeg", "awgn"]].to_numpy()[0], e / e.sum())


@pytest.mark.slow
def test_the_confirmation_has_its_section_and_stays_out_of_the_search(built: Built) -> None:
    a = _analysis(built)
    reruns = [t for t in built.study.trials if "confirm" in t.user_attrs]
    assert len(reruns) == N_RERUNS and a.reruns == N_RERUNS
    # the search's analysis: its own trials only, though re-runs of the baseline carry
    # `baseline` too and a lucky new seed may beat the search's best
    assert set(a.per_trial.trial) == set(range(N_TRIALS))
    assert (a.best, a.baseline) == (_hand_best(built.df), 0)
    assert a.importance[0].n_trials == N_TRIALS
    # its section, from the build_report that `study report` ran (the confirmation is read
    # from the storage and the re-runs' files by confirm.summarize)
    text = built.html.read_text()
    assert 'id="confirmation"' in text and "study confirm" in text
    st = built.study
    plan = st.user_attrs["confirm"]
    top = _hand_best(built.df[built.df.trial != 0])     # the best besides the baseline
    assert plan["baseline"] == 0 and plan["candidates"] == [top] and len(plan["seeds"]) == 2
    assert "baseline (trial 0)" in text and f"trial {top} <b>(chosen)</b>" in text
    assert "Chosen on validation: <b>trial" in text and "Verdict: " in text
    assert "paired replicate seeds" in text        # the verdict sentence: a t-interval
    # the headline: both metrics with their noise, and the confirmation's verdict
    headline = text[text.index("class='headline'"):text.index("<h2")]
    if a.best != a.baseline:
        assert "fusiondistill val.avg: best" in headline and "test.avg: best" in headline
    else:   # both outcomes are checked on fixed data in test_paired_differences_are_seed_by_seed
        assert "is the best trial: the search found nothing better" in headline
    assert "Confirmation over new seeds</a>" in headline
    # the listing holds every trial, the re-runs by what they re-ran
    lst = a.listing
    assert list(lst.trial) == list(range(N_TRIALS + N_RERUNS))
    assert list(lst.role[:N_TRIALS]) == ["baseline"] + ["search"] * (N_TRIALS - 1)
    assert set(lst.role[N_TRIALS:]) == {f"confirm trial {t}, seed {s}" for t in (0, top)
                                        for s in plan["seeds"]}


# ---------------------------------------------------------------- hand-made frames
def _rows(trial: int, seed: int, acc: dict[str, list[float]], model: str = "m") -> list[dict]:
    out = [{"trial": trial, "seed": seed, "model": model, "split": "test",
            "degradation": "clean", "level": 0, "accuracy": acc["clean"][0]}]
    for deg in ("jpeg", "awgn"):
        out += [{"trial": trial, "seed": seed, "model": model, "split": "test",
                 "degradation": deg, "level": lv, "accuracy": a}
                for lv, a in zip((1, 50), acc[deg])]
    return out


def test_interval_math_on_a_hand_made_three_seed_frame() -> None:
    # JPEG per seed = mean of its two levels: 0.50, 0.60, 0.70 -> mean 60, sd 10 (points)
    df = pd.DataFrame(
        _rows(0, 0, {"clean": [0.9], "jpeg": [0.4, 0.6], "awgn": [0.2, 0.2]})
        + _rows(0, 1, {"clean": [0.9], "jpeg": [0.5, 0.7], "awgn": [0.3, 0.3]})
        + _rows(0, 2, {"clean": [0.9], "jpeg": [0.6, 0.8], "awgn": [0.1, 0.1]}))
    t = report.seed_table(df)
    assert t.seeds == [0, 1, 2]
    assert t.mean.loc["m", "JPEG"] == pytest.approx(60.0)
    assert t.half.loc["m", "JPEG"] == pytest.approx(T975_DF2 * 10 / np.sqrt(3))
    assert t.mean.loc["m", "AWGN"] == pytest.approx(20.0)
    assert t.half.loc["m", "AWGN"] == pytest.approx(T975_DF2 * 10 / np.sqrt(3))
    assert t.mean.loc["m", "Avg"] == pytest.approx(40.0) and t.half.loc["m", "Clean"] == 0
    # paired: trial 1 is trial 0 plus (2, 4, 6) JPEG points on seeds 0, 1, 2
    df1 = df.assign(trial=1)
    bump = df1.seed.map({0: 0.02, 1: 0.04, 2: 0.06}) * (df1.degradation == "jpeg")
    df1["accuracy"] = df1.accuracy + bump
    p = report.paired_differences(pd.concat([df, df1]), 1, 0, "m")
    assert p.loc["JPEG", "diff"] == pytest.approx(4.0) and p.loc["JPEG", "n"] == 3
    assert p.loc["JPEG", "half"] == pytest.approx(T975_DF2 * 2 / np.sqrt(3))
    assert p.loc["AWGN", "diff"] == pytest.approx(0.0) and p.loc["Avg", "diff"] == pytest.approx(2)
    mean, half = report.t_interval(np.array([[1.0, 2.0]]))       # one seed: no interval
    assert mean.tolist() == [1.0, 2.0] and np.isnan(half).all()


def _params(space_yaml: str) -> list:
    import yaml

    from study import space

    tree = studyfile.resolve_tree(studyfile.read_yaml(ROOT / "search_spaces" / "smoke.yaml"), "x")
    return list(space.parse_space(yaml.safe_load(space_yaml), tree, "x").params)


def test_baseline_is_the_enqueued_trial_and_its_absence_is_explained(tmp_path: Path) -> None:
    """The baseline is the trial the launcher enqueued with the file's own values; a study
    without one says why (here: the file's distill.lr lies outside the space)."""
    ld = studyfile.load("smoke.yaml", [])
    values, why = ld.space.baseline(ld.sf.model_dump())
    assert values is not None and why == ""
    assert ld.space.from_params(ld.space.raw_params(values)) == values
    outside = studyfile.load("smoke.yaml", ["space.distill.lr.low=0.01",
                                            "space.distill.lr.high=0.1"])
    values, why = outside.space.baseline(outside.sf.model_dump())
    assert values is None and "distill.lr" in why and "outside the space" in why
    st = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    st.set_user_attr("baseline_skipped", why)
    frame = pd.DataFrame({"trial": [0], "state": ["COMPLETE"], "value_0": [0.5]})
    trial, note = report.baseline_trial(frame, st)
    assert trial is None and "outside the space" in note
    st.enqueue_trial({}, user_attrs={"baseline": True})
    st.tell(st.ask(), 0.5)
    assert report.baseline_trial(frame, st)[0] == 0


def test_pareto_front_and_best_of_two_objectives() -> None:
    pt = pd.DataFrame({"trial": [0, 1, 2, 3, 4], "state": ["COMPLETE"] * 4 + ["PRUNED"],
                       "value_0": [0.5, 0.6, 0.4, 0.6, None], "value_1": [10, 20, 5, 15, None]})
    # maximize accuracy, minimize cost: 1 is dominated by 3 (same accuracy, cheaper)
    assert report.pareto_front(pt, ["maximize", "minimize"]) == [0, 2, 3]
    assert report.best_trial(pt, ["maximize", "minimize"]) == 3
    assert report.best_trial(pt, ["maximize"]) == 1               # ties: the earlier trial
    assert report.best_trial(pt, ["minimize"]) == 2
    fig = report.fig_pareto(pt, [0, 2, 3], ["acc", "cost"], ["val.avg", "cost.hours"], 0)
    front = next(d for d in fig.data if d.name == "Pareto front")
    assert sorted(front.x) == [40.0, 50.0, 60.0]                 # accuracy in %
    assert sorted(front.y) == [5, 10, 15]                        # the cost in hours, as is
    base = next(d for d in fig.data if d.name == "baseline")
    assert list(base.x) == [50.0] and list(base.y) == [10]
    # each front trial against the baseline (trial 0), in each objective's direction
    t = report.tradeoffs(pt, [0, 2, 3], 0, ["acc", "cost"], ["val.avg", "cost.hours"],
                         ["maximize", "minimize"]).set_index("trial")
    assert t.loc[2, "Δ acc"] == pytest.approx(-10.0) and t.loc[2, "Δ cost"] == -5
    assert t.loc[2, "against the baseline"] == "trades acc for cost"
    assert t.loc[3, "against the baseline"] == "trades cost for acc"
    assert t.loc[0, "against the baseline"] == "is the baseline"
    t = report.tradeoffs(pt, [1], 2, ["acc", "cost"], ["val.avg", "cost.hours"],
                         ["maximize", "maximize"]).set_index("trial")
    assert t.loc[1, "against the baseline"] == "better on acc, cost, worse on none"


def test_weights_on_three_items_draw_on_the_ternary_simplex() -> None:
    pt = pd.DataFrame({"trial": [0, 1], "state": ["COMPLETE"] * 2, "value_0": [0.3, 0.4],
                       "param_fusion.weights": [{"jpeg": 0.2, "blur": 0.3, "awgn": 0.5},
                                                {"jpeg": 0.5, "awgn": 0.5}]})
    w = report.fusion_weights(pt)
    assert list(w.columns) == ["trial", "value", "jpeg", "blur", "awgn"]
    assert w.loc[1, "blur"] == 0.0                 # not fused: on the simplex's edge
    fig = report.fig_weights(w, "objective")
    assert fig.data[0].type == "scatterternary" and list(fig.data[0].b) == [0.3, 0.0]


def a_objectives() -> list[dict[str, str]]:
    return [{"method": "fusiondistill", "metric": "val.avg", "direction": "maximize"}]


def test_a_study_whose_trials_all_failed_gets_notes_not_a_crash() -> None:
    df = results.trial_frame(study_name="f", trial=0, attempt=1, state="FAIL", seed_rows=[],
                             params={}, param_columns={}, stages={}, objectives={OBJECTIVE: None},
                             extra={"error": "boom", "wall_s": 3.0})
    st = optuna.create_study()
    a = report.analyse(results.StudyResults.in_memory(df), st, [], objectives=a_objectives(),
                       methods=["fusiondistill"], study_name="f")
    r = report.render(a)
    assert a.best is None and a.tables == {} and a.budget["states"] == {"FAIL": 1}
    assert "No completed trial with test results yet" in r.html
    assert "at least 2 completed trials" in r.html
    assert set(r.figures) <= {"budget"}
    # a launched study with no result file yet
    empty = report.analyse(results.StudyResults.in_memory(pd.DataFrame()), st, [],
                           objectives=a_objectives(),
                           methods=["fusiondistill"], study_name="f")
    assert empty.best is None and "No baseline trial" in report.render(empty).html


def test_report_of_a_study_never_launched_is_a_user_error(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["report", "--space", "smoke.yaml", "--results", str(tmp_path)]) == 2
    assert "has not been launched yet" in capsys.readouterr().err


def test_png_without_kaleido_is_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kaleido", None)    # import kaleido -> ImportError
    lines: list[str] = []
    assert report.export_png({"x": object()}, tmp_path / "png", lines.append) == 0
    assert "kaleido is not installed" in lines[0] and not (tmp_path / "png").exists()


def test_png_with_kaleido(tmp_path: Path) -> None:
    pytest.importorskip("kaleido", reason="kaleido is optional (pip install kaleido)")
    _chromium()
    figs = {"history": report.fig_history(pd.DataFrame(
        {"trial": [0, 1], "state": ["COMPLETE"] * 2, "value_0": [0.2, 0.3]}), "maximize", "v")}
    assert report.export_png(figs, tmp_path, print) == 1
    assert (tmp_path / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- what the report concludes
def _eval_rows(val: float, test: float, n: int = 200) -> list[dict[str, Any]]:
    """One seed's evaluation rows of fusiondistill: every degradation and clean at `val` on
    validation and `test` on test, `n` images each."""
    return [{"model": "fusiondistill", "split": split, "degradation": deg, "level": level,
             "level_step": 1, "accuracy": acc, "n_images": n}
            for split, acc in (("val", val), ("test", test))
            for deg, level in (("jpeg", 50), ("awgn", 25), ("clean", 0))]


def _hand_study(sdir: Path) -> tuple[optuna.Study, pd.DataFrame]:
    """A search (baseline 0, trial 1, trial 2 failed) and a confirmation of 0 and 1 over seeds
    10 and 11 (trials 3-6), its result files written; one re-run of trial 1 is a lucky 0.90 on
    validation, far above anything the search found."""
    st = optuna.create_study(direction="maximize")
    frames = []
    plan = [  # trial, user attributes, {seed: (val, test)}
        (0, {"baseline": True}, {0: (0.50, 0.50)}),
        (1, {}, {0: (0.60, 0.55)}),
        (2, {"fail_kind": "oom", "fail_reason": "CUDA out of memory. " + "x" * 300}, {}),
        (3, {"confirm": {"of": 0, "seed": 10}, "baseline": True}, {10: (0.50, 0.50)}),
        (4, {"confirm": {"of": 0, "seed": 11}, "baseline": True}, {11: (0.52, 0.52)}),
        (5, {"confirm": {"of": 1, "seed": 10}}, {10: (0.62, 0.60)}),
        (6, {"confirm": {"of": 1, "seed": 11}}, {11: (0.90, 0.61)}),
    ]
    for number, attrs, seeds in plan:
        value = float(np.mean([v for v, _ in seeds.values()])) if seeds else None
        st.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE if seeds else optuna.trial.TrialState.FAIL,
            value=value, user_attrs={"values": {}, "attempt": 1, **attrs}))
        df = results.trial_frame(
            study_name="h", trial=number, attempt=1, state="COMPLETE" if seeds else "FAIL",
            seed_rows=[(s, _eval_rows(v, t)) for s, (v, t) in seeds.items()], params={},
            param_columns={}, stages={}, objectives={OBJECTIVE: value},
            extra={"wall_s": 2.0 + number, "fail_kind": attrs.get("fail_kind")})
        results.write_trial(sdir, number, df, result_id=None)
        frames.append(df)
    st.set_user_attr("confirm", {"baseline": 0, "candidates": [1], "seeds": [10, 11]})
    return st, pd.concat(frames, ignore_index=True)


def test_headline_and_confirmation_from_a_hand_made_study(tmp_path: Path) -> None:
    from study import confirm  # imports torch (through study.status); this process has it

    st, df = _hand_study(tmp_path)
    c = confirm.summarize(st.trials, tmp_path, studyfile.load("smoke.yaml", []))
    a = report.analyse(results.StudyResults.in_memory(df), st, [], objectives=a_objectives(),
                       methods=["fusiondistill"], study_name="h", confirmation=c)
    # the search's analysis: the lucky re-run (0.90) is no new best, nor a baseline
    assert (a.best, a.baseline, a.reruns) == (1, 0, 4)
    assert set(a.per_trial.trial) == {0, 1, 2}
    # headline, one seed: the binomial band of 200 images, 1.96 sqrt(sum p(1-p) / 200)
    val, test = a.verdicts
    assert (val.metric, test.metric, val.how) == ("val.avg", "test.avg", "binomial")
    assert val.diff == pytest.approx(10.0) and test.diff == pytest.approx(5.0)
    assert val.half == pytest.approx(100 * 1.959964 * math.sqrt((0.24 + 0.25) / 200), rel=1e-5)
    assert val.outside and not test.outside           # 10 > 9.70 points; 5 < 9.77
    # confirmation: trial 1 chosen on validation; on test it leads by 10 and 9 points on the
    # two seeds: mean 9.5, 95% half-width t(0.975, 1) * sd / sqrt(2) = 12.706 * 0.5
    assert c.chosen == 1 and c.verdict is not None and c.claim
    assert c.verdict.diff == pytest.approx(9.5)
    assert c.verdict.half == pytest.approx(T975_DF1 * 0.5)
    r = report.render(a)
    head = r.html[r.html.index("class='headline'"):r.html.index("<h2")]
    assert val.sentence() in head and "the difference is larger than that noise" in head
    assert "the difference is within that noise" in head and "study confirm" in head
    assert "beats the baseline on test" in head
    section = r.html[r.html.index('id="confirmation"'):]
    section = section[:section.index("<h2")]
    assert "baseline (trial 0)" in section and "trial 1 <b>(chosen)</b>" in section
    # the baseline's val over the new seeds: 50 and 52 -> 51.00 +- 12.706 * sqrt(2) / sqrt(2)
    assert f"51.00 ± {T975_DF1:.2f}" in section
    assert "Verdict: trial 1&#x27;s configuration beats the baseline on test." in section
    assert "Confirmation over new seeds [10, 11]" in r.note
    assert "**Verdict: trial 1's configuration beats the baseline on test.**" in r.note
    assert val.sentence() in r.note
    # every trial in the listing, the failure on one line
    lst = a.listing
    assert list(lst.trial) == list(range(7)) and list(lst.attempt) == [1] * 7
    row = lst.set_index("trial").loc[2]
    assert (row.state, row.failure) == ("FAIL", "oom") and row["duration (s)"] == 4.0
    assert len(row.reason) == report.listing.REASON_CHARS and row.reason.endswith("...")
    assert lst.set_index("trial").role.loc[5] == "confirm trial 1, seed 10"
    table = r.html[r.html.index("<table class='acc sortable' id='trials'>"):]
    table = table[:table.index("</table>")]
    assert table.count("<tr>") == 1 + 7 and "<td data-v='6.0'>6</td>" in table


def test_importance_of_a_conditional_parameter_rests_on_the_trials_where_it_is_active() -> None:
    params = _params("""
distill.loss: {type: categorical, choices: [feature, logit]}
distill.temperature: {type: float, low: 1.0, high: 8.0, when: {distill.loss: logit}}
distill.lr: {type: float, low: 0.001, high: 0.1, log: true}
""")
    dists = {k: v for p in params for k, v in p.distributions().items()}
    rng = np.random.default_rng(0)
    trials = []
    for i in range(60):   # the logit trials are better the nearer their temperature is to 2
        x = {"distill.loss": ["feature", "logit"][i % 2],
             "distill.lr": float(10 ** rng.uniform(-3, -1))}
        if x["distill.loss"] == "logit":
            x["distill.temperature"] = float(rng.uniform(1, 8))
        value = -abs(x.get("distill.temperature", 9.0) - 2.0)
        trials.append(optuna.trial.create_trial(
            params=x, distributions={k: dists[k] for k in x}, value=value))
    trials.append(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    every, logit = report.importances(trials, params, "maximize")[0]
    assert every.condition is None and every.n_trials == 60
    assert set(every.values.index) == {"distill.loss", "distill.lr"}     # in every trial
    assert logit.condition == "distill.loss = logit" and logit.n_trials == 30
    assert logit.conditional == ("distill.temperature",) and logit.own == ("distill.temperature",)
    assert set(logit.values.index) == {"distill.loss", "distill.lr", "distill.temperature"}
    assert logit.values.idxmax() == "distill.temperature"
    assert logit.values.sum() == pytest.approx(1.0) and "hint" not in logit.title
    # under MIN_TRIALS, each panel says it is a hint; with no contrast, the bars are zero
    few, note = report.importances(trials[:12], params, "maximize")
    assert "a hint" in few[0].title and f"Under {report.MIN_TRIALS} trials" in note
    flat = [optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=1.0)
            for t in trials[:30]]
    same = report.importances(flat, params, "maximize")[0][0]
    assert (same.values == 0).all() and "no parameter sets the top trials apart" in same.note
    assert "needs at least 2" in report.importances(trials[:1], params, "maximize")[1]


def _curves(stages: dict[str, tuple[list[float], list[float]]]) -> pd.DataFrame:
    """Epoch records (results.CURVE_COLUMNS) of trials 0 and 3, both COMPLETE, one seed."""
    rows = [{"trial": trial, "seed": 0, "stage": stage, "epoch": e + 1, "loss": loss[e] + trial,
             "val": val[e], "state": "COMPLETE"}
            for trial in (0, 3) for stage, (val, loss) in stages.items()
            for e in range(len(val))]
    return pd.DataFrame(rows)


def test_learning_curves_share_one_scale_per_quantity_on_whole_epochs() -> None:
    lc = report.learning_curves(_curves({"base": ([0.2, 0.5, 0.6], [2.0, 1.2, 0.9]),
                                         "fusing": ([0.55, 0.7, 0.8], [0.8, 0.5, 0.4])}),
                                best=3, baseline=0)
    sc = report.curve_scales(lc)
    # val 20..80 % padded by 5% of the span; loss 0.4..5.0 (trial 3's is +3) likewise
    assert sc.val == pytest.approx((17.0, 83.0)) and sc.loss == pytest.approx((0.17, 5.23))
    assert sc.epochs == (0.5, 3.5) and sc.dtick == 1
    fig = report.fig_learning(lc, sc)
    assert len(fig.data) == 2 * 2 * 2           # stages x trials x (val, loss)
    for col in (1, 2):
        val, loss = fig.get_subplot(1, col), fig.get_subplot(2, col)
        assert tuple(val.yaxis.range) == pytest.approx(sc.val)
        assert tuple(loss.yaxis.range) == pytest.approx(sc.loss)
        assert val.xaxis.dtick == 1 and loss.xaxis.title.text == "epoch"
    assert "training loss (lower panels)" in fig.layout.title.text
    long = report.curve_scales(report.learning_curves(
        _curves({"base": ([0.5] * 30, [1.0] * 30)}), best=3, baseline=0))
    assert long.dtick == 3 and long.val == pytest.approx((49.0, 51.0))   # flat: +-1 point


def test_pushed_figures_fit_a_dashboard_card() -> None:
    pt = pd.DataFrame({"trial": [0, 1], "state": ["COMPLETE"] * 2, "value_0": [0.2, 0.3]})
    fig = report.fig_history(pt, "maximize", "fusiondistill val.avg")
    card = report.card_figure(fig)
    lines = card.layout.title.text.split("<br>")
    assert card.layout.height == 450 and fig.layout.height != 450    # the report's untouched
    assert len(lines) == 2 and " ".join(lines) == fig.layout.title.text
    assert card.layout.margin.t >= report.figures.MODEBAR_PX + 2 * report.figures.TITLE_LINE_PX
    assert card.layout.title.yref == "container" and card.layout.legend.yref == "container"


# ---------------------------------------------------------------- browser and dashboard
def _chromium() -> str:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    reason = f"{CHROMIUM} is missing"
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=600)
        r = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                           capture_output=True, text=True, env=env, timeout=900)
        if Path(CHROMIUM).exists():
            return CHROMIUM
        reason += f" and apt-get install chromium failed: {r.stderr[-500:]}"
    else:
        reason += " (install it with `apt-get install chromium` as root)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but no headless Chromium: {reason}")
    pytest.skip(reason)


class Browser:
    """Headless Chromium driven over the DevTools protocol through a pipe
    (--remote-debugging-pipe: commands on fd 3, replies on fd 4, each a JSON text ended by a
    NUL), so the tests click, measure and photograph pages with the standard library alone."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 1000) -> None:
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()

        def fds() -> None:   # in the child, before exec: where Chromium looks for the pipe
            os.dup2(to_child, 3)
            os.dup2(from_child, 4)

        self.proc = subprocess.Popen(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
             "--remote-debugging-pipe", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             "--hide-scrollbars", f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(3, 4), preexec_fn=fds, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]
        for method in ("Page.enable", "Runtime.enable"):
            self.page(method)
        self.page("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buf:
                chunk = os.read(self._in, 1 << 20)
                assert chunk, "Chromium closed the DevTools pipe"
                self._buf += chunk
            text, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(text)
            if reply.get("id") != self._id:
                self.events.append(reply)          # console messages, exceptions, loads
                continue
            assert "error" not in reply, f"{method}: {reply['error']}"
            return reply["result"]

    def page(self, method: str, **params: Any) -> dict[str, Any]:
        return self.call(method, session=self.session, **params)

    def js(self, expression: str) -> Any:
        r = self.page("Runtime.evaluate", expression=expression, returnByValue=True,
                      awaitPromise=True)
        assert "exceptionDetails" not in r, json.dumps(r["exceptionDetails"])[:2000]
        return r["result"].get("value")

    def open(self, url: str, ready: str, timeout: float = 60) -> None:
        """Navigate, then wait until the JavaScript expression `ready` holds."""
        self.page("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while not self.js(f"document.readyState === 'complete' && !!({ready})"):
            assert time.monotonic() < deadline, f"{url}: not ready after {timeout} s: {ready}"
            time.sleep(0.2)
        time.sleep(0.5)     # plotly's last relayout after the fonts settle

    def click(self, expression: str) -> None:
        """A real mouse click at the centre of the element `expression` evaluates to."""
        x, y = self.js(f"(() => {{ const e = {expression}; e.scrollIntoView({{block: "
                       "'center'}); const r = e.getBoundingClientRect(); "
                       "return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.page("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                      clickCount=1)

    def screenshot(self, path: Path) -> None:
        """The whole page, not only the window."""
        w, h = self.js("[document.documentElement.scrollWidth, "
                       "document.documentElement.scrollHeight]")
        data = self.page("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": w, "height": h, "scale": 1})["data"]
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def console(self) -> list[str]:
        """What the page logged to its console and the exceptions it threw."""
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e.get("method") == "Runtime.consoleAPICalled":
                out.append(f"{p['type']}: " + " ".join(str(a.get("value", a.get(
                    "description", ""))) for a in p.get("args", [])))
            elif e.get("method") == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(p.get("exceptionDetails"))[:500])
        return out

    def close(self) -> None:
        with contextlib.suppress(AssertionError, OSError):
            self.call("Browser.close")
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        os.close(self._in)
        os.close(self._out)


@contextlib.contextmanager
def _browser(profile: Path) -> Iterator[Browser]:
    b = Browser(profile)
    try:
        yield b
    finally:
        b.close()


# Per plotly figure: its box (the outer SVG) and the boxes of what must stay apart and inside
# it: the title, subplot titles (annotations), axis and colour-bar titles, the legend, and the
# mode bar, which floats over the figure's top right corner.
TITLES_JS = """(() => {
  const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right,
                                                                   r.bottom]; };
  const out = {};
  document.querySelectorAll(".js-plotly-plot").forEach(div => {
    const items = [...div.querySelectorAll("text")].filter(t =>
        /title$|^annotation-text$/.test(t.getAttribute("class") || "") && t.textContent.trim())
      .map(t => ({what: t.getAttribute("class"), text: t.textContent, box: box(t)}));
    for (const [what, sel] of [["legend", "g.legend"], ["modebar", ".modebar"]]) {
      const e = div.querySelector(sel);
      if (e) items.push({what: what, text: "", box: box(e)});
    }
    out[div.id] = {frame: box(div.querySelector(".main-svg")), items: items};
  });
  return out;
})()"""


def _layout_faults(figures: dict[str, Any]) -> list[str]:
    """Titles (and the legend, the mode bar) that overlap each other or leave their figure."""
    out = []
    for name, f in figures.items():
        x0, y0, x1, y1 = f["frame"]
        items = f["items"]
        for it in items:
            a = it["box"]
            if a[0] < x0 - 1 or a[1] < y0 - 1 or a[2] > x1 + 1 or a[3] > y1 + 1:
                out.append(f"{name}: {it['what']} {it['text']!r} {a} leaves {f['frame']}")
        for i, p in enumerate(items):
            for q in items[i + 1:]:
                a, b = p["box"], q["box"]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    out.append(f"{name}: {p['what']} {p['text']!r} {a} overlaps "
                               f"{q['what']} {q['text']!r} {b}")
    return out


# The listing's column `name` top to bottom, as the page shows it.
COLUMN_JS = """(name => { const t = document.getElementById("trials");
  const i = [...t.tHead.rows[0].cells].findIndex(c => c.textContent === name);
  return [...t.tBodies[0].rows].map(r => r.cells[i].textContent); })"""


@pytest.mark.slow
def test_report_renders_in_headless_chromium(built: Built, tmp_path: Path) -> None:
    """Every figure draws, nothing is logged, the titles stay apart and inside their figure,
    the table of trials has a row per trial and sorts by a clicked header."""
    t0 = time.perf_counter()
    with _browser(tmp_path / "profile") as b:
        b.open(built.html.as_uri(), f"document.querySelectorAll('.js-plotly-plot .main-svg')"
                                    f".length >= {len(_figures(built))}")
        drawn = b.js("[...document.querySelectorAll('.js-plotly-plot')].filter(d => "
                     "d.querySelector('.main-svg')).map(d => d.id)")
        assert set(drawn) == {f"fig-{f}" for f in _figures(built)}
        faults = _layout_faults(b.js(TITLES_JS))
        assert not faults, "\n".join(faults)
        objective = "fusiondistill val.avg"
        column = lambda name: b.js(f"{COLUMN_JS}({json.dumps(name)})")  # noqa: E731
        assert column("trial") == [str(n) for n in range(N_TRIALS + N_RERUNS)]
        header = "[...document.querySelectorAll('#trials th')].find(h => h.textContent === "
        b.click(header + "'trial')")                  # sorted already: ascending, then...
        b.click(header + "'trial')")                  # ...descending
        assert column("trial") == [str(n) for n in reversed(range(N_TRIALS + N_RERUNS))]
        b.click(header + f"{json.dumps(objective)})")
        values = [float(v) for v in column(objective)]
        assert values == sorted(values) and len(values) == N_TRIALS + N_RERUNS
        assert b.js(header + f"{json.dumps(objective)}).getAttribute('aria-sort')") == \
            "ascending"
        assert not b.console(), "\n".join(b.console())      # the page logs nothing
        b.js("document.querySelector('div.scroll').scrollLeft = 0")   # the table's first column
        b.screenshot(ARTIFACTS / "report.png")
    record("report_in_chromium", seconds=time.perf_counter() - t0)
    assert (ARTIFACTS / "report.png").stat().st_size > 100_000


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture
def dashboard(built: Built) -> Iterator[str]:
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "study.cli", "dashboard", "--space", built.space,
                          "--results", str(built.results), "--port", str(port)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                _get(f"{base}/api/meta")
                break
            except OSError:
                assert p.poll() is None, p.stdout.read().decode()[-3000:] if p.stdout else ""
                time.sleep(0.25)
        yield base
    finally:
        p.terminate()
        p.wait(timeout=30)


@pytest.mark.slow
def test_dashboard_lists_the_study_its_trials_and_the_pushed_figures_and_note(
        built: Built, dashboard: str, tmp_path: Path) -> None:
    listing = _get(f"{dashboard}/api/studies")
    studies = listing.get("study_summaries", listing.get("studies"))   # renamed across versions
    names = [s["study_name"] for s in studies]
    assert NAME in names
    sid = studies[names.index(NAME)]["study_id"]
    detail = _get(f"{dashboard}/api/studies/{sid}")
    assert len(detail["trials"]) == N_TRIALS + N_RERUNS
    assert all(t["state"] == "Complete" for t in detail["trials"])
    pushed = {g["id"]: json.loads(g["graph_object"]) for g in detail["plotly_graph_objects"]}
    assert set(pushed) == {f"report-{f}" for f in set(report.PUSHED) & _figures(built)}
    assert all(g["data"] for g in pushed.values())
    assert all(g["layout"]["height"] == report.dashboard.CARD_HEIGHT for g in pushed.values())
    best = _hand_best(built.df)
    body = detail["note"]["body"]
    assert f"Best on validation: trial {best}" in body and "Trial 0 is the baseline" in body
    assert "| fusiondistill |" in body and "### Confirmation over new seeds" in body
    assert "**Verdict: " in body and f"The search's best is trial {best}" in body
    # the study page draws them, each title clear of the others and of the mode bar
    t0 = time.perf_counter()
    with _browser(tmp_path / "profile") as b:
        b.open(f"{dashboard}/dashboard/studies/{sid}",
               "document.querySelectorAll('[id^=\"user-defined-plot:report-\"] .main-svg')"
               f".length >= {len(pushed)}")
        figures = {k: v for k, v in b.js(TITLES_JS).items()
                   if k.startswith("user-defined-plot:report-")}
        assert len(figures) == len(pushed)
        faults = _layout_faults(figures)
        assert not faults, "\n".join(faults)
        for gid, g in pushed.items():
            shown = " ".join(i["text"] for i in figures[f"user-defined-plot:{gid}"]["items"]
                             if i["what"] == "gtitle")
            assert shown == g["layout"]["title"]["text"].replace("<br>", ""), gid
        b.screenshot(ARTIFACTS / "dashboard.png")
    record("dashboard_in_chromium", seconds=time.perf_counter() - t0)


def test_published_numbers_beside_the_baseline() -> None:
    measured = pd.DataFrame({"JPEG": [65.0, 50.0], "Blur": [58.0, 40.0], "AWGN": [66.0, 45.0],
                             "SAPN": [74.0, 52.0], "Avg": [65.75, 46.75], "Clean": [70.0, 60.0]},
                            index=["fusiondistill", "scratch"])
    table, note = report.published_comparison(measured, "cifar100")
    assert table is not None and "cifar100" in note
    assert table.loc["fusiondistill", ("published", "Avg")] == 65.8
    assert table.loc["fusiondistill", ("diff", "JPEG")] == pytest.approx(65.0 - 64.5)
    assert table.loc["scratch", ("diff", "Avg")] == pytest.approx(46.75 - 60.1)
    table, note = report.published_comparison(measured, "cifar10")
    assert table is None and "+19.0 points over the best of scratch" in note
    table, note = report.published_comparison(measured, "synthetic")
    assert table is None and "no numbers for dataset 'synthetic'" in note
