"""Bad input (issue 7): malformed study files and command lines, hand-written and generated.

Every one must end in exit code 2 with one paragraph on stderr that names the file, the dotted
key and what is allowed; no traceback; and nothing written to the study (the --results dir of
each case stays absent). Most cases call `study.cli.main` in-process (about 40 ms each); a few
run `python -m study.cli` to prove that no traceback reaches a terminal. The security items of
the issue (safe YAML, weights_only checkpoints, no shell, dashboard on 127.0.0.1) are checked
at the end by reading the sources.

Tests run as root here, so chmod 000 does not make a file unreadable: "unreadable" is covered
by a directory given as the study file, a non-UTF-8 file and a binary file instead.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import annotated_types as at
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from toy_studies import run_cli as _cli

from study import cli, config, schema, studyfile
from study.config import DEGRADATION_NAMES, METHOD_NAMES, StudyFile

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "search_spaces" / "smoke.yaml"
RAW = yaml.safe_load(SMOKE.read_text())
# The smoke file with its preset written out: every pipeline key is there to be broken.
RESOLVED = studyfile.resolve_tree(RAW, str(SMOKE))
UNREACHABLE_PG = "postgresql://u:secret@127.0.0.1:1/db"   # port 1: nothing listens, refused
HYPO = settings(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


# ---------------------------------------------------------------- helpers
def _written(results: Path) -> list[str]:
    """What a refused command left under its results dir. `study run` takes the stage cache's
    empty lock files before it finds the data missing: cache/.locks is not the study."""
    if not results.exists():
        return []
    locks = results / "cache" / ".locks"
    return sorted(str(p.relative_to(results)) for p in results.rglob("*")
                  if p not in (results / "cache", locks) and p.parent != locks)


def _refused(argv: list[str], results: Path, *needles: str) -> str:
    rc, _, err = _cli([*argv, "--results", str(results)])
    assert rc == 2, f"exit {rc} for {argv}; stderr: {err[-600:]}"
    assert "Traceback" not in err
    assert err.startswith(("study: error:", "usage:")), err[:300]
    for n in needles:
        assert n in err, f"{n!r} missing from the message of {argv}:\n{err}"
    assert _written(results) == [], f"{argv} wrote {_written(results)}"
    return err


def _write(tree: Any, folder: Path, name: str = "study.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def _edit(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of `base` with dotted keys set (the value DELETE removes the key). Keys under
    `space` name a parameter: `space__fusion.method` sets space['fusion.method']."""
    tree = yaml.safe_load(yaml.safe_dump(base))
    for key, value in changes.items():
        if key.startswith("space__"):
            path = ["space", key.removeprefix("space__")]
        else:
            path = key.replace("__", ".").split(".")
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        if value is DELETE:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value
    return tree


DELETE = object()


