"""Golden numbers where a bug would silently change every result: the training objectives on
tensors small enough to work out by hand, and the parameters after a few optimiser steps.

The oracles are independent of the code under test: the objectives' expected values are
written out from docs/method.md's formulas (cross-entropy, 1 - cos, Hinton's KD) with Python's
`math` on lists, on inputs chosen so that every cosine is a simple number (1, 0, -1, 1/sqrt 2);
the optimisers' expected parameters come from their update rules written out in plain floats.
Every weight pair is unequal and every chunk of a distillation step meets a different teacher,
so swapping two weights, two inputs or two teachers changes the number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pytest
import torch
from torch import nn

from study import losses, train
from study.augment import Batch

Rows = list[list[float]]


# ---------------------------------------------------------------- the oracle's arithmetic
def _matmul(x: Rows, a: Rows) -> Rows:
    return [[sum(xi[k] * a[k][j] for k in range(len(a))) for j in range(len(a[0]))] for xi in x]


def _log_softmax(z: Sequence[float]) -> list[float]:
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return [v - lse for v in z]


def _ce(logits: Rows, labels: Sequence[int]) -> float:
    """Mean over rows of -log softmax(row)[label]."""
    return sum(-_log_softmax(z)[y] for z, y in zip(logits, labels, strict=True)) / len(labels)


def _cos(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _one_minus_cos(student: Rows, teacher: Rows) -> float:
    """Mean over rows of 1 - cos(student row, teacher row)."""
    return sum(1 - _cos(s, t) for s, t in zip(student, teacher, strict=True)) / len(student)


def _kd(student: Rows, teacher: Rows, labels: Sequence[int], temperature: float,
        alpha: float) -> float:
    """alpha * T^2 * mean_rows KL(softmax(teacher/T) || softmax(student/T)) + (1-alpha) * CE."""
    kl = 0.0
    for s, t in zip(student, teacher, strict=True):
        log_q = _log_softmax([v / temperature for v in s])
        log_p = _log_softmax([v / temperature for v in t])
        kl += sum(math.exp(lp) * (lp - lq) for lp, lq in zip(log_p, log_q, strict=True))
    kl /= len(student)
    return alpha * temperature**2 * kl + (1 - alpha) * _ce(student, labels)


# ---------------------------------------------------------------- the networks
class Probe(nn.Module):
    """A network of the models' interface: feature = x @ A (2-d, the layer "stage3"), logits =
    feature @ H (3 classes)."""

    def __init__(self, a: Rows, h: Rows):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float32))
        self.h = nn.Parameter(torch.tensor(h, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        f = x @ self.a
        return f @ self.h, {"stage3": f}


IDENTITY = [[1.0, 0.0], [0.0, 1.0]]
STUDENT_HEAD = [[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]]


def _batch(clean: Rows, degraded: Rows, labels: list[int],
           chunks: tuple[tuple[str, slice], ...]) -> Batch:
    return Batch(torch.tensor(clean), torch.tensor(degraded), torch.tensor(labels), chunks)


# ---------------------------------------------------------------- the stage objectives
# Two images, three classes, 2-d features. The student sees the degraded image and the frozen
# teacher the clean one: cos([1, 0], [1, 1]) = 1/sqrt 2 and cos([0, 2], [2, 0]) = 0.
EXPERT_CLEAN = [[1.0, 1.0], [2.0, 0.0]]
EXPERT_DEGRADED = [[1.0, 0.0], [0.0, 2.0]]
EXPERT_LABELS = [0, 2]


def test_expert_objective_is_the_weighted_sum_of_ce_on_degraded_and_cosine_to_clean() -> None:
    student = Probe(IDENTITY, STUDENT_HEAD)
    teacher = Probe(IDENTITY, [[5.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    b = _batch(EXPERT_CLEAN, EXPERT_DEGRADED, EXPERT_LABELS, (("blur", slice(0, 2)),))
    ce_weight, feature_weight = 0.3, 2.0
    objective = losses.expert_objective(teacher, ce_weight, feature_weight, {"stage3": 1.0})
    got = objective(student, b)

    # student logits [1, 0, -1] (label 0) and [0, 2, 0] (label 2), by hand
    ce = ((math.log(math.e + 1 + 1 / math.e) - 1) + math.log(2 + math.e**2)) / 2
    cosine = ((1 - 1 / math.sqrt(2)) + (1 - 0)) / 2
    assert _ce(_matmul(EXPERT_DEGRADED, STUDENT_HEAD), EXPERT_LABELS) == pytest.approx(ce)
    assert cosine == pytest.approx(0.6464466094067263)
    assert got.item() == pytest.approx(ce_weight * ce + feature_weight * cosine, rel=1e-6)
    assert got.item() == pytest.approx(1.6899658284, rel=1e-6)   # 0.3 * 1.32358 + 2 * 0.64645
    # the weights swapped, or the student fed the clean image, give other numbers
    assert got.item() != pytest.approx(feature_weight * ce + ce_weight * cosine, rel=1e-3)
    assert got.item() != pytest.approx(
        ce_weight * _ce(_matmul(EXPERT_CLEAN, STUDENT_HEAD), EXPERT_LABELS), rel=1e-3)
    got.backward()
    assert student.a.grad is not None and teacher.a.grad is None   # the teacher is frozen


def test_base_and_degraded_objectives_read_their_own_copy() -> None:
    student = Probe(IDENTITY, STUDENT_HEAD)
    b = _batch(EXPERT_CLEAN, EXPERT_DEGRADED, EXPERT_LABELS, (("clean", slice(0, 2)),))
    clean = _ce(_matmul(EXPERT_CLEAN, STUDENT_HEAD), EXPERT_LABELS)
    degraded = _ce(_matmul(EXPERT_DEGRADED, STUDENT_HEAD), EXPERT_LABELS)
    assert abs(clean - degraded) > 0.1
    assert losses.clean_cross_entropy(student, b).item() == pytest.approx(clean, rel=1e-6)
    assert losses.degraded_cross_entropy(student, b).item() == pytest.approx(degraded, rel=1e-6)


# A 4-image FusionDistill step: chunk jpeg (rows 0-1) and chunk blur (rows 2-3). The jpeg expert
# passes its input through (feature = x), the blur expert mirrors it (feature = x @ M, [a, b] ->
# [a, -b]), so each chunk's cosine depends on which expert teaches it and on what that expert
# sees; the data make the four cases (own or swapped experts, clean or degraded input) differ.
DISTILL_CLEAN = [[1.0, 1.0], [0.0, 1.0], [1.0, 1.0], [0.0, 1.0]]
DISTILL_DEGRADED = [[1.0, 0.0], [1.0, 1.0], [0.0, 2.0], [1.0, 1.0]]
DISTILL_LABELS = [0, 2, 1, 0]
CHUNKS = (("jpeg", slice(0, 2)), ("blur", slice(2, 4)))
MIRROR = [[1.0, 0.0], [0.0, -1.0]]
TEACHER_HEADS = {"jpeg": [[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
                 "blur": [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]}
TEACHER_MAPS = {"jpeg": IDENTITY, "blur": MIRROR}
# per chunk, mean(1 - cos(student feature, its expert's feature)), worked out by hand (the
# student's feature is its degraded input):
#   clean input:    jpeg  cos([1,0],[1,1]) = cos([1,1],[0,1]) = 1/sqrt2
#                   blur  cos([0,2],[1,-1]) = cos([1,1],[0,-1]) = -1/sqrt2
#   degraded input: jpeg  the expert's feature is the student's: cos 1, 1
#                   blur  cos([0,2],[0,-2]) = -1, cos([1,1],[1,-1]) = 0
BY_HAND = {("clean", "jpeg"): 1 - 1 / math.sqrt(2),
           ("clean", "blur"): 1 + 1 / math.sqrt(2),
           ("degraded", "jpeg"): 0.0,
           ("degraded", "blur"): (2 + 1) / 2}


def _teachers() -> dict[str, nn.Module]:
    return {d: Probe(TEACHER_MAPS[d], TEACHER_HEADS[d]) for d in ("jpeg", "blur")}


def _distill(loss: str, teacher_input: str, *, ce_weight: float = 0.25,
             feature_weight: float = 1.5, kd_weight: float = 0.5, temperature: float = 2.0,
             alpha: float = 0.7) -> float:
    objective = losses.distill_objective(
        _teachers(), loss=loss, ce_weight=ce_weight, feature_weight=feature_weight,
        feature_layers={"stage3": 1.0}, kd_weight=kd_weight, temperature=temperature,
        alpha=alpha, teacher_input=teacher_input)
    b = _batch(DISTILL_CLEAN, DISTILL_DEGRADED, DISTILL_LABELS, CHUNKS)
    return objective(Probe(IDENTITY, STUDENT_HEAD), b).item()


def _oracle_cosines(teacher_input: str) -> dict[str, float]:
    """The per-chunk cosine terms from the oracle's own arithmetic (checked against BY_HAND)."""
    seen = DISTILL_CLEAN if teacher_input == "clean" else DISTILL_DEGRADED
    out = {}
    for d, rows in CHUNKS:
        student = DISTILL_DEGRADED[rows]          # the student's feature is its input
        teacher = _matmul(seen[rows], TEACHER_MAPS[d])
        out[d] = _one_minus_cos(student, teacher)
    return out


