"""How a parameter's values are stored in its results column, `param_<name>`: in their own type,
so that `df["param_fusion.method"] == "ties"` and `df["param_distill.lr"] < 1e-3` filter as
they read. Only lists and dicts (a subset's items, a simplex's weights, a fixed list) are JSON
text, and a categorical whose choices mix types (1 and "a" could not share a typed column)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["JSON_TEXT", "Column", "column_for"]


@dataclass(frozen=True)
class Column:
    dtype: str            # the pandas dtype of the column
    json: bool = False    # values stored as JSON text

    def cell(self, value: Any) -> Any:
        """What the column holds for a parameter value (None: inactive in this trial)."""
        if value is None:
            return None
        return json.dumps(value, sort_keys=True) if self.json else value

    def value(self, cell: Any) -> Any:
        """The parameter value a present cell holds (the caller maps missing cells, NaN or
        pandas.NA, to None first)."""
        return json.loads(cell) if self.json and isinstance(cell, str) else cell


JSON_TEXT = Column("string", json=True)


def column_for(values: Iterable[Any]) -> Column:
    """The column for a parameter that takes these scalar values (None means inactive)."""
    present = [v for v in values if v is not None]
    if not present or any(isinstance(v, (list, dict)) for v in present):
        return JSON_TEXT
    if all(isinstance(v, str) for v in present):
        return Column("string")
    if all(isinstance(v, bool) for v in present):
        return Column("boolean")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return Column("Int64")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return Column("Float64")
    return JSON_TEXT   # mixed types: one typed column cannot hold them
