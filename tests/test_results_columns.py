"""The exact columns of the smoke study's result files, written out: renaming, dropping or
retyping one fails here.

Every reader of the results (`study report`, `study status`, a researcher's pandas) finds its
numbers by column name, and the files of one study must agree column for column. The other
schema tests take their expected names from results.EXTRA_COLUMNS and the stage registry, so a
column renamed there still passes them; the lists below are the oracle instead, written out for
schema version 2 (results.SCHEMA_VERSION, release 0.4: a trial's summary row, its long rows and
its learning curves), in the order the files hold them. A deliberate schema change (a new
column) updates them and the version, and says so.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest

import study
from study import cli, launcher, storage, studyfile
from study.executors import LocalExecutor

# One smoke trial at its smallest: one degradation, one epoch a stage, the fusiondistill method.
TINY = ["data.synthetic_train=200", "data.val_size=40", "data.synthetic_test=40",
        "degradations=[jpeg]", "base.epochs=1", "expert.epochs=1", "distill.epochs=1",
        "distill.milestones=[1]", "eval.test_level_step=100", "eval.val_level_step=100",
        "study.pruner=none", "methods=[fusiondistill]", "study.baseline=false"]

STAGES = ["base", "expert_jpeg", "expert_blur", "expert_awgn", "expert_saltpepper",
          "modelsoups", "fusing", "fusiondistill", "scratch", "vanilla_ft"]
# Arrow types as pyarrow names them: pandas' string, Int64, Float64 and boolean columns
STR, INT, FLOAT, BOOL = "large_string", "int64", "double", "bool"
# Arrow's type of a pandas category column of fewer than 128 values
CAT = "dictionary<values=string, indices=int8, ordered=0>"
# summary/trial-N.parquet of the smoke study (its objective and six parameters), schema
# version 2: one row per trial, everything that is the same on all of its rows
SUMMARY_COLUMNS = {
    # which trial, which attempt, how it ended
    "study": STR, "trial": INT, "attempt": INT, "state": STR, "schema_version": INT,
    # the study file's objective, named after it
    "objective.fusiondistill.val.avg": FLOAT,
    # the run, its failure if any, where and with what it ran
    "wall_s": FLOAT, "error": STR, "fail_kind": STR, "fail_reason": STR, "device": STR,
    "gpu": STR, "amp": STR, "protocol": STR, "git_commit": STR, "host": STR,
    "study_version": STR, "optuna_version": STR, "torch_version": STR, "python_version": STR,
    "plugins": STR, "config_json": STR,
    # every network's cache key, whether it was a cache hit, and its build time
    "key_base": STR, "hit_base": BOOL, "build_s_base": FLOAT,
    "key_expert_jpeg": STR, "hit_expert_jpeg": BOOL, "build_s_expert_jpeg": FLOAT,
    "key_expert_blur": STR, "hit_expert_blur": BOOL, "build_s_expert_blur": FLOAT,
    "key_expert_awgn": STR, "hit_expert_awgn": BOOL, "build_s_expert_awgn": FLOAT,
    "key_expert_saltpepper": STR, "hit_expert_saltpepper": BOOL,
    "build_s_expert_saltpepper": FLOAT,
    "key_modelsoups": STR, "hit_modelsoups": BOOL, "build_s_modelsoups": FLOAT,
    "key_fusing": STR, "hit_fusing": BOOL, "build_s_fusing": FLOAT,
    "key_fusiondistill": STR, "hit_fusiondistill": BOOL, "build_s_fusiondistill": FLOAT,
    "key_scratch": STR, "hit_scratch": BOOL, "build_s_scratch": FLOAT,
    "key_vanilla_ft": STR, "hit_vanilla_ft": BOOL, "build_s_vanilla_ft": FLOAT,
    # search_spaces/smoke.yaml's six parameters, each in its own type
    "param_fusion.method": STR, "param_fusion.lambdas": FLOAT, "param_distill.loss": STR,
    "param_distill.temperature": FLOAT, "param_distill.alpha": FLOAT, "param_distill.lr": FLOAT,
    # the seeds with evaluation rows (JSON list), how many rows, the study's id of the result
    "seeds": STR, "n_rows": INT, "result_id": STR,
}
# trials/trial-N.parquet: one row per (seed, model, split, degradation, level), joined to the
# summary on `trial`
ROW_COLUMNS = {
    "trial": INT, "seed": INT, "model": CAT, "split": CAT, "degradation": CAT, "level": INT,
    "level_step": INT, "accuracy": FLOAT, "n_images": INT,
}
# curves/trial-N.parquet: one row per (seed, stage, epoch)
CURVE_COLUMNS = {
    "study": STR, "trial": INT, "seed": INT, "stage": STR, "epoch": INT, "loss": FLOAT,
    "val": FLOAT, "lr": FLOAT, "images_per_s": FLOAT, "wall_s": FLOAT, "hit": BOOL,
    "state": STR,
}


def _columns(path: Path) -> dict[str, str]:
    schema = pq.read_schema(path)
    return {f.name: str(f.type) for f in schema}


def _same(got: dict[str, str], want: dict[str, str]) -> None:
    assert set(got) == set(want), {"unexpected": sorted(set(got) - set(want)),
                                   "missing": sorted(set(want) - set(got))}
    assert got == want, {c: (got[c], want[c]) for c in want if got[c] != want[c]}


@pytest.fixture(scope="module")
def smoke_trial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The study folder of one completed smoke trial (debug executor, ~5 s on 2 cores)."""
    results = tmp_path_factory.mktemp("columns")
    args = ["launch", "--space", "smoke.yaml", "--executor", "debug", "--results", str(results),
            "--n-trials", "1", *[x for s in [*TINY, "study.name=cols"] for x in ("--set", s)]]
    assert cli.main(args) == 0
    return results / "cols"


