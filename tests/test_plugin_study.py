"""The example plugin package installed for real (`pip install -e examples/study-extra`, as .ci/run
does) and its shipped study searched: the degradation subset draws from five degradations, the
plugin's contrast among them, through the entry points pip wrote, in worker processes that find
the plugin the same way. tests/test_plugins.py fakes the distribution instead; this is the path
a user takes. Skipped where the package is not installed, failed under CI=true."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from optuna.trial import TrialState
from toy_studies import journal_study

from study import registry

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "examples" / "study-extra" / "extra_smoke.yaml"
FIVE = {"jpeg", "blur", "awgn", "saltpepper", "contrast"}
# The shipped file at its smallest: FusionDistill alone (it still trains the base and an expert
# per drawn degradation), 300 images, one epoch a stage, every 50th level.
TOY = ["data.synthetic_train=300", "data.val_size=60", "data.synthetic_test=60",
       "base.epochs=1", "expert.epochs=1", "expert.t_max=1", "distill.epochs=1",
       "distill.milestones=[]", "methods=[fusiondistill]", "eval.test_level_step=50",
       "eval.val_level_step=50", "study.pruner=none", "study.sampler=random"]


def _installed() -> str:
    try:
        return importlib.metadata.version("study-extra")
    except importlib.metadata.PackageNotFoundError:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but study-extra is not installed: .ci/run installs it "
                        "(pip install -e examples/study-extra)")
        pytest.skip("pip install -e examples/study-extra to run the example plugin's study")


@pytest.mark.slow
def test_the_example_plugins_study_searches_five_degradations(tmp_path: Path) -> None:
    version = _installed()
    assert "contrast" in registry.names(registry.DEGRADATIONS)
    cmd = [sys.executable, "-m", "study.cli", "launch", "--space", str(SPACE), "--executor",
           "debug", "--n-trials", "3", "--results", str(tmp_path), "--log-level", "warning",
           *[x for s in TOY for x in ("--set", s)]]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    trials = journal_study(tmp_path, "extra_smoke").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    # one yes/no draw a degradation, the plugin's among them (a subset space's Optuna form)
    assert all({f"degradations.{d}" for d in FIVE} <= set(t.params) for t in trials)
    drawn = [set(t.user_attrs["values"]["degradations"]) for t in trials]
    assert all(2 <= len(d) and d <= FIVE for d in drawn)
    assert drawn[0] == FIVE                         # the baseline: the file's five degradations
    # the plugin's degradation was trained, evaluated and recorded, with the plugin's version
    rows = pd.read_parquet(tmp_path / "extra_smoke" / "trials")
    base = rows[rows.trial == 0]
    assert {"contrast", "jpeg"} <= set(base.degradation.dropna())
    assert set(base[base.split == "test"].degradation.dropna()) >= FIVE
    summary = pd.read_parquet(tmp_path / "extra_smoke" / "summary")
    plugins = json.loads(summary[summary.trial == 0].plugins.iloc[0])
    assert plugins["study.degradations:contrast"] == f"study-extra {version}"
