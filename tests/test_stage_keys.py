"""Cache keys cover exactly what each stage reads.

The table below names, for every leaf of the pipeline config, a new value and the stages whose
key must change when only that leaf changes (on the paper setting, CPU, reference data path).
A leaf missing from the table fails the test: a new config field needs a decision here.
Then: golden keys of the paper preset, replicate seeds reaching every trained stage, and the
`study run` behaviour the stage-graph issue asks for (seed=1 rebuilds base, experts, scratch;
fusion.lambdas under uniform rebuilds nothing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from study import stages
from study.cache import StageCache
from study.config import PipelineConfig
from study.pipeline import Pipeline
from study.studyfile import load

ALL = frozenset(stages.instance_names())
EXPERTS = frozenset(n for n in ALL if n.startswith("expert_"))
B, M, F, D, S, V = "base", "modelsoups", "fusing", "fusiondistill", "scratch", "vanilla_ft"
NONE: frozenset[str] = frozenset()
FROM_BASE = ALL - {S}                       # base and everything trained from it
FROM_EXPERTS = EXPERTS | {M, F, D}
TRAINED_ON_DEGRADATIONS = {F, D, S, V}     # stages that train on the whole degradation set


def _train_spec_rows(name: str, changed: frozenset[str], *, sgd: bool, schedule: str
                     ) -> dict[str, tuple[Any, frozenset[str]]]:
    """A TrainSpec's leaves: fields its optimiser or schedule ignores change nothing."""
    return {
        f"{name}.optimizer": ("adamw", changed),
        f"{name}.lr": (0.05, changed),
        f"{name}.momentum": (0.5, changed if sgd else NONE),
        f"{name}.weight_decay": (0.0, changed),
        f"{name}.schedule": ("constant", changed),
        f"{name}.milestones": ([5, 10], changed if schedule == "multistep" else NONE),
        f"{name}.gamma": (0.5, changed if schedule == "multistep" else NONE),
        f"{name}.t_max": (7, changed if schedule == "cosine" else NONE),
        f"{name}.epochs": (3, changed),
        f"{name}.batch_size": (64, changed),
        f"{name}.cutout": (8, changed),
        f"{name}.cutout_on": ("both", changed),
    }


# leaf -> (new value, stages whose key changes)
TABLE: dict[str, tuple[Any, frozenset[str]]] = {
    "data.dataset": ("cifar100", ALL),
    "data.root": ("elsewhere", ALL),
    "data.val_size": (4000, ALL),
    "data.seed": (1, ALL),
    "data.synthetic_train": (3000, NONE),      # not a synthetic dataset
    "data.synthetic_test": (600, NONE),
    "data.train_subset": (10_000, ALL),   # above the paper preset's 5,000 held out
    "data.classes": (["a", "b"], ALL),         # kept classes: other training images
    "model": ("tiny", ALL),
    "degradations": (["jpeg", "blur", "awgn"], frozenset({M, *TRAINED_ON_DEGRADATIONS})),
    "salt_value": (255, frozenset({"expert_saltpepper", M, *TRAINED_ON_DEGRADATIONS})),
    "methods": (["fusiondistill"], NONE),
    "selection": ("last", ALL),
    "protocol": ("reference", ALL),            # other training images, other selection
    "chunk_sharing": ("images", frozenset(TRAINED_ON_DEGRADATIONS)),
    "seed": (1, ALL),                          # replicates: every trained stage
    # auto on a machine without a GPU is this same CPU run; with one, the device data path
    "device": ("auto", ALL if torch.cuda.is_available() else NONE),
    "compute.data_path": ("reference", NONE),  # auto is the reference path on CPU
    "compute.jpeg_bank_step": (10, NONE),      # device path only
    "compute.bank_workers": (3, NONE),
    "compute.channels_last": (True, NONE),     # how, not what
    "compute.compile": ("default", NONE),
    "compute.amp": ("bf16", ALL),              # another precision: other weights
    "eval.test_level_step": (5, NONE),
    "eval.val_level_step": (5, NONE),
    "eval.batch_size": (100, NONE),
    "eval.seed": (1, ALL - {B}),               # picks checkpoints on degraded validation
    "eval.degradations": (["jpeg"], NONE),
    # validation settings: they score the epochs best_val picks from. Redrawing per epoch
    # changes what degraded validation shows (the base validates on clean images, which draw
    # nothing); per-batch accuracy changes every best_val stage's scores. The batch size
    # counts only with per-batch accuracy (CONDITIONAL).
    "validation.draw": ("per_epoch", ALL - {B}),
    "validation.accuracy": ("batches", ALL),
    "validation.batch_size": (64, NONE),
    **_train_spec_rows("base", FROM_BASE, sgd=True, schedule="multistep"),
    **_train_spec_rows("expert", FROM_EXPERTS, sgd=False, schedule="cosine"),
    "expert.ce_weight": (0.5, FROM_EXPERTS),
    "expert.feature_weight": (0.5, FROM_EXPERTS),
    "expert.feature_layers": ({"stage2": 1.0}, FROM_EXPERTS),
    "fusion.method": ("task_arithmetic", frozenset({M, F, D})),
    "fusion.bn": ("average", frozenset({M, F, D})),
    "fusion.experts": (["jpeg", "blur"], frozenset({M, F, D})),
    "fusion.weights": ({"jpeg": 0.4, "blur": 0.2, "awgn": 0.2, "saltpepper": 0.2}, NONE),
    "fusion.lambdas": (0.5, NONE),             # uniform ignores them
    "fusion.density": (0.5, NONE),
    "fusion.drop_rate": (0.5, NONE),
    "fusion.bn_batches": (5, NONE),
    **_train_spec_rows("distill", frozenset({D}), sgd=False, schedule="multistep"),
    "distill.loss": ("logit", frozenset({D})),
    "distill.ce_weight": (0.2, frozenset({D})),
    "distill.feature_weight": (0.5, frozenset({D})),
    "distill.feature_layers": ({"stage2": 1.0}, frozenset({D})),
    "distill.kd_weight": (0.5, NONE),           # logit distillation only
    "distill.temperature": (2.0, NONE),
    "distill.alpha": (0.5, NONE),
    "distill.teacher_input": ("degraded", frozenset({D})),
    "distill.same_images_per_degradation": (False, frozenset({D})),
    **_train_spec_rows("scratch", frozenset({S}), sgd=True, schedule="multistep"),
    **_train_spec_rows("vanilla_ft", frozenset({V}), sgd=False, schedule="multistep"),
    **_train_spec_rows("fusing", frozenset({F}), sgd=False, schedule="multistep"),
}

