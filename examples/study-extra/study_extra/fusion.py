"""The experts' elementwise median: robust to one expert far from the others. With an even
number of experts it is the lower of the two middle values (torch.median). It reads no
argument and draws nothing, so its fused model's key is the method, the BN mode and experts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from study.fusion.method import Draw, FusionMethod

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["MEDIAN"]


def fuse_tensor(experts: Tensor, base: Tensor | None, arguments: Mapping[str, Any],
                draw: Draw) -> Tensor:
    return experts.median(dim=0).values


MEDIAN = FusionMethod("median", fuse_tensor)
