"""The search space: YAML -> Optuna and back, checked with real samplers on the smoke tree."""

from __future__ import annotations

import copy
import itertools
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml
from figures import record
from scipy import stats

from study import config, studyfile
from study.errors import ConfigError
from study.space import (
    GRID_LIMIT,
    KINDS,
    TYPES,
    CategoricalParam,
    Column,
    FixedParam,
    FloatParam,
    IntParam,
    Param,
    SearchSpace,
    SimplexParam,
    SubsetParam,
    parse_space,
    repair_subset,
    simplex_weights,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "search_spaces" / "smoke.yaml"
SOURCE = str(SMOKE)
DEGS = ["jpeg", "blur", "awgn", "saltpepper"]

EXAMPLE = yaml.safe_load("""
degradations: {type: subset, of: [jpeg, blur, awgn, saltpepper], min_size: 2, max_size: 4}
fusion.method: {type: categorical, choices: [uniform, weighted, task_arithmetic, ties, dare]}
fusion.bn: {type: categorical, choices: [copy_first, average, recompute]}
fusion.weights: {type: simplex, over: degradations, when: {fusion.method: weighted}}
fusion.lambdas: {type: float, low: 0.2, high: 1.5,
                 when: {fusion.method: [task_arithmetic, ties, dare]}}
distill.loss: {type: categorical, choices: [feature, logit, both]}
distill.temperature: {type: float, low: 1.0, high: 10.0, log: true,
                      when: {distill.loss: [logit, both]}}
distill.alpha: {type: float, low: 0.1, high: 0.99, when: {distill.loss: [logit, both]}}
distill.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
distill.epochs: {type: int, low: 1, high: 5, step: 1}
distill.ce_weight: {type: float, low: 0.0, high: 1.0, step: 0.05}
seed: {type: fixed, value: 0}
""")
CONDITIONS = {  # param -> (the param it tests, the values that make it active)
    "fusion.weights": ("fusion.method", {"weighted"}),
    "fusion.lambdas": ("fusion.method", {"task_arithmetic", "ties", "dare"}),
    "distill.temperature": ("distill.loss", {"logit", "both"}),
    "distill.alpha": ("distill.loss", {"logit", "both"}),
}


@pytest.fixture(scope="module")
def tree() -> dict[str, Any]:
    return studyfile.resolve_tree(studyfile.read_yaml(SMOKE), SOURCE)


@pytest.fixture(scope="module")
def example(tree: dict[str, Any]) -> SearchSpace:
    return parse_space(EXAMPLE, tree, SOURCE)


def run_study(space: SearchSpace, sampler: optuna.samplers.BaseSampler, n: int):
    samples: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        v = space.sample(trial)
        samples.append(v)
        # a function of the sample, so TPE has something to model; nothing is trained
        w = v.get("fusion.weights", {})
        return 100 * v["distill.lr"] + len(v["degradations"]) + w.get("jpeg", 0.0)

    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=n)
    return study, samples


def at_path(sf: config.StudyFile, path: tuple[str, ...]) -> Any:
    node: Any = sf
    for k in path:
        node = node[k] if isinstance(node, dict) else getattr(node, k)
    return node


# --- parsing ------------------------------------------------------------------------------------


def test_example_parses_in_dependency_order(example: SearchSpace) -> None:
    names = [p.name for p in example.params]
    assert sorted(names) == sorted(EXAMPLE)
    for p in example.params:
        deps = list(p.when) + ([p.spec["over"]] if p.kind == "simplex" else [])
        assert all(names.index(d) < names.index(p.name) for d in deps), p.name
    by = {p.name: p for p in example.params}
    assert by["distill.lr"].path == ("pipeline", "distill", "lr")
    assert by["seed"].path == ("pipeline", "seed") and by["seed"].kind == "fixed"
    assert by["fusion.lambdas"].when == {"fusion.method": ["task_arithmetic", "ties", "dare"]}
    assert by["degradations"].spec == {"of": DEGS, "min_size": 2, "max_size": 4}
    dists = example.distributions()
    # 4 flags + 4 simplex coordinates + 9 plain; the fixed seed is never suggested
    assert len(dists) == 17 and "seed" not in dists
    assert dists["degradations.awgn"] == optuna.distributions.CategoricalDistribution((False, True))
    assert dists["fusion.weights.blur"] == optuna.distributions.FloatDistribution(0.0, 1.0)
    assert dists["distill.lr"].log and dists["distill.ce_weight"].step == 0.05
    assert example.grid() is None  # continuous floats cannot be enumerated
    text = example.describe()
    assert all(n in text for n in names) and "when distill.loss in" in text


