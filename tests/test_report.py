"""`study report`: computed tables against hand computations from the Parquet results, the HTML in
a real headless Chromium, and the pushed figures and note through optuna-dashboard's HTTP API.

One real study at toy scale (module fixture, ~25 s on 2 cores): 2 replicate seeds, a searched
subset of degradations, simplex fusion weights, temperature and alpha. Its first four trials are
fixed (the paper setting first) so every section has something to show; the fifth is sampled
through `study launch`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

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
N_TRIALS = 5
FIGURES = {"levels", "subsets", "importance", "slices", "surface", "fusion_weights", "history",
           "budget", "paired", "learning"}
T975_DF1 = 12.706204736174707    # Student t 97.5% quantile, 1 degree of freedom (2 seeds)
T975_DF2 = 4.302652729911275     # 2 degrees of freedom (3 seeds)


@dataclass(frozen=True)
class Built:
    space: str
    results: Path
    df: pd.DataFrame
    study: optuna.Study
    ld: studyfile.LoadedStudy
    report_s: float
    out: str

    @property
    def html(self) -> Path:
        return self.results / NAME / "report.html"


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
    for i, params in enumerate(FIXED):   # trial 0 as the launcher enqueues the baseline
        st.enqueue_trial(params, user_attrs={"baseline": True} if i == 0 else None)
        trial = st.ask()
        trial.set_user_attr("values", ld.space.sample(trial))
        trial.set_user_attr("attempt", 1)
        job = worker.Job(study_file=str(space), overrides=[], results=str(res),
                            cache=str(res / "cache"), storage=url, study_name=NAME,
                            trial=trial.number)
        assert worker.run_job(job, log=lambda m: None) == "COMPLETE"
    assert cli.main(["launch", "--space", str(space), "--results", str(res),
                     "--n-trials", str(N_TRIALS)]) == 0
    t0 = time.perf_counter()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli.main(["report", "--space", str(space), "--results", str(res)]) == 0
    seconds = time.perf_counter() - t0
    return Built(str(space), res, results.load(res / NAME),
                 optuna.load_study(study_name=NAME, storage=storage.open_storage(url)), ld,
                 seconds, buf.getvalue())


def _analysis(b: Built, df: pd.DataFrame | None = None) -> report.Analysis:
    sf = b.ld.sf
    return report.analyse(b.df if df is None else df, b.study, b.ld.space.params,
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
    info, stages = report.budget(built.df)
    first = built.df.drop_duplicates("trial")
    assert info["states"] == {"COMPLETE": N_TRIALS} and info["trials"] == N_TRIALS
    assert info["spent_s"] == pytest.approx(float(first.wall_s.astype(float).sum()))
    saved = 0.0
    for _, row in first.iterrows():
        for st in results.STAGES:
            if row[f"hit_{st}"] is True:
                saved += float(row[f"build_s_{st}"])
    assert saved > 0                                   # base and experts were reused
    assert info["saved_s"] == pytest.approx(saved)
    assert stages.loc["expert_jpeg", "built"] == 1 and stages.loc["expert_jpeg", "hits"] >= 2


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


@pytest.mark.slow
def test_paired_differences_are_seed_by_seed(built: Built) -> None:
    df, a = built.df, _analysis(built)
    best = a.best
    if best == 0:
        pytest.skip("the sampled trials did not beat the paper setting")
    d = [(_hand_table(df, best, s) - _hand_table(df, 0, s)).loc["fusiondistill"] for s in (0, 1)]
    p = a.paired
    assert list(p.index) == ["JPEG", "AWGN", "Avg", "Clean"] and (p.n == 2).all()
    np.testing.assert_allclose(p["diff"].to_numpy(), _np((d[0] + d[1]) / 2))
    np.testing.assert_allclose(p.half.to_numpy(), T975_DF1 * _np((d[0] - d[1]).abs()) / 2)
    np.testing.assert_allclose((p.hi - p.lo).to_numpy(), 2 * p.half.to_numpy())


@pytest.mark.slow
def test_one_seed_report_says_no_interval_is_possible(built: Built) -> None:
    a = _analysis(built, built.df[built.df.seed == 0])
    t = next(iter(a.tables.values()))
    assert t.seeds == [0] and t.half.isna().all().all()
    r = report.render(a)
    assert "one seed (0): no interval" in r.html
    if a.best != a.baseline:
        assert a.paired.half.isna().all() and "no interval is possible" in r.html


@pytest.mark.slow
def test_parameter_sections(built: Built) -> None:
    a = _analysis(built)
    pt = a.per_trial
    assert a.importance is not None and a.importance.sum() == pytest.approx(1.0)
    assert {"fusion.method", "distill.loss"} <= set(a.slices.param)
    s = a.surface
    assert set(s.trial) == set(pt[pt["param_distill.loss"] == "logit"].trial)
    assert s.loc[s.trial == 1, "distill.temperature"].item() == pytest.approx(4.0)
    w = a.weights
    assert list(w.columns) == ["trial", "value", "jpeg", "awgn"]
    np.testing.assert_allclose(w[["jpeg", "awgn"]].sum(axis=1), 1.0)
    # trial 1: u = (0.3, 0.6) -> w_i = -log u_i / sum_j -log u_j (space.py's simplex)
    e = -np.log([0.3, 0.6])
    np.testing.assert_allclose(w.loc[w.trial == 1, ["jpeg", "awgn"]].to_numpy()[0], e / e.sum())


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
    fig = report.fig_pareto(pt, [0, 2, 3], ["acc", "cost"])
    assert sorted(fig.data[1].x) == [0.4, 0.5, 0.6]


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
    a = report.analyse(df, st, [], objectives=a_objectives(), methods=["fusiondistill"],
                       study_name="f")
    r = report.render(a)
    assert a.best is None and a.tables == {} and a.budget["states"] == {"FAIL": 1}
    assert "No completed trial with test results yet" in r.html
    assert "at least 2 completed trials" in r.html
    assert set(r.figures) <= {"budget"}
    # a launched study with no result file yet
    empty = report.analyse(pd.DataFrame(), st, [], objectives=a_objectives(),
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


def _headless(url: str, profile: Path, screenshot: Path, budget_ms: int = 8000
              ) -> tuple[str, str]:
    """(dumped DOM after the page's scripts ran, Chromium's stderr with console messages)."""
    r = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
         "--enable-logging=stderr", "--v=0", "--dump-dom", f"--screenshot={screenshot}",
         "--window-size=1280,2000", url],
        capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout, r.stderr


class _Figures(HTMLParser):
    """Per plotly figure div: how many rendered plotly SVGs (class main-svg) it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.svgs: dict[str, int] = {}
        self.stack: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "div":
            fig = a.get("id") if "plotly-graph-div" in (a.get("class") or "") else None
            self.stack.append(fig)
            if fig:
                self.svgs[fig] = 0
        if tag == "svg" and "main-svg" in (a.get("class") or "").split():
            for fig in reversed(self.stack):
                if fig:
                    self.svgs[fig] += 1
                    break

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self.stack:
            self.stack.pop()