def _oracle_teacher_logits(teacher_input: str) -> Rows:
    seen = DISTILL_CLEAN if teacher_input == "clean" else DISTILL_DEGRADED
    out: Rows = []
    for d, rows in CHUNKS:
        out += _matmul(_matmul(seen[rows], TEACHER_MAPS[d]), TEACHER_HEADS[d])
    return out


@pytest.mark.parametrize("teacher_input", ["clean", "degraded"])
def test_distill_feature_loss_matches_each_chunk_against_its_own_expert(
        teacher_input: str) -> None:
    cosines = _oracle_cosines(teacher_input)
    for d in ("jpeg", "blur"):
        assert cosines[d] == pytest.approx(BY_HAND[teacher_input, d], abs=1e-12)
    ce = _ce(_matmul(DISTILL_DEGRADED, STUDENT_HEAD), DISTILL_LABELS)   # over all 4 images
    expected = 0.25 * ce + 1.5 * (cosines["jpeg"] + cosines["blur"])
    assert _distill("feature", teacher_input) == pytest.approx(expected, rel=1e-6)


def test_distill_feature_loss_golden_numbers_tell_the_inputs_and_weights_apart() -> None:
    ce = _ce(_matmul(DISTILL_DEGRADED, STUDENT_HEAD), DISTILL_LABELS)
    clean = BY_HAND["clean", "jpeg"] + BY_HAND["clean", "blur"]      # 2, whatever the sqrt2
    degraded = BY_HAND["degraded", "jpeg"] + BY_HAND["degraded", "blur"]
    assert clean == pytest.approx(2.0) and degraded == pytest.approx(1.5)
    paper = _distill("feature", "clean")
    assert paper == pytest.approx(0.25 * ce + 1.5 * 2.0, rel=1e-6)
    assert paper == pytest.approx(3.2602748801, rel=1e-6)   # 0.25 * 1.04110 + 3
    assert _distill("feature", "degraded") == pytest.approx(0.25 * ce + 1.5 * 1.5, rel=1e-6)
    # ce_weight and feature_weight swapped: another number
    assert paper != pytest.approx(1.5 * ce + 0.25 * 2.0, rel=1e-3)
    # each chunk taught by the other chunk's expert (2 - 1/sqrt2 with clean inputs, 0.5 with
    # degraded ones), or the student's rows of the first chunk compared with every expert:
    # other numbers
    for seen, own in (("clean", 2.0), ("degraded", 1.5)):
        x = DISTILL_CLEAN if seen == "clean" else DISTILL_DEGRADED
        swapped = (_one_minus_cos(DISTILL_DEGRADED[0:2], _matmul(x[0:2], MIRROR))
                   + _one_minus_cos(DISTILL_DEGRADED[2:4], x[2:4]))
        first_rows = (_one_minus_cos(DISTILL_DEGRADED[0:2], x[0:2])
                      + _one_minus_cos(DISTILL_DEGRADED[0:2], _matmul(x[2:4], MIRROR)))
        assert abs(swapped - own) > 0.25 and abs(first_rows - own) > 0.25, seen


