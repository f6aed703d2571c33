"""Fail fast before a GPU-hour burns: a study file whose space can produce an invalid trial, a
searched study/executor key, a boolean where a number belongs, a seed numpy cannot take, a
study name that collides with the stage cache, or a study file that is not a regular file is
refused at load (exit 2, one paragraph naming the file and the key, nothing written).

Everything runs in-process on the smoke tree (a load is about 0.1 s), except one subprocess
that proves `--space /dev/zero` ends, with exit 2, at the real entry point.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from study import cli, config, studyfile
from study.commands import options
from study.config import SEED_MAX, StudyFile
from study.errors import ConfigError
from study.space import SearchSpace

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "search_spaces").glob("*.yaml"))
SMOKE = ROOT / "search_spaces" / "smoke.yaml"
DEGS = ["jpeg", "blur", "awgn", "saltpepper"]
HEAD = {"study": {"name": "w", "objectives": [{"method": "fusiondistill"}]},
        "pipeline": {"preset": "smoke", "device": "cpu"}}


def _file(tmp: Path, space: dict[str, Any], pipeline: dict[str, Any] | None = None,
          study: dict[str, Any] | None = None) -> Path:
    tree = yaml.safe_load(yaml.safe_dump(HEAD))
    tree["pipeline"].update(pipeline or {})
    tree["study"].update(study or {})
    tree["space"] = space
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def _refused(path: Path, *needles: str, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as e:
        studyfile.load(path, overrides)
    msg = str(e.value)
    assert msg.startswith(str(path)), msg
    for n in needles:
        assert n in msg, f"{n!r} missing from:\n{msg}"
    return msg


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = cli.main(argv)
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return rc, out.err


# ---------------------------------------------------------------- 1. the space as a whole
WHOLE: list[tuple[str, dict[str, Any], dict[str, Any], tuple[str, ...]]] = [
    # (id, space, pipeline overrides, needles: the searched key, the value, the broken rule)
    ("weighted_without_weights",
     {"fusion.method": {"type": "categorical", "choices": ["weighted"]}}, {},
     ("'space.fusion.method'", "fusion.method='weighted'", "needs fusion.weights")),
    ("simplex_over_2_of_4",
     {"fusion.weights": {"type": "simplex", "over": ["jpeg", "blur"]}},
     {"fusion": {"method": "weighted", "weights": dict.fromkeys(DEGS, 0.25)}},
     ("'space.fusion.weights'", "fusion.weights={'jpeg': ", "one weight per fused expert")),
    ("methods_drop_the_objective",
     {"methods": {"type": "subset", "of": ["oracle", "modelsoups", "fusiondistill"]}}, {},
     ("'space.methods'", "methods=['oracle'", "study.objectives use ['fusiondistill']")),
    ("dataset_without_root",
     {"data.dataset": {"type": "categorical", "choices": ["synthetic", "cifar10"]}}, {},
     ("'space.data.dataset'", "data.dataset='cifar10'", "data.root is required")),
    ("lambdas_keyed_by_a_searched_subset",
     {"degradations": {"type": "subset", "of": DEGS, "min_size": 2}},
     {"fusion": {"method": "task_arithmetic", "lambdas": dict.fromkeys(DEGS, 0.5)}},
     ("'space.degradations'", "degradations=[", "fusion.lambdas keys must be the fused")),
    ("ties_with_lambdas_per_expert",
     {"fusion.method": {"type": "categorical", "choices": ["task_arithmetic", "ties"]}},
     {"fusion": {"lambdas": dict.fromkeys(DEGS, 0.5)}},
     ("'space.fusion.method'", "fusion.method='ties'", "takes one number as fusion.lambdas")),
    ("val_size_over_a_searched_train_set",
     {"data.synthetic_train": {"type": "int", "low": 200, "high": 2000}}, {},
     ("'space.data.synthetic_train'", "data.synthetic_train=200", "leaves no training")),
]


@pytest.mark.parametrize("case", WHOLE, ids=[c[0] for c in WHOLE])
def test_a_space_that_can_produce_an_invalid_trial_is_refused_at_load(
        case: tuple[str, dict[str, Any], dict[str, Any], tuple[str, ...]],
        tmp_path: Path) -> None:
    _, space, pipeline, needles = case
    path = _file(tmp_path, space, pipeline)
    msg = _refused(path, "the space can produce an invalid trial", *needles,
                   "narrow the space")
    assert "\n" not in msg   # one paragraph


def test_the_pipeline_of_each_of_those_files_is_valid_alone() -> None:
    """The trees themselves (the file's own pipeline) are valid: only the space is at fault."""
    for _, _space, pipeline, _ in WHOLE:
        tree = studyfile.resolve_tree({**HEAD, "pipeline": {**HEAD["pipeline"], **pipeline}},
                                      "x")
        studyfile.validate(tree, "x")


def test_the_message_names_only_the_values_that_break_the_trial(tmp_path: Path) -> None:
    path = _file(tmp_path, {
        "distill.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "fusion.bn": {"type": "categorical", "choices": ["copy_first", "average"]},
        "fusion.method": {"type": "categorical", "choices": ["uniform", "weighted"]},
        "distill.loss": {"type": "categorical", "choices": ["feature", "logit"]},
    })
    msg = _refused(path, "fusion.method='weighted'", "'space.fusion.method'")
    for other in ("distill.lr", "fusion.bn", "distill.loss"):
        assert other not in msg, msg


def test_a_value_another_shown_value_depends_on_stays_in_the_message(tmp_path: Path) -> None:
    """The weights are wrong only for 'weighted': the `when` that activates them is shown."""
    path = _file(tmp_path, {
        "fusion.method": {"type": "categorical", "choices": ["uniform", "weighted"]},
        "fusion.weights": {"type": "simplex", "over": ["jpeg", "blur"],
                           "when": {"fusion.method": "weighted"}},
    })
    _refused(path, "fusion.method='weighted'", "fusion.weights={", "'space.fusion.weights'")


def test_a_guarded_space_is_accepted(tmp_path: Path) -> None:
    """The same rules, kept by a `when`, a fixed root, a fixed list under the simplex."""
    path = _file(tmp_path, {
        "degradations": {"type": "subset", "of": DEGS, "min_size": 2},
        "fusion.method": {"type": "categorical", "choices": ["uniform", "weighted", "ties"]},
        "fusion.weights": {"type": "simplex", "over": "degradations",
                           "when": {"fusion.method": "weighted"}},
        "fusion.lambdas": {"type": "float", "low": 0.2, "high": 1.5,
                           "when": {"fusion.method": "ties"}},
        "data.dataset": {"type": "categorical", "choices": ["synthetic", "cifar10"]},
        "data.root": "data",
        "methods": {"type": "subset", "of": ["modelsoups", "fusiondistill"], "min_size": 2},
    })
    ld = studyfile.load(path)
    assert len(ld.space.params) == 7


def test_corners_find_what_random_draws_almost_never_do(tmp_path: Path) -> None:
    """Only seed = 2**32 - 1 breaks the replicates (seed + 1 is past numpy's range), and only
    when distill.epochs is 37 of 1..1000 is the seed searched at all: one trial in about 4e12.
    The corners force the `when` and take each end of the range."""
    space = {"distill.epochs": {"type": "int", "low": 1, "high": 1000},
             "seed": {"type": "int", "low": 0, "high": SEED_MAX,
                      "when": {"distill.epochs": 37}}}
    path = _file(tmp_path, space, study={"replicates": 2})
    _refused(path, f"seed={SEED_MAX}", "distill.epochs=37", "'space.seed'",
             "study.replicates 2")
    # one value less and every trial is valid
    space["seed"]["high"] = SEED_MAX - 1
    studyfile.load(_file(tmp_path, space, study={"replicates": 2}))


def test_the_probe_samples_are_fixed_distinct_and_bounded() -> None:
    """The same samples at every load (a worker sees what the launcher saw); a space of 1e9
    grid points costs corners + draws, never its grid."""
    ld = studyfile.load("fusion.yaml")
    a = list(ld.space.probe_samples(50, 0, 300))
    b = list(ld.space.probe_samples(50, 0, 300))
    assert a == b and len({yaml.safe_dump(x) for x in a}) == len(a)
    assert {x["fusion.method"] for x in a} == {"uniform", "weighted", "task_arithmetic", "ties",
                                               "dare"}
    assert {len(x["degradations"]) for x in a} == {2, 3, 4}
    for d in DEGS:   # each item left out (the corners), within min_size 2
        assert any(d not in x["degradations"] for x in a)
    huge = studyfile.from_tree(studyfile.resolve_tree({
        **HEAD, "space": {f"{s}.epochs": {"type": "int", "low": 1, "high": 1000}
                          for s in ("base", "expert", "distill")}}, "huge"), "huge")
    assert huge.space.grid_size() == 1000**3
    samples = list(huge.space.probe_samples(300, 0, 300))
    assert len(samples) <= 6 + 300


def test_a_20000_item_subset_is_checked_in_bounded_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21: every corner pattern of a subset was built up front (4 * 20,000**2 flags, a
    MemoryError), and 600 samples were drawn however wide (minutes). The corners are now built
    as they are taken, and a space wider than TRIAL_RAW_VALUES / 600 raw values gets fewer
    samples: the whole check draws at most TRIAL_RAW_VALUES raw values. Counted, not timed."""
    lr = {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}
    path = _file(tmp_path, {"data.classes": {"type": "subset",
                                             "of": [f"c{i}" for i in range(20_000)]},
                            "distill.lr": lr},
                 {"data": {"dataset": "imagefolder", "root": "data"}})
    sizes: list[int] = []   # of data.classes, in each sample validated as a trial
    apply = SearchSpace.apply

    def counted(self: SearchSpace, tree: dict[str, Any], values: Any) -> dict[str, Any]:
        sizes.append(len(values["data.classes"]))
        return apply(self, tree, values)

    monkeypatch.setattr(SearchSpace, "apply", counted)
    ld = studyfile.load(path)
    corners, draws = studyfile.probe_counts(ld.space)
    assert ld.space.raw_width() == 20_001 and 2 <= corners + draws < 60
    assert 2 <= len(sizes) <= corners + draws
    assert len(sizes) * ld.space.raw_width() <= studyfile.TRIAL_RAW_VALUES
    assert {20_000, 19_999, 1} <= set(sizes)   # all, each left out, alone (or none, repaired)
    # a space of ordinary width keeps every sample
    fusion = studyfile.load("fusion.yaml", check_space=False).space
    assert studyfile.probe_counts(fusion) == (studyfile.TRIAL_CORNER_LIMIT,
                                              studyfile.TRIAL_DRAWS)


def test_status_and_report_can_skip_the_whole_space_check(tmp_path: Path) -> None:
    """load(check_space=False), for commands that start no trial: each parameter is still
    checked at its own path, the trials the space can produce are not."""
    _, space, pipeline, _ = WHOLE[0]
    path = _file(tmp_path, space, pipeline)
    assert [p.name for p in studyfile.load(path, check_space=False).space.params] == [
        "fusion.method"]
    _refused(path, "the space can produce an invalid trial")
    bad = _file(tmp_path, {"fusion.method": {"type": "categorical", "choices": ["wieghted"]}})
    with pytest.raises(ConfigError, match="'space.fusion.method.choices': 'wieghted'"):
        studyfile.load(bad, check_space=False)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_space_passes_within_the_budget(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check runs at every load (a worker's start included), so its work is bounded:
    at most TRIAL_CORNER_LIMIT + TRIAL_DRAWS whole trials validated, and no more raw values
    than TRIAL_RAW_VALUES. Counted, not timed (a wall-clock budget failed under load; the
    figure, ~0.09 s for fusion.yaml on 2 cores, is not asserted). Within that bound every
    choice of every categorical parameter is validated in some trial."""
    ld = studyfile.load(path, check_space=False)
    validated: list[dict[str, Any]] = []
    apply = SearchSpace.apply

    def counted(self: SearchSpace, tree: dict[str, Any], values: Any) -> dict[str, Any]:
        validated.append(dict(values))
        return apply(self, tree, values)

    monkeypatch.setattr(SearchSpace, "apply", counted)
    studyfile.check_trials(ld.tree, ld.space, ld.source)   # the shipped space passes
    corners, draws = studyfile.probe_counts(ld.space)
    # an empty space (the paper presets) is its one trial, validated once
    assert 1 <= len(validated) <= corners + draws
    assert corners + draws <= studyfile.TRIAL_CORNER_LIMIT + studyfile.TRIAL_DRAWS
    assert len(validated) * ld.space.raw_width() <= studyfile.TRIAL_RAW_VALUES
    for p in ld.space.params:
        if "choices" in p.spec:
            seen = [v[p.name] for v in validated if p.name in v]
            missing = [c for c in p.spec["choices"] if c not in seen]
            assert not missing, (path.name, p.name, missing)


def test_the_cli_refuses_it_with_exit_2_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`status` starts no trial and skips the whole-space check (load(check_space=False)):
    it still writes nothing and exits 2, here because no study was launched."""
    path = _file(tmp_path, {"fusion.method": {"type": "categorical",
                                              "choices": ["uniform", "weighted"]}})
    for argv, needle in ((["launch", "--dry-run"], "fusion.method='weighted'"),
                         (["launch"], "fusion.method='weighted'"),
                         (["status"], "not been launched")):
        res = tmp_path / "res"
        rc, err = _cli([*argv, "--space", str(path), "--results", str(res)], capsys)
        assert rc == 2 and err.startswith("study: error:") and str(path) in err, err
        assert needle in err and not res.exists(), err


# ---------------------------------------------------------------- 2. pipeline keys only
@pytest.mark.parametrize("key, spec", [
    ("study.seed", {"type": "int", "low": 0, "high": 3}),
    ("study.n_trials", 4),
    ("executor.parallel", {"type": "categorical", "choices": [1, 2]}),
    ("executor.slurm.time_min", {"type": "int", "low": 10, "high": 60}),
])
def test_study_and_executor_keys_cannot_be_searched(key: str, spec: Any,
                                                    tmp_path: Path) -> None:
    _refused(_file(tmp_path, {key: spec}), f"key 'space.{key}'",
             "only pipeline settings can be searched")


def test_pipeline_keys_with_or_without_the_section_are_searched(tmp_path: Path) -> None:
    ld = studyfile.load(_file(tmp_path, {"pipeline.seed": {"type": "int", "low": 0, "high": 3},
                                         "distill.lr": 1e-3}))
    assert {p.path for p in ld.space.params} == {("pipeline", "seed"),
                                                 ("pipeline", "distill", "lr")}


# ---------------------------------------------------------------- 3. numbers are numbers
def _walk(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], Any]]:
    for name, info in model.model_fields.items():
        ann = info.annotation
        members = typing.get_args(ann) if typing.get_origin(ann) in (
            typing.Union, types.UnionType) else (ann,)
        sub = next((m for m in members if isinstance(m, type) and issubclass(m, BaseModel)),
                   None)
        if sub is not None:
            yield from _walk(sub, (*prefix, name))
        elif any(m in (int, float) for m in members):
            yield (*prefix, name), ann


NUMBER_FIELDS = [p for p, _ in _walk(StudyFile)]
RESOLVED = studyfile.resolve_tree(yaml.safe_load(SMOKE.read_text()), str(SMOKE))


def test_every_number_setting_refuses_a_boolean() -> None:
    assert len(NUMBER_FIELDS) >= 50 and ("pipeline", "seed") in NUMBER_FIELDS
    for path in NUMBER_FIELDS:
        for flag in (True, False):
            tree = yaml.safe_load(yaml.safe_dump(RESOLVED))
            config.set_path(tree, list(path), flag)
            with pytest.raises(ConfigError) as e:
                studyfile.validate(tree, "x.yaml")
            assert f"key '{'.'.join(path)}'" in str(e.value) and "boolean" in str(e.value)


@pytest.mark.parametrize("override, key", [
    ("study.n_trials=on", "study.n_trials"),
    ("distill.epochs=yes", "pipeline.distill.epochs"),
    ("distill.lr=true", "pipeline.distill.lr"),
    ("salt_value=true", "pipeline.salt_value"),
    ("base.milestones=[2, true]", "pipeline.base.milestones"),
    ("fusion.lambdas={jpeg: 1, blur: 1, awgn: 1, saltpepper: on}", "pipeline.fusion.lambdas"),
    ("expert.feature_layers={stage3: yes}", "pipeline.expert.feature_layers"),
    ("executor.gpus=[0, true]", "executor.gpus"),
])
def test_yaml_booleans_do_not_become_1(override: str, key: str) -> None:
    _refused(SMOKE, f"key '{key}'", "boolean", "True", overrides=(override,))


def test_an_int_is_still_a_float_and_a_string_number_too() -> None:
    sf = studyfile.load(SMOKE, ["distill.lr=1", "distill.temperature=2",
                                "distill.alpha='0.5'"]).sf
    assert sf.pipeline.distill.lr == 1.0 and isinstance(sf.pipeline.distill.lr, float)
    assert sf.pipeline.distill.alpha == 0.5


@pytest.mark.parametrize("spec, key, phrase", [
    ({"distill.lr": {"type": "float", "low": True, "high": 2}}, "space.distill.lr.low",
     "finite number"),
    ({"distill.epochs": {"type": "int", "low": 1, "high": 4, "step": True}},
     "space.distill.epochs.step", "an integer"),
    ({"distill.epochs": {"type": "categorical", "choices": [1, True]}},
     "space.distill.epochs.choices", "booleans"),
    ({"distill.alpha": {"type": "categorical", "choices": [0.5, "5e-1"]}},
     "space.distill.alpha.choices", "the same value"),
    ({"distill.lr": {"type": "categorical", "choices": [1, 1.0]}},
     "space.distill.lr.choices", "repeated"),
    ({"distill.same_images_per_degradation": {"type": "int", "low": 0, "high": 1}},
     "space.distill.same_images_per_degradation.type", "categorical"),
    ({"distill.epochs": True}, "space.distill.epochs.value", "boolean"),
])
def test_the_space_refuses_booleans_and_equal_choices_for_numbers(
        spec: dict[str, Any], key: str, phrase: str, tmp_path: Path) -> None:
    _refused(_file(tmp_path, spec), f"'{key}", phrase)


def test_booleans_remain_choices_of_a_boolean_setting(tmp_path: Path) -> None:
    ld = studyfile.load(_file(tmp_path, {"distill.same_images_per_degradation": {
        "type": "categorical", "choices": [False, True]}}))
    assert ld.space.params[0].spec["choices"] == [False, True]


# ---------------------------------------------------------------- 4. steps, reserved names
@pytest.mark.parametrize("spec, ok", [
    ({"type": "float", "low": 0.1, "high": 0.3, "step": 0.3}, False),
    ({"type": "float", "low": 0.1, "high": 0.3, "step": 0.2}, True),     # 0.1, 0.3
    ({"type": "float", "low": 0.3, "high": 0.3, "step": 0.5}, True),     # a single value asked
    ({"type": "int", "low": 1, "high": 3, "step": 4}, False),
    ({"type": "int", "low": 1, "high": 3, "step": 2}, True),
])
def test_a_step_wider_than_the_range_is_refused(spec: dict[str, Any], ok: bool,
                                                tmp_path: Path) -> None:
    key = "distill.alpha" if spec["type"] == "float" else "distill.epochs"
    path = _file(tmp_path, {key: spec})
    if ok:
        assert len(studyfile.load(path).space.grid()[key]) in (1, 2)
    else:
        _refused(path, f"'space.{key}.step'", "wider than the range")


def test_study_names_that_collide_with_the_results_folder_are_refused() -> None:
    args = cli.build_parser().parse_args(["launch", "--space", "smoke.yaml"])
    default_cache = Path(options.results_and_cache(args)[1]).name
    assert default_cache in config.RESERVED_STUDY_NAMES
    for name in (default_cache, default_cache.upper(), "README.md", "readme.MD"):
        _refused(SMOKE, "key 'study.name'", "reserved", overrides=(f"study.name={name}",))
    assert studyfile.load(SMOKE, ["study.name=cached"]).sf.study.name == "cached"


# ---------------------------------------------------------------- 5. ranges the code handles
SEEDS = ["study.seed", "pipeline.seed", "pipeline.data.seed", "pipeline.eval.seed"]


@pytest.mark.parametrize("key", SEEDS)
def test_every_seed_is_within_numpys_range(key: str) -> None:
    assert studyfile.load(SMOKE, [f"{key}={SEED_MAX}"]).sf is not None
    _refused(SMOKE, f"key '{key}'", "greater than or equal to 0", overrides=(f"{key}=-1",))
    _refused(SMOKE, f"key '{key}'", f"less than or equal to {SEED_MAX}",
             overrides=(f"{key}={SEED_MAX + 1}",))


def test_every_seed_field_of_the_schema_is_bounded() -> None:
    seeds = [p for p in NUMBER_FIELDS if p[-1] == "seed"]
    assert sorted(".".join(p) for p in seeds) == sorted(SEEDS)


def test_the_last_replicate_seed_stays_in_range() -> None:
    studyfile.load(SMOKE, [f"seed={SEED_MAX - 2}", "study.replicates=3"])
    _refused(SMOKE, "pipeline.seed", "study.replicates", str(SEED_MAX),
             overrides=(f"seed={SEED_MAX - 2}", "study.replicates=4"))


@pytest.mark.parametrize("override, needles", [
    ("study.objectives=[]", ("key 'study.objectives'", "at least 1")),
    ("data.val_size=1300", ("data.val_size 1300", "1300")),              # smoke: 1300 images
    ("data.train_subset=300", ("data.val_size 300", "300")),             # smoke: val_size 300
    ("data.classes=[]", ("key 'pipeline.data.classes'", "at least 1")),
    ("data.classes=[class1, class1]", ("pipeline.data.classes", "repeated")),
    ("data.classes=[class1, cat]", ("['cat']", "class9")),
    ("expert.feature_layers={}", ("key 'pipeline.expert.feature_layers'", "at least 1")),
    ("distill.feature_layers={stage3: -1}", ("pipeline.distill.feature_layers",
                                             "greater than or equal to 0")),
    ("data.synthetic_train=1000000000", ("pipeline.data.synthetic_train", "1000000")),
    ("compute.bank_workers=100000", ("pipeline.compute.bank_workers", "1024")),
])
def test_sizes_and_counts_the_pipeline_cannot_run_are_refused(override: str,
                                                              needles: tuple[str, ...]) -> None:
    _refused(SMOKE, *needles, overrides=(override,))


def test_the_reference_protocol_ignores_val_size() -> None:
    sf = studyfile.load(SMOKE, ["data.val_size=1300", "protocol=reference"]).sf
    assert sf.pipeline.data.val_size == 1300


# ---------------------------------------------------------------- 6. bounded reads
@contextlib.contextmanager
def unblocked(fifo: Path, after_s: float = 10.0) -> Iterator[list[bool]]:
    """If the code under test blocks opening `fifo` for reading (no writer), a writer comes
    after `after_s` so the test fails with a message instead of hanging; the list it yields
    says whether that happened."""
    blocked: list[bool] = []
    done = threading.Event()

    def writer() -> None:
        if not done.wait(after_s):
            blocked.append(True)
            with open(fifo, "wb"):   # unblocks the reader, which then reads nothing
                pass

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        yield blocked
    finally:
        done.set()
        t.join(after_s + 5)


def test_special_files_are_refused_before_they_are_read(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with unblocked(fifo) as blocked:
        _refused(fifo, "cannot read the file", "not a regular file but a FIFO")
    assert not blocked
    _refused(Path("/dev/zero"), "cannot read the file", "character device")
    _refused(tmp_path, "cannot read the file", "Is a directory")
    link = tmp_path / "zero.yaml"   # the loader resolves links: the message names the target
    link.symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match="^/dev/zero: .*character device"):
        studyfile.load(link)


def test_a_preset_that_is_not_a_regular_file_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A preset in the working directory's slurm/presets/ that is a FIFO."""
    folder = tmp_path / "slurm" / "presets"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "pipe.yaml")
    monkeypatch.chdir(tmp_path)
    with unblocked(folder / "pipe.yaml") as blocked:
        _refused(SMOKE, "key 'executor.slurm.preset'", "pipe.yaml", "FIFO",
                 overrides=("executor.slurm.preset=pipe",))
    assert not blocked


