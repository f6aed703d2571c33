"""The `space:` section of a study file: YAML -> Optuna distributions and back.

Keys are dotted config paths (`distill.lr`, `pipeline.seed`); a path that does not start with a
section of the study file is under `pipeline`, as `--set` overrides are. Only pipeline settings
can be searched: `study` and `executor` are the same for every trial. Each value is a mapping
with a `type` (see KINDS) and an optional `when: {param: value | [values]}`, or a plain scalar or
list, which means `fixed`. Each type is a Param subclass that owns everything about it: reading
its YAML options, sampling, checking a stored value, its Optuna distributions, its grid, its line
in `describe`, the values checked against the config schema. Two types are not native to Optuna
and are presented to the sampler as plain distributions, so every sampler (TPE, CMA-ES, GP,
brute force) works on them unchanged:

- subset: one categorical [False, True] flag per item, named `<name>.<item>`; a set outside
  [min_size, max_size] is repaired deterministically (too small: add unchosen items in `of`
  order; too large: keep the first max_size chosen in `of` order). The value is the chosen list
  in `of` order.
- simplex: one u_i ~ U(0, 1) per possible item, named `<name>.<item>`; the weights over the chosen
  items are w_i = -log(u_i) / sum_j -log(u_j). Normalised i.i.d. Exp(1) draws are exactly
  Dirichlet(1, ..., 1), i.e. uniform on the simplex, whatever the number of chosen items, and the
  search space stays the same from trial to trial. The value is a dict item -> weight.

A parameter whose `when` is false (or whose `over` parameter is inactive) is not suggested at all
and is absent from the sample, so conditional spaces stay conditional for Optuna too.

parse_space checks each parameter at its own path; SearchSpace.probe_samples gives the draws that
check the space as a whole (studyfile validates each as a complete trial): the corners of every
parameter, then seeded random draws.
"""

from __future__ import annotations

import copy
import dataclasses
import decimal
import difflib
import functools
import hashlib
import json
import math
import random
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from pydantic import BaseModel, ValidationError

from study.config import StudyFile, set_path, takes_number
from study.errors import ConfigError

__all__ = [
    "GRID_LIMIT",
    "KINDS",
    "TYPES",
    "CategoricalParam",
    "FixedParam",
    "FloatParam",
    "IntParam",
    "Param",
    "SearchSpace",
    "SimplexParam",
    "SubsetParam",
    "Suggester",
    "parse_space",
    "repair_subset",
    "simplex_weights",
]

# A grid sampler enumerates every point, and grid() is computed at every launch whatever the
# sampler: past this many points in the product of all raw parameters there is no grid.
GRID_LIMIT = 100_000
_SECTIONS = tuple(StudyFile.model_fields)
# What a trial applies: the launcher and the report read `study` and `executor` from the file,
# never from a trial's values.
_SEARCHABLE = ("pipeline",)
# -log(u) is 0 at u = 1 and inf at u = 0; the floor keeps every chosen weight > 0 (about 1e-12
# of an average draw of 1) and the sum finite, without visibly biasing the Dirichlet(1) law.
_EXP_FLOOR = 1e-12
_U_FLOOR = 1e-300
_SUM_TOL = 1e-6  # a hand-written simplex (0.3333...) is accepted; ours sum to 1 +- 1e-15
_STEP_TOL = 1e-8  # Optuna's own tolerance for "on the step grid"
_NO_VALUES: Mapping[str, Any] = types.MappingProxyType({})


class Suggester(Protocol):
    """What Param.draw needs of an Optuna trial (a Trial, a FixedTrial, or a stored replay)."""

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