@pytest.mark.parametrize("teacher_input", ["clean", "degraded"])
def test_distill_logit_loss_is_hinton_kd_against_each_chunks_expert(teacher_input: str) -> None:
    student = _matmul(DISTILL_DEGRADED, STUDENT_HEAD)
    teacher = _oracle_teacher_logits(teacher_input)
    expected = 0.5 * _kd(student, teacher, DISTILL_LABELS, temperature=2.0, alpha=0.7)
    got = _distill("logit", teacher_input)
    assert got == pytest.approx(expected, rel=1e-5)
    # the ce and feature weights do not enter a logit loss
    assert _distill("logit", teacher_input, ce_weight=9.0, feature_weight=9.0) == pytest.approx(
        got, rel=1e-6)


def test_distill_logit_loss_golden_numbers() -> None:
    # Expected by the oracle above, written out once: a change in T, alpha, kd_weight or in
    # which logits the experts see moves these.
    clean, degraded = _distill("logit", "clean"), _distill("logit", "degraded")
    assert clean == pytest.approx(
        0.5 * _kd(_matmul(DISTILL_DEGRADED, STUDENT_HEAD), _oracle_teacher_logits("clean"),
                  DISTILL_LABELS, 2.0, 0.7), rel=1e-5)
    assert clean == pytest.approx(0.3318296671, rel=1e-5)
    assert degraded == pytest.approx(0.3075824976, rel=1e-5)
    # T = 1 instead of 2, or alpha and 1 - alpha swapped, is another number
    student = _matmul(DISTILL_DEGRADED, STUDENT_HEAD)
    teacher = _oracle_teacher_logits("clean")
    assert clean != pytest.approx(0.5 * _kd(student, teacher, DISTILL_LABELS, 1.0, 0.7), rel=1e-3)
    assert clean != pytest.approx(0.5 * _kd(student, teacher, DISTILL_LABELS, 2.0, 0.3), rel=1e-3)


