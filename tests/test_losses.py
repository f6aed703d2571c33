import math

import pytest
import torch
import torch.nn.functional as F

from study.losses import cosine_feature_loss, cross_entropy, logit_distillation

torch.set_num_threads(1)


def feats(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "stage1": torch.randn(4, 2, 4, 4, generator=g),
        "stage3": torch.randn(4, 8, 2, 2, generator=g),
    }


def test_cross_entropy_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = torch.tensor([0, 1])
    by_hand = [
        -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-1))),
        -math.log(math.exp(0.5) / (2 * math.exp(0.5) + math.exp(3))),
    ]
    assert cross_entropy(logits, labels).item() == pytest.approx(sum(by_hand) / 2, rel=1e-6)


def test_cosine_feature_loss_matches_per_sample_cosine():
    s, t = feats(0), feats(1)
    weights = {"stage1": 0.5, "stage3": 2.0}
    expected = 0.0
    for layer, w in weights.items():
        a, b = s[layer].reshape(4, -1), t[layer].reshape(4, -1)
        cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
        expected += w * (1 - cos).mean().item()
    assert cosine_feature_loss(s, t, weights).item() == pytest.approx(expected, rel=1e-5)
    # cosine over the WHOLE flattened feature, not per channel: compare against F's on flat views
    flat = 1 - F.cosine_similarity(s["stage3"].flatten(1), t["stage3"].flatten(1)).mean()
    assert cosine_feature_loss(s, t, {"stage3": 1.0}).item() == pytest.approx(flat.item(), rel=1e-5)


def test_cosine_feature_loss_zero_for_identical_and_scale_invariant():
    s = feats(0)
    assert cosine_feature_loss(s, s, {"stage1": 1.0, "stage3": 1.0}).item() == pytest.approx(
        0.0, abs=1e-6
    )
    scaled = {k: 3.0 * v for k, v in s.items()}
    assert cosine_feature_loss(s, scaled, {"stage3": 1.0}).item() == pytest.approx(0.0, abs=1e-6)
    negated = {k: -v for k, v in s.items()}
    assert cosine_feature_loss(s, negated, {"stage3": 1.0}).item() == pytest.approx(2.0, rel=1e-6)


def test_cosine_feature_loss_gradient_only_into_student():
    s = {k: v.requires_grad_() for k, v in feats(0).items()}
    t = {k: v.requires_grad_() for k, v in feats(1).items()}
    cosine_feature_loss(s, t, {"stage1": 1.0, "stage3": 1.0}).backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in s.values())
    assert all(v.grad is None for v in t.values())


def test_cosine_feature_loss_rejects_unknown_layer_and_skips_zero_weight():
    s, t = feats(0), feats(1)
    with pytest.raises(ValueError, match="stage2"):
        cosine_feature_loss(s, t, {"stage2": 1.0})
    with pytest.raises(ValueError, match="empty"):
        cosine_feature_loss(s, t, {})
    both = cosine_feature_loss(s, t, {"stage1": 0.0, "stage3": 1.0})
    assert both.item() == pytest.approx(cosine_feature_loss(s, t, {"stage3": 1.0}).item())


def test_logit_distillation_matches_explicit_kl_sum():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    labels = torch.randint(0, 7, (5,), generator=g)
    temp, alpha = 4.0, 0.7
    p = torch.softmax(teacher / temp, 1)
    q = torch.softmax(student / temp, 1)
    kl = sum((p[i, c] * (p[i, c] / q[i, c]).log()).item() for i in range(5) for c in range(7)) / 5
    ce = F.cross_entropy(student, labels).item()
    expected = alpha * temp**2 * kl + (1 - alpha) * ce
    got = logit_distillation(student, teacher, labels, temperature=temp, alpha=alpha)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_logit_distillation_limits_and_gradient():
    g = torch.Generator().manual_seed(1)
    student = torch.randn(6, 10, generator=g, requires_grad=True)
    teacher = torch.randn(6, 10, generator=g, requires_grad=True)
    labels = torch.randint(0, 10, (6,), generator=g)
    ce = F.cross_entropy(student, labels)
    # alpha = 0 is plain CE
    got = logit_distillation(student, teacher, labels, temperature=3.0, alpha=0.0)
    assert got.item() == pytest.approx(ce.item(), rel=1e-6)
    # alpha = 1 and a teacher equal to the student: KL is 0
    same = logit_distillation(student, student.detach().clone(), labels, 2.0, 1.0)
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    loss = logit_distillation(student, teacher, labels, temperature=2.0, alpha=0.5)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


@pytest.mark.parametrize("temp,alpha", [(0.0, 0.5), (-1.0, 0.5), (2.0, 1.5), (2.0, -0.1)])
def test_logit_distillation_rejects_bad_hyperparameters(temp, alpha):
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError):
        logit_distillation(logits, logits, torch.tensor([0, 1]), temp, alpha)