# ---------------------------------------------------------------- hand-written study files
# (id, tree or raw text, needles: the dotted key and what is allowed, commands: d launch
# --dry-run, l launch, s status, r run. `study run` reads neither the space nor the storage and
# would run those files; a dry run prints the storage URL without connecting to it.)
FILES: list[tuple[str, Any, tuple[str, ...], str]] = [
    # unknown keys, at every depth
    ("top_key", _edit(RAW, studdy={"name": "x"}), ("'studdy'", "unknown key", "'study'"), "dlsr"),
    ("study_key", _edit(RAW, study__n_trial=3),
     ("study.n_trial", "did you mean 'n_trials'", "allowed keys"), "dlsr"),
    ("pipeline_key", _edit(RAW, pipeline__distil={"lr": 1}),
     ("pipeline.distil", "did you mean 'distill'"), "dlsr"),
    ("nested_key", _edit(RESOLVED, pipeline__base__learning_rate=0.1),
     ("pipeline.base.learning_rate", "'lr'"), "dlsr"),
    ("executor_key", _edit(RAW, executor__paralel=2), ("executor.paralel", "'parallel'"), "dlsr"),
    ("slurm_key", _edit(RAW, executor__slurm={"partiton": "gpu"}),
     ("executor.slurm.partiton", "'partition'"), "dlsr"),
    ("objective_key", _edit(RAW, study__objectives=[{"metric": "val.avg", "goal": "max"}]),
     ("study.objectives.0.goal", "'direction'"), "dlsr"),
    ("space_path", _edit(RAW, **{"space__distill.lrr": {"type": "float", "low": 1, "high": 2}}),
     ("space.distill.lrr", "unknown config path", "'distill.lr'"), "dls"),
    ("space_option", _edit(RAW, **{"space__distill.lr": {"type": "float", "lo": 1, "high": 2}}),
     ("space.distill.lr.lo", "unknown option", "'low'"), "dls"),
    ("space_itself", _edit(RAW, **{"space__space.x": 1}), ("space.space.x", "allowed sections"),
     "dls"),
    ("space_empty_segment", _edit(RAW, **{"space__distill..lr": 1}),
     ("space.distill..lr", "dotted config path"), "dls"),
    ("space_inside", _edit(RAW, **{"space__fusion": {"type": "fixed", "value": {}}}),
     ("space.fusion.method", "lies inside 'space.fusion'"), "dls"),
    # wrong types
    ("n_trials_str", _edit(RAW, study__n_trials="many"), ("study.n_trials", "integer"), "dlsr"),
    ("lr_str", _edit(RESOLVED, pipeline__base__lr="fast"), ("pipeline.base.lr", "number"), "dlsr"),
    ("degradations_str", _edit(RESOLVED, pipeline__degradations="jpeg"),
     ("pipeline.degradations", "list"), "dlsr"),
    ("study_list", _edit(RAW, study=[1, 2]), ("key 'study'", "dictionary"), "dlsr"),
    ("space_list", _edit(RAW, space=["distill.lr"]), ("key 'space'", "dictionary"), "dls"),
    ("parallel_float", _edit(RAW, executor__parallel=1.5), ("executor.parallel", "integer"),
     "dlsr"),
    ("data_str", _edit(RESOLVED, pipeline__data="cifar10"), ("pipeline.data", "dictionary"),
     "dlsr"),
    ("milestones_str", _edit(RESOLVED, pipeline__base__milestones="4,8"),
     ("pipeline.base.milestones", "list"), "dlsr"),
    ("space_low_str", _edit(RAW, **{"space__distill.lr": {"type": "float", "low": "tiny",
                                                            "high": 1}}),
     ("space.distill.lr.low", "finite number"), "dls"),
    ("space_type_float_on_int", _edit(RAW, **{"space__base.epochs": {"type": "float", "low": 1,
                                                                       "high": 3}}),
     ("space.base.epochs.type", "type: int"), "dls"),
    # low > high, log ranges, steps
    ("low_gt_high", _edit(RAW, **{"space__distill.lr": {"type": "float", "low": 1e-2,
                                                          "high": 1e-4, "log": True}}),
     ("space.distill.lr", "low 0.01 > high 0.0001"), "dls"),
    ("int_low_gt_high", _edit(RAW, **{"space__base.epochs": {"type": "int", "low": 5,
                                                               "high": 2}}),
     ("space.base.epochs", "low 5 > high 2"), "dls"),
    ("log_low_zero", _edit(RAW, **{"space__distill.lr": {"type": "float", "low": 0,
                                                           "high": 1, "log": True}}),
     ("space.distill.lr.low", "low > 0"), "dls"),
    ("log_and_step", _edit(RAW, **{"space__distill.alpha": {"type": "float", "low": 0.1,
                                                              "high": 0.9, "log": True,
                                                              "step": 0.1}}),
     ("space.distill.alpha", "log and step"), "dls"),
    ("range_out_of_schema", _edit(RAW, **{"space__distill.alpha": {"type": "float", "low": 0.5,
                                                                     "high": 2.0}}),
     ("space.distill.alpha.high", "less than or equal to 1"), "dls"),
    # categorical and subsets
    ("empty_choices", _edit(RAW, **{"space__distill.loss": {"type": "categorical",
                                                              "choices": []}}),
     ("space.distill.loss.choices", "non-empty list"), "dls"),
    ("bad_choice", _edit(RAW, **{"space__fusion.method": {"type": "categorical",
                                                            "choices": ["uniform", "avg"]}}),
     ("space.fusion.method.choices", "'avg'", "'weighted'"), "dls"),
    ("subset_empty", _edit(RAW, **{"space__degradations": {"type": "subset", "of": []}}),
     ("space.degradations.of", "non-empty list"), "dls"),
    ("subset_oversized", _edit(RAW, **{"space__degradations": {
        "type": "subset", "of": ["jpeg", "blur"], "max_size": 3}}),
     ("space.degradations.max_size", "at most the 2 items"), "dls"),
    ("subset_min_zero", _edit(RAW, **{"space__degradations": {
        "type": "subset", "of": ["jpeg", "blur"], "min_size": 0}}),
     ("space.degradations.min_size", ">= 1"), "dls"),
    ("subset_min_gt_max", _edit(RAW, **{"space__degradations": {
        "type": "subset", "of": ["jpeg", "blur", "awgn"], "min_size": 3, "max_size": 2}}),
     ("space.degradations", "min_size 3 > max_size 2"), "dls"),
    ("subset_unknown_item", _edit(RAW, **{"space__degradations": {
        "type": "subset", "of": ["jpeg", "fog"]}}),
     ("space.degradations.of", "fog", "saltpepper"), "dls"),
    ("subset_repeated", _edit(RAW, **{"space__degradations": {
        "type": "subset", "of": ["jpeg", "jpeg"]}}), ("space.degradations.of", "repeated"), "dls"),
    # simplex and when
    ("simplex_unknown_over", _edit(RAW, **{"space__fusion.weights": {
        "type": "simplex", "over": "experts"}}),
     ("space.fusion.weights.over", "'experts' is not a parameter", "subset"), "dls"),
    ("simplex_over_categorical", _edit(RAW, **{"space__fusion.weights": {
        "type": "simplex", "over": "distill.loss"}}),
     ("space.fusion.weights.over", "a categorical parameter"), "dls"),
    ("simplex_empty", _edit(RAW, **{"space__fusion.weights": {"type": "simplex", "over": []}}),
     ("space.fusion.weights.over", "non-empty list"), "dls"),
    ("when_unknown", _edit(RAW, **{"space__distill.alpha": {
        "type": "float", "low": 0.1, "high": 0.9, "when": {"distill.los": "logit"}}}),
     ("space.distill.alpha.when.distill.los", "did you mean 'distill.loss'"), "dls"),
    ("when_impossible", _edit(RAW, **{"space__distill.alpha": {
        "type": "float", "low": 0.1, "high": 0.9, "when": {"distill.loss": "kl"}}}),
     ("space.distill.alpha.when.distill.loss", "['kl'] can never be", "'feature'"), "dls"),
    ("space_bad_type", _edit(RAW, **{"space__distill.lr": {"type": "uniform", "low": 1,
                                                             "high": 2}}),
     ("space.distill.lr", "type 'uniform'", "valid types"), "dls"),
    # unknown names
    ("degradation", _edit(RAW, pipeline__degradations=["jpeg", "fog"]),
     ("pipeline.degradations", "unknown degradation ['fog']", "saltpepper"), "dlsr"),
    ("model", _edit(RAW, pipeline__model="resnet18"),
     ("pipeline.model", "unknown model 'resnet18'", "['resnet56', 'tiny'"), "dlsr"),
    ("fusion_method", _edit(RAW, pipeline__fusion={"method": "average"}),
     ("pipeline.fusion.method", "'uniform'", "'dare'"), "dlsr"),
    ("fusion_bn", _edit(RAW, pipeline__fusion={"bn": "mean"}),
     ("pipeline.fusion.bn", "'recompute'"), "dlsr"),
    ("fusion_expert", _edit(RAW, pipeline__fusion={"experts": ["jpeg", "rain"]}),
     ("pipeline.fusion.experts", "unknown fusion expert ['rain']", "awgn"), "dlsr"),
    ("sampler", _edit(RAW, study__sampler="annealing"),
     ("study.sampler", "'tpe'", "'bruteforce'"), "dlsr"),
    ("pruner", _edit(RAW, study__pruner="asha"), ("study.pruner", "'hyperband'"), "dlsr"),
    ("method", _edit(RAW, pipeline__methods=["fusiondistill", "magic"]),
     ("pipeline.methods", "unknown method ['magic']", "modelsoups"), "dlsr"),
    ("optimizer", _edit(RESOLVED, pipeline__expert__optimizer="lion"),
     ("pipeline.expert.optimizer", "'radam'"), "dlsr"),
    ("dataset", _edit(RAW, pipeline__data={"dataset": "mnist"}),
     ("pipeline.data.dataset", "'cifar10'", "'synthetic'"), "dlsr"),
    ("backend", _edit(RAW, executor__backend="kubernetes"),
     ("executor.backend", "'slurm'"), "dlsr"),
    ("direction", _edit(RAW, study__objectives=[{"direction": "up"}]),
     ("study.objectives.0.direction", "'maximize'"), "dlsr"),
    ("objective_metric", _edit(RAW, study__objectives=[{"metric": "accuracy"}]),
     ("study.objectives.0.metric", "val.avg", "saltpepper"), "dlsr"),
    ("objective_method", _edit(RAW, study__objectives=[{"method": "fusiondistil"}]),
     ("study.objectives.0.method", "'fusiondistill'"), "dlsr"),
    ("objective_not_run", _edit(RAW, study__objectives=[{"method": "scratch"}],
                                pipeline__methods=["fusiondistill"]),
     ("study.objectives", "'scratch'", "pipeline.methods"), "dlsr"),
    ("preset", _edit(RAW, pipeline__preset="paperr"),
     ("pipeline.preset", "unknown preset 'paperr'", "paper", "smoke"), "dlsr"),
    ("preset_path", _edit(RAW, pipeline__preset="../search_spaces/smoke"),
     ("pipeline.preset", "unknown preset"), "dlsr"),
    ("slurm_preset", _edit(RAW, executor__slurm={"preset": "bigcluster"}),
     ("executor.slurm.preset", "unknown preset 'bigcluster'", "'gpu'", "'local'"), "dlsr"),
    ("slurm_newline", _edit(RAW, executor__slurm={"partition": "gpu\n#SBATCH --qos=high"}),
     ("executor.slurm.partition", "one line"), "dlsr"),
    # out-of-range numbers
    ("negative_epochs", _edit(RESOLVED, pipeline__distill__epochs=-2),
     ("pipeline.distill.epochs", "greater than or equal to 1"), "dlsr"),
    ("zero_epochs", _edit(RESOLVED, pipeline__base__epochs=0),
     ("pipeline.base.epochs", "greater than or equal to 1"), "dlsr"),
    ("negative_lr", _edit(RESOLVED, pipeline__distill__lr=-0.1),
     ("pipeline.distill.lr", "greater than 0"), "dlsr"),
    ("infinite_lr", _edit(RESOLVED, pipeline__distill__lr=float("inf")),
     ("pipeline.distill.lr", "finite"), "dlsr"),
    ("nan_temperature", _edit(RESOLVED, pipeline__distill__temperature=float("nan")),
     ("pipeline.distill.temperature", "finite"), "dlsr"),
    ("momentum", _edit(RESOLVED, pipeline__base__momentum=1.5),
     ("pipeline.base.momentum", "less than 1"), "dlsr"),
    ("milestones", _edit(RESOLVED, pipeline__base__milestones=[8, 4]),
     ("pipeline.base.milestones", "increasing"), "dlsr"),
    ("n_trials_zero", _edit(RAW, study__n_trials=0), ("study.n_trials", "greater than or equal"),
     "dlsr"),
    ("parallel_zero", _edit(RAW, executor__parallel=0),
     ("executor.parallel", "greater than or equal"), "dlsr"),
    ("salt_value", _edit(RAW, pipeline__salt_value=2), ("pipeline.salt_value", "1 or 255"),
     "dlsr"),
    ("weights_sum", _edit(RAW, pipeline__fusion={"method": "weighted", "weights": {
        "jpeg": 0.5, "blur": 0.5, "awgn": 0.5, "saltpepper": 0.5}}),
     ("pipeline", "fusion.weights", "sum to 1"), "dlsr"),
    # missing and inconsistent
    ("no_study", _edit(RAW, study=DELETE), ("key 'study'", "Field required"), "dlsr"),
    ("no_name", _edit(RAW, study__name=DELETE), ("study.name", "Field required"), "dlsr"),
    ("no_lr", _edit(RESOLVED, pipeline__base__lr=DELETE), ("pipeline.base.lr", "Field required"),
     "dlsr"),
    ("bad_name", _edit(RAW, study__name="../evil"), ("study.name", "pattern"), "dlsr"),
    ("missing_root", _edit(RAW, pipeline__data={"dataset": "cifar10"}),
     ("data.root is required", "study data download"), "dlsr"),
    ("eval_empty", _edit(RESOLVED, pipeline__eval__degradations=[]),
     ("pipeline.eval.degradations", "at least one"), "dlsr"),
    ("storage_scheme", _edit(RAW, study__storage="redis://127.0.0.1:6379"),
     ("study.storage", "redis", "sqlite", "postgresql"), "dlsr"),
    ("bruteforce_continuous", _edit(RAW, study__sampler="bruteforce"),
     ("study.sampler", "bruteforce needs a finite space"), "dl"),
    ("storage_unreachable", _edit(RAW, study__storage=UNREACHABLE_PG),
     ("study.storage", "127.0.0.1:1/db"), "ls"),
    # not a study file at all
    ("empty", "", ("top level must be a mapping",), "dlsr"),
    ("top_list", "- study\n- pipeline\n", ("top level must be a mapping",), "dlsr"),
    ("bad_yaml", "study: {name: x\npipeline: [\n", ("not valid YAML",), "dlsr"),
    ("tab_yaml", "study:\n\tname: x\n", ("not valid YAML",), "dlsr"),
    ("python_tag", "study: !!python/object/apply:os.system ['echo pwned']\n",
     ("not valid YAML", "python/object/apply"), "dlsr"),
    ("duplicate_key", SMOKE.read_text() + "study: {name: other}\n",
     ("'study'", "appears twice", "line 4", "line 23"), "dlsr"),
    ("duplicate_space_key", SMOKE.read_text() + "  distill.lr: {type: float, low: 1, high: 2}\n",
     ("'space.distill.lr'", "appears twice"), "dlsr"),
    ("yaml_bomb", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)),
     ("expands to over",), "dlsr"),
    ("deep_nesting", "study: " + "[" * 100 + "]" * 100 + "\n", ("nested over 50 levels",),
     "dlsr"),
    # deep enough for PyYAML's recursive composer to hit Python's recursion limit (~1 s)
    ("deep_recursion", "study: " + "[" * 1000 + "]" * 1000 + "\n", ("nested too deep",), "d"),
    ("oversized", "# " + "x" * 1_100_000 + "\n", ("bytes", "at most 1000000"), "dlsr"),
    ("non_utf8", b"study: {name: caf\xe9}\n", ("not a UTF-8 text file",), "dlsr"),
    ("binary", bytes(range(256)) * 4, ("not a UTF-8 text file",), "dlsr"),
]