def test_section_paths_prefix_and_plain_values(tree: dict[str, Any]) -> None:
    space = parse_space(
        {
            "pipeline.distill.lr": {"type": "float", "low": "1e-4", "high": 0.1},
            "seed": 3,
            "eval.degradations": ["jpeg"],
        },
        tree,
        SOURCE,
    )
    by = {p.name: p for p in space.params}
    assert set(by) == {"distill.lr", "seed", "eval.degradations"}
    assert by["seed"].path == ("pipeline", "seed") and by["seed"].spec == {"value": 3}
    assert by["distill.lr"].spec["low"] == 1e-4  # PyYAML's string '1e-4' read as a number
    assert space.from_params({"distill.lr": 0.01}) == {
        "distill.lr": 0.01,
        "seed": 3,
        "eval.degradations": ["jpeg"],
    }
    sf = studyfile.validate(space.apply(tree, {"seed": 3, "distill.lr": 0.01}), SOURCE)
    assert sf.pipeline.seed == 3 and sf.pipeline.distill.lr == 0.01
    # a trial would silently ignore study.* and executor.* values: not searchable
    with pytest.raises(ConfigError, match="only pipeline settings can be searched"):
        parse_space({"study.seed": 3}, tree, SOURCE)


def test_step_not_dividing_the_range_is_trimmed_silently(tree: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        space = parse_space(
            {
                "distill.alpha": {"type": "float", "low": 0, "high": 1, "step": 0.3},
                "distill.epochs": {"type": "int", "low": 1, "high": 6, "step": 2},
            },
            tree,
            SOURCE,
        )
        assert space.grid() == {"distill.alpha": [0.0, 0.3, 0.6, 0.9], "distill.epochs": [1, 3, 5]}
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
        for _ in range(30):
            v = space.sample(study.ask())
            assert v["distill.alpha"] in (0.0, 0.3, 0.6, 0.9)  # snapped: no 0.30000000000000004


# --- sampling with real samplers ----------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_samples_are_valid_canonical_and_reproducible(
    example: SearchSpace, tree: dict[str, Any], sampler: str
) -> None:
    s = (
        optuna.samplers.TPESampler(seed=3)
        if sampler == "tpe"
        else optuna.samplers.RandomSampler(seed=3)
    )
    study, samples = run_study(example, s, 200)
    methods, sizes = set(), set()
    for trial, v in zip(study.trials, samples):
        degs = v["degradations"]
        assert 2 <= len(degs) <= 4 and degs == [d for d in DEGS if d in degs]
        sizes.add(len(degs))
        methods.add(v["fusion.method"])
        for name, (parent, on) in CONDITIONS.items():
            assert (name in v) == (v[parent] in on), (name, v)
        if "fusion.weights" in v:
            w = v["fusion.weights"]
            assert list(w) == degs and min(w.values()) > 0
            assert abs(sum(w.values()) - 1) < 1e-9
        assert 1.0 <= v.get("distill.temperature", 1.0) <= 10.0
        assert v["distill.epochs"] in range(1, 6) and v["seed"] == 0
        assert round(v["distill.ce_weight"] / 0.05, 9) == round(v["distill.ce_weight"] / 0.05)
        # reproduce the trial from what the storage keeps: canonical attrs or raw params
        assert example.from_params(trial.user_attrs) == v
        assert example.from_params(trial.params) == v
        assert example.from_params(copy.deepcopy(v)) == v
        sf = studyfile.validate(example.apply(tree, v), SOURCE)
        for p in example.params:
            if p.name in v:
                assert at_path(sf, p.path) == v[p.name], p.name
        if v["fusion.method"] != "weighted":
            assert sf.pipeline.fusion.weights is None
    assert sizes == {2, 3, 4} and methods == {
        "uniform",
        "weighted",
        "task_arithmetic",
        "ties",
        "dare",
    }
    assert tree["pipeline"]["fusion"].get("weights") is None  # apply() copied the tree


