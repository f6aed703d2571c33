import time

import pytest
import torch
from figures import record
from torch import nn

from study import models

torch.set_num_threads(1)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet56_parameter_count_matches_the_paper():
    # 0.858M: the classic 0.853M CIFAR ResNet56, plus 1x1-conv+BN projection shortcuts (2,752)
    # and a 256-wide head instead of 64 (+1,920)
    count = n_params(models.build_model("resnet56", 10))
    assert count == 857_690
    assert round(count / 1e6, 3) == 0.858
    # the head is Linear(256, classes): 100 classes add 90 * 257 parameters
    assert n_params(models.build_model("resnet56", 100)) - count == 90 * 257


def test_resnet56_structure():
    model = models.build_model("resnet56", 10)
    assert [len(getattr(model, s)) for s in models.FEATURE_LAYERS] == [9, 9, 9]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    # stem + 27 blocks x 2 + 2 projection shortcuts
    assert len(convs) == 1 + 54 + 2
    shortcuts = [m.shortcut for s in models.FEATURE_LAYERS for m in getattr(model, s)]
    projections = [i for i, sc in enumerate(shortcuts) if isinstance(sc, nn.Sequential)]
    assert projections == [9, 18]  # first block of stages 2 and 3
    assert model.stage2[0].conv1.stride == (2, 2)
    assert model.fc.in_features == 256


@pytest.mark.parametrize("size,spatial", [(32, (32, 16, 8)), (64, (64, 32, 16))])
def test_resnet56_feature_and_logit_shapes(size, spatial):
    model = models.build_model("resnet56", 100).eval()
    with torch.no_grad():
        logits, feats = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 100)
    assert tuple(feats) == models.FEATURE_LAYERS
    for (name, width), hw in zip(
        [("stage1", 16), ("stage2", 32), ("stage3", 64)], spatial, strict=True
    ):
        assert feats[name].shape == (2, width, hw, hw)
    assert (feats["stage3"] >= 0).all()  # post-ReLU


def test_resnet56_init_statistics():
    torch.manual_seed(0)
    model = models.build_model("resnet56", 10)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
    assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert torch.equal(model.fc.bias, torch.zeros_like(model.fc.bias))
    # Kaiming normal fan_out: std sqrt(2 / (64 * 3 * 3)) = 0.0589 for a 64->64 conv
    # (PyTorch's default init would give 1/sqrt(3 * 576) = 0.024)
    w = model.stage3[4].conv2.weight
    assert w.std().item() == pytest.approx((2 / 576) ** 0.5, rel=0.05)
    assert w.mean().abs().item() < 0.005


def test_channels_last_matches_contiguous():
    model = models.build_model("tiny", 10).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref, _ = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        out, _ = model_cl(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_tiny_is_small_fast_and_same_interface():
    model = models.build_model("tiny", 10)
    assert 1_000 < n_params(model) < 10_000
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) >= 3
    assert any(k.endswith("running_mean") for k in model.state_dict())
    x = torch.randn(16, 3, 32, 32)
    start = time.perf_counter()
    logits, feats = model(x)
    logits.sum().backward()
    record("tiny_forward_backward_16", seconds=time.perf_counter() - start)
    assert logits.shape == (16, 10)
    assert tuple(feats) == models.FEATURE_LAYERS
    assert [feats[k].shape[2] for k in models.FEATURE_LAYERS] == [32, 16, 8]
    assert all(p.grad is not None for p in model.parameters())


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="resnet56.*tiny|tiny.*resnet56"):
        models.build_model("resnet18", 10)
    assert set(models.MODELS) == {"resnet56", "tiny"}