def test_reads_are_bounded(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (studyfile.MAX_FILE_BYTES + 1))
    _refused(big, f"at most {studyfile.MAX_FILE_BYTES}")
    ok = tmp_path / "ok.yaml"
    ok.write_bytes(b"#" * studyfile.MAX_FILE_BYTES)
    assert len(studyfile.read_bounded(ok)) == studyfile.MAX_FILE_BYTES


def test_dev_zero_ends_with_exit_2_at_the_real_entry_point(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "study.cli", "launch", "--dry-run", "--space",
                        "/dev/zero", "--results", str(tmp_path / "res")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "not a regular file" in r.stderr
    assert not (tmp_path / "res").exists()


# ---------------------------------------------------------------- 7. packs fit in parallel
def test_a_slurm_pack_larger_than_parallel_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = tmp_path / "res"
    rc, err = _cli(["launch", "--dry-run", "--space", str(SMOKE), "--executor", "slurm",
                    "--parallel", "1", "--set", "executor.slurm.trials_per_job=4",
                    "--results", str(res)], capsys)
    assert rc == 2 and str(SMOKE) in err, err
    assert "executor.slurm.trials_per_job (4)" in err and "executor.parallel (1)" in err
    assert not res.exists()
    rc, _ = _cli(["launch", "--dry-run", "--space", str(SMOKE), "--executor", "slurm",
                  "--parallel", "4", "--set", "executor.slurm.trials_per_job=4",
                  "--results", str(res)], capsys)
    assert rc == 0
