"""The results layout that scales: one summary row per trial beside its long rows, a compacted
summary that is only ever a cache, and files of another study or none moved aside."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from study import results

OBJECTIVE = "objective.fusiondistill.val.avg"


def _frame(trial: int, state: str = "COMPLETE", seeds: tuple[int, ...] = (0, 1)
           ) -> pd.DataFrame:
    rows = [{"model": m, "split": s, "degradation": d, "level": lv, "level_step": 1,
             "accuracy": 0.5, "n_images": 10}
            for m in ("fusing", "fusiondistill") for s in ("val", "test")
            for d, lv in (("clean", 0), ("jpeg", 3), ("jpeg", 7))]
    return results.trial_frame(
        study_name="lay", trial=trial, attempt=1, state=state,
        seed_rows=[(s, rows) for s in seeds] if state == "COMPLETE" else [],
        params={}, param_columns={}, stages={"base": {"key": "k", "hit": True, "build_s": 2.0}},
        objectives={OBJECTIVE: 0.5 if state == "COMPLETE" else None},
        extra={"wall_s": 3.0, "config_json": {"a": list(range(50))}})


def test_constants_once_per_trial_rows_only_per_row(tmp_path: Path) -> None:
    results.write_trial(tmp_path, 0, _frame(0), result_id="a")
    results.write_trial(tmp_path, 1, _frame(1, "PRUNED"), result_id="b")
    summary = pd.read_parquet(tmp_path / "summary")
    assert list(summary.trial) == [0, 1] and list(summary.n_rows) == [24, 0]
    assert list(summary.seeds) == ["[0, 1]", "[]"] and list(summary.result_id) == ["a", "b"]
    rows = pd.read_parquet(tmp_path / "trials")       # a trial without rows has no rows file
    assert list(rows.columns) == list(results.ROW_COLUMNS) and set(rows.trial) == {0}
    assert not results.trial_path(tmp_path, 1).exists()
    for path in (results.summary_path(tmp_path, 0), results.trial_path(tmp_path, 0)):
        assert results.belongs(path, "a")             # both files name their trial
    one = results.read_trial(tmp_path, 1)             # a row-less trial reads as one row
    assert one is not None and len(one) == 1 and one.model.isna().all()
    projected = results.load_rows(tmp_path, [0], ["accuracy", "seed"])
    assert list(projected.columns) == ["trial", "accuracy", "seed"] and len(projected) == 24


def test_the_compacted_summary_serves_while_current_and_not_once_a_file_changes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for n in range(3):
        results.write_trial(tmp_path, n, _frame(n), result_id=str(n))
    results.compact_summary(tmp_path)
    compact = tmp_path / "summary" / results.COMPACT_NAME
    assert len(pd.read_parquet(compact)) == 3
    assert len(pd.read_parquet(tmp_path / "summary")) == 3   # the folder read skips it
    # same size and mtime: the compacted row is read, the trial's file is never opened
    path = results.summary_path(tmp_path, 1)
    stat = path.stat()
    path.write_bytes(b"\0" * stat.st_size)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert list(results.load_summary(tmp_path).state) == ["COMPLETE"] * 3
    assert path.exists() and "moved aside" not in capsys.readouterr().err
    # rewritten (a requeued trial): its own file is read, not the stale compacted row
    results.write_trial(tmp_path, 1, _frame(1, "FAIL"), result_id="1")
    assert list(results.load_summary(tmp_path).state) == ["COMPLETE", "FAIL", "COMPLETE"]
    results.compact_summary(tmp_path)
    made_of = pq.read_schema(compact).metadata[results.COMPACT_KEY]
    assert b"trial-000001.parquet" in made_of
    assert list(pd.read_parquet(compact).sort_values("trial").state) == [
        "COMPLETE", "FAIL", "COMPLETE"]
    # a trial file gone (moved aside by someone): its compacted row is no result any more
    path.rename(path.with_name("elsewhere"))
    assert list(results.load_summary(tmp_path).trial) == [0, 2]


def test_unreadable_and_foreign_summaries_are_moved_aside_or_skipped(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for n in range(3):
        results.write_trial(tmp_path, n, _frame(n), result_id=str(n))
    results.compact_summary(tmp_path)
    garbage = results.summary_path(tmp_path, 2)
    garbage.write_bytes(b"PAR1 not a parquet file")
    assert list(results.load_summary(tmp_path, refresh=True).trial) == [0, 1]
    assert "is not a readable result file" in capsys.readouterr().err
    assert not garbage.exists() and len(list(garbage.parent.glob("*.corrupt-*"))) == 1
    assert list(results.load_summary(tmp_path).trial) == [0, 1]   # the refreshed cache agrees
    # trial 1 of an older study of this name: a reader skips it, a writer moves it aside
    assert list(results.load_summary(tmp_path, {0: "0", 1: "new"}).trial) == [0]
    assert results.summary_path(tmp_path, 1).exists()
    results.write_trial(tmp_path, 1, _frame(1, "FAIL"), result_id="new", replace=False)
    assert "holds another study's trial" in capsys.readouterr().err
    assert len(list(garbage.parent.glob("*.corrupt-*"))) == 2
    assert list(results.load_summary(tmp_path, {0: "0", 1: "new"}).state) == ["COMPLETE",
                                                                             "FAIL"]
    assert results.load_rows(tmp_path, [1]).empty           # the older trial's rows went too
    # the first writer wins: a later worker's result for the trial the launcher failed is
    # not written, rows included
    assert results.write_trial(tmp_path, 1, _frame(1), result_id="new", replace=False) is None
    assert not results.trial_path(tmp_path, 1).exists()


def test_a_trial_file_of_the_layout_before_summaries_still_reads(tmp_path: Path) -> None:
    """One wide file a trial (every column on every row), as release 0.3 wrote it."""
    wide = _frame(0).drop(columns=["schema_version"]).rename(columns={OBJECTIVE: "value_0"})
    table = pa.Table.from_pandas(wide, preserve_index=False)
    table = table.replace_schema_metadata({**table.schema.metadata,
                                           results.RESULT_ID_KEY: b"old"})
    results.trials_dir(tmp_path).mkdir(parents=True)
    pq.write_table(table, results.trial_path(tmp_path, 0))
    schema = results.Schema((OBJECTIVE,), {})
    summary = results.load_summary(tmp_path, {0: "old"}, schema)
    assert list(summary.trial) == [0] and summary[OBJECTIVE].iloc[0] == 0.5
    assert int(summary.schema_version.iloc[0]) == results.SCHEMA_VERSION
    assert len(results.load_rows(tmp_path, [0])) == 24
    assert len(results.load(tmp_path, schema=schema)) == 24