def test_subset_repair_is_deterministic() -> None:
    F, T = False, True
    assert repair_subset(DEGS, [F, F, F, F], 2, 4) == ["jpeg", "blur"]
    assert repair_subset(DEGS, [F, F, T, F], 2, 4) == ["jpeg", "awgn"]
    assert repair_subset(DEGS, [F, F, T, T], 3, 4) == ["jpeg", "awgn", "saltpepper"]
    assert repair_subset(DEGS, [T, T, T, T], 1, 2) == ["jpeg", "blur"]
    assert repair_subset(DEGS, [F, T, T, T], 1, 2) == ["blur", "awgn"]
    assert repair_subset(DEGS, [F, T, F, T], 1, 4) == ["blur", "saltpepper"]


def test_simplex_over_a_fixed_list(tree: dict[str, Any]) -> None:
    space = parse_space(
        {
            "degradations": ["awgn", "jpeg"],
            "fusion.method": "weighted",
            "fusion.weights": {"type": "simplex", "over": "degradations"},
        },
        tree,
        SOURCE,
    )
    assert list(space.distributions()) == ["fusion.weights.awgn", "fusion.weights.jpeg"]
    v = space.sample(
        optuna.trial.FixedTrial({"fusion.weights.awgn": 0.5, "fusion.weights.jpeg": 0.25})
    )
    # -log(0.5) : -log(0.25) = 1 : 2
    assert v["fusion.weights"] == pytest.approx({"awgn": 1 / 3, "jpeg": 2 / 3}, abs=1e-12)
    sf = studyfile.validate(space.apply(tree, v), SOURCE)
    assert sf.pipeline.fused_experts == ["jpeg", "awgn"]
    assert sf.pipeline.fusion.weights == v["fusion.weights"]


def test_simplex_edges_stay_on_the_simplex() -> None:
    for u in ([1.0, 1.0, 1.0], [0.0, 0.5, 1.0], [0.0, 0.0], [1.0]):
        w = simplex_weights(u, list("abc")[: len(u)])
        assert all(x > 0 for x in w.values()) and abs(sum(w.values()) - 1) < 1e-12, u


