"""The `space:` section of a study file: YAML -> Optuna distributions and back.

Keys are dotted config paths (`distill.lr`, `study.seed`); a path that does not start with a
section of the study file is under `pipeline`, as `--set` overrides are. Each value is a mapping
with a `type` (see TYPES) and an optional `when: {param: value | [values]}`, or a plain scalar or
list, which means `fixed`. Two types are not native to Optuna and are presented to the sampler as
plain distributions, so every sampler (TPE, CMA-ES, GP, brute force) works on them unchanged:

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
"""

from __future__ import annotations

import copy
import decimal
import difflib
import functools
import hashlib
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from pydantic import BaseModel, ValidationError

from study.config import ConfigError, StudyFile, set_path

__all__ = ["TYPES", "Param", "SearchSpace", "parse_space"]

TYPES = ("float", "int", "categorical", "subset", "simplex", "fixed")
# type -> (required keys, optional keys); `type` and `when` are allowed everywhere
_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "float": (("low", "high"), ("log", "step")),
    "int": (("low", "high"), ("log", "step")),
    "categorical": (("choices",), ()),
    "subset": (("of",), ("min_size", "max_size")),
    "simplex": (("over",), ()),
    "fixed": (("value",), ()),
}
_WHEN_KINDS = ("categorical", "int", "fixed")  # a float or a set is never compared for equality
_SECTIONS = tuple(StudyFile.model_fields)
# -log(u) is 0 at u = 1 and inf at u = 0; the floor keeps every chosen weight > 0 (about 1e-12
# of an average draw of 1) and the sum finite, without visibly biasing the Dirichlet(1) law.
_EXP_FLOOR = 1e-12
_U_FLOOR = 1e-300
_SUM_TOL = 1e-6  # a hand-written simplex (0.3333...) is accepted; ours sum to 1 +- 1e-15
_STEP_TOL = 1e-8  # Optuna's own tolerance for "on the step grid"


class _Suggester(Protocol):
    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True)
