"""parse_space: the `space:` section of a study file -> a checked SearchSpace.

Each key is a dotted config path (see param.full_path); each value a mapping with a `type`
(see kinds.KINDS) and an optional `when: {param: value | [values]}`, or a plain scalar or list,
which means `fixed`. Only pipeline settings can be searched: `study` and `executor` are the
same for every trial. Each parameter is checked at its own path against the config schema; the
checks across the whole space (every trial it can produce is valid) are studyfile's, on
SearchSpace.probe_samples.
"""

from __future__ import annotations

import copy
import difflib
import functools
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from study import schema
from study.config import StudyFile
from study.errors import ConfigError
from study.space.kinds import KINDS, TYPES, FixedParam, SimplexParam, SubsetParam
from study.space.param import Param, full_path, param_name
from study.space.search import SearchSpace, report

__all__ = ["SEARCHABLE", "parse_space"]

# What a trial applies: the launcher and the report read `study` and `executor` from the file,
# never from a trial's values.
SEARCHABLE = ("pipeline",)


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
        path = full_path(key)
        name = param_name(key)
        if name in params:
            errors.append(f"key '{where}': the same parameter as 'space.{keys[name]}'")
            continue
        if path[0] == "space":
            errors.append(
                f"key '{where}': the space cannot search itself; allowed sections: "
                f"{list(SEARCHABLE)}"
            )
            continue
        if path[0] not in SEARCHABLE:
            errors.append(
                f"key '{where}': only pipeline settings can be searched; '{key}' is in "
                f"section '{path[0]}', the same for every trial (a trial would ignore its value "
                f"here): set it in the file's `{path[0]}:` section or with --set {key}=..."
            )
            continue
        leaf, missing = schema.leaf_at(StudyFile, path)
        if missing is not None:
            errors.append(f"key '{where}': {_no_such_setting(path, missing)}")
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
        raise ConfigError(report(source, "the search space", errors))
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


# ---------------------------------------------------------------- paths in the config schema
def _no_such_setting(path: tuple[str, ...], missing: schema.NoSuchPath) -> str:
    """Why `path` names no config setting, with the allowed keys and a "did you mean"."""
    depth = missing.depth
    if missing.allowed is None:
        parent = param_name(".".join(path[:depth]))
        return f"config setting '{parent}' is a single value, it has no sub-key '{path[depth]}'"
    name = param_name(".".join(path))
    near = difflib.get_close_matches(name, _setting_names(), n=3, cutoff=0.7)
    where = param_name(".".join(path[:depth])) if depth > 1 else path[0] if depth else "<top>"
    hint = f" (did you mean {' or '.join(repr(n) for n in near)}?)" if near else ""
    return (
        f"unknown config path '{name}'{hint}; allowed keys under '{where}': "
        f"{list(missing.allowed)} (a path without a section is under 'pipeline')"
    )


@functools.cache
def _setting_names() -> list[str]:
    """Every config setting's name as a space key names it, for "did you mean"."""
    return [param_name(".".join(p)) for p in schema.all_paths(StudyFile) if p != ("space",)]


# ---------------------------------------------------------------- checks across parameters
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