def test_simplex_is_uniform(tree: dict[str, Any]) -> None:
    """Dirichlet(1,1,1): each mean 1/3, and w_1 ~ Beta(1, 2), so P(w_1 < 0.5) = 0.75."""
    space = parse_space(
        {"fusion.weights": {"type": "simplex", "over": ["jpeg", "blur", "awgn"]}}, tree, SOURCE
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    w = np.array(
        [list(space.sample(study.ask()).get("fusion.weights").values()) for _ in range(2000)]
    )
    assert w.shape == (2000, 3)
    # sd of a Beta(1, 2) weight is 0.236, so the mean of 2000 has sd 0.0053
    np.testing.assert_allclose(w.mean(axis=0), 1 / 3, atol=0.02)
    assert abs((w[:, 0] < 0.5).mean() - 0.75) < 0.04  # binomial sd 0.0097
    assert stats.kstest(w[:, 0], stats.beta(1, 2).cdf).pvalue > 1e-3
    # the naive u_i / sum(u) would put the mean of w_1^2 at ~0.15 instead of 1/6
    assert abs((w[:, 0] ** 2).mean() - 1 / 6) < 0.01


def test_simplex_over_a_chosen_subset_is_uniform_on_the_chosen_items(
    tree: dict[str, Any],
) -> None:
    """Two chosen items out of four: the unchosen coordinates are ignored, w_1 ~ U(0, 1)."""
    space = parse_space(
        {
            "degradations": {"type": "subset", "of": DEGS, "max_size": 2, "min_size": 2},
            "fusion.weights": {"type": "simplex", "over": "degradations"},
            "fusion.method": "weighted",
        },
        tree,
        SOURCE,
    )
    rng = np.random.default_rng(0)
    first = []
    for _ in range(2000):
        raw = {f"degradations.{d}": bool(b) for d, b in zip(DEGS, rng.integers(0, 2, 4))}
        raw |= {f"fusion.weights.{d}": float(u) for d, u in zip(DEGS, rng.random(4))}
        v = space.sample(optuna.trial.FixedTrial(raw))
        assert list(v["fusion.weights"]) == v["degradations"] and len(v["degradations"]) == 2
        first.append(v["fusion.weights"][v["degradations"][0]])
        if len(first) <= 20:
            studyfile.validate(space.apply(tree, v), SOURCE)
    assert stats.kstest(first, stats.uniform.cdf).pvalue > 1e-3
    assert abs(np.mean(np.array(first) < 0.5) - 0.5) < 0.04


def test_bruteforce_enumerates_a_small_discrete_space(tree: dict[str, Any]) -> None:
    space = parse_space(
        yaml.safe_load("""
        distill.loss: {type: categorical, choices: [feature, logit, both]}
        distill.epochs: {type: int, low: 1, high: 2}
        distill.temperature: {type: float, low: 1, high: 3, step: 1,
                              when: {distill.loss: [logit, both]}}
        eval.degradations: {type: subset, of: [jpeg, blur]}
        seed: 7
    """),
        tree,
        SOURCE,
    )
    assert space.grid() == {
        "distill.loss": ["feature", "logit", "both"],
        "distill.epochs": [1, 2],
        "distill.temperature": [1.0, 2.0, 3.0],
        "eval.degradations.jpeg": [False, True],
        "eval.degradations.blur": [False, True],
    }
    samples: list[dict[str, Any]] = []
    study = optuna.create_study(sampler=optuna.samplers.BruteForceSampler(seed=0))
    study.optimize(lambda t: len(samples.append(space.sample(t)) or samples), n_trials=500)
    # raw combinations: feature 2 epochs x 4 flag pairs + 2 losses x 2 x 3 temperatures x 4 = 56;
    # the empty flag pair is repaired to [jpeg], so 3 of the 4 pairs are distinct sets: 42
    assert len(study.trials) == 56
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 56
    expected = set()
    for loss, ep, degs in itertools.product(
        ["feature", "logit", "both"], [1, 2], [("jpeg",), ("blur",), ("jpeg", "blur")]
    ):
        for temp in [None] if loss == "feature" else [1.0, 2.0, 3.0]:
            expected.add((loss, ep, temp, degs, 7))
    got = {
        (
            v["distill.loss"],
            v["distill.epochs"],
            v.get("distill.temperature"),
            tuple(v["eval.degradations"]),
            v["seed"],
        )
        for v in samples
    }
    assert got == expected and len(expected) == 42


# --- from_params, apply, fingerprint ------------------------------------------------------------


def test_from_params_rejects_bad_values(example: SearchSpace) -> None:
    good = example.from_params(
        {
            "degradations": ["blur", "jpeg"],
            "fusion.method": "weighted",
            "fusion.bn": "average",
            "fusion.weights": {"blur": 0.25, "jpeg": 0.75},
            "distill.loss": "feature",
            "distill.lr": 1e-3,
            "distill.epochs": 2,
            "distill.ce_weight": 0.1,
        }
    )
    assert good["degradations"] == ["jpeg", "blur"] and good["seed"] == 0
    assert list(good["fusion.weights"]) == ["jpeg", "blur"]
    bad = {
        "distill.lr": 0.5,  # outside [1e-4, 1e-2]
        "distill.epochs": 2.5,
        "distill.ce_weight": 0.12,  # off the 0.05 grid
        "fusion.weights": {"jpeg": 0.5, "blur": 0.6},  # sum 1.1
        "degradations": ["jpeg"],  # below min_size 2
        "fusion.bn": "median",
        "seed": 1,  # fixed to 0
        "distill.temperature": 3.0,  # inactive: loss is feature
        "distill.lrr": 1e-3,  # unknown
    }
    for key, value in bad.items():
        values = dict(good) | {key: value}
        with pytest.raises(ConfigError) as e:
            example.from_params(values)
        assert SOURCE in str(e.value) and f"'{key}'" in str(e.value), key
    missing = {k: v for k, v in good.items() if k != "distill.lr"}
    with pytest.raises(ConfigError, match="distill.lr"):
        example.from_params(missing)
    with pytest.raises(ConfigError, match="distill.lrr"):
        example.apply({}, {"distill.lrr": 1.0})


def test_fingerprint_ignores_key_order_and_sees_every_range(tree: dict[str, Any]) -> None:
    fp = parse_space(EXAMPLE, tree, SOURCE).fingerprint()
    reordered = {
        k: dict(reversed(list(v.items()))) if isinstance(v, dict) else v
        for k, v in reversed(list(EXAMPLE.items()))
    }
    reordered["distill.alpha"]["when"] = {"pipeline.distill.loss": ["both", "logit"]}
    assert parse_space(reordered, tree, "elsewhere.yaml").fingerprint() == fp
    same_numbers = copy.deepcopy(EXAMPLE)
    same_numbers["distill.epochs"] = {"type": "int", "low": 1, "high": 5}  # step 1 is default
    same_numbers["pipeline.seed"] = same_numbers.pop("seed")
    assert parse_space(same_numbers, tree, SOURCE).fingerprint() == fp
    for key, change in [
        ("distill.lr", {"high": 2.0e-2}),
        ("distill.ce_weight", {"step": 0.1}),
        ("degradations", {"min_size": 1}),
        ("distill.alpha", {"when": None}),
        ("distill.temperature", {"log": False}),
        ("fusion.lambdas", {"when": {"fusion.method": ["ties", "dare"]}}),
        ("fusion.bn", {"choices": ["copy_first", "average"]}),
    ]:
        changed = copy.deepcopy(EXAMPLE)
        changed[key] = {k: v for k, v in (changed[key] | change).items() if v is not None}
        assert parse_space(changed, tree, SOURCE).fingerprint() != fp, key


# --- errors -------------------------------------------------------------------------------------


def F(low: Any = 0.1, high: Any = 0.9, **kw: Any) -> dict[str, Any]:
    return {"type": "float", "low": low, "high": high, **kw}


SUBSET = {"type": "subset", "of": DEGS}
BAD_SPACES = [  # (space, the key the message must name, a phrase it must contain)
    ({"distill.lr": {"type": "floot", "low": 1, "high": 2}}, "space.distill.lr", "valid types"),
    ({"distill.temprature": F()}, "space.distill.temprature", "'distill.temperature'"),
    ({"distill.lr": F(0.5, 0.1)}, "space.distill.lr", "low 0.5 > high 0.1"),
    ({"fusion.bn": {"type": "categorical", "choices": []}}, "space.fusion.bn.choices", "non-empty"),
    (
        {"degradations": SUBSET | {"min_size": 3, "max_size": 2}},
        "space.degradations",
        "min_size 3 > max_size 2",
    ),
    ({"degradations": SUBSET | {"min_size": 0}}, "space.degradations.min_size", ">= 1"),
    ({"degradations": SUBSET | {"max_size": 5}}, "space.degradations.max_size", "at most"),
    (
        {"fusion.weights": {"type": "simplex", "over": "degradation"}, "degradations": SUBSET},
        "space.fusion.weights.over",
        "did you mean 'degradations'",
    ),
    (
        {
            "fusion.weights": {"type": "simplex", "over": "fusion.bn"},
            "fusion.bn": {"type": "categorical", "choices": ["average"]},
        },
        "space.fusion.weights.over",
        "categorical",
    ),
    (
        {
            "distill.alpha": F(when={"distill.los": "logit"}),
            "distill.loss": {"type": "categorical", "choices": ["logit"]},
        },
        "space.distill.alpha.when.distill.los",
        "did you mean 'distill.loss'",
    ),
    (
        {
            "distill.loss": {
                "type": "categorical",
                "choices": ["logit"],
                "when": {"fusion.method": "ties"},
            },
            "fusion.method": {
                "type": "categorical",
                "choices": ["ties"],
                "when": {"distill.loss": "logit"},
            },
        },
        "space.distill.loss",
        "cycle",
    ),
    ({"distill.lr": F(0.0, 0.1, log=True)}, "space.distill.lr.low", "log range needs low > 0"),
    (
        {"distill.epochs": {"type": "int", "low": 0, "high": 4, "log": True}},
        "space.distill.epochs.low",
        "low >= 1",
    ),
    ({"distill.lr": {"type": "float", "low": 0.1}}, "space.distill.lr", "needs ['high']"),
    ({"distill.lr": F(lo=0.1)}, "space.distill.lr.lo", "did you mean 'low'"),
    (
        {"fusion.method": {"type": "categorical", "choices": ["uniform", "wieghted"]}},
        "space.fusion.method.choices",
        "'wieghted'",
    ),
    (
        {
            "fusion.lambdas": F(when={"fusion.method": "tie"}),
            "fusion.method": {"type": "categorical", "choices": ["ties", "dare"]},
        },
        "space.fusion.lambdas.when.fusion.method",
        "can never be",
    ),
    (
        {"distill.lr": F(), "pipeline.distill.lr": F()},
        "space.pipeline.distill.lr",
        "same parameter",
    ),
    ({"distill.lr.max": F()}, "space.distill.lr.max", "no sub-key"),
    ({"distill.epochs": F(1, 5)}, "space.distill.epochs.type", "type: int"),
    ({"degradations": {"type": "subset", "of": ["jpeg", "fog"]}}, "space.degradations.of", "fog"),
    ({"distill.lr": F(step=0)}, "space.distill.lr.step", "> 0"),
    ({"distill.alpha": F(0.1, 1.5)}, "space.distill.alpha.high", "1.5"),
    ({"space.x": 1}, "space.space.x", "cannot search itself"),
    (
        {"fusion": {"type": "fixed", "value": {}}, "fusion.bn": "average"},
        "space.fusion.bn",
        "lies inside",
    ),
    (
        {"distill.temperature": F(when={"distill.alpha": 0.5}), "distill.alpha": F()},
        "space.distill.temperature.when.distill.alpha",
        "a float",
    ),
    (
        {"fusion.weights": {"type": "simplex", "over": ["jpeg", "jpeg"]}},
        "space.fusion.weights.over",
        "repeated",
    ),
    ({"fusion.lambdas": F(when="ties")}, "space.fusion.lambdas.when", "must be a mapping"),
]


@pytest.mark.parametrize("space,key,phrase", BAD_SPACES, ids=[b[1] for b in BAD_SPACES])
def test_malformed_space_names_file_and_key(
    tree: dict[str, Any], space: dict, key: str, phrase: str
) -> None:
    with pytest.raises(ConfigError) as e:
        parse_space(space, tree, SOURCE)
    msg = str(e.value)
    assert msg.startswith(SOURCE) and f"'{key}" in msg and phrase in msg, msg


def test_all_problems_are_reported_together(tree: dict[str, Any]) -> None:
    space = {
        "distill.temprature": F(),
        "distill.lr": F(0.5, 0.1),
        "fusion.bn": {"type": "cat"},
        "distill.epochs": {"type": "int", "low": 1, "high": 3},
    }
    with pytest.raises(ConfigError) as e:
        parse_space(space, tree, SOURCE)
    msg = str(e.value)
    assert "3 problem(s)" in msg
    for key in ("space.distill.temprature", "space.distill.lr", "space.fusion.bn"):
        assert f"'{key}" in msg
    with pytest.raises(ConfigError, match="smoke.yaml: key 'space' must be a mapping"):
        parse_space(["distill.lr"], tree, SOURCE)


# --- the parameter classes ----------------------------------------------------------------------


KIND_SPACE = yaml.safe_load("""
distill.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
distill.ce_weight: {type: float, low: 0.0, high: 1.0, step: 0.25}
distill.epochs: {type: int, low: 1, high: 5, step: 2}
fusion.method: {type: categorical, choices: [uniform, weighted]}
degradations: {type: subset, of: [jpeg, blur, awgn], min_size: 2}
fusion.weights: {type: simplex, over: degradations}
seed: 4
""")


@pytest.fixture(scope="module")
def kinds(tree: dict[str, Any]) -> dict[str, Param]:
    return {p.name: p for p in parse_space(KIND_SPACE, tree, SOURCE).params}


def test_the_registry_maps_each_yaml_type_to_its_class(kinds: dict[str, Param]) -> None:
    assert TYPES == tuple(KINDS) == ("float", "int", "categorical", "subset", "simplex", "fixed")
    assert all(cls.kind == name and issubclass(cls, Param) for name, cls in KINDS.items())
    expected = {
        "distill.lr": FloatParam,
        "distill.ce_weight": FloatParam,
        "distill.epochs": IntParam,
        "fusion.method": CategoricalParam,
        "degradations": SubsetParam,
        "fusion.weights": SimplexParam,
        "seed": FixedParam,
    }
    assert {n: type(p) for n, p in kinds.items()} == expected
    assert [n for n, p in kinds.items() if not p.searched] == ["seed"]
    # each kind's results column: numbers and strings in their own types, lists as JSON text,
    # a fixed value in the type of that value (seed: 4, an int)
    assert {n: p.column for n, p in kinds.items()} == {
        "distill.lr": Column("Float64"), "distill.ce_weight": Column("Float64"),
        "distill.epochs": Column("Int64"), "fusion.method": Column("string"),
        "degradations": Column("string", json=True), "fusion.weights": Column("string", json=True),
        "seed": Column("Int64"),
    }
    with pytest.raises(TypeError):
        Param("x", ("pipeline", "x"), {}, {})  # type: ignore[abstract]


def test_an_unknown_type_lists_the_registry(tree: dict[str, Any]) -> None:
    for spec, got in [
        ({"type": "floot"}, "type 'floot' (did you mean 'float'?)"),
        ({"type": ["int"]}, "type ['int']"),
        ({"low": 1}, "no 'type'"),
    ]:
        with pytest.raises(ConfigError) as e:
            parse_space({"distill.lr": spec}, tree, SOURCE)
        msg = str(e.value)
        assert msg.startswith(SOURCE) and "key 'space.distill.lr'" in msg and got in msg, msg
        assert f"valid types: {list(KINDS)}" in msg


def test_each_kind_checks_a_stored_value(kinds: dict[str, Param]) -> None:
    k = kinds
    assert k["distill.lr"].check(1e-3) == 1e-3
    assert k["distill.ce_weight"].check(0.5) == 0.5
    assert k["distill.epochs"].check(3.0) == 3 and type(k["distill.epochs"].check(3.0)) is int
    assert k["fusion.method"].check("weighted") == "weighted"
    assert k["degradations"].check(["awgn", "jpeg"]) == ["jpeg", "awgn"]  # `of` order
    chosen = {"degradations": ["jpeg", "awgn"]}
    assert k["fusion.weights"].check({"awgn": 0.5, "jpeg": 0.5}, chosen) == {
        "jpeg": 0.5,
        "awgn": 0.5,
    }
    assert k["seed"].check(4) == 4
    for name, value, values in [
        ("distill.lr", 0.1, {}),
        ("distill.ce_weight", 0.3, {}),  # off the 0.25 grid
        ("distill.epochs", 2, {}),  # off the step-2 grid from 1
        ("distill.epochs", True, {}),
        ("fusion.method", "ties", {}),
        ("degradations", ["jpeg"], {}),  # below min_size
        ("degradations", ["jpeg", "jpeg"], {}),
        ("fusion.weights", {"jpeg": 1.0}, chosen),  # awgn missing
        ("fusion.weights", {"jpeg": 0.7, "awgn": 0.7}, chosen),
        ("seed", 5, {}),
    ]:
        with pytest.raises(ValueError):
            k[name].check(value, values)


def test_each_kind_draws_from_a_suggester(kinds: dict[str, Param]) -> None:
    raw = {
        "distill.lr": 1e-3,
        "distill.ce_weight": 0.75,
        "distill.epochs": 5,
        "fusion.method": "uniform",
        "degradations.jpeg": True,
        "degradations.blur": False,
        "degradations.awgn": False,  # one chosen: repaired up to min_size 2
        "fusion.weights.jpeg": 0.5,
        "fusion.weights.blur": 0.25,
        "fusion.weights.awgn": 0.9,
    }
    trial = optuna.trial.FixedTrial(raw)
    k = kinds
    assert k["distill.lr"].draw(trial) == 1e-3
    assert k["distill.ce_weight"].draw(trial) == 0.75
    assert k["distill.epochs"].draw(trial) == 5
    assert k["fusion.method"].draw(trial) == "uniform"
    assert k["degradations"].draw(trial) == ["jpeg", "blur"]
    w = k["fusion.weights"].draw(trial, {"degradations": ["jpeg", "blur"]})
    assert w == pytest.approx({"jpeg": 1 / 3, "blur": 2 / 3}, abs=1e-12)  # -log .5 : -log .25
    assert k["seed"].draw(trial) == 4
    assert k["fusion.weights"].inputs == ("degradations",)
    assert k["fusion.weights"].raw_names() == [f"fusion.weights.{d}" for d in DEGS[:3]]
    assert k["seed"].raw_names() == [] and k["seed"].distributions() == {}


def test_each_kind_has_a_grid_and_a_display_line(kinds: dict[str, Param]) -> None:
    k = kinds
    assert k["distill.lr"].grid_size() is None and k["distill.lr"].grid() is None
    assert k["distill.ce_weight"].grid() == {"distill.ce_weight": [0.0, 0.25, 0.5, 0.75, 1.0]}
    assert k["distill.epochs"].grid() == {"distill.epochs": [1, 3, 5]}
    assert k["fusion.method"].grid() == {"fusion.method": ["uniform", "weighted"]}
    assert k["degradations"].grid_size() == 8
    assert k["degradations"].grid() == {f"degradations.{d}": [False, True] for d in DEGS[:3]}
    assert k["fusion.weights"].grid_size() is None
    assert k["seed"].grid_size() == 1 and k["seed"].grid() == {}
    for p in k.values():
        grid = p.grid()
        if grid is not None:
            assert p.grid_size() == math.prod(len(v) for v in grid.values()), p.name
    assert {n: p.display() for n, p in k.items()} == {
        "distill.lr": "float [0.0001, 0.01] log",
        "distill.ce_weight": "float [0.0, 1.0] step 0.25",
        "distill.epochs": "int [1, 5] step 2",
        "fusion.method": "categorical ['uniform', 'weighted']",
        "degradations": "subset of ['jpeg', 'blur', 'awgn'], size 2..3",
        "fusion.weights": "simplex weights over degradations",
        "seed": "fixed 4",
    }


def test_only_equality_kinds_can_be_tested_by_when(kinds: dict[str, Param]) -> None:
    testable = {n for n, p in kinds.items() if p.when_testable}
    assert testable == {"distill.epochs", "fusion.method", "seed"}
    assert kinds["distill.epochs"].can_take(3) and not kinds["distill.epochs"].can_take(3.0)
    assert kinds["fusion.method"].can_take("uniform") and kinds["seed"].can_take(4)
    with pytest.raises(TypeError):
        kinds["distill.lr"].can_take(1e-3)


def test_the_grid_is_bounded_without_being_enumerated(tree: dict[str, Any]) -> None:
    def space(yaml_text: str) -> SearchSpace:
        return parse_space(yaml.safe_load(yaml_text), tree, SOURCE)

    huge = space("distill.epochs: {type: int, low: 1, high: 1000000000}")
    t0 = time.perf_counter()
    assert huge.grid_size() == 1_000_000_000 and huge.grid() is None
    fine = space("distill.ce_weight: {type: float, low: 0.0, high: 1.0, step: 1.0e-9}")
    assert fine.grid_size() == 1_000_000_001 and fine.grid() is None
    record("grid_size_of_a_billion", seconds=time.perf_counter() - t0)
    at_limit = space(f"distill.epochs: {{type: int, low: 1, high: {GRID_LIMIT}}}")
    assert len(at_limit.grid()["distill.epochs"]) == GRID_LIMIT
    # each parameter small, the product (47^3 = 103823) over the limit
    product = space("""
        distill.epochs: {type: int, low: 1, high: 47}
        base.epochs: {type: int, low: 1, high: 47}
        expert.epochs: {type: int, low: 1, high: 47}
    """)
    assert product.grid_size() == 47**3 and product.grid() is None
    subset = space(f"eval.degradations: {{type: subset, of: {DEGS}}}")
    assert subset.grid_size() == 16 and subset.grid() is not None


def test_a_step_finer_than_floats_can_tell_apart_is_refused(tree: dict[str, Any]) -> None:
    """`step: 1e-320` on [1e-4, 1e-2] is a grid of 1e318 points: decimal (28 digits) raised
    InvalidOperation, a traceback with exit 1. Below one float spacing at the range's larger
    end (1.7e-18 at 0.01), neighbouring points are the same float: refused, naming the key
    and the finest step allowed."""
    finest = math.ulp(1e-2)
    for step in (1e-320, 1e-30, "1e-320", finest / 2):
        with pytest.raises(ConfigError) as e:
            parse_space({"distill.lr": F(1e-4, 1e-2, step=step)}, tree, SOURCE)
        msg = str(e.value)
        assert "'space.distill.lr.step'" in msg and f"at least {finest}" in msg, msg
    with pytest.raises(ConfigError, match=r"'space\.distill\.lr\.step'.*at least 2\.0"):
        parse_space({"distill.lr": F(0.0, 1e16, step=1)}, tree, SOURCE)   # ulp(1e16) = 2
    ok = parse_space({"distill.lr": F(1e-4, 1e-2, step=finest)}, tree, SOURCE)
    assert 5.7e15 < ok.grid_size() <= (1e-2 - 1e-4) / finest + 1 and ok.grid() is None
    for v in ok.probe_samples(5, 0, 5):
        assert 1e-4 <= v["distill.lr"] <= 1e-2
    # through the loader, as `study launch --set` reads it: a ConfigError (exit 2)
    with pytest.raises(ConfigError, match=r"'space\.distill\.lr\.step'.*finer than floats"):
        studyfile.load(SMOKE, ["space.distill.lr.log=false", "space.distill.lr.step=1.0e-320"])
