"""Values of search parameters: equality as a categorical sees it, and numbers on a step grid.

YAML reads `yes`, `on` and `true` as True, which Python holds equal to 1 (True == 1, and
hash(True) == hash(1)); Optuna's categorical tells them apart, and so does every comparison of
sampled values here. Step grids are computed in decimal: 0.1 + 2 * 0.05 is 0.2 in the grid,
where floats give 0.20000000000000004.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["STEP_TOL", "adjust_high", "as_number", "contains_value", "finest_step",
           "finite_number", "is_on_grid", "is_scalar", "on_grid", "same_value", "show_range",
           "snap", "step_wider_than_range", "value_key"]

STEP_TOL = 1e-8  # Optuna's own tolerance for "on the step grid"


# ---------------------------------------------------------------- equality, True != 1
def is_scalar(x: Any) -> bool:
    return x is None or isinstance(x, (bool, int, float, str))


def value_key(x: Any) -> tuple[bool, Any]:
    """A hashable key of a scalar under same_value: True and 1 differ, 1 and 1.0 do not."""
    return (isinstance(x, bool), x)


def same_value(a: Any, b: Any) -> bool:
    """a == b, element by element in lists and mappings, where True != 1 (YAML `yes` vs 1),
    as Optuna's categorical does."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return set(a) == set(b) and all(same_value(a[k], b[k]) for k in a)
    return value_key(a) == value_key(b)


def contains_value(items: Iterable[Any], x: Any) -> bool:
    """Whether some item is the same_value as x."""
    return any(same_value(x, i) for i in items)


# ---------------------------------------------------------------- numbers
def finite_number(v: Any) -> float:
    """v, if it is a finite int or float (not a bool); ValueError otherwise."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{v!r} is not a finite number")
    return v


def as_number(x: Any) -> float | None:
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


def show_range(s: Mapping[str, Any]) -> str:
    step = f" step {s['step']}" if s.get("step") else ""
    return f"[{s['low']}, {s['high']}]{step}"


# ---------------------------------------------------------------- step grids
def finest_step(low: float, high: float) -> float:
    """The finest step whose grid points are distinct floats: one float spacing at the larger
    end of the range (1.1e-16 to 2.2e-16 of it: 1.7e-18 at 0.01). A step this coarse keeps the
    grid under 2**54 points, within the 28 digits of the decimal arithmetic below
    (`step: 1e-320` on [1e-4, 1e-2] is 1e318 points: decimal.InvalidOperation)."""
    return math.ulp(max(abs(low), abs(high)))


def step_wider_than_range(step: float, low: float, high: float) -> bool:
    """high - low < step, in decimal: 0.3 - 0.1 is 0.19999999999999998 in binary."""
    d = decimal.Decimal
    return d(str(high)) - d(str(low)) < d(str(step))


def adjust_high(low: float, high: float, step: float, integer: bool) -> Any:
    """The last grid point at or below high, as Optuna adjusts it (without its warning)."""
    if integer:
        return low + (high - low) // step * step
    d_low, d_step = decimal.Decimal(str(low)), decimal.Decimal(str(step))
    n = (decimal.Decimal(str(high)) - d_low) // d_step
    return float(d_low + n * d_step)


def on_grid(low: float, step: float, k: int) -> float:
    """low + k*step without the float noise (0.15000000000000002) samplers leave."""
    return float(decimal.Decimal(str(low)) + k * decimal.Decimal(str(step)))


def is_on_grid(x: float, s: Mapping[str, Any]) -> bool:
    k = (x - s["low"]) / s["step"]
    return abs(k - round(k)) < STEP_TOL


def snap(x: float, s: Mapping[str, Any]) -> float:
    """x moved to the nearest point of the spec's step grid (x itself without a step)."""
    if s["step"] is None:
        return x
    return min(
        max(on_grid(s["low"], s["step"], round((x - s["low"]) / s["step"])), s["low"]), s["high"]
    )
