"""The stage-key table of tests/test_stage_keys.py, run from other base configurations.

test_stage_keys.py changes each config leaf of the paper setting (CIFAR-10, CPU, reference data
path) and checks which stages' keys move. A field that only some datasets or data paths read
(data.classes of an image folder, the synthetic sizes, the device path's own fields) counts
only there, so the same table runs here from a synthetic dataset, an image folder with its
class list, and the device data path; the rows that read differently from those bases are
overridden below, each with its reason. Then the degraded copies' bank keys and the evaluation
keys from each base: they move with eval.seed and with what decides the split's images, and
with nothing else; and the device path's keys with the device type.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import pytest
import torch
from test_stage_keys import ALL, NONE, TABLE, TRAINED_ON_DEGRADATIONS, M, _changed, _keys, _paper

from study import stages
from study.cache import StageCache
from study.config import PipelineConfig
from study.pipeline import Pipeline

Row = tuple[Any, frozenset[str]]

# base -> (its changes to the paper setting, the TABLE rows that read otherwise from it)
BASES: dict[str, tuple[dict[str, Any], dict[str, Row]]] = {
    "synthetic": (
        {"data.dataset": "synthetic", "data.val_size": 500},
        {
            "data.root": ("elsewhere", NONE),            # generated, not read from a folder
            "data.synthetic_train": (3000, ALL),         # the training images themselves
            # drawn on its own stream: the training images do not depend on it (only a
            # reference-protocol best_val selection reads the test set, not this base)
            "data.synthetic_test": (600, NONE),
            "data.val_size": (400, ALL),                 # 2,500 images: 4,000 is too many
            "data.classes": (["class3", "class1"], ALL),  # kept classes, relabelled in order
        },
    ),
    "imagefolder": (
        {"data.dataset": "imagefolder", "data.root": "folders",
         "data.classes": ["cat", "dog", "frog"]},
        {
            # the class order is the label order: other labels, other networks
            "data.classes": (["dog", "cat", "frog"], ALL),
        },
    ),
    "device": (
        {"compute.data_path": "device"},
        {
            "compute.data_path": ("reference", ALL),     # numpy's streams instead of torch's
            # the JPEG bank's quality step: what the jpeg chunks see
            "compute.jpeg_bank_step": (10, frozenset({"expert_jpeg", M,
                                                      *TRAINED_ON_DEGRADATIONS})),
        },
    ),
}


@functools.lru_cache(maxsize=1)
def _paper_tree() -> dict[str, Any]:
    """The paper setting's tree, loaded once (as test_stage_keys._paper loads it)."""
    return _paper().model_dump()


def _cfg(base: str, **changes: Any) -> PipelineConfig:
    """The paper setting with the base's changes, then `changes` (dotted paths)."""
    return _changed(copy.deepcopy(_paper_tree()), {**BASES[base][0], **changes})


@pytest.mark.parametrize("base", sorted(BASES))
def test_the_key_table_holds_from_each_base_configuration(base: str, tmp_path: Path) -> None:
    changes, overrides = BASES[base]
    assert set(overrides) <= set(TABLE), "an override names a leaf the table does not have"
    start = _cfg(base)
    for path, value in changes.items():   # the base really is what it says
        node: Any = start
        for part in path.split("."):
            node = getattr(node, part)
        assert node == value, path
    before = _keys(start, tmp_path)
    wrong, no_ops = {}, []
    for leaf, (value, expected) in sorted({**TABLE, **overrides}.items()):
        changed_cfg = _cfg(base, **{leaf: value})
        if changed_cfg == start:
            no_ops.append(leaf)
            continue
        after = _keys(changed_cfg, tmp_path)
        changed = {n for n in ALL if before[n] != after[n]}
        if changed != set(expected):
            wrong[leaf] = {"moved but should not": sorted(changed - expected),
                           "should move but did not": sorted(expected - changed)}
    assert not no_ops, f"{base}: these rows change nothing from this base: override them"
    assert not wrong, f"{base}: {wrong}"


