"""Walking a pydantic schema by its type annotations: what lies at a dotted path, which keys a
location allows, which settings hold numbers.

The study file's schema (study/config.py) is read in three places, all through here:

- config: which fields hold numbers, so that a YAML boolean there is refused (`takes_number`);
- studyfile: the keys allowed where a validation error points, for "allowed keys here" and
  "did you mean" (`allowed_keys`);
- space: the setting a search parameter's dotted path names, to check the parameter's values
  against it, and every path, for "did you mean" (`leaf_at`, `all_paths`).

Generic over any model (this module imports nothing from `study`), so config can use it too.
A dotted path goes through models and mappings only: list items have no name in a path
(`set_path` writes mapping keys), while a validation error's location also passes list indices.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel

__all__ = ["NoSuchPath", "all_paths", "allowed_keys", "annotation_members", "leaf_at",
           "mapping_types", "model_in", "model_inside", "takes_number"]

_UNIONS = (typing.Union, types.UnionType)
_COLLECTIONS = (list, tuple, set, frozenset)


def annotation_members(ann: Any) -> tuple[Any, ...]:
    """The alternatives a value of `ann` may be: the members of a union (`X | None` gives X
    and NoneType), else `ann` itself; `Annotated[X, ...]` stands for X."""
    if typing.get_origin(ann) is Annotated:
        return annotation_members(typing.get_args(ann)[0])
    if typing.get_origin(ann) in _UNIONS:
        return tuple(m for a in typing.get_args(ann) for m in annotation_members(a))
    return (ann,)


def model_in(ann: Any) -> type[BaseModel] | None:
    """The model a value of `ann` may be (`Section | None` gives Section), else None."""
    return next((m for m in annotation_members(ann)
                 if isinstance(m, type) and issubclass(m, BaseModel)), None)


def model_inside(ann: Any) -> type[BaseModel] | None:
    """The model a value of `ann` may be or hold at any depth (`list[Objective]` gives
    Objective), else None: what a validation error's location walks through."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    return next((m for a in typing.get_args(ann) if (m := model_inside(a)) is not None), None)


def mapping_types(ann: Any) -> tuple[Any, Any] | None:
    """(key annotation, value annotation) of the mapping a value of `ann` may be
    (`float | dict[str, float]` gives (str, float); a bare `dict` gives (Any, Any)), else None."""
    for m in annotation_members(ann):
        if m is dict:
            return Any, Any
        if typing.get_origin(m) is dict:
            key, value = typing.get_args(m)
            return key, value
    return None


@dataclass(frozen=True)
class NoSuchPath:
    """Why a dotted path does not exist: `path[depth]` is not a key at `path[:depth]`."""

    depth: int
    allowed: tuple[str, ...] | None   # the keys allowed there; None: path[:depth] is a value


def leaf_at(model: type[BaseModel], path: Sequence[str]) -> tuple[Any, NoSuchPath | None]:
    """The annotation of the setting at `path` in `model` (Any below an untyped mapping), or
    (None, why not)."""
    ann: Any = model
    for depth, part in enumerate(path):
        if ann is Any:
            return Any, None
        sub = model_in(ann)
        if sub is not None:
            if part not in sub.model_fields:
                return None, NoSuchPath(depth, tuple(sub.model_fields))
            ann = sub.model_fields[part].annotation
            continue
        kv = mapping_types(ann)
        if kv is None:
            return None, NoSuchPath(depth, None)
        key, ann = kv
        names = typing.get_args(key) if typing.get_origin(key) is Literal else ()
        if names and part not in names:
            return None, NoSuchPath(depth, tuple(str(n) for n in names))
    return ann, None


def all_paths(model: type[BaseModel]) -> Iterator[tuple[str, ...]]:
    """Every path through `model`'s fields and their sub-models, parents first (mapping keys,
    which the schema does not name, are not listed)."""
    for k, f in model.model_fields.items():
        yield (k,)
        sub = model_in(f.annotation)
        if sub is not None:
            yield from ((k, *rest) for rest in all_paths(sub))


def allowed_keys(model: type[BaseModel], loc: Sequence[str]) -> list[str]:
    """The keys allowed at the location `loc` (names only: list indices left out) of a
    validation error; [] where `loc` is not a model."""
    ann: Any = model
    for part in loc:
        field = getattr(ann, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = model_inside(field.annotation)
    return list(getattr(ann, "model_fields", {}))


def takes_number(ann: Any) -> bool:
    """Whether a setting of annotation `ann` holds numbers (int or float, alone, in a union, a
    list, a dict's values or a Literal of numbers) and no booleans: such a setting refuses
    True/False, which pydantic would otherwise read as 1/0."""
    leaves = list(_leaf_types(ann))
    return bool(leaves) and bool not in leaves and any(x in (int, float) for x in leaves)


def _leaf_types(ann: Any) -> Iterator[Any]:
    """The scalar types a value of `ann` is made of: through unions, collections, a dict's
    values, and a Literal's values."""
    origin = typing.get_origin(ann)
    if origin is Annotated:
        yield from _leaf_types(typing.get_args(ann)[0])
    elif origin is Literal:
        yield from (type(x) for x in typing.get_args(ann))
    elif origin in (*_UNIONS, *_COLLECTIONS):
        for x in typing.get_args(ann):
            yield from _leaf_types(x)
    elif origin is dict:
        yield from _leaf_types(typing.get_args(ann)[1])
    else:
        yield ann