@pytest.mark.slow
def test_report_renders_in_headless_chromium(built: Built, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    dom, err = _headless(built.html.as_uri(), tmp_path / "profile", shot)
    p = _Figures()
    p.feed(dom)
    assert set(p.svgs) == {f"fig-{f}" for f in _figures(built)}
    assert all(n >= 1 for n in p.svgs.values()), p.svgs           # every figure drew
    console = [ln for ln in err.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert not console, "\n".join(console)                       # the page logs nothing
    assert shot.exists() and shot.stat().st_size > 50_000


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
    assert len(detail["trials"]) == N_TRIALS
    assert all(t["state"] == "Complete" for t in detail["trials"])
    pushed = {g["id"]: json.loads(g["graph_object"]) for g in detail["plotly_graph_objects"]}
    assert set(pushed) == {f"report-{f}" for f in set(report.PUSHED) & _figures(built)}
    assert all(g["data"] for g in pushed.values())
    best = _hand_best(built.df)
    body = detail["note"]["body"]
    assert f"Best on validation: trial {best}" in body and "Trial 0 is the baseline" in body
    assert "| fusiondistill |" in body
    # the study page itself draws them (plotly titles land in the SVG text)
    ARTIFACTS.mkdir(exist_ok=True)
    dom, _ = _headless(f"{dashboard}/dashboard/studies/{sid}", tmp_path / "profile",
                       ARTIFACTS / "dashboard.png", budget_ms=15000)
    for g in pushed.values():
        title = g["layout"]["title"]["text"]
        assert title.split(" (")[0].replace("&", "&amp;") in dom, title


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
