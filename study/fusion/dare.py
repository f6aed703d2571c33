"""DARE (Yu et al., 2024): drop each task-vector entry with probability `drop_rate`, rescale
the survivors by 1 / (1 - drop_rate) so each entry is unbiased, then task arithmetic
`base + sum_i lambda_i tau_i'` (lambdas None: 1/n each).

The masks come from the merge's one CPU generator seeded with the pipeline seed, drawn in
parameter order then expert order, so a seed gives the same fused model on any device.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field

from study.fusion.method import LAMBDAS, Argument, Draw, FusionMethod, per_expert_scale

if TYPE_CHECKING:
    from torch import Tensor


def fuse_tensor(experts: Tensor, base: Tensor | None, arguments: Mapping[str, Any],
                draw: Draw) -> Tensor:
    assert base is not None   # needs_base: merge.fuse refuses a missing base first
    drop_rate = arguments["drop_rate"]
    scale = per_expert_scale(arguments["lambdas"], len(experts))
    keep_scale = 1.0 / (1.0 - drop_rate)
    out = base.clone()
    for li, e in zip(scale, experts, strict=True):
        keep = draw(tuple(base.shape)) >= drop_rate
        out += li * keep_scale * keep.to(base.device) * (e - base)
    return out


METHOD = FusionMethod(
    "dare", fuse_tensor, needs_base=True, uses_seed=True,
    arguments={"drop_rate": Argument(float, Field(0.9, ge=0, lt=1),
                                     "fraction of each task vector dropped"),
               "lambdas": LAMBDAS})
