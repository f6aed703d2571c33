"""Weight fusion of degradation experts, over state_dicts.

Parameters (everything that is not a BatchNorm buffer: conv and linear weights, BN affine) are
fused by a method from ``FUSION_METHODS``; BN buffers by a mode from ``BN_MODES``. The paper
setting is ``fuse(experts, "uniform", bn="copy_first")``: the plain mean of the experts, keeping
the first expert's (jpeg's) running statistics, which is why that "ModelSoups" model scores at
chance until the statistics are re-estimated (``recompute_bn_statistics``) or it is trained.

Every method receives the experts' floating-point parameters and the same keyword arguments;
each uses the ones it needs and ignores the rest. Arithmetic runs in float32 and the result is
cast back to each tensor's dtype. Non-floating tensors (``num_batches_tracked``) are never
averaged: they are copied from the first expert.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "BN_BUFFER_SUFFIXES",
    "BN_MODES",
    "FUSION_METHODS",
    "METHOD_ARGS",
    "NEEDS_BASE",
    "dare",
    "fuse",
    "get",
    "is_bn_buffer",
    "recompute_bn_statistics",
    "task_arithmetic",
    "ties",
    "uniform",
    "weighted",
]

StateDict = dict[str, Tensor]
# torch's public batch-norm layers (their common base class is private)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
BN_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
BN_MODES = ("copy_first", "average", "recompute")
_SIMPLEX_TOL = 1e-6


def is_bn_buffer(key: str) -> bool:
    """True for a BatchNorm running-statistics key such as ``stage1.0.bn1.running_var``."""
    return key.rsplit(".", 1)[-1] in BN_BUFFER_SUFFIXES


# --- methods: (expert params, base params or None, options) -> fused params, float32 ---------


def uniform(experts: list[StateDict], base: StateDict | None, **_: object) -> StateDict:
    """The paper: the plain mean of the experts' parameters (``base`` is ignored)."""
    return {k: torch.stack([e[k] for e in experts]).mean(0) for k in experts[0]}


def weighted(
    experts: list[StateDict],
    base: StateDict | None,
    *,
    weights: Sequence[float] | None = None,
    **_: object,
) -> StateDict:
    """``sum_i w_i theta_i`` with ``weights`` on the simplex (non-negative, summing to 1)."""
    if weights is None:
        raise ValueError("fusion method 'weighted' needs weights (one per expert, summing to 1)")
    w = [float(x) for x in weights]
    if len(w) != len(experts):
        raise ValueError(f"weighted fusion: {len(w)} weights for {len(experts)} experts")
    if any(x < 0 for x in w) or abs(sum(w) - 1.0) > _SIMPLEX_TOL:
        raise ValueError(
            f"weighted fusion: weights must be non-negative and sum to 1 "
            f"(within {_SIMPLEX_TOL}), got {w} (sum {sum(w)})"
        )
    return {
        k: sum((wi * e[k] for wi, e in zip(w, experts, strict=True)), torch.zeros_like(v))
        for k, v in experts[0].items()
    }


def task_arithmetic(
    experts: list[StateDict],
    base: StateDict | None,
    *,
    lambdas: Sequence[float] | float | None = None,
    **_: object,
) -> StateDict:
    """Ilharco et al. (2023): ``base + sum_i lambda_i (theta_i - base)``.

    ``lambdas`` is a scalar (shared) or one per expert; the default 1/len(experts) each makes
    the result the uniform mean of the experts.
    """
    base = _need_base(base, "task_arithmetic")
    lam = _per_expert(lambdas, len(experts), "task_arithmetic")
    return {
        k: base[k] + sum(li * (e[k] - base[k]) for li, e in zip(lam, experts, strict=True))
        for k in base
    }


def ties(
    experts: list[StateDict],
    base: StateDict | None,
    *,
    density: float = 0.2,
    lambdas: Sequence[float] | float | None = None,
    **_: object,
) -> StateDict:
    """TIES-merging (Yadav et al., 2023): trim, elect sign, disjoint mean.

    Per tensor: keep each task vector's top-``density`` fraction of entries by magnitude
    (at least one; ties at the threshold are kept), elect each entry's sign as the sign of the
    sum of the trimmed task vectors, average only the trimmed entries that agree with it, and
    return ``base + lambda * merged`` (``lambdas``: one scalar, default 1.0). An entry whose
    trimmed sum is exactly 0 gets no update (the official code breaks that tie by the majority
    sign instead; it only happens when nothing survives the trim or values cancel exactly).
    """
    base = _need_base(base, "ties")
    if not 0.0 < density <= 1.0:
        raise ValueError(f"ties: density must be in (0, 1], got {density}")
    if lambdas is None:
        lam = 1.0
    elif isinstance(lambdas, (int, float)):
        lam = float(lambdas)
    else:
        raise ValueError(f"ties takes one scalar lambda, got {lambdas!r}")
    out = {}
    for k in base:
        taus = torch.stack([e[k] - base[k] for e in experts])  # (n_experts, *shape)
        trimmed = torch.stack([_trim(t, density) for t in taus])
        sign = torch.sign(trimmed.sum(0))
        agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
        count = agree.sum(0).clamp(min=1)
        merged = (trimmed * agree).sum(0) / count
        out[k] = base[k] + lam * merged
    return out