class Param:
    name: str  # dotted path as written, without a leading 'pipeline.'
    path: tuple[str, ...]  # full path in the study tree, 'pipeline' included
    kind: str  # one of TYPES
    spec: dict[str, Any]  # normalised: every option present, numbers typed
    when: dict[str, list[Any]]  # param name -> accepted values (all must hold)


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]  # dependency order: a param after those in its `when` and `over`
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
                values[p.name] = self._draw(p, trial, values)
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
            known.update(self._raw_names(p))
            if not self._active(p, out):
                given = [k for k in (p.name, *self._raw_names(p)) if k in values]
                if given:
                    errors.append(
                        f"'{given[0]}' is given but '{p.name}' is inactive here "
                        f"(needs {_show_when(p)})"
                    )
                continue
            try:
                if p.name in values:
                    out[p.name] = self._check(p, values[p.name], out)
                elif p.kind == "fixed":
                    out[p.name] = copy.deepcopy(p.spec["value"])
                else:
                    out[p.name] = self._draw(p, raw, out)
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
            s = p.spec
            if p.kind == "float":
                out[p.name] = FloatDistribution(s["low"], s["high"], log=s["log"], step=s["step"])
            elif p.kind == "int":
                out[p.name] = IntDistribution(s["low"], s["high"], log=s["log"], step=s["step"])
            elif p.kind == "categorical":
                out[p.name] = CategoricalDistribution(s["choices"])
            elif p.kind == "subset":
                for raw in self._raw_names(p):
                    out[raw] = CategoricalDistribution((False, True))
            elif p.kind == "simplex":
                for raw in self._raw_names(p):
                    out[raw] = FloatDistribution(0.0, 1.0)
        return out

    def grid(self) -> dict[str, list[Any]] | None:
        """Raw name -> every value (for GridSampler); None if some float is continuous."""
        out: dict[str, list[Any]] = {}
        for name, d in self.distributions().items():
            if isinstance(d, CategoricalDistribution):
                out[name] = list(d.choices)
            elif isinstance(d, IntDistribution):
                out[name] = list(range(d.low, d.high + 1, d.step))
            elif isinstance(d, FloatDistribution) and d.step is not None:
                n = int(round((d.high - d.low) / d.step))
                out[name] = [_on_grid(d.low, d.step, k) for k in range(n + 1)]
            else:
                return None
        return out

    def describe(self) -> str:
        searched = sum(p.kind != "fixed" for p in self.params)
        lines = [
            f"search space of {self.source}: {searched} searched, "
            f"{len(self.params) - searched} fixed, {len(self.distributions())} raw "
            f"Optuna parameters"
        ]
        width = max((len(p.name) for p in self.params), default=0)
        for p in self.params:
            s = p.spec
            if p.kind in ("float", "int"):
                what = f"{p.kind} [{s['low']}, {s['high']}]"
                what += " log" if s["log"] else ""
                what += f" step {s['step']}" if s["step"] not in (None, 1) else ""
            elif p.kind == "categorical":
                what = f"categorical {s['choices']}"
            elif p.kind == "subset":
                what = f"subset of {s['of']}, size {s['min_size']}..{s['max_size']}"
            elif p.kind == "simplex":
                what = f"simplex weights over {s['over']}"
            else:
                what = f"fixed {s['value']!r}"
            cond = f"  when {_show_when(p)}" if p.when else ""
            lines.append(f"  {p.name:<{width}}  {what}{cond}")
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

    # ------------------------------------------------------------ internals
    def _active(self, p: Param, values: Mapping[str, Any]) -> bool:
        for name, accepted in p.when.items():
            if name not in values or not any(_same(values[name], a) for a in accepted):
                return False
        over = p.spec.get("over")
        return not (p.kind == "simplex" and isinstance(over, str) and over not in values)

    def _items(self, p: Param) -> list[Any]:
        """Every item a subset or simplex can hold."""
        if p.kind == "subset":
            return list(p.spec["of"])
        over = p.spec["over"]
        if not isinstance(over, str):
            return list(over)
        q = self._by_name[over]
        return list(q.spec["of"] if q.kind == "subset" else q.spec["value"])

    def _raw_names(self, p: Param) -> list[str]:
        if p.kind in ("subset", "simplex"):
            return [f"{p.name}.{i}" for i in self._items(p)]
        return [] if p.kind == "fixed" else [p.name]

    def _chosen(self, p: Param, values: Mapping[str, Any]) -> list[Any]:
        over = p.spec["over"]
        return list(over) if not isinstance(over, str) else list(values[over])

    def _draw(self, p: Param, trial: _Suggester, values: Mapping[str, Any]) -> Any:
        s = p.spec
        if p.kind == "fixed":
            return copy.deepcopy(s["value"])
        if p.kind == "float":
            v = trial.suggest_float(p.name, s["low"], s["high"], step=s["step"], log=s["log"])
            return _snap(float(v), s)
        if p.kind == "int":
            return int(trial.suggest_int(p.name, s["low"], s["high"], step=s["step"], log=s["log"]))
        if p.kind == "categorical":
            return trial.suggest_categorical(p.name, s["choices"])
        if p.kind == "subset":
            flags = [
                bool(trial.suggest_categorical(raw, (False, True))) for raw in self._raw_names(p)
            ]
            return repair_subset(s["of"], flags, s["min_size"], s["max_size"])
        # simplex: every possible coordinate is suggested, so the space does not change shape
        u = {
            i: float(trial.suggest_float(raw, 0.0, 1.0))
            for i, raw in zip(self._items(p), self._raw_names(p))
        }
        chosen = self._chosen(p, values)
        return simplex_weights([u[i] for i in chosen], chosen)

    def _check(self, p: Param, v: Any, values: Mapping[str, Any]) -> Any:
        """A stored canonical value, validated against the spec; returns it canonical."""
        s = p.spec
        if p.kind == "fixed":
            if not _same(v, s["value"]):
                raise ValueError(f"is fixed to {s['value']!r}, got {v!r}")
            return copy.deepcopy(s["value"])
        if p.kind == "float":
            x = _number(v)
            if not s["low"] <= x <= s["high"] or (s["step"] and not _is_on_grid(x, s)):
                raise ValueError(f"{v!r} is outside {_show_range(s)}")
            return _snap(x, s)
        if p.kind == "int":
            x = _number(v)
            if x != int(x) or not s["low"] <= x <= s["high"] or (x - s["low"]) % s["step"]:
                raise ValueError(f"{v!r} is outside {_show_range(s)}")
            return int(x)
        if p.kind == "categorical":
            for c in s["choices"]:
                if _same(v, c):
                    return c
            raise ValueError(f"{v!r} is not one of {s['choices']}")
        if p.kind == "subset":
            if (
                not isinstance(v, (list, tuple))
                or not all(_in(x, s["of"]) for x in v)
                or (len({repr(x) for x in v}) != len(v))
            ):
                raise ValueError(f"{v!r} must be a list of distinct items of {s['of']}")
            if not s["min_size"] <= len(v) <= s["max_size"]:
                raise ValueError(
                    f"{v!r} has {len(v)} items; allowed {s['min_size']}..{s['max_size']}"
                )
            return [i for i in s["of"] if _in(i, v)]
        chosen = self._chosen(p, values)
        if not isinstance(v, Mapping) or set(v) != set(chosen):
            raise ValueError(f"{v!r} must be a mapping with one weight per item of {chosen}")
        w = {i: _number(v[i]) for i in chosen}
        total = math.fsum(w.values())
        if min(w.values()) < 0 or abs(total - 1) > _SUM_TOL:
            raise ValueError(f"weights must be >= 0 and sum to 1, got {dict(v)} (sum {total})")
        if abs(total - 1) > 1e-12:
            w = {i: x / total for i, x in w.items()}
        return w


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
                f"{[s for s in _SECTIONS if s != 'space']}"
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
    _check_paths_disjoint(params, keys, errors)
    broken = _check_references(params, keys, errors)
    order = _dependency_order(params, keys, errors)
    space = SearchSpace(tuple(order), source)
    sound = [p for p in order if p.name not in broken]
    _check_raw_names(space, sound, keys, errors)
    _check_against_schema(space, sound, tree, keys, errors)
    if errors:
        raise ConfigError(_report(source, "the search space", errors))
    return space


