"""`study compare`: the page putting several launched studies side by side, checked against
hand computations from each study's Parquet summary; its refusals; the page in headless
Chromium.

Three real toy studies (module fixture, debug executor, in-process `study launch`, one shared
stage cache so base and experts train once): `cmpa` and `cmpb` share their objective and the
parameter distill.lr, each searches one parameter of its own; `cmpc` searches distill.lr on
another objective (val.jpeg), the mismatch the page must warn about.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest
from toy_studies import run_cli

from study import compare, conclusions, results
from study.report.compare_page import render_comparison

if TYPE_CHECKING:   # the annotation only: importing test_report imports torch
    from test_report import Browser

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"

# tests/test_launch.py's QUICK_FD, in the study file itself (compare reads the files as they
# were launched): FusionDistill alone on 300 images, one epoch per stage, few levels.
PIPELINE = """
executor: {{backend: debug}}
pipeline:
  preset: smoke
  device: cpu
  data: {{synthetic_train: 300, val_size: 60, synthetic_test: 60}}
  degradations: [jpeg, awgn]
  methods: [fusiondistill]
  base: {{epochs: 1}}
  expert: {{epochs: 1}}
  distill: {{epochs: 1, milestones: []}}
  eval: {{test_level_step: 50, val_level_step: 50}}
space:
  distill.lr: {{type: float, low: 3.0e-4, high: 3.0e-3, log: true}}
  {own}
"""
STUDY = """
study:
  name: {name}
  objectives: [{{method: fusiondistill, metric: {metric}, direction: maximize}}]
  n_trials: {n}
  sampler: random
  pruner: none
""" + PIPELINE
STUDIES = {   # name -> (metric, the parameter only it searches, trials)
    "cmpa": ("val.avg", "distill.loss: {type: categorical, choices: [feature, logit]}", 3),
    "cmpb": ("val.avg", "fusion.method: {type: categorical, choices: [uniform, "
                        "task_arithmetic]}", 3),
    "cmpc": ("val.jpeg", "", 2),
}


@dataclass(frozen=True)
class Launched:
    files: dict[str, Path]
    results: Path


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Launched:
    tmp = tmp_path_factory.mktemp("compare")
    res = tmp / "results"
    files = {}
    for name, (metric, own, n) in STUDIES.items():
        files[name] = tmp / f"{name}.yaml"
        files[name].write_text(STUDY.format(name=name, metric=metric, n=n, own=own))
        rc, out, err = run_cli(["launch", "--space", str(files[name]), "--results", str(res),
                                "--quiet"])
        assert rc == 0, out + err
    return Launched(files, res)


def _compare(launched: Launched, *names: str, extra: tuple[str, ...] = ()
             ) -> tuple[int, str, str]:
    return run_cli(["compare", *[str(launched.files[n]) for n in names], "--results",
                    str(launched.results), *extra])


def _page(launched: Launched, *names: str) -> str:
    rc, out, err = _compare(launched, *names)
    assert rc == 0, out + err
    path = launched.results / compare.default_name(list(names))
    assert f"compare: {path}" in out
    return path.read_text()


def _row(page: str, name: str) -> dict[str, str]:
    """The study's row of the first table, by column heading, as text."""
    table = page[page.index("id='studies-table'"):]
    head = [html.unescape(h) for h in re.findall(r"<th>(.*?)</th>", table.split("</thead>")[0])]
    row = re.search(rf"<tr data-study='{name}'>(.*?)</tr>", table)
    assert row is not None, name
    cells = [html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))]
    return dict(zip(head, cells))


def _hand(launched: Launched, name: str) -> tuple[int, float, float]:
    """Best trial and its value, and the baseline's (trial 0: the file's own pipeline), from
    the study's summary: the best completed first objective, the earlier trial on a tie."""
    metric = STUDIES[name][0]
    s = results.load_summary(launched.results / name)
    done = s[s.state == "COMPLETE"].set_index("trial")[
        results.objective_column("fusiondistill", metric)].astype(float)
    best = int(done[done == done.max()].index.min())
    return best, float(done[best]), float(done[0])


def _section(page: str, anchor: str) -> str:
    start = page.index(f'id="{anchor}"')
    end = page.find("<h2", start)
    return page[start:end if end > 0 else None]


@pytest.mark.slow
def test_each_study_gets_its_row(launched: Launched) -> None:
    page = _page(launched, "cmpa", "cmpb")
    for name in ("cmpa", "cmpb"):
        best, best_value, baseline_value = _hand(launched, name)
        row = _row(page, name)
        assert row["study"] == name
        assert row["objective"] == "val.avg of fusiondistill (maximize)"
        assert row["trials"] == f"complete {STUDIES[name][2]}"
        assert row["best trial"] == str(best) and row["baseline trial"] == "0"
        assert row["best"] == f"{best_value:.4f}"
        assert row["baseline"] == f"{baseline_value:.4f}"
        assert row["best - baseline"] == f"{best_value - baseline_value:+.4f}"
        noise = row["what the noise allows"]
        if best == 0:
            assert "The baseline (trial 0) is the best trial" in noise
        else:   # one seed: the binomial band, on validation and on test
            assert noise.count("binomial noise alone spans") == 2, noise
            assert f"best {100 * best_value:.2f} vs baseline {100 * baseline_value:.2f}" in noise
        assert float(row["device-hours"]) > 0


