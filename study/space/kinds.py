"""The parameter kinds of a search space, one Param subclass per YAML `type:`, in KINDS.

Each kind owns everything about its type: reading its YAML options, sampling, checking a stored
value, its Optuna distributions, its grid, its line in `describe`, the values checked against
the config schema, its corners. Two kinds are not native to Optuna and are presented to the
sampler as plain distributions, so every sampler (TPE, CMA-ES, GP, brute force) works on them
unchanged:

- subset: one categorical [False, True] flag per item, named `<name>.<item>`; a set outside
  [min_size, max_size] is repaired deterministically (too small: add unchosen items in `of`
  order; too large: keep the first max_size chosen in `of` order). The value is the chosen list
  in `of` order.
- simplex: one u_i ~ U(0, 1) per possible item, named `<name>.<item>`; the weights over the chosen
  items are w_i = -log(u_i) / sum_j -log(u_j). Normalised i.i.d. Exp(1) draws are exactly
  Dirichlet(1, ..., 1), i.e. uniform on the simplex, whatever the number of chosen items, and the
  search space stays the same from trial to trial. The value is a dict item -> weight.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from study.schema import annotation_members, takes_number
from study.space.column import Column, column_for
from study.space.param import NO_VALUES, Param, norm_number, param_name
from study.space.suggest import Suggester
from study.space.values import (
    adjust_high,
    as_number,
    contains_value,
    finest_step,
    finite_number,
    is_on_grid,
    is_scalar,
    on_grid,
    same_value,
    show_range,
    snap,
    step_wider_than_range,
    value_key,
)

__all__ = ["KINDS", "TYPES", "CategoricalParam", "FixedParam", "FloatParam", "IntParam",
           "SimplexParam", "SubsetParam", "repair_subset", "simplex_weights"]

# -log(u) is 0 at u = 1 and inf at u = 0; the floor keeps every chosen weight > 0 (about 1e-12
# of an average draw of 1) and the sum finite, without visibly biasing the Dirichlet(1) law.
_EXP_FLOOR = 1e-12
_U_FLOOR = 1e-300
_SUM_TOL = 1e-6  # a hand-written simplex (0.3333...) is accepted; ours sum to 1 +- 1e-15


@dataclass(frozen=True)
class _RangeParam(Param):
    """A number in [low, high], optionally on a log scale or a step grid."""

    required: ClassVar[tuple[str, ...]] = ("low", "high")
    optional: ClassVar[tuple[str, ...]] = ("log", "step")
    integer: ClassVar[bool]

    @classmethod
    def normalise(
        cls, where: str, spec: dict[str, Any], leaf: Any, errors: list[str]
    ) -> dict[str, Any] | None:
        integer = cls.integer
        n_before = len(errors)
        low = norm_number(where, "low", spec["low"], integer, errors)
        high = norm_number(where, "high", spec["high"], integer, errors)
        log = spec.get("log", False)
        if not isinstance(log, bool):
            errors.append(f"key '{where}.log': must be true or false, got {log!r}")
        step = spec.get("step", 1 if integer else None)
        if step is not None:
            step = norm_number(where, "step", step, integer, errors)
            if step is not None and step <= 0:
                errors.append(f"key '{where}.step': must be > 0, got {step}")
        # an int range on a float setting is fine (1 is a valid 1.0); the reverse is not
        if not integer and _is_int_setting(leaf):
            errors.append(f"key '{where}.type': this config setting is an integer; use type: int")
        if bool in annotation_members(leaf):
            errors.append(f"key '{where}.type': this config setting is true or false; use "
                          "type: categorical, choices: [false, true]")
        if len(errors) > n_before:
            return None
        if low > high:
            errors.append(f"key '{where}': low {low} > high {high}; need low <= high")
        elif step is not None and not integer and step < finest_step(low, high):
            errors.append(
                f"key '{where}.step': {step} is finer than floats can tell apart in "
                f"[{low}, {high}]; allowed: a step of at least {finest_step(low, high)} "
                "and at most the width of the range"
            )
        elif step is not None and low != high and step_wider_than_range(step, low, high):
            errors.append(
                f"key '{where}.step': step {step} is wider than the range [{low}, {high}], "
                f"so only {low} would ever be drawn; narrow the step or widen the range"
            )
        if log is True and step is not None and (not integer or step != 1):
            errors.append(
                f"key '{where}': log and step cannot be combined "
                f"(Optuna samples log ranges continuously); drop one"
            )
        if log is True and (low <= 0 if not integer else low < 1):
            need = "low > 0" if not integer else "low >= 1"
            errors.append(f"key '{where}.low': a log range needs {need}, got {low}")
        if len(errors) > n_before:
            return None
        if step is not None:
            high = adjust_high(low, high, step, integer)
        return {"low": low, "high": high, "log": log, "step": step}

    def display(self) -> str:
        s = self.spec
        what = f"{self.kind} [{s['low']}, {s['high']}]"
        what += " log" if s["log"] else ""
        what += f" step {s['step']}" if s["step"] not in (None, 1) else ""
        return what

    def schema_probes(self) -> list[tuple[str, Any]]:
        return [("low", self.spec["low"]), ("high", self.spec["high"])]

    def corners(self) -> list[dict[str, Any]]:
        s = self.spec
        return [{self.name: s["low"]}] + ([{self.name: s["high"]}] if s["high"] != s["low"]
                                          else [])


@dataclass(frozen=True)
class FloatParam(_RangeParam):
    """`{type: float, low, high, log: false, step: null}`; a step puts it on a grid."""

    kind: ClassVar[str] = "float"
    integer: ClassVar[bool] = False

    @property
    def column(self) -> Column:
        return Column("Float64")

    def distributions(self) -> dict[str, BaseDistribution]:
        s = self.spec
        return {self.name: FloatDistribution(s["low"], s["high"], log=s["log"], step=s["step"])}

    def draw(self, trial: Suggester, values: Mapping[str, Any] = NO_VALUES) -> float:
        s = self.spec
        v = trial.suggest_float(self.name, s["low"], s["high"], step=s["step"], log=s["log"])
        return snap(float(v), s)

    def check(self, value: Any, values: Mapping[str, Any] = NO_VALUES) -> float:
        s = self.spec
        x = finite_number(value)
        if not s["low"] <= x <= s["high"] or (s["step"] and not is_on_grid(x, s)):
            raise ValueError(f"{value!r} is outside {show_range(s)}")
        return snap(x, s)

    def grid_size(self) -> int | None:
        s = self.spec
        if s["step"] is None:
            return None
        return int(round((s["high"] - s["low"]) / s["step"])) + 1

    def grid(self) -> dict[str, list[Any]] | None:
        n = self.grid_size()
        if n is None:
            return None
        return {self.name: [on_grid(self.spec["low"], self.spec["step"], k) for k in range(n)]}


@dataclass(frozen=True)
class IntParam(_RangeParam):
    """`{type: int, low, high, log: false, step: 1}`."""

    kind: ClassVar[str] = "int"
    integer: ClassVar[bool] = True
    when_testable: ClassVar[bool] = True

    @property
    def column(self) -> Column:
        return Column("Int64")

    def distributions(self) -> dict[str, BaseDistribution]:
        s = self.spec
        return {self.name: IntDistribution(s["low"], s["high"], log=s["log"], step=s["step"])}

    def draw(self, trial: Suggester, values: Mapping[str, Any] = NO_VALUES) -> int:
        s = self.spec
        return int(trial.suggest_int(self.name, s["low"], s["high"], step=s["step"], log=s["log"]))

    def check(self, value: Any, values: Mapping[str, Any] = NO_VALUES) -> int:
        s = self.spec
        x = finite_number(value)
        if x != int(x) or not s["low"] <= x <= s["high"] or (x - s["low"]) % s["step"]:
            raise ValueError(f"{value!r} is outside {show_range(s)}")
        return int(x)

    def can_take(self, value: Any) -> bool:
        # stricter than check(): `when: {epochs: 2.0}` is a typo, not a way to write 2
        s = self.spec
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and s["low"] <= value <= s["high"]
            and (value - s["low"]) % s["step"] == 0
        )

    def possible_values(self) -> Any:
        return show_range(self.spec)

    def grid_size(self) -> int:
        s = self.spec
        return (s["high"] - s["low"]) // s["step"] + 1

    def grid(self) -> dict[str, list[Any]]:
        s = self.spec
        return {self.name: list(range(s["low"], s["high"] + 1, s["step"]))}


@dataclass(frozen=True)
class CategoricalParam(Param):
    """`{type: categorical, choices: [scalars]}`."""

    kind: ClassVar[str] = "categorical"
    required: ClassVar[tuple[str, ...]] = ("choices",)
    when_testable: ClassVar[bool] = True

    @classmethod
    def normalise(
        cls, where: str, spec: dict[str, Any], leaf: Any, errors: list[str]
    ) -> dict[str, Any] | None:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            errors.append(f"key '{where}.choices': must be a non-empty list, got {choices!r}")
            return None
        bad = [c for c in choices if not is_scalar(c)]
        if bad:
            errors.append(
                f"key '{where}.choices': choices must be scalars (string, number, bool, "
                f"null), got {bad}"
            )
            return None
        if len({value_key(c) for c in choices}) != len(choices):
            errors.append(f"key '{where}.choices': repeated choices in {choices}")
            return None
        if takes_number(leaf):
            flags = [c for c in choices if isinstance(c, bool)]
            if flags:
                errors.append(
                    f"key '{where}.choices': this config setting is a number; {flags} "
                    "are booleans (YAML reads yes/no/on/off/true/false as booleans, and a "
                    "number setting would take True as 1); write numbers"
                )
                return None
            # 1 and 1.0 (or '1e-4' and 0.0001) are one value once the setting reads them
            seen: dict[Any, Any] = {}
            for c in choices:
                v = as_number(c)
                if v is None:
                    continue
                if v in seen:
                    errors.append(
                        f"key '{where}.choices': {seen[v]!r} and {c!r} are the same value "
                        f"for this number setting; keep one"
                    )
                    return None
                seen[v] = c
        return {"choices": list(choices)}

    def distributions(self) -> dict[str, BaseDistribution]:
        return {self.name: CategoricalDistribution(self.spec["choices"])}

    def draw(self, trial: Suggester, values: Mapping[str, Any] = NO_VALUES) -> Any:
        return trial.suggest_categorical(self.name, self.spec["choices"])

    def check(self, value: Any, values: Mapping[str, Any] = NO_VALUES) -> Any:
        for c in self.spec["choices"]:
            if same_value(value, c):
                return c
        raise ValueError(f"{value!r} is not one of {self.spec['choices']}")

    def can_take(self, value: Any) -> bool:
        return contains_value(self.spec["choices"], value)

    def possible_values(self) -> Any:
        return self.spec["choices"]

    def list_items(self) -> list[Any]:
        return _items(c for c in self.spec["choices"] if isinstance(c, list))

    @property
    def column(self) -> Column:
        return column_for(self.spec["choices"])

    def grid_size(self) -> int:
        return len(self.spec["choices"])

    def grid(self) -> dict[str, list[Any]]:
        return {self.name: list(self.spec["choices"])}

    def display(self) -> str:
        return f"categorical {self.spec['choices']}"

    def schema_probes(self) -> list[tuple[str, Any]]:
        return [("choices", c) for c in self.spec["choices"]]

    def corners(self) -> list[dict[str, Any]]:
        return [{self.name: c} for c in self.spec["choices"]]


@dataclass(frozen=True)
class SubsetParam(Param):
    """`{type: subset, of: [items], min_size: 1, max_size: len(of)}`: one flag per item.

    Every method is linear in len(of): items are found through value_key, never by scanning
    `of` per item (a 20,000-item `of` would cost 4e8 comparisons)."""

    kind: ClassVar[str] = "subset"
    required: ClassVar[tuple[str, ...]] = ("of",)
    optional: ClassVar[tuple[str, ...]] = ("min_size", "max_size")

    @classmethod
    def normalise(
        cls, where: str, spec: dict[str, Any], leaf: Any, errors: list[str]
    ) -> dict[str, Any] | None:
        of = spec["of"]
        if (
            not isinstance(of, list)
            or not of
            or not all(is_scalar(i) and i is not None for i in of)
        ):
            errors.append(f"key '{where}.of': must be a non-empty list of names, got {of!r}")
            return None
        if len({str(i) for i in of}) != len(of):
            errors.append(f"key '{where}.of': repeated items in {of}")
            return None
        n_before = len(errors)
        lo = norm_number(where, "min_size", spec.get("min_size", 1), True, errors)
        hi = norm_number(where, "max_size", spec.get("max_size", len(of)), True, errors)
        if len(errors) > n_before:
            return None
        if lo < 1:
            errors.append(f"key '{where}.min_size': must be >= 1, got {lo}")
        if hi > len(of):
            errors.append(f"key '{where}.max_size': at most the {len(of)} items of `of`, got {hi}")
        if lo > hi:
            errors.append(f"key '{where}': min_size {lo} > max_size {hi}")
        if len(errors) > n_before:
            return None
        return {"of": list(of), "min_size": lo, "max_size": hi}

    def raw_names(self) -> list[str]:
        return [f"{self.name}.{i}" for i in self.spec["of"]]

    def raw_params(self, value: Any, values: Mapping[str, Any] = NO_VALUES) -> dict[str, Any]:
        chosen = {value_key(x) for x in value if is_scalar(x)}
        return {raw: value_key(i) in chosen for i, raw in zip(self.spec["of"], self.raw_names())}

    def distributions(self) -> dict[str, BaseDistribution]:
        return {raw: CategoricalDistribution((False, True)) for raw in self.raw_names()}

    def draw(self, trial: Suggester, values: Mapping[str, Any] = NO_VALUES) -> list[Any]:
        s = self.spec
        flags = [bool(trial.suggest_categorical(raw, (False, True))) for raw in self.raw_names()]
        return repair_subset(s["of"], flags, s["min_size"], s["max_size"])

    def check(self, value: Any, values: Mapping[str, Any] = NO_VALUES) -> list[Any]:
        s = self.spec
        position = {value_key(i): k for k, i in enumerate(s["of"])}
        found = ([position.get(value_key(x), -1) if is_scalar(x) else -1 for x in value]
                 if isinstance(value, (list, tuple)) else [-1])
        if -1 in found or len({repr(x) for x in value}) != len(value):
            raise ValueError(f"{value!r} must be a list of distinct items of {s['of']}")
        if not s["min_size"] <= len(value) <= s["max_size"]:
            raise ValueError(
                f"{value!r} has {len(value)} items; allowed {s['min_size']}..{s['max_size']}"
            )
        return [s["of"][k] for k in sorted(set(found))]   # in `of` order

    def grid_size(self) -> int:
        return 2 ** len(self.spec["of"])

    def grid(self) -> dict[str, list[Any]]:
        return {raw: [False, True] for raw in self.raw_names()}

    def list_items(self) -> list[Any]:
        return list(self.spec["of"])

    def display(self) -> str:
        s = self.spec
        return f"subset of {s['of']}, size {s['min_size']}..{s['max_size']}"

    def schema_probes(self) -> list[tuple[str, Any]]:
        return [("of", list(self.spec["of"]))]

    def corners(self) -> Iterator[dict[str, Any]]:
        # flag patterns, repaired by draw() as a sampler's would be: every item, none, and each
        # item left out and alone; 2 * len(of) + 2 draws, never the 2**len(of) sets. Built one
        # at a time as they are taken: all of them are 4 * len(of)**2 flags, 1.6e9 for a
        # 20,000-item `of` (a MemoryError), and probe_samples takes its corner budget only.
        raws = self.raw_names()
        seen: set[bytes] = set()
        for flags in _flag_patterns(len(raws)):
            key = bytes(flags)
            if key not in seen:   # a 1-item `of`: all = only-i
                seen.add(key)
                yield dict(zip(raws, flags))


@dataclass(frozen=True)
class SimplexParam(Param):
    """`{type: simplex, over: <subset or fixed-list parameter> | [item names]}`: weights >= 0
    summing to 1 over the chosen items, from one U(0, 1) coordinate per possible item."""

    kind: ClassVar[str] = "simplex"
    required: ClassVar[tuple[str, ...]] = ("over",)
    # Every item the `over` parameter can hold, filled in by resolve(); unused for a list `over`.
    over_items: tuple[Any, ...] = ()

    @classmethod
    def normalise(
        cls, where: str, spec: dict[str, Any], leaf: Any, errors: list[str]
    ) -> dict[str, Any] | None:
        over = spec["over"]
        if isinstance(over, str) and over:
            return {"over": param_name(over)}
        if isinstance(over, list) and over and all(isinstance(i, str) for i in over):
            if len(set(over)) != len(over):
                errors.append(f"key '{where}.over': repeated items in {over}")
                return None
            return {"over": list(over)}
        errors.append(
            f"key '{where}.over': must name a subset parameter of this space or be a "
            f"non-empty list of item names, got {over!r}"
        )
        return None

    @staticmethod
    def items_of(q: Param | None) -> list[Any] | None:
        """The items a simplex `over` q weighs: a subset's `of`, or a fixed list of distinct
        names; None if q cannot be an `over`."""
        if isinstance(q, SubsetParam):
            return list(q.spec["of"])
        if isinstance(q, FixedParam):
            v = q.spec["value"]
            if (
                isinstance(v, list)
                and v
                and all(isinstance(i, str) for i in v)
                and len(set(v)) == len(v)
            ):
                return list(v)
        return None

    def resolve(self, params: Mapping[str, Param]) -> Param:
        over = self.spec["over"]
        if not isinstance(over, str):
            return self
        # a broken `over` leaves no items; parse_space reports it
        return dataclasses.replace(self, over_items=tuple(self.items_of(params.get(over)) or ()))

    @property
    def inputs(self) -> tuple[str, ...]:
        over = self.spec["over"]
        return (over,) if isinstance(over, str) else ()

    @property
    def items(self) -> list[Any]:
        """Every item the simplex can weigh (a coordinate each, chosen or not)."""
        over = self.spec["over"]
        return list(over) if not isinstance(over, str) else list(self.over_items)

    def chosen(self, values: Mapping[str, Any]) -> list[Any]:
        """The items weighed in this sample."""
        over = self.spec["over"]
        return list(over) if not isinstance(over, str) else list(values[over])

    def raw_names(self) -> list[str]:
        return [f"{self.name}.{i}" for i in self.items]

    def raw_params(self, value: Any, values: Mapping[str, Any] = NO_VALUES) -> dict[str, Any]:
        # draw weighs -log(u_i) / sum_j -log(u_j): u_i = exp(-w_i) gives back w (sum 1); the
        # items not chosen are suggested too (the space keeps its shape) and are not used
        return {raw: math.exp(-float(value[i])) if i in value else 0.5
                for i, raw in zip(self.items, self.raw_names())}

    def distributions(self) -> dict[str, BaseDistribution]:
        return {raw: FloatDistribution(0.0, 1.0) for raw in self.raw_names()}

    def draw(self, trial: Suggester, values: Mapping[str, Any] = NO_VALUES) -> dict[Any, float]:
        # every possible coordinate is suggested, so the space does not change shape
        u = {
            i: float(trial.suggest_float(raw, 0.0, 1.0))
            for i, raw in zip(self.items, self.raw_names())
        }
        chosen = self.chosen(values)
        return simplex_weights([u[i] for i in chosen], chosen)

    def check(self, value: Any, values: Mapping[str, Any] = NO_VALUES) -> dict[Any, float]:
        chosen = self.chosen(values)
        if not isinstance(value, Mapping) or set(value) != set(chosen):
            raise ValueError(f"{value!r} must be a mapping with one weight per item of {chosen}")
        w = {i: finite_number(value[i]) for i in chosen}
        total = math.fsum(w.values())
        if min(w.values()) < 0 or abs(total - 1) > _SUM_TOL:
            raise ValueError(f"weights must be >= 0 and sum to 1, got {dict(value)} (sum {total})")
        if abs(total - 1) > 1e-12:
            w = {i: x / total for i, x in w.items()}
        return w

    def grid_size(self) -> None:
        return None

    def grid(self) -> None:
        return None

    def display(self) -> str:
        return f"simplex weights over {self.spec['over']}"

    def schema_probes(self) -> list[tuple[str, Any]]:
        items = self.items
        return [("over", {i: 1 / len(items) for i in items})]


@dataclass(frozen=True)
class FixedParam(Param):
    """`{type: fixed, value: ...}`, or a plain scalar or list: set, never searched."""

    kind: ClassVar[str] = "fixed"
    required: ClassVar[tuple[str, ...]] = ("value",)
    searched: ClassVar[bool] = False
    when_testable: ClassVar[bool] = True

    @classmethod
    def normalise(
        cls, where: str, spec: dict[str, Any], leaf: Any, errors: list[str]
    ) -> dict[str, Any] | None:
        return {"value": copy.deepcopy(spec["value"])}

    def raw_names(self) -> list[str]:
        return []

    def raw_params(self, value: Any, values: Mapping[str, Any] = NO_VALUES) -> dict[str, Any]:
        return {}

    def distributions(self) -> dict[str, BaseDistribution]:
        return {}

    def draw(self, trial: Suggester, values: Mapping[str, Any] = NO_VALUES) -> Any:
        return copy.deepcopy(self.spec["value"])

    def check(self, value: Any, values: Mapping[str, Any] = NO_VALUES) -> Any:
        if not same_value(value, self.spec["value"]):
            raise ValueError(f"is fixed to {self.spec['value']!r}, got {value!r}")
        return copy.deepcopy(self.spec["value"])

    def can_take(self, value: Any) -> bool:
        return same_value(value, self.spec["value"])

    def possible_values(self) -> Any:
        return [self.spec["value"]]

    def list_items(self) -> list[Any]:
        value = self.spec["value"]
        return _items([value]) if isinstance(value, list) else []

    @property
    def column(self) -> Column:
        return column_for([self.spec["value"]])

    def grid_size(self) -> int:
        return 1

    def grid(self) -> dict[str, list[Any]]:
        return {}

    def display(self) -> str:
        return f"fixed {self.spec['value']!r}"

    def schema_probes(self) -> list[tuple[str, Any]]:
        return [("value", self.spec["value"])]


# YAML `type:` -> its class; the order is the one messages list the types in.
KINDS: dict[str, type[Param]] = {
    cls.kind: cls
    for cls in (FloatParam, IntParam, CategoricalParam, SubsetParam, SimplexParam, FixedParam)
}
TYPES = tuple(KINDS)


# ---------------------------------------------------------------- the two derived types
def repair_subset(of: list[Any], flags: list[bool], min_size: int, max_size: int) -> list[Any]:
    """The chosen items in `of` order, topped up or cut to [min_size, max_size] in `of` order."""
    chosen = [i for i, f in zip(of, flags) if f]
    if len(chosen) < min_size:
        # by position, not by looking each item up in a list: linear in len(of)
        top_up = set([k for k, f in enumerate(flags) if not f][: min_size - len(chosen)])
        chosen = [i for k, (i, f) in enumerate(zip(of, flags)) if f or k in top_up]
    return chosen[:max_size]


def _flag_patterns(n: int) -> Iterator[list[bool]]:
    """A subset's corners as flags: every item, none, then each item left out and alone."""
    yield [True] * n
    yield [False] * n
    for i in range(n):
        yield [j != i for j in range(n)]
        yield [j == i for j in range(n)]


def simplex_weights(u: list[float], items: list[Any]) -> dict[Any, float]:
    """Uniform u_i -> a uniform point on the simplex (normalised exponential spacings)."""
    e = [max(-math.log(max(x, _U_FLOOR)), _EXP_FLOOR) for x in u]
    total = math.fsum(e)
    return {i: x / total for i, x in zip(items, e)}


def _items(lists: Iterable[list[Any]]) -> list[Any]:
    """The distinct items of some lists, in first-seen order (True and 1 kept apart)."""
    seen: dict[Any, Any] = {}
    for items in lists:
        for item in items:
            seen.setdefault(value_key(item) if is_scalar(item) else repr(item), item)
    return list(seen.values())


def _is_int_setting(leaf: Any) -> bool:
    ms = [m for m in annotation_members(leaf) if m is not type(None)]
    return bool(ms) and all(m is int for m in ms)
