"""The results schema you can filter: parameters in their own types (only lists and dicts as
JSON text), objective columns named after their objective, a schema version; files of release
0.3 read as the current schema."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from toy_studies import assert_parquet_schemas, journal_study, run_cli

from study import results, studyfile

QUICK = ["data.synthetic_train=400", "data.val_size=100", "data.synthetic_test=100",
         "degradations=[jpeg, awgn]", "base.epochs=1", "expert.epochs=1", "distill.epochs=1",
         "distill.milestones=[]", "methods=[fusiondistill]", "eval.test_level_step=50",
         "eval.val_level_step=50", "study.pruner=none", "study.sampler=random"]
OBJECTIVE = "objective.fusiondistill.val.avg"


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's smoke study at toy scale: 4 trials of its real space."""
    root = tmp_path_factory.mktemp("schema")
    rc, out, err = run_cli(["launch", "--space", "smoke", "--executor", "debug", "--n-trials",
                            "4", "--results", str(root),
                            *[x for s in [*QUICK, "study.name=filter"] for x in ("--set", s)]])
    assert rc == 0, out + err
    return root


def test_a_real_studys_parquet_filters_by_category_and_by_objective(smoke_study: Path
                                                                    ) -> None:
    """On the summary (one row per trial), as results/README.md shows; on the rows once the
    summary's columns are joined on `trial`, as it shows too."""
    df = pd.read_parquet(smoke_study / "filter" / "summary")
    assert df.trial.is_unique
    st = journal_study(smoke_study, "filter")
    assert set(df.schema_version) == {results.SCHEMA_VERSION}
    methods = {t.number: t.user_attrs["values"]["fusion.method"] for t in st.trials}
    for method in set(methods.values()):   # 0.3 stored '"uniform"': 0 rows matched
        chosen = df[df["param_fusion.method"] == method]
        assert set(chosen.trial) == {n for n, m in methods.items() if m == method}
    values = {t.number: t.value for t in st.trials}
    best = max(values, key=lambda n: values[n])
    top = df[df[OBJECTIVE] == df[OBJECTIVE].max()]
    assert set(top.trial) == {best} and "value_0" not in df.columns
    assert str(df["param_distill.lr"].dtype) == "Float64"
    assert (df["param_distill.lr"] < 1.0).all()   # a number, not JSON text
    assert str(df["param_distill.loss"].dtype) == "string"
    assert assert_parquet_schemas(smoke_study / "filter") == 4
    rows = pd.read_parquet(smoke_study / "filter" / "trials")
    joined = rows.merge(df[["trial", "param_fusion.method", OBJECTIVE]], on="trial")
    assert len(joined) == len(rows) > 0
    for method in set(methods.values()):
        chosen = joined[joined["param_fusion.method"] == method]
        assert set(chosen.trial) == {n for n, m in methods.items() if m == method}
    assert set(joined[joined[OBJECTIVE] == df[OBJECTIVE].max()].trial) == {best}


def test_the_rows_hold_only_per_row_columns_and_the_summary_one_row_per_trial(
        smoke_study: Path) -> None:
    """A trial's constants (config, provenance, parameters, stage keys) are stored once, in
    its summary row; the readers give back only the columns and trials asked."""
    sdir = smoke_study / "filter"
    rows = pd.read_parquet(sdir / "trials")
    assert list(rows.columns) == list(results.ROW_COLUMNS)
    assert str(rows.model.dtype) == "category"       # repeated strings dictionary-encoded
    summary = results.load_summary(sdir)
    assert sorted(summary.trial) == [0, 1, 2, 3] and "config_json" in summary.columns
    assert {"model", "accuracy"}.isdisjoint(summary.columns)
    assert (summary.n_rows == rows.groupby("trial").size().reindex(
        summary.trial, fill_value=0).to_numpy()).all()
    some = results.load_rows(sdir, [1], ["accuracy"])
    assert list(some.columns) == ["trial", "accuracy"] and set(some.trial) == {1}
    assert len(some) == int(summary.n_rows[summary.trial == 1].iloc[0])
    whole = results.load(sdir)
    assert len(whole) == len(rows) + int((summary.n_rows == 0).sum())
    with pytest.raises(ValueError, match="load_summary"):
        results.load_rows(sdir, [1], ["state"])
    # the launch left the compacted summary of its trials (it refreshes it as it goes)
    compact = pd.read_parquet(sdir / "summary" / results.COMPACT_NAME)
    assert sorted(compact.trial) == [0, 1, 2, 3]


def test_files_of_release_0_3_are_read_as_the_current_schema(smoke_study: Path,
                                                             tmp_path: Path) -> None:
    """A 0.3 file: value_0 and JSON-quoted strings, no schema_version. results.load with the
    study's schema renames and parses it, so one study folder may hold both."""
    ld = studyfile.load("smoke", [*QUICK, "study.name=filter"], check_space=False)
    schema = results.Schema.of(ld.sf.study.objectives, ld.space.params)
    new = results.read_trial(smoke_study / "filter", 0)
    assert new is not None
    old = new.drop(columns=["schema_version"]).rename(columns={OBJECTIVE: "value_0"})
    for name, column in schema.params.items():
        if not column.json and str(old[f"param_{name}"].dtype) == "string":
            old[f"param_{name}"] = old[f"param_{name}"].map(
                lambda v: None if pd.isna(v) else f'"{v}"').astype("string")
    sdir = tmp_path / "mixed"
    results.write_trial(sdir, 0, old, result_id=None)
    results.write_trial(sdir, 1, new.assign(trial=1), result_id=None)
    both = results.load(sdir, schema=schema)
    assert set(both.schema_version) == {results.SCHEMA_VERSION}
    for trial in (0, 1):
        part = both[both.trial == trial]
        assert part[OBJECTIVE].iloc[0] == new[OBJECTIVE].iloc[0]
        assert part["param_distill.loss"].iloc[0] == new["param_distill.loss"].iloc[0]
    assert results.recorded_objectives(old, schema) == [float(new[OBJECTIVE].iloc[0])]


def test_each_objective_names_its_column_once(tmp_path: Path) -> None:
    rc, _, err = run_cli(["launch", "--space", "smoke", "--dry-run", "--results",
                          str(tmp_path), "--set", "study.objectives=[{method: fusiondistill, "
                          "metric: val.avg}, {method: fusiondistill, metric: val.avg, "
                          "direction: minimize}]"])
    assert rc == 2 and "at most once" in err
