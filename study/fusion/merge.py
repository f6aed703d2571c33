"""Fusing state dicts: the method's arithmetic on every parameter, BN buffers by mode.

Parameters (everything that is not a BatchNorm buffer: conv and linear weights, BN affine) are
fused by a method of the registry (study/fusion/__init__.py), one tensor at a time, in float32,
and cast back to each tensor's dtype; BN buffers by a mode of BN_MODES. Non-floating tensors
(`num_batches_tracked`) are never averaged: they are copied from the first expert.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from study import fusion

__all__ = ["BN_BUFFER_SUFFIXES", "fuse", "is_bn_buffer", "recompute_bn_statistics"]

StateDict = dict[str, Tensor]
# torch's public batch-norm layers (their common base class is private)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
BN_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def is_bn_buffer(key: str) -> bool:
    """True for a BatchNorm running-statistics key such as ``stage1.0.bn1.running_var``."""
    return key.rsplit(".", 1)[-1] in BN_BUFFER_SUFFIXES


def fuse(experts: Sequence[StateDict], method: str, *, base: StateDict | None = None,
         bn: str = "copy_first", seed: int = 0, **arguments: Any) -> StateDict:
    """Fuse expert state dicts into a new state dict (no tensor aliases any input).

    `arguments` are the method's (fusion.get(method).arguments; a per-expert one as a list in
    expert order, see FusionMethod.plain_arguments); the ones it does not read are refused
    by name. `seed` seeds the one CPU generator a
    drawing method (DARE) takes its random numbers from, so a seed gives the same fused model
    on any device. `bn`:
    - ``copy_first``: the first expert's running statistics (the paper);
    - ``average``: the mean of the experts' running_mean / running_var, num_batches_tracked
      copied from the first expert;
    - ``recompute``: same as ``copy_first`` here; the CALLER must then re-estimate the
      statistics on training data with ``recompute_bn_statistics`` (this function sees no data).
    """
    m = fusion.get(method)
    if bn not in fusion.BN_MODES:
        raise ValueError(f"unknown BN mode {bn!r}; valid modes: {', '.join(fusion.BN_MODES)}")
    if not experts:
        raise ValueError("fuse needs at least one expert")
    unknown = sorted(set(arguments) - set(m.arguments))
    if unknown:
        raise ValueError(f"fusion method {method!r} takes no {unknown}; it reads "
                         f"{sorted(m.arguments) or 'no arguments'}")
    # a per-expert argument left out is None, the method's own default (task arithmetic and
    # DARE: 1/n each, the experts' mean; TIES: 1); any other takes its declared default
    args = {k: arguments.get(k, None if a.per_expert else a.field.default)
            for k, a in m.arguments.items()}
    problems = m.check(args, len(experts))
    if problems:
        raise ValueError(f"fusion method {method!r}: " + "; ".join(problems))
    if m.needs_base and base is None:
        raise ValueError(f"fusion method {method!r} needs base (the model the experts "
                         "started from)")
    _check_compatible(experts, base)

    ref = experts[0]
    generator = torch.Generator(device="cpu").manual_seed(seed)

    def draw(shape: tuple[int, ...]) -> Tensor:
        return torch.rand(shape, generator=generator)

    out: StateDict = {}
    for k, v in ref.items():
        if not is_bn_buffer(k) and v.is_floating_point():
            stacked = torch.stack([e[k].float() for e in experts])
            b = base[k].float() if m.needs_base and base is not None else None
            out[k] = m.fuse_tensor(stacked, b, args, draw).to(v.dtype)
        elif bn == "average" and is_bn_buffer(k) and v.is_floating_point():
            out[k] = torch.stack([e[k].float() for e in experts]).mean(0).to(v.dtype)
        else:  # BN buffers under copy_first/recompute, and every integer tensor
            out[k] = v.clone()
    return out


def recompute_bn_statistics(
    model: nn.Module, batches: Iterable[Tensor], device: torch.device | str
) -> None:
    """Reset every BN layer's running statistics and re-estimate them on ``batches``.

    Uses momentum=None (a cumulative average over the batches, so the order does not matter
    and every batch counts equally) with only the BN layers in train mode, under no_grad.
    Afterwards the model is in eval mode and each BN layer has its original momentum.
    A batch may be a tensor or a tuple/list whose first element is the input tensor.
    """
    bns = [m for m in model.modules() if isinstance(m, BATCH_NORMS)]
    momenta = [m.momentum for m in bns]
    model.eval()  # only BN should change behaviour; dropout and friends stay in eval
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    n = 0
    try:
        with torch.no_grad():
            for batch in batches:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                model(x.to(device))
                n += 1
    finally:
        for m, mom in zip(bns, momenta, strict=True):
            m.momentum = mom
        model.eval()
    if n == 0:
        raise ValueError("recompute_bn_statistics got no batches; the statistics are reset")


def _check_compatible(experts: Sequence[StateDict], base: StateDict | None) -> None:
    ref = experts[0]
    others = [(f"expert {i}", e) for i, e in enumerate(experts[1:], 1)]
    if base is not None:
        others.append(("base", base))
    for name, sd in others:
        for k in list(ref) + [k for k in sd if k not in ref]:
            if k not in sd:
                raise ValueError(f"key mismatch: {k!r} is in expert 0 but not in {name}")
            if k not in ref:
                raise ValueError(f"key mismatch: {k!r} is in {name} but not in expert 0")
            if sd[k].shape != ref[k].shape:
                raise ValueError(
                    f"shape mismatch at {k!r}: expert 0 has {tuple(ref[k].shape)}, "
                    f"{name} has {tuple(sd[k].shape)}"
                )
