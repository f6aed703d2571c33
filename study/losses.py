"""Training losses: cross-entropy, the paper's feature-cosine loss, classic logit distillation,
and the per-stage objectives built from them (what a training step minimises on a Batch).

All reduce to a scalar and compute in float32 (safe under bf16 autocast). Teacher inputs are
detached here, so a caller cannot leak gradient into a frozen expert by accident. The stage
objectives are used by the pipeline and timed by `study bench`: one definition for both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from study.augment import Batch

__all__ = ["Objective", "clean_cross_entropy", "cosine_feature_loss", "cross_entropy",
           "degraded_cross_entropy", "distill_objective", "expert_objective",
           "logit_distillation"]

# What one training step minimises: the model being trained and a batch -> scalar loss.
Objective = Callable[[nn.Module, Batch], Tensor]


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over the batch."""
    return F.cross_entropy(logits.float(), labels)


def cosine_feature_loss(
    student: dict[str, Tensor], teacher: dict[str, Tensor], layer_weights: dict[str, float]
) -> Tensor:
    """Sum over layers l of ``w_l * mean_batch(1 - cos(flatten(student_l), flatten(teacher_l)))``.

    Features are flattened per sample (C*H*W), as the reference code does for its stage-3
    feature (64*8*8 = 4096 values on CIFAR). The paper setting is ``{"stage3": 1.0}``.
    Layers with weight 0 are skipped (no compute, no graph).
    """
    if not layer_weights:
        raise ValueError("layer_weights is empty: name at least one feature layer")
    missing = [k for k in layer_weights if k not in student or k not in teacher]
    if missing:
        raise ValueError(
            f"feature layer(s) {missing} not in both feature dicts; "
            f"student has {sorted(student)}, teacher has {sorted(teacher)}"
        )
    total = next(iter(student.values())).new_zeros((), dtype=torch.float32)
    for layer, weight in layer_weights.items():
        if weight == 0:
            continue
        s = student[layer].float().flatten(1)
        t = teacher[layer].detach().float().flatten(1)
        total = total + weight * (1.0 - F.cosine_similarity(s, t, dim=1)).mean()
    return total


def logit_distillation(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    temperature: float,
    alpha: float,
) -> Tensor:
    """Hinton et al. (2015): ``alpha * T^2 * KL(p_teacher^T || p_student^T) + (1-alpha) * CE``.

    KL is summed over classes and averaged over the batch ("batchmean", the true KL per sample).
    The T^2 factor keeps the soft-target gradient scale independent of T.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    s = student_logits.float()
    ce = F.cross_entropy(s, labels)
    if alpha == 0:
        return ce
    log_p_student = F.log_softmax(s / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return alpha * temperature**2 * kl + (1.0 - alpha) * ce


# ---------------------------------------------------------------- stage objectives
def clean_cross_entropy(model: nn.Module, b: Batch) -> Tensor:
    """The base stage: CE on the clean images."""
    return cross_entropy(model(b.clean)[0], b.labels)


def degraded_cross_entropy(model: nn.Module, b: Batch) -> Tensor:
    """Scratch, Vanilla FT, Fusing: CE on the degraded images."""
    return cross_entropy(model(b.degraded)[0], b.labels)


def expert_objective(teacher: nn.Module, ce_weight: float, feature_weight: float,
                     feature_layers: Mapping[str, float]) -> Objective:
    """An expert (ILIAC): the student sees the degraded image, the frozen teacher (the base)
    the clean one; ce_weight * CE + feature_weight * (1 - cos) on the chosen layers."""
    teacher.eval()
    layers = dict(feature_layers)

    def objective(model: nn.Module, b: Batch) -> Tensor:
        logits, feats = model(b.degraded)
        with torch.no_grad():
            _, t_feats = teacher(b.clean)
        return (ce_weight * cross_entropy(logits, b.labels)
                + feature_weight * cosine_feature_loss(feats, t_feats, layers))
    return objective


def distill_objective(teachers: Mapping[str, nn.Module], *, loss: str, ce_weight: float,
                      feature_weight: float, feature_layers: Mapping[str, float],
                      kd_weight: float, temperature: float, alpha: float,
                      teacher_input: str) -> Objective:
    """FusionDistill: expert d teaches chunk d of the batch (its 128 images of a 512-image step).

    loss "feature" (the paper): ce_weight * CE(all) + sum_d feature_weight * (1 - cos) on chunk
    d; "logit": kd_weight * KD(T, alpha) against the experts' logits, chunk by chunk; "both".
    teacher_input "clean" (the paper) or "degraded".
    """
    for t in teachers.values():
        t.eval()
    layers = dict(feature_layers)
    use_feature, use_logit = loss in ("feature", "both"), loss in ("logit", "both")

    def objective(model: nn.Module, b: Batch) -> Tensor:
        logits, feats = model(b.degraded)
        t_input = b.clean if teacher_input == "clean" else b.degraded
        total = logits.new_zeros((), dtype=torch.float32)
        t_logits = []
        for d, rows in b.chunks:
            with torch.no_grad():
                tl, tf = teachers[d](t_input[rows])
            t_logits.append(tl)
            if use_feature:
                total = total + feature_weight * cosine_feature_loss(
                    {k: v[rows] for k, v in feats.items()}, tf, layers)
        if use_feature:
            total = total + ce_weight * cross_entropy(logits, b.labels)
        if use_logit:
            total = total + kd_weight * logit_distillation(
                logits, torch.cat(t_logits), b.labels, temperature, alpha)
        return total
    return objective
