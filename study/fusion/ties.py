"""TIES-merging (Yadav et al., 2023): trim, elect sign, disjoint mean, then `base + lambda *
merged` with ONE lambda (it scales the merged task vector, not each expert's).

Per tensor: keep each task vector's top-`density` fraction of entries by magnitude (at least
one; entries tied at the threshold are kept), elect each entry's sign as the sign of the sum of
the trimmed task vectors, and average only the trimmed entries that agree with it. An entry
whose trimmed sum is exactly 0 gets no update (the official code breaks that tie by the
majority sign instead; it only happens when nothing survives the trim or values cancel
exactly).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field

from study.fusion.method import LAMBDAS, Argument, Draw, FusionMethod

if TYPE_CHECKING:
    from torch import Tensor


def trim(taus: Tensor, density: float) -> Tensor:
    """Each row of `taus` (n_experts, *shape) with all but its top-`density` fraction of
    entries (by magnitude) zeroed."""
    numel = taus[0].numel()
    # round, not ceil: 0.7 * 10 is 7.000000000000001 in floating point
    n_keep = max(1, round(density * numel)) if numel else 0
    if n_keep >= numel:
        return taus
    magnitude = taus.abs()
    threshold = magnitude.flatten(1).kthvalue(numel - n_keep + 1, dim=1).values
    return taus * (magnitude >= threshold.view(-1, *[1] * (taus.dim() - 1)))


def fuse_tensor(experts: Tensor, base: Tensor | None, arguments: Mapping[str, Any],
                draw: Draw) -> Tensor:
    assert base is not None   # needs_base: merge.fuse refuses a missing base first
    lam = arguments["lambdas"]
    trimmed = trim(experts - base, arguments["density"])
    sign = trimmed.sum(0).sign()
    agree = (trimmed.sign() == sign) & (trimmed != 0)
    count = agree.sum(0).clamp(min=1)
    merged = (trimmed * agree).sum(0) / count
    return base + (1.0 if lam is None else float(lam)) * merged


def rules(arguments: Mapping[str, Any], n_experts: int) -> list[str]:
    lam = arguments["lambdas"]
    if lam is not None and not isinstance(lam, (int, float)):
        return ["fusion.method 'ties' takes one number as fusion.lambdas (a scalar: it scales "
                f"the merged task vector), got one per expert {lam}"]
    return []


METHOD = FusionMethod(
    "ties", fuse_tensor, needs_base=True, rules=rules,
    arguments={"density": Argument(float, Field(0.2, gt=0, le=1),
                                   "fraction of each task vector kept"),
               "lambdas": LAMBDAS})
