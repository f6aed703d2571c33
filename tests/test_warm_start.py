"""Studies that build on studies (study/warm_start.py): a real toy study, then a second one
with another space that starts from its best configurations, translated by where each
parameter acts; values outside the new space reported, never silently dropped; a warm start
that cannot be read refused with exit 2 and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState
from toy_studies import journal_study

from study import cli, warm_start

PIPELINE = """pipeline:
  preset: smoke
  methods: [fusiondistill]
  degradations: [jpeg, awgn]
  data: {synthetic_train: 300, val_size: 60, synthetic_test: 60}
  base: {epochs: 1}
  expert: {epochs: 1}
  distill: {epochs: 1, milestones: [], lr: 0.001, temperature: 4.0}
  eval: {test_level_step: 50, val_level_step: 50}
"""
EARLIER = """study: {name: earlier, n_trials: 4, sampler: random, pruner: none, seed: 3}
executor: {backend: debug}
""" + PIPELINE + """space:
  distill.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  distill.temperature: {type: float, low: 1.0, high: 8.0}
"""
# the same pipeline; the learning rate on a narrower range, the temperature held at 4, the
# fusion method searched instead
LATER = """study:
  name: later
  n_trials: 3
  sampler: random
  pruner: none
  warm_start: {from: earlier.yaml, top_k: 2}
executor: {backend: debug}
""" + PIPELINE + """space:
  distill.lr: {type: float, low: 5.0e-4, high: 2.0e-3, log: true}
  fusion.method: {type: categorical, choices: [uniform, ties]}
"""


def _launch(space: Path, results: Path) -> int:
    return cli.main(["launch", "--space", str(space), "--results", str(results),
                     "--log-level", "warning"])


@pytest.mark.slow
def test_a_study_starts_from_an_earlier_studys_best(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "earlier.yaml").write_text(EARLIER)
    (tmp_path / "later.yaml").write_text(LATER)
    assert _launch(tmp_path / "earlier.yaml", tmp_path) == 0
    earlier = journal_study(tmp_path, "earlier").trials
    done = [t for t in earlier if t.state == TrialState.COMPLETE]
    top = sorted(done, key=lambda t: (-t.values[0], t.number))[:2]
    capsys.readouterr()

    assert _launch(tmp_path / "later.yaml", tmp_path) == 0
    out = capsys.readouterr().out
    later = journal_study(tmp_path, "later").trials
    assert later[0].user_attrs.get("baseline")                   # the baseline stays trial 0
    seeded = [t for t in later if warm_start.ATTR in t.user_attrs]
    assert [t.user_attrs[warm_start.ATTR] for t in seeded] == [
        {"from": "earlier", "trial": t.number} for t in top]
    for new, old in zip(seeded, top, strict=True):
        assert new.state == TrialState.COMPLETE
        lr = old.params["distill.lr"]
        if 5.0e-4 <= lr <= 2.0e-3:                            # inside the new range: carried
            assert new.params["distill.lr"] == pytest.approx(lr)
        else:                                                 # outside: said, then sampled
            assert f"trial {old.number} of 'earlier': distill.lr={lr!r} is outside" in out
            assert 5.0e-4 <= new.params["distill.lr"] <= 2.0e-3
        # the earlier study's fusion method (the preset's) is one of this space's choices
        assert new.params["fusion.method"] == earlier[0].user_attrs["values"].get(
            "fusion.method", "uniform")
        # a searched value this study holds fixed is said, not silently dropped
        temperature = old.params["distill.temperature"]
        said = (f"trial {old.number} of 'earlier': distill.temperature={temperature!r} is "
                "not searched here; this study holds it at 4.0") in out
        assert said == (temperature != 4.0)             # the same value loses nothing
    assert "warm start: 2 configuration(s) of study 'earlier' enqueued" in out


@pytest.mark.parametrize(("source", "says"), [
    ("missing.yaml", "missing.yaml"),
    ("earlier.yaml", "has not been launched yet"),
])
def test_a_warm_start_that_cannot_be_read_is_refused_writing_nothing(
        source: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "earlier.yaml").write_text(EARLIER)
    later = tmp_path / "later.yaml"
    later.write_text(LATER.replace("from: earlier.yaml", f"from: {source}"))
    results = tmp_path / "results"
    assert _launch(later, results) == 2
    err = capsys.readouterr().err
    assert str(later) in err and "study.warm_start.from" in err and says in err, err
    assert "Traceback" not in err
    assert not (results / "later").exists()


def test_a_warm_start_key_of_the_wrong_shape_is_refused(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    later = tmp_path / "later.yaml"
    later.write_text(LATER.replace("top_k: 2", "top_k: 0"))
    assert _launch(later, tmp_path) == 2
    err = capsys.readouterr().err
    assert "study.warm_start.top_k" in err and "Traceback" not in err, err