# Fields that some configurations ignore must count where they are read:
# (base overrides, leaf, new value, stages whose key changes)
CONDITIONAL = [
    ({"fusion.method": "task_arithmetic"}, "fusion.lambdas", 0.5, {M, F, D}),
    ({"fusion.method": "task_arithmetic"}, "fusion.density", 0.5, set()),
    ({"fusion.method": "ties"}, "fusion.density", 0.5, {M, F, D}),
    ({"fusion.method": "dare"}, "fusion.drop_rate", 0.5, {M, F, D}),
    ({"fusion.method": "weighted",
      "fusion.weights": {"jpeg": 0.25, "blur": 0.25, "awgn": 0.25, "saltpepper": 0.25}},
     "fusion.weights", {"jpeg": 0.4, "blur": 0.2, "awgn": 0.2, "saltpepper": 0.2}, {M, F, D}),
    ({"fusion.bn": "recompute"}, "fusion.bn_batches", 5, {M, F, D}),
    ({"distill.loss": "logit"}, "distill.temperature", 2.0, {D}),
    ({"distill.loss": "logit"}, "distill.ce_weight", 0.2, set()),
    ({"distill.loss": "both"}, "distill.alpha", 0.5, {D}),
    ({"selection": "last"}, "eval.seed", 1, set()),
    ({"selection": "last"}, "validation.draw", "per_epoch", set()),   # nothing is scored
    ({"selection": "last"}, "validation.accuracy", "batches", set()),
    ({"validation.accuracy": "batches"}, "validation.batch_size", 64, ALL),
    # auto follows the protocol: under reference it is the per-epoch redraw and per-batch
    # accuracy already, so spelling them out moves no key, and the fixed draw or the share of
    # images right moves the keys they score
    ({"protocol": "reference"}, "validation.draw", "per_epoch", set()),
    ({"protocol": "reference"}, "validation.accuracy", "batches", set()),
    ({"protocol": "reference"}, "validation.draw", "fixed", ALL - {B}),
    ({"protocol": "reference"}, "validation.accuracy", "images", ALL),
    ({"protocol": "reference"}, "validation.batch_size", 64, ALL),
    ({"protocol": "reference", "selection": "last"}, "validation.draw", "fixed", set()),
    ({"compute.data_path": "device"}, "compute.jpeg_bank_step", 10,
     {"expert_jpeg", M, *TRAINED_ON_DEGRADATIONS}),
    ({}, "compute.data_path", "device", ALL),   # torch's streams: other weights
    ({"base.cutout": 0}, "base.cutout_on", "both", set()),   # no hole, wherever it would go
    ({"distill.same_images_per_degradation": False}, "chunk_sharing", "geometry", {F, S, V}),
    ({"degradations": ["jpeg"]}, "chunk_sharing", "geometry", set()),   # one chunk per step
    ({"fusion.bn": "recompute"}, "chunk_sharing", "geometry", {M, *TRAINED_ON_DEGRADATIONS}),
    ({"protocol": "reference"}, "data.val_size", 1000, set()),   # nothing is held out
    # an expert is keyed on its own degradation, also when it is the only one trained
    ({}, "degradations", ["jpeg"], {M, *TRAINED_ON_DEGRADATIONS}),
]