@pytest.mark.slow
def test_shared_parameters_are_the_ones_two_studies_search(launched: Launched) -> None:
    page = _page(launched, "cmpa", "cmpb")
    shared = _section(page, "shared")
    assert "<h3 id='shared-distill.lr'>distill.lr</h3>" in shared
    assert "distill.loss" not in shared and "fusion.method" not in shared   # one study each
    assert 'id="fig-shared-distill_lr"' in shared
    for name in ("cmpa", "cmpb"):   # each study's best value of it
        best = _hand(launched, name)[0]
        s = results.load_summary(launched.results / name)
        lr = float(s.set_index("trial").at[best, "param_distill.lr"])
        assert re.search(rf"<td class='text'>{name}</td><td class='text'>float \[0.0003, "
                         rf"0.003\][^<]*</td><td>{STUDIES[name][2]}</td><td class='text'>"
                         rf"{lr:.3g}</td>", shared), shared[:3000]


@pytest.mark.slow
def test_a_note_says_when_objectives_differ_and_only_then(launched: Launched) -> None:
    same = _page(launched, "cmpa", "cmpb")
    assert "not-comparable" not in same and "objectives differ" not in same
    assert "fusiondistill val.avg" in _section(same, "shared")   # the axis names the objective
    rc, out, err = _compare(launched, "cmpa", "cmpc")
    assert rc == 0, err
    assert "compare: note: The studies' objectives differ" in out
    differ = (launched.results / "compare-cmpa-cmpc.html").read_text()
    note = differ[differ.index("id='not-comparable'"):differ.index("</div>", differ.index(
        "id='not-comparable'"))]
    assert "objectives differ" in note and "not comparable" in note
    assert "cmpa: val.avg of fusiondistill" in note and "cmpc: val.jpeg of fusiondistill" in note
    assert _row(differ, "cmpc")["objective"] == "val.jpeg of fusiondistill (maximize)"
    assert "<h3 id='shared-distill.lr'>" in differ   # still shown
    title = differ.replace("\\u003cbr\\u003e", " ")   # plotly JSON: <br> escaped, the wrap
    assert "values not comparable across studies" in title


@pytest.mark.slow
def test_out_writes_where_asked(launched: Launched, tmp_path: Path) -> None:
    out = tmp_path / "deep" / "side-by-side.html"
    rc, _, err = _compare(launched, "cmpb", "cmpa", extra=("--out", str(out)))
    assert rc == 0, err
    page = out.read_text()
    assert page.index("data-study='cmpb'") < page.index("data-study='cmpa'")   # as given
    rc, _, err = _compare(launched, "cmpa", "cmpb", extra=("--out", str(tmp_path)))
    assert rc == 2 and "--out" in err and "is a directory" in err


@pytest.mark.slow
def test_a_study_never_launched_is_refused_and_nothing_written(launched: Launched,
                                                                tmp_path: Path) -> None:
    never = tmp_path / "never.yaml"
    never.write_text(STUDY.format(name="never", metric="val.avg", n=2, own=""))
    before = sorted(p.name for p in launched.results.iterdir())
    out = tmp_path / "page.html"
    for extra in ((), ("--out", str(out))):
        rc, _, err = run_cli(["compare", str(launched.files["cmpa"]), str(never), "--results",
                              str(launched.results), *extra])
        assert rc == 2, err
        assert str(never) in err and "has not been launched" in err
        assert "Traceback" not in err
    assert sorted(p.name for p in launched.results.iterdir()) == before
    assert not out.exists()
    rc, _, err = run_cli(["compare", str(launched.files["cmpa"]), str(launched.files["cmpa"]),
                          "--results", str(launched.results)])
    assert rc == 2 and "same study 'cmpa'" in err


def test_fewer_than_two_study_files_is_a_usage_error(tmp_path: Path) -> None:
    for argv in (["compare"], ["compare", "a.yaml"]):
        rc, _, err = run_cli([*argv, "--results", str(tmp_path)])
        assert rc == 2 and "usage: study compare" in err
    assert "at least 2 study files" in err and not list(tmp_path.iterdir())