def test_the_literal_lists_name_every_stage() -> None:
    """The lists are literal; this only checks they were copied whole."""
    assert [c.removeprefix("key_") for c in SUMMARY_COLUMNS if c.startswith("key_")] == STAGES
    assert all(f"{p}_{s}" in SUMMARY_COLUMNS for s in STAGES for p in ("key", "hit", "build_s"))
    assert len(SUMMARY_COLUMNS) == 6 + 16 + 3 * len(STAGES) + 6 + 3


def test_a_completed_smoke_trials_files_have_exactly_these_columns(smoke_trial: Path) -> None:
    summary_path = smoke_trial / "summary" / "trial-000000.parquet"
    got = _columns(summary_path)
    _same(got, SUMMARY_COLUMNS)
    assert list(got) == list(SUMMARY_COLUMNS)        # and in this order
    rows_path = smoke_trial / "trials" / "trial-000000.parquet"
    got = _columns(rows_path)
    _same(got, ROW_COLUMNS)
    assert list(got) == list(ROW_COLUMNS)
    summary = pq.read_table(summary_path).to_pandas()
    rows = pq.read_table(rows_path).to_pandas()
    assert len(summary) == 1 and list(summary.state) == ["COMPLETE"]
    assert list(summary.schema_version) == [2] and list(summary.n_rows) == [len(rows)]
    # every column a completed trial fills is filled (a column renamed on one side of the
    # write, and so left empty, fails here too)
    filled = ["study", "trial", "attempt", "objective.fusiondistill.val.avg", "wall_s",
              "device", "amp", "protocol", "git_commit", "host", "study_version",
              "optuna_version", "torch_version", "python_version", "plugins", "config_json",
              "key_base", "hit_base", "build_s_base", "key_expert_jpeg", "key_fusiondistill",
              "seeds", "result_id", *[c for c in SUMMARY_COLUMNS if c.startswith("param_")]]
    for c in filled:
        assert summary[c].notna().all(), c
    for c in ("error", "fail_kind", "fail_reason"):
        assert summary[c].isna().all(), c
    assert set(summary.study_version) == {study.__version__}
    for c in ROW_COLUMNS:
        assert rows[c].notna().all(), c
    assert set(rows.trial) == {0}


def test_a_completed_smoke_trials_curves_file_has_exactly_these_columns(smoke_trial: Path
                                                                          ) -> None:
    got = _columns(smoke_trial / "curves" / "trial-000000.parquet")
    _same(got, CURVE_COLUMNS)
    assert list(got) == list(CURVE_COLUMNS)


def test_the_file_the_launcher_writes_for_a_vanished_worker_has_the_same_columns(
        tmp_path: Path) -> None:
    """A FAIL the launcher records (its worker vanished) carries the same columns and types as
    a completed trial's file, so one study's files read as one table."""
    ld = studyfile.load("smoke.yaml", [*TINY, "study.name=gone"])
    url = storage.storage_url(ld.sf, tmp_path)
    store = storage.open_storage(url)
    st = storage.load_or_create(ld.sf, store, optuna.samplers.RandomSampler(seed=0),
                                optuna.pruners.NopPruner())
    stored = storage.StoredStudy(ld, st, store, url, storage.study_dir(tmp_path, "gone"))
    launch = launcher.Launcher(stored, LocalExecutor(), cache_dir=str(tmp_path / "cache"),
                               parallel=1, log=lambda m: None)
    trial = st.ask()
    trial.set_user_attr("values", ld.space.sample(trial))
    trial.set_user_attr("attempt", 1)
    dead = subprocess.Popen(["true"])
    dead.wait()
    trial.set_user_attr("job", {"kind": "local", "pid": dead.pid, "host": os.uname().nodename,
                                "marker": "x"})
    launch.reconcile()
    assert st.trials[0].state.name == "FAIL"
    path = tmp_path / "gone" / "summary" / "trial-000000.parquet"
    _same(_columns(path), SUMMARY_COLUMNS)
    assert not (tmp_path / "gone" / "trials" / "trial-000000.parquet").exists()   # no rows
    table = pq.read_table(path).to_pandas()
    assert list(table.state) == ["FAIL"] and list(table.fail_kind) == ["infrastructure"]
    assert list(table.study_version) == [study.__version__]