def _case_file(folder: Path, content: Any) -> Path:
    if isinstance(content, dict):
        return _write(content, folder)
    path = folder / "study.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@pytest.mark.parametrize("case", FILES, ids=[c[0] for c in FILES])
def test_bad_study_file(case: tuple[str, Any, tuple[str, ...], str], tmp_path: Path) -> None:
    _, content, needles, letters = case
    path = _case_file(tmp_path / "in", content)
    commands = {"d": ["launch", "--dry-run"], "l": ["launch"], "s": ["status"], "r": ["run"]}
    for i, cmd in enumerate(commands[c] for c in letters):
        err = _refused([*cmd, "--space", str(path)], tmp_path / f"res{i}", str(path), *needles)
        assert len(err) < 4000, f"{cmd}: a {len(err)}-character message"


def test_every_hand_written_case_is_distinct() -> None:
    texts = [yaml.safe_dump(c) if isinstance(c, dict) else repr(c) for _, c, _, _ in FILES]
    assert len(set(texts)) == len(texts) and len(FILES) >= 50
    assert all(c and set(c) <= set("dlsr") for *_, c in FILES)


def test_directory_and_missing_file(tmp_path: Path) -> None:
    for cmd in (["launch", "--dry-run"], ["launch"], ["status"], ["run"]):
        _refused([*cmd, "--space", str(tmp_path)], tmp_path / "res", str(tmp_path),
                 "cannot read the file", "Is a directory")
        _refused([*cmd, "--space", str(tmp_path / "nope.yaml")], tmp_path / "res",
                 "nope.yaml", "no such study file", "smoke.yaml")


