"""Pruning end to end, with controlled validation values: three finished trials whose reported
validation accuracy is 1.0 at every epoch, then real toy trials, whose accuracy is below that
median at epoch 2, so Optuna's median pruner (3 startup trials, no pruning on the first epoch)
stops each of them there. The pruned trial is in storage and Parquet with its last epoch,
counts toward n_trials, leaves no epoch checkpoint behind, and on SLURM its job ends and frees
its slot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from toy_studies import finished, journal_study, wait

from study import cli, storage, studyfile

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["data.synthetic_train=300", "data.val_size=60", "data.synthetic_test=60",
         "degradations=[jpeg]", "methods=[fusiondistill]", "base.epochs=1",
         "base.milestones=[1]", "expert.epochs=1", "expert.t_max=1", "distill.epochs=4",
         "distill.milestones=[3]", "eval.test_level_step=50", "eval.val_level_step=50",
         "study.pruner=median", "study.baseline=false"]
EPOCHS = 4


def _seed_study(results: Path, sets: list[str]) -> optuna.Study:
    """The study as `study launch` creates it, holding three finished trials that reported a
    validation accuracy of 1.0 after every epoch (no real trial reaches that)."""
    ld = studyfile.load("smoke.yaml", sets)
    st = storage.load_or_create(
        ld.sf, storage.open_storage(storage.storage_url(ld.sf, results)),
        storage.make_sampler(ld.sf, None, 1), storage.make_pruner(ld.sf),
        fp=storage.fingerprint(ld.tree, ld.space.fingerprint()))
    for _ in range(3):
        st.add_trial(optuna.trial.create_trial(
            state=TrialState.COMPLETE, value=1.0,
            intermediate_values={e: 1.0 for e in range(1, EPOCHS + 1)}))
    return st


def _check_pruned(results: Path, name: str, t: optuna.trial.FrozenTrial) -> None:
    assert t.state == TrialState.PRUNED
    assert sorted(t.intermediate_values) == [1, 2]           # stopped after epoch 2 of 4
    assert all(v < 1.0 for v in t.intermediate_values.values())
    df = pd.read_parquet(results / name / "summary" / f"trial-{t.number:06d}.parquet")
    assert set(df.state) == {"PRUNED"} and df.error.str.contains("pruned at epoch 2").all()
    stale = list((results / "cache" / ".work").glob("fusiondistill-*.pt"))
    assert stale == [], "the pruned stage left its epoch checkpoint behind"


def test_median_pruner_prunes_a_local_trial(tmp_path: Path) -> None:
    name = "prune"
    sets = [*QUICK, f"study.name={name}"]
    _seed_study(tmp_path, sets)
    argv = ["launch", "--space", "smoke.yaml", "--executor", "debug", "--n-trials", "4",
            "--results", str(tmp_path), *[x for s in sets for x in ("--set", s)]]
    assert cli.main(argv) == 0
    st = journal_study(tmp_path, name)
    assert len(st.trials) == 4 and len(finished(st)) == 4   # the pruned one counts
    _check_pruned(tmp_path, name, st.trials[3])
    assert cli.main(argv) == 0 and len(journal_study(tmp_path, name).trials) == 4


@pytest.mark.slurm
@pytest.mark.slow
def test_pruned_slurm_job_ends_and_frees_its_slot(slurm_cluster: str, tmp_path: Path) -> None:
    """parallel 1: the second real trial can only start once the first one's job has ended."""
    name = f"pruneslurm{os.getpid()}"
    sets = [*QUICK, f"study.name={name}", "executor.slurm.preset=local"]
    _seed_study(tmp_path, sets)
    cmd = [sys.executable, "-m", "study.cli", "launch", "--space", "smoke.yaml", "--executor",
           "slurm", "--parallel", "1", "--n-trials", "5", "--results", str(tmp_path),
           *[x for s in sets for x in ("--set", s)]]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    st = journal_study(tmp_path, name)
    real = st.trials[3:]
    assert len(real) == 2
    for t in real:
        _check_pruned(tmp_path, name, t)
    jobs = [t.user_attrs["job"]["job_id"] for t in real]

    def job_states() -> set[str]:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobIDRaw,State", "-j",
                              ",".join(jobs)], capture_output=True, text=True, timeout=60).stdout
        states = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
        return {states.get(j, "MISSING").split()[0] for j in jobs}

    # The launcher returns once the last trial is told; its job exits (the worker's interpreter
    # shutting down, SLURM's epilog) a few seconds later. It must end on its own, not be killed.
    wait(lambda: not job_states() & {"PENDING", "RUNNING", "COMPLETING"}, 120)
    assert job_states() == {"COMPLETED"}
    assert real[1].datetime_start >= real[0].datetime_complete   # started in the freed slot


