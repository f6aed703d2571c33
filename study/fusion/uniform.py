"""The paper's fusion: the plain mean of the experts' parameters (the base is not read)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from study.fusion.method import Draw, FusionMethod

if TYPE_CHECKING:
    from torch import Tensor


def fuse_tensor(experts: Tensor, base: Tensor | None, arguments: Mapping[str, Any],
                draw: Draw) -> Tensor:
    return experts.mean(0)


METHOD = FusionMethod("uniform", fuse_tensor)