def test_compare_imports_no_torch() -> None:
    """It runs where the report runs: a login node with the results and the storage only."""
    code = ("import sys, study.compare, study.commands.compare, study.report.compare_page; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'torchvision'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    from test_report import _browser  # the report tests' Chromium driver (DevTools pipe)

    with _browser(tmp_path / "profile") as b:
        yield b


@pytest.mark.slow
def test_compare_page_renders_in_headless_chromium(launched: Launched, browser: Browser) -> None:
    """Every figure draws, nothing is logged, titles and legends stay apart and inside."""
    from test_report import TITLES_JS, _layout_faults

    page = launched.results / "compare-cmpa-cmpb-cmpc.html"
    rc, _, err = _compare(launched, "cmpa", "cmpb", "cmpc")
    assert rc == 0, err
    b = browser
    t0 = time.perf_counter()
    b.open(page.as_uri(), "document.querySelectorAll('.js-plotly-plot .main-svg').length >= 1")
    drawn = b.js("[...document.querySelectorAll('.js-plotly-plot')].filter(d => "
                 "d.querySelector('.main-svg')).map(d => d.id)")
    assert drawn == ["fig-shared-distill_lr"]
    traces = b.js("document.getElementById('fig-shared-distill_lr').data.filter(t => "
                  "t.showlegend !== false).map(t => t.name)")
    assert traces == ["cmpa", "cmpb", "cmpc"]
    faults = _layout_faults(b.js(TITLES_JS))
    assert not faults, "\n".join(faults)
    assert not b.console(), "\n".join(b.console())
    b.screenshot(ARTIFACTS / "compare.png")
    assert (ARTIFACTS / "compare.png").stat().st_size > 50_000
    assert time.perf_counter() - t0 < 120


def _side(name: str, params: list[str], metric: str = "val.avg", dataset: str = "synthetic",
          **facts: object) -> compare.Side:
    """A hand-made study row: no trials unless `facts` say otherwise."""
    given: dict[str, object] = dict(
        name=name, source=f"{name}.yaml", dataset=dataset,
        objectives=[("fusiondistill", metric, "maximize")], states={}, reruns=0, best=None,
        best_value=None, baseline=None, baseline_value=None, baseline_note="no baseline",
        verdicts=[], compute_h=None, params=dict.fromkeys(params),
        points=pd.DataFrame(columns=["param", "kind", "trial", "x", "value"]), best_params={})
    return compare.Side(**{**given, **facts})  # type: ignore[arg-type]


def test_shared_parameters_and_notes_by_hand() -> None:
    """The pure parts on hand-made sides: who shares what, and when the notes speak."""
    side = _side
    a, b, c = side("a", ["x", "y"]), side("b", ["y", "z"]), side("c", ["z", "x"])
    assert compare.shared_parameters([a, b]) == {"y": ["a", "b"]}
    assert compare.shared_parameters([a, b, c]) == {"x": ["a", "c"], "y": ["a", "b"],
                                                    "z": ["b", "c"]}
    assert compare.mismatch_notes([a, b, c]) == []
    notes = compare.mismatch_notes([a, side("d", [], metric="test.avg", dataset="cifar10")])
    assert len(notes) == 2 and "objectives differ" in notes[0] and "datasets" in notes[1]
    assert json.dumps(compare.default_name(["a", "b"])) == '"compare-a-b.html"'


def test_a_row_with_a_verdict_states_the_noise() -> None:
    """The row of a study whose best is not its baseline carries the report's sentences
    (conclusions.Verdict), one per headline metric; a study without a baseline says why."""
    val = conclusions.Verdict("val.avg", "fusiondistill", 45.0, 40.0, 5.0, 7.8, 1, 300,
                              "binomial")
    test = conclusions.Verdict("test.avg", "fusiondistill", 44.0, 41.0, 3.0, 1.5, 3, 300, "t")
    won = _side("won", ["x"], states={"COMPLETE": 4, "PRUNED": 1}, reruns=2, best=3,
                best_value=0.45, baseline=0, baseline_value=0.40, verdicts=[val, test],
                compute_h=1.25)
    alone = _side("alone", ["y"], best=1, best_value=0.5, baseline_note="No baseline trial: "
                  "this study was launched without one.")
    page, figures = render_comparison(compare.Comparison(
        [won, alone], compare.shared_parameters([won, alone]),
        compare.mismatch_notes([won, alone])))
    row = _row(page, "won")
    assert row["trials"] == "complete 4, pruned 1 (+2 confirmation re-runs)"
    assert (row["best"], row["baseline"], row["best - baseline"]) == ("0.4500", "0.4000",
                                                                     "+0.0500")
    assert row["what the noise allows"] == f"{val.sentence()} {test.sentence()}"
    assert "binomial noise alone spans +-7.80 points" in row["what the noise allows"]
    assert "95% interval over 3 paired replicate seeds [+1.50, +4.50]" in \
        row["what the noise allows"]
    assert row["device-hours"] == "1.25"
    other = _row(page, "alone")
    assert (other["baseline trial"], other["baseline"], other["best - baseline"]) == \
        ("-", "-", "-")
    assert other["what the noise allows"] == "No baseline trial: this study was launched " \
        "without one."
    assert "No parameter (by config path) is searched in two or more" in page
    assert "Searched: won: x; alone: y." in page and figures == {}