def test_distill_both_is_the_sum_of_feature_and_logit_losses() -> None:
    for teacher_input in ("clean", "degraded"):
        cosines = _oracle_cosines(teacher_input)
        student = _matmul(DISTILL_DEGRADED, STUDENT_HEAD)
        expected = (0.25 * _ce(student, DISTILL_LABELS)
                    + 1.5 * (cosines["jpeg"] + cosines["blur"])
                    + 0.5 * _kd(student, _oracle_teacher_logits(teacher_input),
                                DISTILL_LABELS, 2.0, 0.7))
        assert _distill("both", teacher_input) == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- optimisers
# loss(p) = sum(0.5 * A * p^2 + G * p): gradient A * p + G, different in each coordinate, so a
# sign-based step (Adam) and a gradient step (SGD, RAdam's first steps) move p differently.
A, G = (1.0, 2.0), (0.5, -3.0)
P0 = (1.0, -2.0)
LR, MOMENTUM, WD = 0.1, 0.9, 0.05
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


def _grad(p: Sequence[float]) -> list[float]:
    return [a * x + g for a, x, g in zip(A, p, G, strict=True)]


def _sgd(steps: int) -> list[float]:
    """torch's SGD (dampening 0, no Nesterov): d = grad + wd p; buf = momentum buf + d."""
    p, buf = list(P0), None
    for _ in range(steps):
        d = [g + WD * x for g, x in zip(_grad(p), p, strict=True)]
        buf = d if buf is None else [MOMENTUM * b + di for b, di in zip(buf, d, strict=True)]
        p = [x - LR * b for x, b in zip(p, buf, strict=True)]
    return p


def _adam(steps: int, decoupled: bool) -> list[float]:
    """Adam (Kingma and Ba): coupled L2 (grad + wd p), or AdamW's decoupled decay
    (p <- p (1 - lr wd) before the step, the gradient left as it is)."""
    p, m, v = list(P0), [0.0, 0.0], [0.0, 0.0]
    for t in range(1, steps + 1):
        g = _grad(p)
        if decoupled:
            p = [x * (1 - LR * WD) for x in p]
        else:
            g = [gi + WD * x for gi, x in zip(g, p, strict=True)]
        m = [BETA1 * mi + (1 - BETA1) * gi for mi, gi in zip(m, g, strict=True)]
        v = [BETA2 * vi + (1 - BETA2) * gi * gi for vi, gi in zip(v, g, strict=True)]
        m_hat = [mi / (1 - BETA1**t) for mi in m]
        v_hat = [vi / (1 - BETA2**t) for vi in v]
        p = [x - LR * mh / (math.sqrt(vh) + EPS) for x, mh, vh in zip(p, m_hat, v_hat,
                                                                      strict=True)]
    return p


def _radam(steps: int) -> list[float]:
    """RAdam (Liu et al., 2020), coupled L2: while the variance's length rho_t <= 5 the step
    is the bias-corrected momentum, afterwards the rectified adaptive step."""
    p, m, v = list(P0), [0.0, 0.0], [0.0, 0.0]
    rho_inf = 2 / (1 - BETA2) - 1
    for t in range(1, steps + 1):
        g = [gi + WD * x for gi, x in zip(_grad(p), p, strict=True)]
        m = [BETA1 * mi + (1 - BETA1) * gi for mi, gi in zip(m, g, strict=True)]
        v = [BETA2 * vi + (1 - BETA2) * gi * gi for vi, gi in zip(v, g, strict=True)]
        m_hat = [mi / (1 - BETA1**t) for mi in m]
        rho = rho_inf - 2 * t * BETA2**t / (1 - BETA2**t)
        if rho > 5:
            r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            p = [x - LR * mh * r * math.sqrt(1 - BETA2**t) / (math.sqrt(vi) + EPS)
                 for x, mh, vi in zip(p, m_hat, v, strict=True)]
        else:
            p = [x - LR * mh for x, mh in zip(p, m_hat, strict=True)]
    return p


