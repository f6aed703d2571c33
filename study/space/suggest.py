"""Who answers a parameter's suggest_* calls: an Optuna trial, seeded probe draws, or a replay.

Param.draw asks for every raw value by name, as Optuna's Trial API does; the same draw code
serves a live trial (Trial, FixedTrial), the probe samples that check a whole space
(ProbeDraws) and the replay of stored raw values (Replay).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any, Protocol

from study.space.values import finite_number, is_on_grid, on_grid, same_value, show_range

__all__ = ["ProbeDraws", "Replay", "Suggester"]


class Suggester(Protocol):
    """What Param.draw needs of an Optuna trial (a Trial, a FixedTrial, or a stored replay)."""

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


class ProbeDraws:
    """The `forced` raw values, else a draw of random.Random: the probe samples that check a
    whole space (SearchSpace.probe_samples)."""

    def __init__(self, rng: random.Random, forced: Mapping[str, Any]) -> None:
        self.rng, self.forced = rng, forced

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        if name in self.forced:
            return float(self.forced[name])
        if step:
            return on_grid(low, step, self.rng.randint(0, int(round((high - low) / step))))
        if log:
            return min(max(math.exp(self.rng.uniform(math.log(low), math.log(high))), low), high)
        return self.rng.uniform(low, high)

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        if name in self.forced:
            return int(self.forced[name])
        return self.rng.randrange(low, high + 1, step)

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        if name in self.forced:
            return self.forced[name]
        return self.rng.choice(list(choices))


class Replay:
    """Answers suggest_* from stored raw values (trial.params), each checked like Optuna does."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = values

    def _get(self, name: str) -> Any:
        if name not in self.values:
            raise ValueError(f"no value given (neither the parameter nor its raw '{name}')")
        return self.values[name]

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        x = finite_number(self._get(name))
        spec = {"low": low, "high": high, "step": step}
        if not low <= x <= high or (step and not is_on_grid(x, spec)):
            raise ValueError(f"raw '{name}' = {x!r} is outside {show_range(spec)}")
        return x

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        x = finite_number(self._get(name))
        if x != int(x) or not low <= x <= high or (x - low) % step:
            raise ValueError(f"raw '{name}' = {x!r} is outside [{low}, {high}] step {step}")
        return int(x)

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        v = self._get(name)
        for c in choices:
            if same_value(v, c):
                return c
        raise ValueError(f"raw '{name}' = {v!r} is not one of {list(choices)}")