def _paper(**changes: Any) -> PipelineConfig:
    return _changed(load("paper_cifar10.yaml", ["device=cpu"], check_space=False).sf.pipeline
                    .model_dump(), changes)


def _changed(tree: dict[str, Any], changes: dict[str, Any]) -> PipelineConfig:
    """`tree` with each dotted path of `changes` set, validated."""
    for path, value in changes.items():
        node = tree
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return PipelineConfig.model_validate(tree)


def _keys(cfg: PipelineConfig, root: Path) -> dict[str, str]:
    pipe = Pipeline(cfg, StageCache(root), log=lambda s: None)
    return {n: pipe.key(n) for n in ALL}


def _leaves(tree: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        # dict-valued fields (feature_layers, weights, lambdas) are single settings
        if isinstance(v, dict) and k not in ("feature_layers", "weights", "lambdas"):
            out += _leaves(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


def test_every_config_leaf_is_in_the_table() -> None:
    leaves = set(_leaves(_paper().model_dump()))
    assert leaves - set(TABLE) == set(), "new config fields: decide which stages they change"
    assert set(TABLE) - leaves == set(), "the table names fields the config no longer has"


@pytest.mark.parametrize("leaf", sorted(TABLE))
def test_changing_one_leaf_changes_exactly_the_declared_stages(leaf: str, tmp_path: Path
                                                                ) -> None:
    value, expected = TABLE[leaf]
    before = _keys(_paper(), tmp_path)
    after = _keys(_paper(**{leaf: value}), tmp_path)
    assert before != {} and _paper(**{leaf: value}) != _paper(), f"{leaf}: the value is a no-op"
    changed = {n for n in ALL if before[n] != after[n]}
    assert changed == set(expected), (leaf, sorted(changed ^ set(expected)))


@pytest.mark.parametrize(("base", "leaf", "value", "expected"), CONDITIONAL,
                         ids=[f"{c[1]}-under-{c[0]}" for c in CONDITIONAL])
def test_fields_count_where_they_are_read(base: dict[str, Any], leaf: str, value: Any,
                                          expected: set[str], tmp_path: Path) -> None:
    before = _keys(_paper(**base), tmp_path)
    after = _keys(_paper(**{**base, leaf: value}), tmp_path)
    assert {n for n in ALL if before[n] != after[n]} == expected


def test_key_fields_lie_under_the_declared_reads() -> None:
    """`reads` (what SLURM planning uses to decide a stage is shared) covers every key field,
    under several configurations."""
    configs = [_paper(), *(_paper(**{**b, leaf: v}) for b, leaf, v, _ in CONDITIONAL)]
    for cfg in configs:
        pipe = Pipeline(cfg, StageCache("/nonexistent"), log=lambda s: None)
        for name in ALL:
            stage, _ = stages.parse_instance(name)
            for field in set(pipe.key_fields(name)) - {stages.INSTANCE}:
                assert any(field == r or field.startswith(r + ".") for r in stage.reads), (
                    name, field)


# The paper setting on CIFAR-10 (root 'data'), CPU reference path. A change here means every
# cached result of the paper setting is rebuilt: say so in the README's changelog.
GOLDEN = {
    "base": "40a24d73e39f8bea7dd8",
    "expert_jpeg": "7b4214d2cf6a8fc553d8",
    "expert_blur": "7baebc1c3084817f55a6",
    "expert_awgn": "bf0f4e8c096072c5ae5a",
    "expert_saltpepper": "2fa4fde788f9b4b6f34b",
    "scratch": "7115f4e75371150c8df3",
    "vanilla_ft": "500b668d4ba73a897f91",
    "modelsoups": "db99bed43227768509a6",
    "fusing": "67b5c60fbf14053e2c3d",
    "fusiondistill": "21c1af9d64e9cb59e30c",
}


def test_golden_keys_of_the_paper_preset(tmp_path: Path) -> None:
    assert _keys(_paper(), tmp_path) == GOLDEN


def _smoke(tmp_path: Path, *overrides: str) -> Pipeline:
    # the smoke pipeline at its smallest: one epoch a stage, 200 training images
    quick = ["device=cpu", "data.synthetic_train=260", "data.val_size=60", "data.synthetic_test=60",
             "base.epochs=1", "base.milestones=[1]", "expert.epochs=1", "expert.t_max=1",
             "distill.epochs=1", "distill.milestones=[1]", "scratch.epochs=1",
             "scratch.milestones=[1]", "vanilla_ft.epochs=1", "vanilla_ft.milestones=[1]",
             "fusing.epochs=1", "fusing.milestones=[1]", "eval.test_level_step=50",
             "eval.val_level_step=50"]
    sf = load("smoke.yaml", [*quick, *overrides], check_space=False).sf
    return Pipeline(sf.pipeline, StageCache(tmp_path / "cache"), log=lambda s: None)


def test_replicate_seeds_give_different_base_weights(tmp_path: Path) -> None:
    a = _smoke(tmp_path).network("base").state_dict()
    b = _smoke(tmp_path, "seed=1").network("base").state_dict()
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


@pytest.mark.slow
def test_seed_rebuilds_trained_stages_and_ignored_fields_rebuild_nothing(tmp_path: Path) -> None:
    first = _smoke(tmp_path)
    first.run()
    assert not any(s.hit for s in first.stages)
    replicate = _smoke(tmp_path, "seed=1")
    replicate.run()
    built = {s.stage for s in replicate.stages if not s.hit}
    assert {"base", "scratch", *EXPERTS} <= built
    assert built == {s.stage for s in replicate.stages}   # nothing of seed 0 reused
    ignored = _smoke(tmp_path, "fusion.lambdas=0.5", "distill.temperature=9")
    ignored.run()
    assert ignored.stages and all(s.hit for s in ignored.stages)


# ---------------------------------------------------------------- evaluation and degraded copies
def _smoke_cfg(**changes: Any) -> PipelineConfig:
    tree = load("smoke.yaml", ["device=cpu"], check_space=False).sf.pipeline.model_dump()
    for path, value in changes.items():
        node = tree
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return PipelineConfig.model_validate(tree)


def _eval_keys(cfg: PipelineConfig) -> dict[str, str]:
    """fusiondistill's evaluation key per split, and a JPEG and a salt-and-pepper copy's."""
    pipe = Pipeline(cfg, StageCache("/nonexistent"), log=lambda s: None)
    out = {f"eval {split}": pipe.evaluation_key("fusiondistill", split)
           for split in ("val", "test")}
    out |= {f"{d} {split}": pipe.bank_key(split, d, 5)
            for split in ("val", "test") for d in ("jpeg", "saltpepper")}
    return out


ALL_EVAL = frozenset(_eval_keys(_smoke_cfg()))
VAL_EVAL = frozenset(k for k in ALL_EVAL if k.endswith(" val"))
TEST_EVAL = ALL_EVAL - VAL_EVAL
# leaf -> (new value, evaluation and copy keys that change): they cover what decides a split's
# images (and the networks' keys), not the whole data section as 0.3's did.
EVAL_TABLE: list[tuple[str, Any, frozenset[str]]] = [
    # the test set is drawn on its own stream: the held-out validation images stay
    ("data.synthetic_test", 200, TEST_EVAL),
    ("data.val_size", 400, ALL_EVAL - {"jpeg test", "saltpepper test"}),   # networks too
    ("data.root", "unused", frozenset()),                  # synthetic data has no folder
    ("eval.batch_size", 100, frozenset()),                 # changes no number
    ("eval.test_level_step", 5, frozenset({"eval test"})),
    ("eval.seed", 3, ALL_EVAL),                            # copies and checkpoint choice
    ("eval.degradations", ["jpeg"], frozenset({"eval val", "eval test"})),
    # under protocol reference the validation split IS the test set: its copies differ from
    # the held-out ones (issue: they were shared, and the tables read each other's)
    ("protocol", "reference", ALL_EVAL - {"jpeg test", "saltpepper test"}),
]


@pytest.mark.parametrize(("leaf", "value", "expected"), EVAL_TABLE,
                         ids=[row[0] for row in EVAL_TABLE])
def test_evaluation_and_copy_keys_cover_what_they_read(leaf: str, value: Any,
                                                       expected: frozenset[str]) -> None:
    before, after = _eval_keys(_smoke_cfg()), _eval_keys(_smoke_cfg(**{leaf: value}))
    assert {k for k in before if before[k] != after[k]} == set(expected)


def test_salt_value_reaches_only_salt_and_pepper_copies() -> None:
    """salt_value changes the salt-and-pepper copies, not the JPEG ones; with no
    salt-and-pepper evaluated, the evaluation key no longer covers it (only the networks
    trained on salt-and-pepper do)."""
    cfg = _smoke_cfg(**{"eval.degradations": ["jpeg"]})
    before, after = _eval_keys(cfg), _eval_keys(
        _smoke_cfg(**{"eval.degradations": ["jpeg"], "salt_value": 255}))
    changed = {k for k in before if before[k] != after[k]}
    assert {"saltpepper val", "saltpepper test"} <= changed
    assert not changed & {"jpeg val", "jpeg test"}
    assert stages.evaluation_fields(cfg, "test", 10).get("salt_value") is None