def test_the_image_folder_class_list_is_in_every_key_and_its_order_counts(tmp_path: Path
                                                                          ) -> None:
    """An image folder's classes are its labels in order: dropping a class, or reordering
    two, gives other networks and other evaluation images."""
    start = _keys(_cfg("imagefolder"), tmp_path)
    for classes in (["dog", "cat", "frog"], ["cat", "dog"]):
        cfg = _cfg("imagefolder", **{"data.classes": classes})
        after = _keys(cfg, tmp_path)
        assert all(before != after[n] for n, before in start.items()), classes
        assert _eval_keys(cfg).keys() == _eval_keys(_cfg("imagefolder")).keys()
        moved = {k for k, v in _eval_keys(_cfg("imagefolder")).items()
                 if _eval_keys(cfg)[k] != v}
        assert moved == set(_eval_keys(cfg)), classes


# ---------------------------------------------------------------- degraded copies, evaluation
def _eval_keys(cfg: PipelineConfig) -> dict[str, str]:
    """Every bank key (a degraded copy) of two levels of each degradation on both splits, and
    each method's evaluation key on both splits."""
    pipe = Pipeline(cfg, StageCache("/nonexistent"), log=lambda s: None)
    out = {f"bank {split} {d} {level}": pipe.bank_key(split, d, level)
           for split in ("val", "test") for d in ("jpeg", "blur", "awgn", "saltpepper")
           for level in (1, 7)}
    out |= {f"eval {split} {m}": pipe.evaluation_key(m, split)
            for split in ("val", "test") for m in cfg.methods}
    return out


BANKS = "bank"
# leaf -> (new value, which keys move: "all", "banks" only, "evals" only, or "none")
EVAL_ROWS: list[tuple[str, Any, str]] = [
    ("eval.seed", 5, "all"),                 # the copies are drawn from it
    ("eval.batch_size", 100, "none"),        # changes no number
    ("methods", ["fusiondistill"], "none"),  # each method's own key stays
    ("distill.lr", 0.5, "fusiondistill evals"),
    ("eval.test_level_step", 5, "test evals"),
]


@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize(("leaf", "value", "moves"), EVAL_ROWS, ids=[r[0] for r in EVAL_ROWS])
def test_bank_and_evaluation_keys_move_with_what_decides_them(
        base: str, leaf: str, value: Any, moves: str) -> None:
    before = _eval_keys(_cfg(base))
    after = _eval_keys(_cfg(base, **{leaf: value}))
    common = before.keys() & after.keys()
    moved = {k for k in common if before[k] != after[k]}
    expected = {
        "all": set(common),
        "none": set(),
        "fusiondistill evals": {k for k in common if k.startswith("eval ")
                                and k.endswith(" fusiondistill")},
        "test evals": {k for k in common if k.startswith("eval test ")},
    }[moves]
    assert moved == expected, (base, leaf, sorted(moved ^ expected))


@pytest.mark.parametrize("base", sorted(BASES))
def test_every_degraded_copy_has_its_own_key(base: str) -> None:
    """No two copies (split, degradation, level) share a bank: each is its own image set."""
    keys = {k: v for k, v in _eval_keys(_cfg(base)).items() if k.startswith(BANKS)}
    assert len(set(keys.values())) == len(keys) == 16


# ---------------------------------------------------------------- the device type
def _keys_on(cfg: PipelineConfig, device_type: str) -> dict[str, str]:
    """The keys a machine of `device_type` computes for `cfg` (this machine may have no GPU:
    the pipeline's key environment is set to that device type)."""
    pipe = Pipeline(cfg, StageCache("/nonexistent"), log=lambda s: None)
    pipe.__dict__["key_env"] = stages.KeyEnv(pipe.device_path, device_type)
    return {n: pipe.key(n) for n in ALL}


def test_device_path_keys_differ_between_cpu_and_cuda_and_reference_keys_do_not() -> None:
    """CPU and CUDA torch generators are different streams: the device data path's weights
    depend on the device type, the reference path's (numpy on the CPU) do not."""
    device, reference = _cfg("device"), PipelineConfig.model_validate(_paper_tree())
    cpu, cuda = _keys_on(device, "cpu"), _keys_on(device, "cuda")
    assert all(cpu[n] != cuda[n] for n in ALL)
    assert _keys_on(reference, "cpu") == _keys_on(reference, "cuda")
    if not torch.cuda.is_available():   # what this machine computes is the cpu one
        assert _keys(device, Path("/nonexistent")) == cpu