def _parse_param(
    where: str, name: str, path: tuple[str, ...], spec: Any, leaf: Any, errors: list[str]
) -> Param | None:
    if not isinstance(spec, Mapping):
        return Param(name, path, "fixed", {"value": copy.deepcopy(spec)}, {})
    n_before = len(errors)
    kind = spec.get("type")
    if kind not in TYPES:
        near = difflib.get_close_matches(str(kind), TYPES, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        got = "no 'type'" if kind is None else f"type {kind!r}"
        errors.append(
            f"key '{where}': {got}{hint}; valid types: {list(TYPES)} (a fixed "
            "mapping value is written {type: fixed, value: {...}})"
        )
        return None
    required, optional = _KEYS[kind]
    allowed = ("type", "when", *required, *optional)
    for k in spec:
        if k not in allowed:
            near = difflib.get_close_matches(str(k), allowed, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            errors.append(
                f"key '{where}.{k}': unknown option for type {kind}{hint}; allowed: {list(allowed)}"
            )
    missing = [k for k in required if k not in spec]
    if missing:
        errors.append(f"key '{where}': type {kind} needs {missing}")
    if len(errors) > n_before:
        return None
    norm = _NORMALISE[kind](where, dict(spec), leaf, errors)
    when = _parse_when(where, spec.get("when"), errors)
    if len(errors) > n_before or norm is None or when is None:
        return None
    return Param(name, path, kind, norm, when)


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


def _norm_numeric(kind: str):
    integer = kind == "int"

    def norm(where: str, spec: dict, leaf: Any, errors: list[str]) -> dict | None:
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
        if len(errors) > n_before:
            return None
        if low > high:
            errors.append(f"key '{where}': low {low} > high {high}; need low <= high")
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

    return norm


def _norm_categorical(where: str, spec: dict, leaf: Any, errors: list[str]) -> dict | None:
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
    return {"choices": list(choices)}


def _norm_subset(where: str, spec: dict, leaf: Any, errors: list[str]) -> dict | None:
    of = spec["of"]
    if not isinstance(of, list) or not of or not all(_is_scalar(i) and i is not None for i in of):
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


def _norm_simplex(where: str, spec: dict, leaf: Any, errors: list[str]) -> dict | None:
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


def _norm_fixed(where: str, spec: dict, leaf: Any, errors: list[str]) -> dict | None:
    return {"value": copy.deepcopy(spec["value"])}


_NORMALISE = {
    "float": _norm_numeric("float"),
    "int": _norm_numeric("int"),
    "categorical": _norm_categorical,
    "subset": _norm_subset,
    "simplex": _norm_simplex,
    "fixed": _norm_fixed,
}


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
            elif q.kind not in _WHEN_KINDS:
                errors.append(
                    f"key '{where}.when.{ref}': a `when` can test a "
                    f"{'/'.join(_WHEN_KINDS)} parameter, '{ref}' is a {q.kind}"
                )
                bad = True
            else:
                wrong = [a for a in accepted if not _possible(q, a)]
                if wrong:
                    errors.append(
                        f"key '{where}.when.{ref}': {wrong} can never be the value of "
                        f"'{ref}'; possible: {_possible_values(q)}"
                    )
                    bad = True
        over = p.spec.get("over") if p.kind == "simplex" else None
        if isinstance(over, str):
            q = params.get(over)
            usable = q is not None and (
                q.kind == "subset"
                or (
                    q.kind == "fixed"
                    and isinstance(q.spec["value"], list)
                    and q.spec["value"]
                    and all(isinstance(i, str) for i in q.spec["value"])
                    and len(set(q.spec["value"])) == len(q.spec["value"])
                )
            )
            if q is None or not usable:
                subsets = [n for n, x in params.items() if x.kind == "subset"]
                what = "not a parameter" if q is None else f"a {q.kind} parameter"
                near = difflib.get_close_matches(over, subsets, n=1)
                hint = f" (did you mean '{near[0]}'?)" if near else ""
                errors.append(
                    f"key '{where}.over': '{over}' is {what}{hint}; `over` names a "
                    f"subset (or fixed list) parameter of this space (subsets here: "
                    f"{subsets}) or is a list of item names"
                )
                bad = True
            elif (
                q is not None
                and q.kind == "subset"
                and not all(isinstance(i, str) for i in q.spec["of"])
            ):
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
        out = set(p.when)
        if p.kind == "simplex" and isinstance(p.spec["over"], str):
            out.add(p.spec["over"])
        return out & set(params)

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
        for raw in space._raw_names(p):
            if owner.setdefault(raw, p.name) != p.name:
                errors.append(
                    f"key 'space.{keys[p.name]}': its Optuna parameter '{raw}' "
                    f"clashes with parameter '{owner[raw]}'; rename one"
                )


def _check_against_schema(
    space: SearchSpace,
    sound: list[Param],
    tree: dict[str, Any],
    keys: dict[str, str],
    errors: list[str],
) -> None:
    """Every value a parameter can take must be valid at its path: a typo in `choices` fails
    here, not in trial 37. Checks the range ends, each choice, the whole `of` list."""
    for p in sound:
        s = p.spec
        if p.kind in ("float", "int"):
            probes = [("low", s["low"]), ("high", s["high"])]
        elif p.kind == "categorical":
            probes = [("choices", c) for c in s["choices"]]
        elif p.kind == "subset":
            probes = [("of", list(s["of"]))]
        elif p.kind == "simplex":
            items = space._items(p)
            probes = [("over", {i: 1 / len(items) for i in items})]
        else:
            probes = [("value", s["value"])]
        for opt, value in probes:
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


def _possible(q: Param, value: Any) -> bool:
    if q.kind == "categorical":
        return _in(value, q.spec["choices"])
    if q.kind == "fixed":
        return _same(value, q.spec["value"])
    s = q.spec  # int
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and s["low"] <= value <= s["high"]
        and (value - s["low"]) % s["step"] == 0
    )


def _possible_values(q: Param) -> Any:
    if q.kind == "categorical":
        return q.spec["choices"]
    if q.kind == "fixed":
        return [q.spec["value"]]
    return _show_range(q.spec)


def _show_range(s: Mapping[str, Any]) -> str:
    step = f" step {s['step']}" if s.get("step") else ""
    return f"[{s['low']}, {s['high']}]{step}"


def _show_when(p: Param) -> str:
    return ", ".join(f"{k} in {v}" for k, v in p.when.items())


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