# ---------------------------------------------------------------- command lines
SMOKE_ARGS = ["--space", str(SMOKE)]
COMMANDS: list[tuple[str, list[str], tuple[str, ...]]] = [
    ("set_no_equals", ["launch", *SMOKE_ARGS, "--set", "distill.temperature"],
     ("--set 'distill.temperature'", "key=value")),
    ("set_no_key", ["launch", *SMOKE_ARGS, "--set", "=4"], ("--set '=4'", "key=value")),
    ("set_unknown_key", ["launch", *SMOKE_ARGS, "--set", "distill.temprature=4"],
     ("pipeline.distill.temprature", "did you mean 'temperature'")),
    ("set_wrong_type", ["launch", *SMOKE_ARGS, "--set", "study.n_trials=lots"],
     ("study.n_trials", "integer")),
    ("set_unknown_sampler", ["launch", *SMOKE_ARGS, "--set", "study.sampler=grid"],
     ("study.sampler", "'nsga2'")),
    ("set_preset", ["launch", *SMOKE_ARGS, "--set", "pipeline.preset=nope"],
     ("pipeline.preset", "unknown preset 'nope'", "paper")),
    ("set_bomb", ["launch", *SMOKE_ARGS, "--set", "data.classes=[" + ",".join(
        ["&a0 [1,1,1,1,1,1,1,1,1,1]"] + [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]"
                                         for i in range(1, 8)]) + "]"],
     ("--set", "data.classes", "expands to over")),
    ("set_deep", ["launch", *SMOKE_ARGS, "--set", "x=" + "[" * 1000 + "]" * 1000],
     ("--set", "nested")),
    ("set_space_option", ["launch", *SMOKE_ARGS, "--set", "space.distill.lr.low=1e-1"],
     ("space.distill.lr", "low 0.1 > high 0.003")),
    ("set_name_slash", ["launch", *SMOKE_ARGS, "--set", "study.name=a/b"],
     ("study.name", "pattern")),
    ("n_trials_zero", ["launch", *SMOKE_ARGS, "--n-trials", "0"], ("--n-trials", ">= 1", "0")),
    ("n_trials_negative", ["launch", *SMOKE_ARGS, "--n-trials", "-3"], ("--n-trials", "-3")),
    ("status_n_trials_zero", ["status", *SMOKE_ARGS, "--n-trials", "0"], ("--n-trials",)),
    ("n_trials_text", ["launch", *SMOKE_ARGS, "--n-trials", "ten"], ("--n-trials", "invalid int")),
    ("parallel_zero", ["launch", *SMOKE_ARGS, "--parallel", "0"], ("--parallel", ">= 1")),
    ("parallel_negative", ["launch", *SMOKE_ARGS, "--parallel", "-2"], ("--parallel", "-2")),
    ("executor", ["launch", *SMOKE_ARGS, "--executor", "k8s"], ("--executor", "invalid choice",
                                                                 "'slurm'")),
    ("unknown_flag", ["launch", *SMOKE_ARGS, "--trials", "3"], ("unrecognized arguments",)),
    ("no_space", ["launch"], ("--space",)),
    ("no_command", [], ("command",)),
    ("unknown_command", ["start", *SMOKE_ARGS], ("invalid choice", "'launch'")),
    ("slurm_preset", ["launch", *SMOKE_ARGS, "--set", "executor.slurm.preset=nope"],
     ("executor.slurm.preset", "unknown preset 'nope'", "allowed: ['gpu', 'local', 'node']")),
    ("slurm_preset_path", ["launch", *SMOKE_ARGS, "--set", "executor.slurm.preset=../local"],
     ("executor.slurm.preset", "unknown preset")),
    ("bruteforce", ["launch", *SMOKE_ARGS, "--set", "study.sampler=bruteforce"],
     ("study.sampler", "finite space")),
    ("bruteforce_dry", ["launch", "--dry-run", *SMOKE_ARGS, "--set", "study.sampler=bruteforce"],
     ("study.sampler", "finite space")),
    ("pg_unreachable", ["launch", *SMOKE_ARGS, "--set", f"study.storage={UNREACHABLE_PG}"],
     ("study.storage", "postgresql://u:***@127.0.0.1:1/db")),
    ("pg_status", ["status", *SMOKE_ARGS, "--set", f"study.storage={UNREACHABLE_PG}"],
     ("study.storage", "127.0.0.1:1/db")),
    ("storage_scheme", ["launch", *SMOKE_ARGS, "--set", "study.storage=foo://bar"],
     ("study.storage", "'foo'", "sqlite")),
    ("status_never_launched", ["status", *SMOKE_ARGS], ("has not been launched",)),
    ("cancel_never_launched", ["cancel", *SMOKE_ARGS], ("has not been launched",)),
    ("dashboard_never_launched", ["dashboard", *SMOKE_ARGS], ("has not been launched",)),
]


