"""The contract of a search parameter (Param), and how a `space:` key names one.

A key is a dotted config path; one that does not start with a section of the study file is
under `pipeline`, as `--set` overrides are. A parameter's name is its key without the
`pipeline.` prefix (`distill.lr`); its path is the full path in the study tree.
"""

from __future__ import annotations

import difflib
import math
import types
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from optuna.distributions import BaseDistribution

from study.config import StudyFile
from study.space.column import JSON_TEXT, Column
from study.space.suggest import Suggester

__all__ = ["NO_VALUES", "SECTIONS", "Param", "full_path", "norm_number", "param_name",
           "parse_when"]

SECTIONS = tuple(StudyFile.model_fields)
NO_VALUES: Mapping[str, Any] = types.MappingProxyType({})


def full_path(key: str) -> tuple[str, ...]:
    """The path in the study tree a space key names: `distill.lr` is under `pipeline`."""
    parts = tuple(key.split("."))
    return parts if parts[0] in SECTIONS else ("pipeline", *parts)


def param_name(key: str) -> str:
    """The parameter's name: its key without a leading `pipeline.`."""
    path = full_path(key)
    return ".".join(path[1:] if path[0] == "pipeline" else path) or path[0]


@dataclass(frozen=True)
class Param(ABC):
    """One parameter of the space. A subclass per YAML `type:` (see kinds.KINDS).

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
        when = parse_when(where, spec.get("when"), errors)
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

    def raw_params(self, value: Any, values: Mapping[str, Any] = NO_VALUES) -> dict[str, Any]:
        """Raw Optuna suggestions that make `draw` return the (checked) `value`: what
        `study.enqueue_trial` takes to run a given configuration."""
        return {self.name: value}

    @abstractmethod
    def distributions(self) -> dict[str, BaseDistribution]:
        """Each raw name -> its Optuna distribution."""

    # ------------------------------------------------------------ values
    @abstractmethod
    def draw(self, trial: Suggester, values: Mapping[str, Any] = NO_VALUES) -> Any:
        """Suggest the raw parameters on `trial`; returns the canonical value."""

    @abstractmethod
    def check(self, value: Any, values: Mapping[str, Any] = NO_VALUES) -> Any:
        """A stored canonical value, validated (ValueError says why not); returns it
        canonical."""

    def can_take(self, value: Any) -> bool:
        """Whether a `when` testing this parameter for `value` can ever be true."""
        raise TypeError(f"a `when` cannot test a {self.kind} parameter")

    def possible_values(self) -> Any:
        """The values a `when` may test this parameter for, as shown in messages."""
        raise TypeError(f"a `when` cannot test a {self.kind} parameter")

    def list_items(self) -> list[Any]:
        """Every item of a list value this parameter can give its setting (a subset's `of`,
        the items of a categorical's list choices, a fixed list's items); [] when its values
        are not lists. The launcher asks which degradations a trial may pick this way."""
        return []

    # ------------------------------------------------------------ views
    @property
    def column(self) -> Column:
        """How its values are stored in the results column `param_<name>` (JSON text unless a
        kind says otherwise: lists and dicts)."""
        return JSON_TEXT

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

    def corners(self) -> Iterable[dict[str, Any]]:
        """Raw suggestions (raw name -> value) of the extreme values a rule across settings
        may refuse: each categorical choice, each end of a range, each subset item left out
        and alone. A continuous interior (a simplex) has none; random draws cover it. Built
        lazily: the caller takes as many as its budget allows."""
        return ()


# ---------------------------------------------------------------- options every kind reads
def norm_number(where: str, key: str, v: Any, integer: bool, errors: list[str]) -> Any:
    """Option `key` as an int or a finite float, or None after appending to `errors`."""
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


def parse_when(where: str, when: Any, errors: list[str]) -> dict[str, list[Any]] | None:
    """`when: {param: value | [values]}` as param name -> accepted values; None after
    appending to `errors`."""
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
        out[param_name(k)] = accepted
    return out
