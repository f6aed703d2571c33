"""Task arithmetic (Ilharco et al., 2023): `base + sum_i lambda_i (theta_i - base)`; lambdas
None means 1/n each, which makes the result the experts' mean."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from study.fusion.method import LAMBDAS, Draw, FusionMethod, per_expert_scale

if TYPE_CHECKING:
    from torch import Tensor


def fuse_tensor(experts: Tensor, base: Tensor | None, arguments: Mapping[str, Any],
                draw: Draw) -> Tensor:
    assert base is not None   # needs_base: merge.fuse refuses a missing base first
    scale = per_expert_scale(arguments["lambdas"], len(experts))
    return base + sum(li * (e - base) for li, e in zip(scale, experts, strict=True))


METHOD = FusionMethod("task_arithmetic", fuse_tensor, arguments={"lambdas": LAMBDAS},
                      needs_base=True)
