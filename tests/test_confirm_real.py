"""`study confirm` on real images: the shipped search_spaces/confirm_real.yaml, shrunk, runs its
search on data/cifar10-mini and then the confirmation with 3 new seeds. What is checked is the
protocol's structure, not whether the searched configuration wins: a verdict exists, every
interval is over the 3 seeds, the configuration compared with the baseline was chosen on
validation, and the re-runs are tagged, on seeds the search never used, and never pruned."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from optuna.trial import TrialState
from toy_studies import journal_study, run_cli

from study import confirm, status, studyfile

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "search_spaces" / "confirm_real.yaml"
# The shipped file at a CI size: 400 of the sample's 2,000 training images (100 of them held
# out), two degradations, one epoch a stage, every 50th level; 3 search trials (the baseline
# and 2 drawn), both drawn ones confirmed.
SMALL = [f"data.root={ROOT / 'data' / 'cifar10-mini'}", "data.train_subset=400",
         "data.val_size=100", "degradations=[jpeg, awgn]", "base.epochs=1", "base.milestones=[1]",
         "expert.epochs=1", "expert.t_max=1", "distill.epochs=1", "distill.milestones=[1]",
         "eval.test_level_step=50", "eval.val_level_step=50", "study.n_trials=3"]
TOP, SEEDS = 2, 3


@pytest.mark.slow
def test_search_then_confirm_on_real_images(tmp_path: Path) -> None:
    sets = [x for s in SMALL for x in ("--set", s)]
    common = ["--space", str(SPACE), "--results", str(tmp_path), "--executor", "debug",
              "--log-level", "warning", *sets]
    rc, out, err = run_cli(["launch", *common])
    assert rc == 0, out + err
    rc, out, err = run_cli(["confirm", *common, "--top", str(TOP), "--seeds", str(SEEDS)])
    assert rc == 0, out + err
    assert "verdict: " in out

    ld = studyfile.load(SPACE, SMALL, check_space=False)
    st = journal_study(tmp_path, ld.sf.study.name)
    trials = st.get_trials()
    search = status.search_trials(trials)
    assert [t.state for t in search] == [TrialState.COMPLETE] * 3
    assert search[0].user_attrs.get("baseline")

    # the plan: the top trials by the objective on validation, seeds the search never used
    plan = st.user_attrs[confirm.ATTR]
    by_val = sorted(search[1:], key=lambda t: -t.values[0])
    assert plan["baseline"] == 0 and plan["candidates"] == [t.number for t in by_val[:TOP]]
    assert len(plan["seeds"]) == SEEDS and min(plan["seeds"]) > ld.sf.pipeline.seed

    # the re-runs: tagged with their configuration and seed, one per pair, never pruned
    reruns = [t for t in trials if status.is_confirmation(t)]
    pairs = {(t.user_attrs[confirm.ATTR]["of"], t.user_attrs[confirm.ATTR]["seed"])
             for t in reruns}
    assert len(reruns) == len(pairs) == (TOP + 1) * SEEDS
    assert pairs == {(n, s) for n in (0, *plan["candidates"]) for s in plan["seeds"]}
    for t in reruns:
        assert t.state == TrialState.COMPLETE and t.intermediate_values == {}, t.number
        source = st.trials[t.user_attrs[confirm.ATTR]["of"]]
        assert t.params == source.params
        assert bool(t.user_attrs.get("baseline")) == (source.number == 0)

    # the summary: every configuration over the 3 seeds, the chosen one best on validation,
    # its difference with the baseline on test paired over the 3 seeds
    c = confirm.summarize(trials, tmp_path / ld.sf.study.name, ld)
    assert c.seeds == plan["seeds"]
    assert [x.role for x in c.configs] == ["baseline"] + ["candidate"] * TOP
    for x in c.configs:
        assert sorted(x.val) == sorted(x.test) == plan["seeds"]
        for split in ("val", "test"):
            mean, half = x.interval(split)
            assert not math.isnan(mean) and not math.isnan(half)
        for seed, rows in x.rows.items():   # each re-run ran its own seed
            assert {r["seed"] for r in rows} == {seed}
    candidates = [x for x in c.configs if x.role == "candidate"]
    assert c.chosen == max(candidates, key=lambda x: x.interval("val")[0]).trial
    assert c.verdict is not None and c.verdict.how == "t" and c.verdict.seeds == SEEDS
    assert c.verdict.metric == "test.avg" and not math.isnan(c.verdict.half)
    assert isinstance(c.claim, bool)
    assert f"chosen on validation: trial {c.chosen}" in out