# ---------------------------------------------------------------- the parameter kinds
@dataclass(frozen=True)
class Param(ABC):
    """One parameter of the space. A subclass per YAML `type:` (see KINDS).

    `values` arguments are the values of the parameters drawn before this one (the space keeps
    dependency order); only a parameter with `inputs` reads them.
    """

    name: str  # dotted path as written, without a leading 'pipeline.'
    path: tuple[str, ...]  # full path in the study tree, 'pipeline' included
    spec: dict[str, Any]  # normalised: every option present, numbers typed
    when: dict[str, list[Any]]  # param name -> accepted values (all must hold)

    # The YAML `type:`. Also written into space fingerprints and Parquet, so never renamed.
    kind: ClassVar[str]
    required: ClassVar[tuple[str, ...]] = ()  # YAML options besides `type` and `when`
    optional: ClassVar[tuple[str, ...]] = ()
    searched: ClassVar[bool] = True  # False: a single value, never suggested to Optuna
    # Whether another parameter's `when` may test this one: a `when` compares for equality,
    # which a float (or a set of items) never reliably is.
    when_testable: ClassVar[bool] = False
    # pandas dtype of the parameter's results column; "string" columns hold the value as JSON.
    column_dtype: ClassVar[str] = "string"

    # ------------------------------------------------------------ reading the YAML
    @classmethod
    def from_spec(
        cls,
        where: str,
        name: str,
        path: tuple[str, ...],
        spec: Mapping[str, Any],
        leaf: Any,
        errors: list[str],
    ) -> Param | None:
        """The parameter `spec` describes, or None after appending every problem to `errors`.
        `where`: the key as the messages name it; `leaf`: the config schema's annotation at
        `path`."""
        n_before = len(errors)
        allowed = ("type", "when", *cls.required, *cls.optional)
        for k in spec:
            if k not in allowed:
                near = difflib.get_close_matches(str(k), allowed, n=1)
                hint = f" (did you mean '{near[0]}'?)" if near else ""
                errors.append(
                    f"key '{where}.{k}': unknown option for type {cls.kind}{hint}; "
                    f"allowed: {list(allowed)}"
                )
        missing = [k for k in cls.required if k not in spec]
        if missing:
            errors.append(f"key '{where}': type {cls.kind} needs {missing}")
        if len(errors) > n_before:
            return None
        norm = cls.normalise(where, dict(spec), leaf, errors)
        when = _parse_when(where, spec.get("when"), errors)
        if len(errors) > n_before or norm is None or when is None:
            return None
        return cls(name, path, norm, when)

    @classmethod
    @abstractmethod
    def normalise(
        cls, where: str, spec: dict[str, Any], leaf: Any, errors: list[str]
    ) -> dict[str, Any] | None:
        """The options with defaults filled in and numbers typed (the stored `spec`), or None
        after appending to `errors`. Every required option is present."""

    def resolve(self, params: Mapping[str, Param]) -> Param:
        """This parameter once every parameter of the space is parsed (see SimplexParam)."""
        return self

    # ------------------------------------------------------------ structure
    @property
    def inputs(self) -> tuple[str, ...]:
        """Other parameters whose value this one's is computed from: it is drawn after them,
        and is inactive while one of them is."""
        return ()

    def raw_names(self) -> list[str]:
        """The names Optuna suggests for this parameter."""
        return [self.name]

    def raw_params(self, value: Any, values: Mapping[str, Any] = _NO_VALUES) -> dict[str, Any]:
        """Raw Optuna suggestions that make `draw` return the (checked) `value`: what
        `study.enqueue_trial` takes to run a given configuration."""
        return {self.name: value}

    @abstractmethod
    def distributions(self) -> dict[str, BaseDistribution]:
        """Each raw name -> its Optuna distribution."""

    # ------------------------------------------------------------ values
    @abstractmethod
    def draw(self, trial: Suggester, values: Mapping[str, Any] = _NO_VALUES) -> Any:
        """Suggest the raw parameters on `trial`; returns the canonical value."""

    @abstractmethod
    def check(self, value: Any, values: Mapping[str, Any] = _NO_VALUES) -> Any:
        """A stored canonical value, validated (ValueError says why not); returns it
        canonical."""

    def can_take(self, value: Any) -> bool:
        """Whether a `when` testing this parameter for `value` can ever be true."""
        raise TypeError(f"a `when` cannot test a {self.kind} parameter")

    def possible_values(self) -> Any:
        """The values a `when` may test this parameter for, as shown in messages."""
        raise TypeError(f"a `when` cannot test a {self.kind} parameter")

    # ------------------------------------------------------------ views
    @abstractmethod
    def grid_size(self) -> int | None:
        """How many combinations of raw values grid() has; None if some raw value is
        continuous. Computed without building them."""

    @abstractmethod
    def grid(self) -> dict[str, list[Any]] | None:
        """Each raw name -> every value it takes; None if continuous. Call after grid_size():
        this builds the lists."""

    @abstractmethod
    def display(self) -> str:
        """What the parameter searches, in one line (`describe`)."""

    @abstractmethod
    def schema_probes(self) -> list[tuple[str, Any]]:
        """(option, value) pairs to validate at the parameter's config path: if each passes,
        every value the parameter can take does."""

    def corners(self) -> list[dict[str, Any]]:
        """Raw suggestions (raw name -> value) of the extreme values a rule across settings
        may refuse: each categorical choice, each end of a range, each subset item left out
        and alone. A continuous interior (a simplex) has none; random draws cover it."""
        return []


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
        low = _norm_number(where, "low", spec["low"], integer, errors)
        high = _norm_number(where, "high", spec["high"], integer, errors)
        log = spec.get("log", False)
        if not isinstance(log, bool):
            errors.append(f"key '{where}.log': must be true or false, got {log!r}")
        step = spec.get("step", 1 if integer else None)
        if step is not None:
            step = _norm_number(where, "step", step, integer, errors)
            if step is not None and step <= 0:
                errors.append(f"key '{where}.step': must be > 0, got {step}")
        # an int range on a float setting is fine (1 is a valid 1.0); the reverse is not
        if not integer and _is_int_setting(leaf):
            errors.append(f"key '{where}.type': this config setting is an integer; use type: int")
        if bool in _members(leaf):
            errors.append(f"key '{where}.type': this config setting is true or false; use "
                          "type: categorical, choices: [false, true]")
        if len(errors) > n_before:
            return None
        if low > high:
            errors.append(f"key '{where}': low {low} > high {high}; need low <= high")
        elif step is not None and low != high and _wider(step, low, high):
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
            high = _adjust_high(low, high, step, integer)  # as Optuna does, without its warning
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
    column_dtype: ClassVar[str] = "Float64"

    def distributions(self) -> dict[str, BaseDistribution]:
        s = self.spec
        return {self.name: FloatDistribution(s["low"], s["high"], log=s["log"], step=s["step"])}

    def draw(self, trial: Suggester, values: Mapping[str, Any] = _NO_VALUES) -> float:
        s = self.spec
        v = trial.suggest_float(self.name, s["low"], s["high"], step=s["step"], log=s["log"])
        return _snap(float(v), s)

    def check(self, value: Any, values: Mapping[str, Any] = _NO_VALUES) -> float:
        s = self.spec
        x = _number(value)
        if not s["low"] <= x <= s["high"] or (s["step"] and not _is_on_grid(x, s)):
            raise ValueError(f"{value!r} is outside {_show_range(s)}")
        return _snap(x, s)

    def grid_size(self) -> int | None:
        s = self.spec
        if s["step"] is None:
            return None
        return int(round((s["high"] - s["low"]) / s["step"])) + 1

    def grid(self) -> dict[str, list[Any]] | None:
        n = self.grid_size()
        if n is None:
            return None
        return {self.name: [_on_grid(self.spec["low"], self.spec["step"], k) for k in range(n)]}


