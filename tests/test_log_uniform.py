"""`log: true` reaches Optuna: through a real study, the distribution each trial records is a
log one and the draws are uniform in log space.

A learning rate searched over [1e-4, 1e-2] on a linear scale puts 91% of its trials above 1e-3;
on the log scale the study file asks for, half. Both ranges parse and run, so only the draws
tell them apart. The oracle is the log-uniform law itself: log10 of the draws is uniform on
[-4, -2] (mean -3, a quarter in each half-decade), checked with the binomial and normal spreads
of 400 draws; a linear parameter beside it is checked against the linear law, so the test
tells the two apart.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution

from study import studyfile
from study.space import SearchSpace, parse_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

SMOKE = Path(__file__).resolve().parents[1] / "search_spaces" / "smoke.yaml"
SPACE = {
    "distill.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
    "expert.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2},         # linear, for contrast
    "base.batch_size": {"type": "int", "low": 1, "high": 1024, "log": True},
}
N = 400


@pytest.fixture(scope="module")
def drawn() -> tuple[optuna.Study, list[dict[str, Any]]]:
    tree = studyfile.resolve_tree(studyfile.read_yaml(SMOKE), str(SMOKE))
    space: SearchSpace = parse_space(SPACE, tree, str(SMOKE))
    samples: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        v = space.sample(trial)
        samples.append(v)
        return v["distill.lr"]

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    study.optimize(objective, n_trials=N)
    return study, samples


def test_optuna_records_log_distributions_for_log_parameters(
        drawn: tuple[optuna.Study, list[dict[str, Any]]]) -> None:
    study, _ = drawn
    for t in study.trials:
        assert t.distributions["distill.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
        assert t.distributions["expert.lr"] == FloatDistribution(1e-4, 1e-2, log=False)
        assert t.distributions["base.batch_size"] == IntDistribution(1, 1024, log=True)


def test_log_float_draws_are_uniform_in_log_space(
        drawn: tuple[optuna.Study, list[dict[str, Any]]]) -> None:
    _, samples = drawn
    x = np.log10([s["distill.lr"] for s in samples])
    assert x.min() >= -4 and x.max() <= -2
    # uniform on [-4, -2]: mean -3, sd 2/sqrt(12) = 0.577; 5 standard errors of 400 draws
    assert abs(x.mean() + 3) < 5 * (2 / math.sqrt(12)) / math.sqrt(N)
    # a quarter in each half-decade: binomial sd sqrt(400 * 1/4 * 3/4) = 8.7 draws
    counts = np.histogram(x, bins=[-4, -3.5, -3, -2.5, -2])[0]
    assert np.abs(counts - N / 4).max() < 5 * math.sqrt(N * 0.25 * 0.75), counts
    # the linear law would put (1e-3 - 1e-4) / (1e-2 - 1e-4) = 9% below 1e-3, not half
    assert abs((x < -3).mean() - 0.5) < 0.1


def test_linear_float_draws_are_uniform_on_the_linear_scale(
        drawn: tuple[optuna.Study, list[dict[str, Any]]]) -> None:
    _, samples = drawn
    x = np.array([s["expert.lr"] for s in samples])
    share_below = (1e-3 - 1e-4) / (1e-2 - 1e-4)            # 0.0909
    sd = math.sqrt(share_below * (1 - share_below) / N)     # 0.0144
    assert abs((x < 1e-3).mean() - share_below) < 5 * sd
    assert abs(x.mean() - (1e-4 + 1e-2) / 2) < 5 * (1e-2 - 1e-4) / math.sqrt(12 * N)


def test_log_int_draws_are_uniform_in_log_space(
        drawn: tuple[optuna.Study, list[dict[str, Any]]]) -> None:
    """Optuna draws a log int uniformly in log over [low - 0.5, high + 0.5] and rounds: the
    share up to 32 is (ln 32.5 - ln 0.5) / (ln 1024.5 - ln 0.5) = 0.547 (linear: 32/1024)."""
    _, samples = drawn
    x = np.array([s["base.batch_size"] for s in samples])
    assert x.min() >= 1 and x.max() <= 1024 and x.dtype.kind == "i"
    share = (math.log(32.5) - math.log(0.5)) / (math.log(1024.5) - math.log(0.5))
    assert abs((x <= 32).mean() - share) < 5 * math.sqrt(share * (1 - share) / N)
    assert (x <= 4).sum() > 0.1 * N   # (ln 4.5 - ln 0.5) / 7.63 = 29% (linear: 0.4%)