def _run(name: str, steps: int) -> tuple[torch.optim.Optimizer, list[float]]:
    torch.manual_seed(0)   # nothing here draws; seeded so that a change that does stays fixed
    p = nn.Parameter(torch.tensor(P0, dtype=torch.float64))
    a, g = torch.tensor(A, dtype=torch.float64), torch.tensor(G, dtype=torch.float64)
    opt = train.make_optimizer([p], name, LR, MOMENTUM, WD)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * a * p * p + g * p).sum().backward()
        opt.step()
    return opt, p.detach().tolist()


ORACLES: dict[str, Callable[[int], list[float]]] = {
    "sgd": _sgd, "radam": _radam, "adam": lambda n: _adam(n, decoupled=False),
    "adamw": lambda n: _adam(n, decoupled=True)}
# the class each name builds and the settings it must carry (docs/method.md section 5: RAdam
# with the coupled L2 form; AdamW decoupled)
SETTINGS: dict[str, tuple[type, dict[str, object]]] = {
    "sgd": (torch.optim.SGD, {"lr": LR, "momentum": MOMENTUM, "weight_decay": WD,
                              "dampening": 0, "nesterov": False}),
    "radam": (torch.optim.RAdam, {"lr": LR, "weight_decay": WD, "betas": (BETA1, BETA2),
                                  "eps": EPS, "decoupled_weight_decay": False}),
    "adam": (torch.optim.Adam, {"lr": LR, "weight_decay": WD, "betas": (BETA1, BETA2),
                                "eps": EPS, "amsgrad": False, "decoupled_weight_decay": False}),
    "adamw": (torch.optim.AdamW, {"lr": LR, "weight_decay": WD, "betas": (BETA1, BETA2),
                                  "eps": EPS, "amsgrad": False,
                                  "decoupled_weight_decay": True}),
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_each_optimizer_name_builds_its_class_with_its_settings(name: str) -> None:
    cls, settings = SETTINGS[name]
    opt = train.make_optimizer([nn.Parameter(torch.zeros(2))], name, LR, MOMENTUM, WD)
    assert type(opt) is cls      # exactly: AdamW is a subclass of Adam
    group = opt.param_groups[0]
    assert {k: group[k] for k in settings} == settings


@pytest.mark.parametrize("name", sorted(ORACLES))
@pytest.mark.parametrize("steps", [1, 2])
def test_parameters_after_optimizer_steps_match_the_update_rule(name: str, steps: int) -> None:
    _, got = _run(name, steps)
    assert got == pytest.approx(ORACLES[name](steps), rel=1e-12, abs=1e-12)


def test_the_four_optimizers_move_the_parameters_apart() -> None:
    """Two steps from the same point: no two names give the same parameters, so a name wired
    to another optimiser fails the test above. Golden values, from the update rules."""
    golden = {"sgd": [0.566775, -0.08655],
              "radam": [0.6985657894736842, -0.6566052631578947],
              "adam": [0.8002440567749345, -1.8000870818374657],
              "adamw": [0.7907796690139459, -1.780645960975411]}
    for name, want in golden.items():
        assert _run(name, 2)[1] == pytest.approx(want, rel=1e-9), name
    points = [tuple(round(x, 6) for x in _run(n, 2)[1]) for n in golden]
    assert len(set(points)) == 4


def test_radam_rectified_steps_match_the_update_rule() -> None:
    """From step 6 on (rho_t > 5 for beta2 = 0.999) RAdam takes its rectified adaptive step."""
    rho_inf = 2 / (1 - BETA2) - 1
    assert rho_inf - 2 * 6 * BETA2**6 / (1 - BETA2**6) > 5 >= (
        rho_inf - 2 * 5 * BETA2**5 / (1 - BETA2**5))
    _, got = _run("radam", 8)
    assert got == pytest.approx(_radam(8), rel=1e-10, abs=1e-12)


def test_an_unknown_optimizer_lists_the_names() -> None:
    with pytest.raises(ValueError, match=r"'lamb'.*\['sgd', 'radam', 'adam', 'adamw'\]"):
        train.make_optimizer([nn.Parameter(torch.zeros(1))], "lamb", LR, MOMENTUM, WD)
