"""The `space:` section of a study file: YAML -> Optuna distributions and back.

    parse.py   parse_space: the YAML section -> a checked SearchSpace
    kinds.py   the parameter kinds, one Param subclass per YAML `type:` (KINDS)
    param.py   the Param contract, and how a space key names a config path
    search.py  SearchSpace: sampling, replay, baseline, apply, views, probe samples
    suggest.py who answers suggest_* calls: an Optuna trial, probe draws, a replay
    column.py  how a parameter's values are stored in its results column
    values.py  equality where True != 1, numbers on a step grid

Keys are dotted config paths (`distill.lr`, `pipeline.seed`); a path that does not start with a
section of the study file is under `pipeline`, as `--set` overrides are. Only pipeline settings
can be searched. Each value is a mapping with a `type` (see KINDS) and an optional
`when: {param: value | [values]}`, or a plain scalar or list, which means `fixed`.

parse_space checks each parameter at its own path; SearchSpace.probe_samples gives the draws that
check the space as a whole (studyfile validates each as a complete trial): the corners of every
parameter, then seeded random draws.

To add a kind: a Param subclass in kinds.py, its entry in KINDS, and its tests in
tests/test_space.py (parsing errors, sampling, replay of an enqueued retry).
"""

from __future__ import annotations

from study.space.column import Column
from study.space.kinds import (
    KINDS,
    TYPES,
    CategoricalParam,
    FixedParam,
    FloatParam,
    IntParam,
    SimplexParam,
    SubsetParam,
    repair_subset,
    simplex_weights,
)
from study.space.param import Param
from study.space.parse import parse_space
from study.space.search import GRID_LIMIT, SearchSpace
from study.space.suggest import Suggester

__all__ = [
    "GRID_LIMIT",
    "KINDS",
    "TYPES",
    "CategoricalParam",
    "Column",
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
