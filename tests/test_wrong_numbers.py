"""Never a wrong number without an error: results of another protocol or of another storage
must not be read as this run's, and an objective the pipeline cannot produce is refused before
a trial trains. Each test failed on release 0.3."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from optuna.trial import TrialState
from toy_studies import journal_study, run_cli

from study import results, studyfile
from study.cache import StageCache
from study.pipeline import Pipeline

# equal validation and test sizes: 0.3's shared copies then gave a silently wrong table
# instead of a tensor size mismatch
TINY = ["device=cpu", "data.synthetic_train=300", "data.val_size=60", "data.synthetic_test=60",
        "degradations=[jpeg, awgn]", "eval.degradations=[jpeg, awgn]", "base.epochs=1",
        "base.milestones=[]", "expert.epochs=1", "methods=[oracle, modelsoups]",
        "study.objectives=[{method: modelsoups, metric: val.avg}]",
        "eval.test_level_step=50", "eval.val_level_step=50"]
QUICK = ["data.synthetic_train=400", "data.val_size=100", "data.synthetic_test=100",
         "degradations=[jpeg, awgn]", "base.epochs=1", "expert.epochs=1", "distill.epochs=1",
         "distill.milestones=[]", "methods=[fusiondistill]", "eval.test_level_step=50",
         "eval.val_level_step=50", "study.pruner=none", "study.baseline=false"]


def _table(cache: Path, *overrides: str) -> pd.DataFrame:
    sf = studyfile.load("smoke", [*TINY, *overrides], check_space=False).sf
    rows = Pipeline(sf.pipeline, StageCache(cache), log=lambda m: None).run().rows
    return results.paper_table([r for r in rows if r["split"] == "val"])


@pytest.mark.slow
def test_a_reference_run_does_not_lend_its_validation_copies_to_a_holdout_run(
        tmp_path: Path) -> None:
    """`study run --set protocol=reference` then `study run` on one cache: the holdout run's
    validation table must equal a fresh cache's. 0.3 keyed the copies without the protocol,
    and the holdout run read the reference run's (the test images) as its own."""
    shared = tmp_path / "shared"
    _table(shared, "protocol=reference")
    after_reference = _table(shared)
    fresh = _table(tmp_path / "fresh")
    pd.testing.assert_frame_equal(after_reference, fresh)


def test_a_new_storage_never_adopts_an_older_studys_results(tmp_path: Path) -> None:
    """The journal deleted (or study.storage changed), a new study of the same name starts
    again at trial 0: each new trial's own result is recorded, and the old trial N's file is
    moved aside. 0.3 dropped the new result ("a result is already on disk") and recorded the
    old one: a trial that ran with other parameters, or one that must fail, got another
    trial's value."""
    base = ["launch", "--space", "smoke", "--executor", "debug", "--n-trials", "2",
            "--results", str(tmp_path)]

    def launch(*sets: str) -> None:
        rc, out, err = run_cli([*base, *[x for s in (*QUICK, "study.name=again", *sets)
                                         for x in ("--set", s)]])
        assert rc == 0, out + err

    launch("study.seed=0")
    first = {t.number: t.params for t in journal_study(tmp_path, "again").trials}
    (tmp_path / "again" / "optuna.journal").unlink()
    launch("study.seed=7")   # other draws, same trial numbers
    st = journal_study(tmp_path, "again")
    assert {t.number: t.params for t in st.trials} != first
    for t in st.trials:
        assert t.state == TrialState.COMPLETE
        df = results.read_trial(tmp_path / "again", t.number)
        assert df is not None and results.belongs(
            results.trial_path(tmp_path / "again", t.number), t.user_attrs["result_id"])
        schema = results.Schema.of(studyfile.load("smoke", QUICK).sf.study.objectives, [])
        assert results.recorded_objectives(df, schema) == [t.value]
        assert df["param_distill.lr"].iloc[0] == t.user_attrs["values"]["distill.lr"]
    aside = sorted(p.name for p in (tmp_path / "again" / "trials").glob("*.corrupt-*"))
    assert len(aside) == 2 and all(p.startswith("trial-00000") for p in aside)
    # status and the loader read this storage's files only
    ids = {t.number: t.user_attrs["result_id"] for t in st.trials}
    assert sorted(results.load(tmp_path / "again", ids).trial.unique()) == [0, 1]


@pytest.mark.parametrize(("sets", "needle"), [
    (["methods=[oracle, fusiondistill]",
      "study.objectives=[{method: oracle, metric: val.clean}]"], "oracle has no clean"),
    (["eval.degradations=[blur]", "study.objectives=[{method: fusiondistill, "
      "metric: val.jpeg}]"], "does not evaluate 'jpeg'"),
    (["data.val_size=0"], "data.val_size is 0"),
], ids=["oracle_clean", "metric_not_evaluated", "no_validation_split"])
def test_an_objective_the_pipeline_cannot_produce_is_refused_up_front(
        sets: list[str], needle: str, tmp_path: Path) -> None:
    """Before: every trial trained fully, then failed (`KeyError: 'JPEG'` from pandas, or a
    NaN objective)."""
    rc, out, err = run_cli(["launch", "--space", "smoke", "--results", str(tmp_path),
                            *[x for s in sets for x in ("--set", s)]])
    assert rc == 2, out + err
    assert needle in err and "study.objectives" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())
