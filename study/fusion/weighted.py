"""`sum_i w_i theta_i` with weights on the simplex: one non-negative weight per expert,
summing to 1 (a searched `simplex` parameter draws them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field

from study.fusion.method import Argument, Draw, FusionMethod

if TYPE_CHECKING:
    from torch import Tensor

# a hand-written simplex (0.3333...) is accepted; sampled weights sum to 1 +- 1e-15
SIMPLEX_TOL = 1e-6


def fuse_tensor(experts: Tensor, base: Tensor | None, arguments: Mapping[str, Any],
                draw: Draw) -> Tensor:
    out = experts.new_zeros(experts.shape[1:])
    for w, expert in zip(arguments["weights"], experts, strict=True):
        out = out + float(w) * expert
    return out


def rules(arguments: Mapping[str, Any], n_experts: int) -> list[str]:
    w = arguments["weights"]
    if w is None:
        return ["fusion.method 'weighted' needs fusion.weights, one weight per fused expert"]
    if min(w) < 0 or abs(sum(w) - 1) > SIMPLEX_TOL:
        return [f"fusion.weights must be non-negative and sum to 1 (within {SIMPLEX_TOL}), "
                f"got {list(w)} (sum {sum(w)})"]
    return []


METHOD = FusionMethod(
    "weighted", fuse_tensor, rules=rules,
    arguments={"weights": Argument(dict[str, float] | None, Field(None),
                                   "one weight per fused expert, on the simplex",
                                   per_expert=True, noun="weight")})