@dataclass(frozen=True)
class IntParam(_RangeParam):
    """`{type: int, low, high, log: false, step: 1}`."""

    kind: ClassVar[str] = "int"
    integer: ClassVar[bool] = True
    when_testable: ClassVar[bool] = True
    column_dtype: ClassVar[str] = "Int64"

    def distributions(self) -> dict[str, BaseDistribution]:
        s = self.spec
        return {self.name: IntDistribution(s["low"], s["high"], log=s["log"], step=s["step"])}

    def draw(self, trial: Suggester, values: Mapping[str, Any] = _NO_VALUES) -> int:
        s = self.spec
        return int(trial.suggest_int(self.name, s["low"], s["high"], step=s["step"], log=s["log"]))

    def check(self, value: Any, values: Mapping[str, Any] = _NO_VALUES) -> int:
        s = self.spec
        x = _number(value)
        if x != int(x) or not s["low"] <= x <= s["high"] or (x - s["low"]) % s["step"]:
            raise ValueError(f"{value!r} is outside {_show_range(s)}")
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
        return _show_range(self.spec)

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
        bad = [c for c in choices if not _is_scalar(c)]
        if bad:
            errors.append(
                f"key '{where}.choices': choices must be scalars (string, number, bool, "
                f"null), got {bad}"
            )
            return None
        if len({_key(c) for c in choices}) != len(choices):
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
                v = _as_number(c)
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

    def draw(self, trial: Suggester, values: Mapping[str, Any] = _NO_VALUES) -> Any:
        return trial.suggest_categorical(self.name, self.spec["choices"])

    def check(self, value: Any, values: Mapping[str, Any] = _NO_VALUES) -> Any:
        for c in self.spec["choices"]:
            if _same(value, c):
                return c
        raise ValueError(f"{value!r} is not one of {self.spec['choices']}")

    def can_take(self, value: Any) -> bool:
        return _in(value, self.spec["choices"])

    def possible_values(self) -> Any:
        return self.spec["choices"]

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
    """`{type: subset, of: [items], min_size: 1, max_size: len(of)}`: one flag per item."""

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
            or not all(_is_scalar(i) and i is not None for i in of)
        ):
            errors.append(f"key '{where}.of': must be a non-empty list of names, got {of!r}")
            return None
        if len({str(i) for i in of}) != len(of):
            errors.append(f"key '{where}.of': repeated items in {of}")
            return None
        n_before = len(errors)
        lo = _norm_number(where, "min_size", spec.get("min_size", 1), True, errors)
        hi = _norm_number(where, "max_size", spec.get("max_size", len(of)), True, errors)
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

    def raw_params(self, value: Any, values: Mapping[str, Any] = _NO_VALUES) -> dict[str, Any]:
        return {raw: _in(i, value) for i, raw in zip(self.spec["of"], self.raw_names())}

    def distributions(self) -> dict[str, BaseDistribution]:
        return {raw: CategoricalDistribution((False, True)) for raw in self.raw_names()}

    def draw(self, trial: Suggester, values: Mapping[str, Any] = _NO_VALUES) -> list[Any]:
        s = self.spec
        flags = [bool(trial.suggest_categorical(raw, (False, True))) for raw in self.raw_names()]
        return repair_subset(s["of"], flags, s["min_size"], s["max_size"])

    def check(self, value: Any, values: Mapping[str, Any] = _NO_VALUES) -> list[Any]:
        s = self.spec
        if (
            not isinstance(value, (list, tuple))
            or not all(_in(x, s["of"]) for x in value)
            or (len({repr(x) for x in value}) != len(value))
        ):
            raise ValueError(f"{value!r} must be a list of distinct items of {s['of']}")
        if not s["min_size"] <= len(value) <= s["max_size"]:
            raise ValueError(
                f"{value!r} has {len(value)} items; allowed {s['min_size']}..{s['max_size']}"
            )
        return [i for i in s["of"] if _in(i, value)]

    def grid_size(self) -> int:
        return 2 ** len(self.spec["of"])

    def grid(self) -> dict[str, list[Any]]:
        return {raw: [False, True] for raw in self.raw_names()}

    def display(self) -> str:
        s = self.spec
        return f"subset of {s['of']}, size {s['min_size']}..{s['max_size']}"

    def schema_probes(self) -> list[tuple[str, Any]]:
        return [("of", list(self.spec["of"]))]

    def corners(self) -> list[dict[str, Any]]:
        # flag patterns, repaired by draw() as a sampler's would be: every item, none, and each
        # item left out and alone; 2 * len(of) + 2 draws, never the 2**len(of) sets
        raws, n = self.raw_names(), len(self.spec["of"])
        patterns = [[True] * n, [False] * n]
        for i in range(n):
            patterns.append([j != i for j in range(n)])
            patterns.append([j == i for j in range(n)])
        unique = dict.fromkeys(tuple(f) for f in patterns)   # a 1-item `of`: all = only-i
        return [dict(zip(raws, flags)) for flags in unique]


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
            return {"over": _name(over)}
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

    def raw_params(self, value: Any, values: Mapping[str, Any] = _NO_VALUES) -> dict[str, Any]:
        # draw weighs -log(u_i) / sum_j -log(u_j): u_i = exp(-w_i) gives back w (sum 1); the
        # items not chosen are suggested too (the space keeps its shape) and are not used
        return {raw: math.exp(-float(value[i])) if i in value else 0.5
                for i, raw in zip(self.items, self.raw_names())}

    def distributions(self) -> dict[str, BaseDistribution]:
        return {raw: FloatDistribution(0.0, 1.0) for raw in self.raw_names()}

    def draw(self, trial: Suggester, values: Mapping[str, Any] = _NO_VALUES) -> dict[Any, float]:
        # every possible coordinate is suggested, so the space does not change shape
        u = {
            i: float(trial.suggest_float(raw, 0.0, 1.0))
            for i, raw in zip(self.items, self.raw_names())
        }
        chosen = self.chosen(values)
        return simplex_weights([u[i] for i in chosen], chosen)

    def check(self, value: Any, values: Mapping[str, Any] = _NO_VALUES) -> dict[Any, float]:
        chosen = self.chosen(values)
        if not isinstance(value, Mapping) or set(value) != set(chosen):
            raise ValueError(f"{value!r} must be a mapping with one weight per item of {chosen}")
        w = {i: _number(value[i]) for i in chosen}
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

    def raw_params(self, value: Any, values: Mapping[str, Any] = _NO_VALUES) -> dict[str, Any]:
        return {}

    def distributions(self) -> dict[str, BaseDistribution]:
        return {}

    def draw(self, trial: Suggester, values: Mapping[str, Any] = _NO_VALUES) -> Any:
        return copy.deepcopy(self.spec["value"])

    def check(self, value: Any, values: Mapping[str, Any] = _NO_VALUES) -> Any:
        if not _same(value, self.spec["value"]):
            raise ValueError(f"is fixed to {self.spec['value']!r}, got {value!r}")
        return copy.deepcopy(self.spec["value"])

    def can_take(self, value: Any) -> bool:
        return _same(value, self.spec["value"])

    def possible_values(self) -> Any:
        return [self.spec["value"]]

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


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]  # dependency order: a param after those in its `when` and `inputs`
    source: str = "<space>"
    _by_name: dict[str, Param] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {p.name: p for p in self.params})

    # ------------------------------------------------------------ sampling
    def sample(self, trial: Any) -> dict[str, Any]:
        """Suggest every active parameter; also stored as the trial's user attributes."""
        values: dict[str, Any] = {}
        for p in self.params:
            if self._active(p, values):
                values[p.name] = p.draw(trial, values)
        if hasattr(trial, "set_user_attr"):
            for k, v in values.items():
                trial.set_user_attr(k, v)
        return values

    def from_params(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The sample that `values` stands for: canonical values (a sample, trial.user_attrs)
        or raw suggestions (trial.params, flags and simplex coordinates), checked."""
        errors: list[str] = []
        out: dict[str, Any] = {}
        raw = _Replay(values)
        known: set[str] = set()
        for p in self.params:
            known.add(p.name)
            known.update(p.raw_names())
            if not self._active(p, out):
                given = [k for k in (p.name, *p.raw_names()) if k in values]
                if given:
                    errors.append(
                        f"'{given[0]}' is given but '{p.name}' is inactive here "
                        f"(needs {_show_when(p)})"
                    )
                continue
            try:
                if p.name in values:
                    out[p.name] = p.check(values[p.name], out)
                else:  # a fixed parameter draws its value without asking the replay
                    out[p.name] = p.draw(raw, out)
            except ValueError as e:
                errors.append(f"'{p.name}': {e}")
        for k in values:
            if k not in known:
                near = difflib.get_close_matches(str(k), sorted(known), n=1)
                hint = f" (did you mean '{near[0]}'?)" if near else ""
                errors.append(
                    f"'{k}' is not a parameter of this space{hint}; "
                    f"parameters: {[p.name for p in self.params]}"
                )
        if errors:
            raise ConfigError(_report(self.source, "the given parameter values", errors))
        return out

    def baseline(self, tree: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """The sample that stands for the study file's own pipeline: each active parameter's
        value read at its path in the (validated, defaults filled) `tree`. (None, why) when a
        value lies outside the space or is missing."""
        values: dict[str, Any] = {}
        for p in self.params:
            if not self._active(p, values):
                continue
            node: Any = tree
            for k in p.path:
                node = node.get(k) if isinstance(node, Mapping) else None
            if node is None:
                return None, f"'{p.name}' has no value in the study file's pipeline"
            try:
                values[p.name] = p.check(node, values)
            except ValueError as e:
                return None, f"the study file's '{p.name}' ({node!r}) is outside the space: {e}"
        return values, ""

    def raw_params(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The raw Optuna suggestions of a sample (see Param.raw_params)."""
        out: dict[str, Any] = {}
        for p in self.params:
            if p.name in values:
                out.update(p.raw_params(values[p.name], values))
        return out

    def apply(self, tree: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
        """A deep copy of the resolved study tree with each value set at its parameter's path."""
        unknown = [k for k in values if k not in self._by_name]
        if unknown:
            raise ConfigError(
                f"{self.source}: {unknown} are not parameters of the space; "
                f"parameters: {list(self._by_name)}"
            )
        out = copy.deepcopy(tree)
        for k, v in values.items():
            set_path(out, list(self._by_name[k].path), copy.deepcopy(v))
        return out

    # ------------------------------------------------------------ views
    def distributions(self) -> dict[str, BaseDistribution]:
        """Every raw suggest name -> its distribution, conditional ones included."""
        out: dict[str, BaseDistribution] = {}
        for p in self.params:
            out.update(p.distributions())
        return out

    def grid_size(self) -> int | None:
        """Points in the full grid (the product over every raw parameter, conditional ones
        included); None if some parameter is continuous. Nothing is enumerated."""
        total = 1
        for p in self.params:
            n = p.grid_size()
            if n is None:
                return None
            total *= n
        return total

    def grid(self) -> dict[str, list[Any]] | None:
        """Raw name -> every value (for GridSampler); None if some parameter is continuous or
        the grid has more than GRID_LIMIT points (a single parameter that large included)."""
        size = self.grid_size()
        if size is None or size > GRID_LIMIT:
            return None
        out: dict[str, list[Any]] = {}
        for p in self.params:
            out.update(p.grid() or {})
        return out

    def describe(self) -> str:
        searched = sum(p.searched for p in self.params)
        lines = [
            f"search space of {self.source}: {searched} searched, "
            f"{len(self.params) - searched} fixed, {len(self.distributions())} raw "
            f"Optuna parameters"
        ]
        width = max((len(p.name) for p in self.params), default=0)
        for p in self.params:
            cond = f"  when {_show_when(p)}" if p.when else ""
            lines.append(f"  {p.name:<{width}}  {p.display()}{cond}")
        return "\n".join(lines)

    def fingerprint(self) -> str:
        """sha256 of the normalised space: YAML key order does not matter, any range does."""
        items = [
            {
                "name": p.name,
                "path": list(p.path),
                "kind": p.kind,
                "spec": p.spec,
                "when": {k: sorted(p.when[k], key=repr) for k in sorted(p.when)},
            }
            for p in sorted(self.params, key=lambda p: p.name)
        ]
        text = json.dumps({"space-format": 1, "params": items}, sort_keys=True, default=repr)
        return hashlib.sha256(text.encode()).hexdigest()

    def probe_samples(self, n_random: int, seed: int, corner_limit: int) -> Iterator[
            dict[str, Any]]:
        """Distinct samples to validate as whole trials: first the corners of each parameter
        (at most `corner_limit`; see Param.corners), each with the parameters its `when`
        tests set so that it is active, the others random; then `n_random` random draws. All
        from random.Random(seed): the same samples at every load, whatever the machine. Never
        enumerates a grid, so a huge space costs the same."""
        rng = random.Random(seed)
        plans: list[dict[str, Any]] = []
        for p in self.params:
            if len(plans) >= corner_limit:
                break
            for corner in p.corners()[: corner_limit - len(plans)]:
                plans.append({**self._activation(p), **corner})
        plans += [{} for _ in range(n_random)]
        seen: set[str] = set()
        for forced in plans:
            values = self.sample(_Draws(rng, forced))
            key = json.dumps(values, sort_keys=True, default=repr)
            if key not in seen:
                seen.add(key)
                yield values

    # ------------------------------------------------------------ internals
    def _activation(self, p: Param, _depth: int = 0) -> dict[str, Any]:
        """Raw suggestions that make `p` active: each parameter its `when` tests (and those
        that parameter's own `when` tests...) set to its first accepted value."""
        out: dict[str, Any] = {}
        if _depth > len(self.params):   # parse_space refuses cycles; a guard all the same
            return out
        refs: list[tuple[str, list[Any] | None]] = [*p.when.items()]
        refs += [(name, None) for name in p.inputs]
        for name, accepted in refs:
            q = self._by_name.get(name)
            if q is None:
                continue
            out.update(self._activation(q, _depth + 1))
            if accepted is not None:
                value = next((a for a in accepted if q.can_take(a)), None)
                if value is not None:
                    out.update(q.raw_params(value))
        return out

    def _active(self, p: Param, values: Mapping[str, Any]) -> bool:
        for name, accepted in p.when.items():
            if name not in values or not any(_same(values[name], a) for a in accepted):
                return False
        return all(name in values for name in p.inputs)


# ---------------------------------------------------------------- the two derived types
def repair_subset(of: list[Any], flags: list[bool], min_size: int, max_size: int) -> list[Any]:
    """The chosen items in `of` order, topped up or cut to [min_size, max_size] in `of` order."""
    chosen = [i for i, f in zip(of, flags) if f]
    if len(chosen) < min_size:
        missing = [i for i, f in zip(of, flags) if not f][: min_size - len(chosen)]
        chosen = [i for i in of if i in chosen or i in missing]
    return chosen[:max_size]


def simplex_weights(u: list[float], items: list[Any]) -> dict[Any, float]:
    """Uniform u_i -> a uniform point on the simplex (normalised exponential spacings)."""
    e = [max(-math.log(max(x, _U_FLOOR)), _EXP_FLOOR) for x in u]
    total = math.fsum(e)
    return {i: x / total for i, x in zip(items, e)}


class _Draws:
    """A Suggester for probe_samples: the `forced` raw values, else a random.Random draw."""

    def __init__(self, rng: random.Random, forced: Mapping[str, Any]) -> None:
        self.rng, self.forced = rng, forced

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        if name in self.forced:
            return float(self.forced[name])
        if step:
            return _on_grid(low, step, self.rng.randint(0, int(round((high - low) / step))))
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


class _Replay:
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
        x = _number(self._get(name))
        spec = {"low": low, "high": high, "step": step}
        if not low <= x <= high or (step and not _is_on_grid(x, spec)):
            raise ValueError(f"raw '{name}' = {x!r} is outside {_show_range(spec)}")
        return x

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        x = _number(self._get(name))
        if x != int(x) or not low <= x <= high or (x - low) % step:
            raise ValueError(f"raw '{name}' = {x!r} is outside [{low}, {high}] step {step}")
        return int(x)

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        v = self._get(name)
        for c in choices:
            if _same(v, c):
                return c
        raise ValueError(f"raw '{name}' = {v!r} is not one of {list(choices)}")


# ---------------------------------------------------------------- parsing
def parse_space(raw: Any, tree: dict[str, Any], source: str) -> SearchSpace:
    """The validated search space; every problem is reported together in one ConfigError."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{source}: key 'space' must be a mapping of dotted config paths to "
            f"parameter specs (e.g. 'distill.lr: {{type: float, low: 1.0e-4, "
            f"high: 1.0e-2, log: true}}'), got {type(raw).__name__}"
        )
    errors: list[str] = []
    params: dict[str, Param] = {}
    keys: dict[str, str] = {}  # name -> the key as written, for messages
    for key, spec in raw.items():
        where = f"space.{key}"
        if not isinstance(key, str) or not key or any(not s for s in key.split(".")):
            errors.append(
                f"key '{where}': a parameter name is a dotted config path like 'distill.lr'"
            )
            continue
        path = _full_path(key)
        name = _name(key)
        if name in params:
            errors.append(f"key '{where}': the same parameter as 'space.{keys[name]}'")
            continue
        if path[0] == "space":
            errors.append(
                f"key '{where}': the space cannot search itself; allowed sections: "
                f"{list(_SEARCHABLE)}"
            )
            continue
        if path[0] not in _SEARCHABLE:
            errors.append(
                f"key '{where}': only pipeline settings can be searched; '{key}' is in "
                f"section '{path[0]}', the same for every trial (a trial would ignore its value "
                f"here): set it in the file's `{path[0]}:` section or with --set {key}=..."
            )
            continue
        leaf, problem = _schema_leaf(path)
        if problem:
            errors.append(f"key '{where}': {problem}")
            continue
        p = _parse_param(where, name, path, spec, leaf, errors)
        if p is not None:
            params[name] = p
            keys[name] = key
    # a simplex `over` another parameter learns that parameter's items
    params = {name: p.resolve(params) for name, p in params.items()}
    _check_paths_disjoint(params, keys, errors)
    broken = _check_references(params, keys, errors)
    order = _dependency_order(params, keys, errors)
    space = SearchSpace(tuple(order), source)
    sound = [p for p in order if p.name not in broken]
    _check_raw_names(space, sound, keys, errors)
    _check_against_schema(sound, tree, keys, errors)
    if errors:
        raise ConfigError(_report(source, "the search space", errors))
    return space


def _parse_param(
    where: str, name: str, path: tuple[str, ...], spec: Any, leaf: Any, errors: list[str]
) -> Param | None:
    if not isinstance(spec, Mapping):
        return FixedParam(name, path, {"value": copy.deepcopy(spec)}, {})
    kind = spec.get("type")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        near = difflib.get_close_matches(str(kind), TYPES, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        got = "no 'type'" if kind is None else f"type {kind!r}"
        errors.append(
            f"key '{where}': {got}{hint}; valid types: {list(TYPES)} (a fixed "
            "mapping value is written {type: fixed, value: {...}})"
        )
        return None
    return cls.from_spec(where, name, path, spec, leaf, errors)


def _norm_number(where: str, key: str, v: Any, integer: bool, errors: list[str]) -> Any:
    # PyYAML reads `1e-4` (no dot) as a string; accept it as pydantic does for the pipeline
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            pass
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if ok and integer and v != int(v):
        ok = False
    if not ok:
        want = "an integer" if integer else "a finite number"
        errors.append(f"key '{where}.{key}': must be {want}, got {v!r}")
        return None
    return int(v) if integer else float(v)


def _parse_when(where: str, when: Any, errors: list[str]) -> dict[str, list[Any]] | None:
    if when is None:
        return {}
    if not isinstance(when, Mapping) or not when:
        errors.append(
            f"key '{where}.when': must be a mapping like "
            f"{{fusion.method: weighted}} or {{distill.loss: [logit, both]}}, "
            f"got {when!r}"
        )
        return None
    out: dict[str, list[Any]] = {}
    for k, v in when.items():
        if not isinstance(k, str) or not k:
            errors.append(f"key '{where}.when': {k!r} is not a parameter name")
            return None
        accepted = list(v) if isinstance(v, list) else [v]
        if not accepted:
            errors.append(f"key '{where}.when.{k}': an empty list is never true")
            return None
        out[_name(k)] = accepted
    return out


def _check_paths_disjoint(
    params: dict[str, Param], keys: dict[str, str], errors: list[str]
) -> None:
    """`fusion` and `fusion.method` in one space would overwrite each other."""
    for a in params.values():
        for b in params.values():
            if len(a.path) < len(b.path) and b.path[: len(a.path)] == a.path:
                errors.append(
                    f"key 'space.{keys[b.name]}': lies inside 'space.{keys[a.name]}'; "
                    "search one or the other"
                )


def _check_references(
    params: dict[str, Param], keys: dict[str, str], errors: list[str]
) -> set[str]:
    """The names of the parameters whose `when` or `over` is broken."""
    names = sorted(params)
    testable = sorted(cls.kind for cls in KINDS.values() if cls.when_testable)
    broken: set[str] = set()
    for p in params.values():
        where = f"space.{keys[p.name]}"
        bad = False
        for ref, accepted in p.when.items():
            q = params.get(ref)
            if q is None:
                near = difflib.get_close_matches(ref, names, n=1)
                hint = f" (did you mean '{near[0]}'?)" if near else ""
                errors.append(
                    f"key '{where}.when.{ref}': no parameter '{ref}' in this "
                    f"space{hint}; parameters: {names}"
                )
                bad = True
            elif not q.when_testable:
                errors.append(
                    f"key '{where}.when.{ref}': a `when` can test a "
                    f"{'/'.join(testable)} parameter, '{ref}' is a {q.kind}"
                )
                bad = True
            else:
                wrong = [a for a in accepted if not q.can_take(a)]
                if wrong:
                    errors.append(
                        f"key '{where}.when.{ref}': {wrong} can never be the value of "
                        f"'{ref}'; possible: {q.possible_values()}"
                    )
                    bad = True
        over = p.spec["over"] if isinstance(p, SimplexParam) else None
        if isinstance(over, str):
            q = params.get(over)
            if SimplexParam.items_of(q) is None:
                subsets = [n for n, x in params.items() if isinstance(x, SubsetParam)]
                what = "not a parameter" if q is None else f"a {q.kind} parameter"
                near = difflib.get_close_matches(over, subsets, n=1)
                hint = f" (did you mean '{near[0]}'?)" if near else ""
                errors.append(
                    f"key '{where}.over': '{over}' is {what}{hint}; `over` names a "
                    f"subset (or fixed list) parameter of this space (subsets here: "
                    f"{subsets}) or is a list of item names"
                )
                bad = True
            elif isinstance(q, SubsetParam) and not all(isinstance(i, str) for i in q.spec["of"]):
                errors.append(
                    f"key '{where}.over': simplex items must be names (strings), "
                    f"'{over}' has {q.spec['of']}"
                )
                bad = True
        if bad:
            broken.add(p.name)
    return broken


def _dependency_order(
    params: dict[str, Param], keys: dict[str, str], errors: list[str]
) -> list[Param]:
    def deps(p: Param) -> set[str]:
        return (set(p.when) | set(p.inputs)) & set(params)

    order: list[Param] = []
    placed: set[str] = set()
    pending = list(params.values())
    while pending:
        ready = next((p for p in pending if deps(p) <= placed), None)
        if ready is None:
            cycle = sorted(p.name for p in pending)
            for p in pending:
                errors.append(
                    f"key 'space.{keys[p.name]}': its `when`/`over` references form a "
                    f"cycle among {cycle}; a parameter can only depend on others "
                    "that do not depend on it"
                )
            break
        order.append(ready)
        placed.add(ready.name)
        pending.remove(ready)
    return order


def _check_raw_names(
    space: SearchSpace, sound: list[Param], keys: dict[str, str], errors: list[str]
) -> None:
    """Canonical names and raw suggest names share one namespace in from_params."""
    owner: dict[str, str] = {p.name: p.name for p in space.params}
    for p in sound:
        for raw in p.raw_names():
            if owner.setdefault(raw, p.name) != p.name:
                errors.append(
                    f"key 'space.{keys[p.name]}': its Optuna parameter '{raw}' "
                    f"clashes with parameter '{owner[raw]}'; rename one"
                )


def _check_against_schema(
    sound: list[Param], tree: dict[str, Any], keys: dict[str, str], errors: list[str]
) -> None:
    """Every value a parameter can take must be valid at its path: a typo in `choices` fails
    here, not in trial 37. Checks the range ends, each choice, the whole `of` list."""
    for p in sound:
        for opt, value in p.schema_probes():
            msgs = _errors_at(tree, p.path, value)
            if msgs:
                errors.append(
                    f"key 'space.{keys[p.name]}.{opt}': {value!r} is not valid for "
                    f"'{'.'.join(p.path)}': {'; '.join(msgs)}"
                )


def _errors_at(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> list[str]:
    """Validation messages located at `path` when `value` is put there (others are ignored:
    the tree may be inconsistent until other parameters are set too)."""
    probe = dict(tree) if isinstance(tree, Mapping) else {}
    node = probe
    for k in path[:-1]:
        child = node.get(k)
        node[k] = dict(child) if isinstance(child, Mapping) else {}
        node = node[k]
    node[path[-1]] = value
    try:
        StudyFile.model_validate(probe)
    except ValidationError as e:
        out = []
        for err in e.errors():
            loc = tuple(str(x) for x in err["loc"] if not str(x).startswith("function-"))
            if loc[: len(path)] == path and err["msg"] not in out:
                out.append(err["msg"])
        return out
    return []


# ---------------------------------------------------------------- the config schema
def _full_path(key: str) -> tuple[str, ...]:
    parts = tuple(key.split("."))
    return parts if parts[0] in _SECTIONS else ("pipeline", *parts)


def _name(key: str) -> str:
    path = _full_path(key)
    return ".".join(path[1:] if path[0] == "pipeline" else path) or path[0]


def _members(ann: Any) -> tuple[Any, ...]:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        return typing.get_args(ann)
    return (ann,)


def _model_of(ann: Any) -> type[BaseModel] | None:
    for m in _members(ann):
        if isinstance(m, type) and issubclass(m, BaseModel):
            return m
    return None


def _dict_of(ann: Any) -> tuple[Any, Any] | None:
    for m in _members(ann):
        if m is dict:
            return Any, Any
        if typing.get_origin(m) is dict:
            k, v = typing.get_args(m)
            return k, v
    return None


def _schema_leaf(path: tuple[str, ...]) -> tuple[Any, str | None]:
    """The annotation at `path` in StudyFile, or why the path does not exist."""
    ann: Any = StudyFile
    for depth, part in enumerate(path):
        if ann is Any:
            return Any, None
        model = _model_of(ann)
        if model is not None:
            if part not in model.model_fields:
                return None, _unknown_path(path, depth, list(model.model_fields))
            ann = model.model_fields[part].annotation
            continue
        kv = _dict_of(ann)
        if kv is not None:
            key_t, ann = kv
            allowed = typing.get_args(key_t) if typing.get_origin(key_t) is typing.Literal else ()
            if allowed and part not in allowed:
                return None, _unknown_path(path, depth, list(allowed))
            continue
        parent = _name(".".join(path[:depth]))
        return None, (f"config setting '{parent}' is a single value, it has no sub-key '{part}'")
    return ann, None


def _unknown_path(path: tuple[str, ...], depth: int, allowed: list[str]) -> str:
    name = _name(".".join(path))
    near = difflib.get_close_matches(name, _all_paths(), n=3, cutoff=0.7)
    where = _name(".".join(path[:depth])) if depth > 1 else path[0] if depth else "<top>"
    hint = f" (did you mean {' or '.join(repr(n) for n in near)}?)" if near else ""
    return (
        f"unknown config path '{name}'{hint}; allowed keys under '{where}': {allowed} "
        "(a path without a section is under 'pipeline')"
    )


@functools.cache
def _all_paths() -> list[str]:
    out: list[str] = []

    def walk(model: type[BaseModel], prefix: tuple[str, ...]) -> None:
        for k, f in model.model_fields.items():
            path = (*prefix, k)
            if path == ("space",):
                continue
            out.append(_name(".".join(path)))
            sub = _model_of(f.annotation)
            if sub is not None:
                walk(sub, path)

    walk(StudyFile, ())
    return out


def _is_int_setting(leaf: Any) -> bool:
    ms = [m for m in _members(leaf) if m is not type(None)]
    return bool(ms) and all(m is int for m in ms)


# ---------------------------------------------------------------- small value helpers
def _is_scalar(x: Any) -> bool:
    return x is None or isinstance(x, (bool, int, float, str))


def _key(x: Any) -> tuple[bool, Any]:
    """Equality key where True != 1 (YAML `yes` vs 1), as Optuna's categorical does."""
    return (isinstance(x, bool), x)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    return _key(a) == _key(b)


def _in(x: Any, items: Any) -> bool:
    return any(_same(x, i) for i in items)


def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{v!r} is not a finite number")
    return v


def _show_range(s: Mapping[str, Any]) -> str:
    step = f" step {s['step']}" if s.get("step") else ""
    return f"[{s['low']}, {s['high']}]{step}"


def _show_when(p: Param) -> str:
    return ", ".join(f"{k} in {v}" for k, v in p.when.items())


def _wider(step: float, low: float, high: float) -> bool:
    """high - low < step, in decimal: 0.3 - 0.1 is 0.19999999999999998 in binary."""
    d = decimal.Decimal
    return d(str(high)) - d(str(low)) < d(str(step))


def _as_number(x: Any) -> float | None:
    """x as the number a number setting reads it as (PyYAML's '1e-4' is a string), or None."""
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)):
        return float(x)
    if isinstance(x, str):
        try:
            return float(x)
        except ValueError:
            return None
    return None


def _adjust_high(low: float, high: float, step: float, integer: bool) -> Any:
    if integer:
        return low + (high - low) // step * step
    d_low, d_step = decimal.Decimal(str(low)), decimal.Decimal(str(step))
    n = (decimal.Decimal(str(high)) - d_low) // d_step
    return float(d_low + n * d_step)


def _on_grid(low: float, step: float, k: int) -> float:
    """low + k*step without the float noise (0.15000000000000002) samplers leave."""
    return float(decimal.Decimal(str(low)) + k * decimal.Decimal(str(step)))


def _is_on_grid(x: float, s: Mapping[str, Any]) -> bool:
    k = (x - s["low"]) / s["step"]
    return abs(k - round(k)) < _STEP_TOL


def _snap(x: float, s: Mapping[str, Any]) -> float:
    if s["step"] is None:
        return x
    return min(
        max(_on_grid(s["low"], s["step"], round((x - s["low"]) / s["step"])), s["low"]), s["high"]
    )


def _report(source: str, what: str, errors: list[str]) -> str:
    lines = [f"{source}: {len(errors)} problem(s) in {what}:"]
    lines += [f"  - {e}" for e in errors]
    return "\n".join(lines)