def _prunes_at(pruner: str, min_epochs: int, epochs: int = 9) -> int | None:
    """The first epoch at which the study file's pruner stops a trial whose validation
    accuracy trails three finished trials at every epoch (0.1 against 0.9), asked the way the
    worker asks: report the epoch, then should_prune. None: it ran every epoch."""
    ld = studyfile.load("smoke.yaml", [*QUICK[:-2], f"study.pruner={pruner}",
                                       f"study.pruner_min_epochs={min_epochs}",
                                       f"distill.epochs={epochs}", "distill.milestones=[]"])
    st = optuna.create_study(direction="maximize", pruner=storage.make_pruner(ld.sf))
    for value in (0.9, 0.9, 0.9, 0.1):
        trial = st.ask()
        for epoch in range(1, epochs + 1):
            trial.report(value, epoch)
            if trial.should_prune():
                st.tell(trial, state=TrialState.PRUNED)
                return epoch if value == 0.1 else -epoch   # a leader pruned: a wrong pruner
        st.tell(trial, value)
    return None


@pytest.mark.parametrize(("pruner", "min_epochs", "epoch"), [
    ("none", 1, None),
    ("median", 1, 2),                   # no pruning on the first epoch (n_warmup_steps=2)
    ("successive_halving", 1, 1),       # the first rung: min_resource epochs
    ("successive_halving", 3, 3),
])
def test_each_pruner_stops_a_trailing_trial_at_its_first_rung(pruner: str, min_epochs: int,
                                                              epoch: int | None) -> None:
    assert _prunes_at(pruner, min_epochs) == epoch


@pytest.mark.parametrize("min_epochs", [1, 2, 3])
def test_hyperband_never_prunes_before_min_epochs(min_epochs: int) -> None:
    """Hyperband hashes each trial into a bracket whose first rung is min_epochs * 3**k: the
    epoch varies with the bracket, never below min_epochs, always a rung."""
    epoch = _prunes_at("hyperband", min_epochs)
    assert epoch is None or (epoch >= min_epochs and epoch in
                             {min_epochs * 3 ** k for k in range(3)}), epoch


def test_every_pruner_of_the_schema_is_declared() -> None:
    from typing import get_args

    from study.config import StudySection
    declared = get_args(StudySection.model_fields["pruner"].annotation)
    assert set(declared) == set(storage.PRUNERS)


@pytest.mark.parametrize("pruner", ["median", "successive_halving", "hyperband"])
def test_an_explicit_pruner_with_several_objectives_is_refused(
        pruner: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = tmp_path / "two.yaml"
    space.write_text(
        "study:\n  name: two\n  pruner: " + pruner + "\n  objectives:\n"
        "    - {method: fusiondistill, metric: val.avg, direction: maximize}\n"
        "    - {method: fusiondistill, metric: val.clean, direction: maximize}\n"
        "pipeline: {preset: smoke, methods: [fusiondistill]}\n")
    assert cli.main(["launch", "--space", str(space), "--dry-run", "--results",
                     str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "study.pruner" in err and "single-objective" in err and str(space) in err, err
    assert not (tmp_path / "two").exists()
    # without the key, the same study loads and runs unpruned
    space.write_text(space.read_text().replace(f"  pruner: {pruner}\n", ""))
    ld = studyfile.load(str(space), [])
    assert isinstance(storage.make_pruner(ld.sf), optuna.pruners.NopPruner)