def dare(
    experts: list[StateDict],
    base: StateDict | None,
    *,
    drop_rate: float = 0.9,
    lambdas: Sequence[float] | float | None = None,
    seed: int = 0,
    **_: object,
) -> StateDict:
    """DARE (Yu et al., 2024): drop each task-vector entry with prob ``drop_rate``, rescale
    survivors by ``1 / (1 - drop_rate)`` so each entry is unbiased, then task arithmetic
    ``base + sum_i lambda_i tau_i'`` (default lambdas 1/len(experts) each).

    The masks come from one CPU ``torch.Generator`` seeded with ``seed``, drawn in key order
    then expert order, so a seed gives the same fused model on any device.
    """
    base = _need_base(base, "dare")
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"dare: drop_rate must be in [0, 1), got {drop_rate}")
    lam = _per_expert(lambdas, len(experts), "dare")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    keep_scale = 1.0 / (1.0 - drop_rate)
    out = {}
    for k in base:
        acc = base[k].clone()
        for li, e in zip(lam, experts, strict=True):
            keep = torch.rand(base[k].shape, generator=gen) >= drop_rate
            acc += li * keep_scale * keep.to(base[k].device) * (e[k] - base[k])
        out[k] = acc
    return out


FUSION_METHODS: dict[str, Callable[..., StateDict]] = {
    "uniform": uniform,
    "weighted": weighted,
    "task_arithmetic": task_arithmetic,
    "ties": ties,
    "dare": dare,
}
# The keyword arguments of `fuse` each method reads; it ignores the others, so they are not
# part of the fused model's cache key (uniform with any lambdas is the same model).
METHOD_ARGS: dict[str, tuple[str, ...]] = {
    "uniform": (),
    "weighted": ("weights",),
    "task_arithmetic": ("lambdas",),
    "ties": ("density", "lambdas"),
    "dare": ("drop_rate", "lambdas", "seed"),
}
# Methods that fuse task vectors (expert - base): they need the base network too.
NEEDS_BASE = ("task_arithmetic", "ties", "dare")


def get(name: str) -> Callable[..., StateDict]:
    """The fusion method registered under ``name``; ValueError listing the valid names."""
    try:
        return FUSION_METHODS[name]
    except KeyError:
        raise ValueError(
            f"unknown fusion method {name!r}; valid methods: {', '.join(FUSION_METHODS)}"
        ) from None


# --- the entry point ---------------------------------------------------------------------------


def fuse(
    experts: list[StateDict],
    method: str,
    *,
    base: StateDict | None = None,
    weights: list[float] | None = None,
    lambdas: list[float] | float | None = None,
    density: float = 0.2,
    drop_rate: float = 0.9,
    seed: int = 0,
    bn: str = "copy_first",
) -> StateDict:
    """Fuse expert state_dicts into a new state_dict (no tensor aliases any input).

    ``method`` fuses the parameters (see ``FUSION_METHODS``; arguments a method does not use
    are ignored). ``bn`` handles the BN buffers:
    - ``copy_first``: the first expert's running statistics (the paper);
    - ``average``: the mean of the experts' running_mean / running_var, num_batches_tracked
      copied from the first expert;
    - ``recompute``: same as ``copy_first`` here; the CALLER must then re-estimate the
      statistics on training data with ``recompute_bn_statistics`` (this function sees no data).
    """
    fn = get(method)
    if bn not in BN_MODES:
        raise ValueError(f"unknown BN mode {bn!r}; valid modes: {', '.join(BN_MODES)}")
    if not experts:
        raise ValueError("fuse needs at least one expert")
    _check_compatible(experts, base)

    ref = experts[0]
    param_keys = [k for k, v in ref.items() if not is_bn_buffer(k) and v.is_floating_point()]
    as_f32 = [{k: e[k].float() for k in param_keys} for e in experts]
    base_f32 = None if base is None else {k: base[k].float() for k in param_keys}
    fused = fn(
        as_f32,
        base_f32,
        weights=weights,
        lambdas=lambdas,
        density=density,
        drop_rate=drop_rate,
        seed=seed,
    )

    out: StateDict = {}
    for k, v in ref.items():
        if k in fused:
            out[k] = fused[k].to(v.dtype)
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


# --- helpers -----------------------------------------------------------------------------------


def _check_compatible(experts: list[StateDict], base: StateDict | None) -> None:
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


def _need_base(base: StateDict | None, method: str) -> StateDict:
    if base is None:
        raise ValueError(
            f"fusion method {method!r} needs base (the model the experts started from)"
        )
    return base


def _per_expert(lambdas: Sequence[float] | float | None, n: int, method: str) -> list[float]:
    if lambdas is None:
        return [1.0 / n] * n
    if isinstance(lambdas, (int, float)):
        return [float(lambdas)] * n
    lam = [float(x) for x in lambdas]
    if len(lam) != n:
        raise ValueError(f"{method}: {len(lam)} lambdas for {n} experts")
    return lam


def _trim(tau: Tensor, density: float) -> Tensor:
    """``tau`` with all but its top-``density`` fraction of entries (by magnitude) zeroed."""
    # round, not ceil: 0.7 * 10 is 7.000000000000001 in floating point
    n_keep = max(1, round(density * tau.numel())) if tau.numel() else 0
    if n_keep >= tau.numel():
        return tau
    mag = tau.abs().flatten()
    threshold = mag.kthvalue(mag.numel() - n_keep + 1).values
    return tau * (tau.abs() >= threshold)