@pytest.mark.parametrize("case", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_bad_command_line(case: tuple[str, list[str], tuple[str, ...]], tmp_path: Path) -> None:
    _, argv, needles = case
    err = _refused(argv, tmp_path / "res", *needles)
    assert "secret" not in err   # the database password never reaches a log


def test_storage_on_an_unwritable_path(tmp_path: Path) -> None:
    """Root ignores permissions, so 'unwritable' is a path below a regular file."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for url in (f"sqlite:///{blocker}/x.db", f"{blocker}/sub/optuna.journal"):
        _refused(["launch", *SMOKE_ARGS, "--set", f"study.storage={url}"], tmp_path / "res",
                 "study.storage", url)
    # status must not create an empty SQLite database while it reports the study missing
    db = tmp_path / "none.db"
    _refused(["status", *SMOKE_ARGS, "--set", f"study.storage=sqlite:///{db}"],
             tmp_path / "res", "has not been launched", str(db))
    assert not db.exists()


def test_run_with_a_missing_data_root(tmp_path: Path) -> None:
    nowhere = tmp_path / "no" / "cifar"
    _refused(["run", *SMOKE_ARGS, "--set", "data.dataset=cifar10", "--set",
              f"data.root={nowhere}"], tmp_path / "res", str(SMOKE), "pipeline.data.root",
             str(nowhere), "study data download")


# ---------------------------------------------------------------- generated (hypothesis)
def _union(ann: Any) -> tuple[Any, ...]:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        return typing.get_args(ann)
    return (ann,)


def _model_of(ann: Any) -> type[BaseModel] | None:
    for m in _union(ann):
        if isinstance(m, type) and issubclass(m, BaseModel):
            return m
    return None


def _fields(model: type[BaseModel] = StudyFile, prefix: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], Any]]:
    """(path, FieldInfo) of every setting below StudyFile, lists of models and space left out."""
    for name, info in model.model_fields.items():
        path = (*prefix, name)
        sub = _model_of(info.annotation)
        if sub is not None:
            yield from _fields(sub, path)
        elif path != ("space",):
            yield path, info


def _kinds(ann: Any) -> tuple[str, tuple[Any, ...]]:
    members = [m for m in _union(ann) if m is not type(None)]
    if members and all(m in (int, float) for m in members):
        return "number", ()
    if len(members) == 1 and typing.get_origin(members[0]) is typing.Literal:
        return "literal", typing.get_args(members[0])
    return "other", ()


FIELDS = list(_fields())
NUMBERS = [(p, f) for p, f in FIELDS if _kinds(f.annotation)[0] == "number"]
LITERALS = [(p, _kinds(f.annotation)[1]) for p, f in FIELDS
            if _kinds(f.annotation)[0] == "literal"]
BOUNDED = [(p, f, m) for p, f in NUMBERS for m in f.metadata
           if isinstance(m, (at.Ge, at.Gt, at.Le, at.Lt))]
ENUM_LISTS = {("pipeline", "degradations"): ("unknown degradation", DEGRADATION_NAMES),
              ("pipeline", "methods"): ("unknown method", METHOD_NAMES),
              ("pipeline", "eval", "degradations"): ("unknown eval degradation",
                                                     DEGRADATION_NAMES)}
NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True)
WORDS = st.text(st.characters(whitelist_categories=("L", "N"), whitelist_characters="_-. "),
                min_size=1, max_size=12)


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    tree = yaml.safe_load(yaml.safe_dump(tree))
    config.set_path(tree, list(path), value)
    return tree


def _check_generated(tree: Any, *needles: str, must_fail: bool = True) -> tuple[int, str]:
    """Dry-run then a real launch of `tree`; a refusal must be exit 2, name the file and the
    needles, and write nothing. Returns the dry run's exit code and stderr."""
    with tempfile.TemporaryDirectory() as d:
        path = _write(tree, Path(d) / "in")
        rc, _, err = _cli(["launch", "--dry-run", "--space", str(path), "--results",
                           f"{d}/res0"])
        assert rc in ((2,) if must_fail else (0, 2)), f"exit {rc}: {err[-800:]}"
        assert "Traceback" not in err
        if rc == 2:
            for n in (str(path), *needles):
                assert n in err, f"{n!r} missing from:\n{err}"
            # the same file through a real launch: refused before any storage is made
            _refused(["launch", "--space", str(path)], Path(d) / "res1", *needles)
        assert _written(Path(d) / "res0") == []
        return rc, err


@HYPO
@given(data=st.data())
def test_generated_unknown_keys(data: st.DataObject) -> None:
    """A key renamed to a random name anywhere under a model: an unknown key, always."""
    path, _ = data.draw(st.sampled_from(FIELDS))
    parent = path[:-1]
    allowed = schema.allowed_keys(StudyFile, list(parent))
    new = data.draw(NAMES.filter(lambda s: s not in allowed and s not in ("preset", "extends")))
    tree = _set(RESOLVED, (*parent, new), data.draw(st.integers() | WORDS))
    _check_generated(tree, ".".join((*parent, new)), "unknown key")


@HYPO
@given(data=st.data())
def test_generated_wrong_types(data: st.DataObject) -> None:
    """Text where a number or a name belongs (no literal starts with x), a mapping or a list
    where a scalar belongs."""
    path, _ = data.draw(st.sampled_from(NUMBERS + [(p, None) for p, _ in LITERALS]))
    value = data.draw(st.from_regex(r"x[a-z]{0,8}", fullmatch=True)
                      | st.dictionaries(NAMES, st.integers(), min_size=1, max_size=2)
                      | st.lists(st.integers(), min_size=2, max_size=3))
    _check_generated(_set(RESOLVED, path, value), ".".join(path))


@HYPO
@given(data=st.data())
def test_generated_out_of_range_numbers(data: st.DataObject) -> None:
    path, info, bound = data.draw(st.sampled_from(BOUNDED))
    integer = float not in _union(info.annotation)
    if integer:
        delta = data.draw(st.integers(1, 10**6))
    else:
        delta = data.draw(st.floats(1e-6, 1e6, allow_nan=False, allow_infinity=False))
    if isinstance(bound, at.Ge):
        value, words = bound.ge - delta, "greater than or equal to"
    elif isinstance(bound, at.Gt):
        value, words = bound.gt - delta + (0 if integer else delta * data.draw(
            st.sampled_from([0, 1]))), "greater than"
    elif isinstance(bound, at.Le):
        value, words = bound.le + delta, "less than or equal to"
    else:
        value, words = bound.lt + delta, "less than"
    _check_generated(_set(RESOLVED, path, value), ".".join(path), words)


@HYPO
@given(data=st.data())
def test_generated_unknown_enum_values(data: st.DataObject) -> None:
    """A random string as a sampler, model, fusion method, degradation, method..."""
    if data.draw(st.booleans()):
        path, allowed = data.draw(st.sampled_from(LITERALS))
        value = data.draw(WORDS.filter(lambda s: s not in map(str, allowed)))
        tree = _set(RESOLVED, path, value)
        needles = [".".join(path), *(repr(a) if isinstance(a, str) else str(a)
                                     for a in allowed)]
    else:
        path, (what, allowed) = data.draw(st.sampled_from(sorted(ENUM_LISTS.items())))
        value = data.draw(WORDS.filter(lambda s: s not in allowed))
        tree = _set(RESOLVED, path, ["jpeg" if "degradation" in what else "fusiondistill",
                                     value])
        needles = [".".join(path), what, allowed[-1]]
    _check_generated(tree, *needles)


@HYPO
@given(data=st.data())
def test_generated_space_errors(data: st.DataObject) -> None:
    """low > high, random categorical choices, simplex over a random name."""
    kind = data.draw(st.sampled_from(["range", "choice", "simplex"]))
    if kind == "range":
        name = data.draw(st.sampled_from(["distill.lr", "distill.temperature", "distill.alpha",
                                          "fusion.lambdas"]))
        a, b = data.draw(st.tuples(*[st.floats(1e-4, 1e3, allow_nan=False)] * 2).filter(
            lambda ab: ab[0] != ab[1]))
        spec = dict(RAW["space"][name], low=max(a, b), high=min(a, b))
        needles = (f"space.{name}", f"low {max(a, b)} > high {min(a, b)}")
    elif kind == "choice":
        name = data.draw(st.sampled_from(["fusion.method", "distill.loss"]))
        bad = data.draw(WORDS.filter(lambda s: s not in ("uniform", "task_arithmetic", "ties",
                                                         "feature", "logit", "both")))
        spec = {"type": "categorical", "choices": [*RAW["space"][name]["choices"], bad]}
        needles = (f"space.{name}.choices", repr(bad))
    else:
        name = "fusion.weights"
        over = data.draw(NAMES.filter(lambda s: s not in RAW["space"]))
        spec = {"type": "simplex", "over": over}
        needles = ("space.fusion.weights.over", f"'{over}' is not a parameter")
    _check_generated(_edit(RAW, **{f"space__{name}": spec}), *needles)


@HYPO
@given(of=st.lists(st.sampled_from([*DEGRADATION_NAMES, "fog", "rain"]), max_size=6),
       lo=st.integers(-1, 6), hi=st.integers(-1, 6))
def test_generated_subsets_are_refused_exactly_when_invalid(of: list[str], lo: int,
                                                            hi: int) -> None:
    """An oracle: the subset is accepted iff its items are known and distinct and
    1 <= min_size <= max_size <= len(of)."""
    valid = (bool(of) and set(of) <= set(DEGRADATION_NAMES) and len(set(of)) == len(of)
             and 1 <= lo <= hi <= len(of))
    tree = _edit(RAW, **{"space__degradations": {"type": "subset", "of": of, "min_size": lo,
                                                 "max_size": hi}})
    rc, _ = _check_generated(tree, "space.degradations", must_fail=False)
    assert rc == (0 if valid else 2)


def _mutations() -> st.SearchStrategy[tuple[str, tuple[Any, ...], Any]]:
    paths = []

    def walk(node: Any, prefix: tuple[Any, ...]) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                paths.append((*prefix, k))
                walk(v, (*prefix, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, (*prefix, i))

    walk(RESOLVED, ())
    junk = (st.none() | st.booleans() | st.integers() | st.floats() | WORDS
            | st.lists(st.integers(), max_size=3) | st.dictionaries(NAMES, st.integers(),
                                                                     max_size=2))
    return st.tuples(st.sampled_from(["delete", "rename", "retype"]), st.sampled_from(paths),
                     junk)


@settings(HYPO, max_examples=60)
@given(mutation=_mutations(), new_name=NAMES)
def test_generated_mutations_of_smoke_never_crash(mutation: tuple[str, tuple[Any, ...], Any],
                                                  new_name: str) -> None:
    """Any single mutation of the smoke tree: accepted (exit 0) or refused cleanly (exit 2,
    naming the file and the key that was touched); never a traceback, never a write."""
    op, path, junk = mutation
    tree = yaml.safe_load(yaml.safe_dump(RESOLVED))
    node = tree
    for k in path[:-1]:
        node = node[k]
    key = path[-1]
    if op == "delete":
        del node[key]
    elif op == "rename":
        node[new_name] = node.pop(key)
    else:
        node[key] = junk
    touched = new_name if op == "rename" else str(key)
    rc, err = _check_generated(tree, must_fail=False)
    if rc == 2 and "in the study file" in err:   # a schema error: it points at the mutation
        assert touched in err or any(str(p) in err for p in path), err


@HYPO
@given(key=st.from_regex(r"[a-z_.]{0,20}", fullmatch=True),
       value=st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30))
def test_generated_set_overrides_never_crash(key: str, value: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        rc, _, err = _cli(["launch", "--dry-run", *SMOKE_ARGS, "--set", f"{key}={value}",
                           "--results", f"{d}/res"])
        assert rc in (0, 2) and "Traceback" not in err, err[-800:]
        assert _written(Path(d) / "res") == []
        if rc == 2:
            assert err.startswith("study: error:")


# ---------------------------------------------------------------- in a real terminal
def test_no_traceback_reaches_the_terminal(tmp_path: Path) -> None:
    """The real entry point in subprocesses: exit 2, one message, no traceback."""
    bomb = _case_file(tmp_path / "bomb", next(c for n, c, _, _ in FILES if n == "yaml_bomb"))
    # each process imports torch (~4 s of CPU): three, in parallel, one per kind of refusal
    runs = {
        "bomb": (["launch", "--space", str(bomb)], "expands to over"),
        "pg": (["launch", *SMOKE_ARGS, "--set", f"study.storage={UNREACHABLE_PG}"],
               "study.storage"),
        "data_root": (["run", *SMOKE_ARGS, "--set", "data.dataset=cifar10", "--set",
                       f"data.root={tmp_path / 'none'}"], "pipeline.data.root"),
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = {k: subprocess.Popen([sys.executable, "-m", "study.cli", *argv, "--results",
                                  str(tmp_path / f"res_{k}")], cwd=tmp_path, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, (argv, _) in runs.items()}
    for k, p in procs.items():
        out, err = p.communicate(timeout=120)
        assert p.returncode == 2, f"{k}: exit {p.returncode}\n{err[-1500:]}"
        assert "Traceback" not in err + out and runs[k][1] in err, f"{k}: {err[-1500:]}"
        assert _written(tmp_path / f"res_{k}") == [], k


# ---------------------------------------------------------------- security
SOURCES = sorted((ROOT / "study").glob("*.py"))


def _calls(text: str, name: str) -> list[str]:
    """The argument text of every call `name(...)`, parentheses balanced."""
    out = []
    for m in re.finditer(re.escape(name) + r"\(", text):
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        out.append(text[m.end():i - 1])
    return out


def test_every_torch_load_is_weights_only() -> None:
    found = 0
    for f in SOURCES:
        for args in _calls(f.read_text(), "torch.load"):
            found += 1
            assert re.search(r"weights_only\s*=\s*True", args), f"{f.name}: torch.load({args})"
    assert found >= 1   # the stage cache and the training checkpoints load tensors


def test_yaml_is_only_loaded_safely() -> None:
    unsafe = re.compile(r"yaml\.(unsafe_load|full_load|load_all|unsafe_load_all)\(|"
                        r"Loader\s*=\s*yaml\.(Loader|FullLoader|UnsafeLoader)\b|"
                        r"yaml\.(Loader|UnsafeLoader|FullLoader)\b")
    for f in SOURCES:
        text = f.read_text()
        assert not unsafe.search(text), f"{f.name}: {unsafe.search(text).group(0)}"
        for args in _calls(text, "yaml.load"):
            assert re.search(r"Loader\s*=\s*yaml\.C?SafeLoader", args), f"{f.name}: {args}"


def test_no_shell_strings_in_the_package() -> None:
    shell = re.compile(r"shell\s*=\s*True|os\.system\(|os\.popen\(|subprocess\.getoutput\(|"
                       r"subprocess\.getstatusoutput\(|(?<![.\w])eval\(|(?<![.\w])exec\(")
    for f in SOURCES:
        for i, line in enumerate(f.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            assert not shell.search(code), f"{f.name}:{i}: {line.strip()}"


def test_dashboard_binds_to_localhost_by_default() -> None:
    args = cli.build_parser().parse_args(["dashboard", "--space", "smoke.yaml"])
    assert args.host == "127.0.0.1"
    assert "127.0.0.1" in cli.build_parser()._subparsers._group_actions[0].choices[
        "dashboard"].format_help()
    # the address given is the one served: no hard-coded 0.0.0.0 anywhere in the package
    served = _calls((ROOT / "study" / "commands" / "dashboard.py").read_text(), "run_server")
    assert served and all("host=args.host" in c for c in served)
    assert not any("0.0.0.0" in f.read_text() for f in SOURCES)

