"""The paper's ResNet56 (as the reference code builds it) and a tiny twin for tests.

Every model's ``forward(x)`` returns ``(logits, feats)``: ``feats`` maps each name in
``FEATURE_LAYERS`` to the post-ReLU output of the last block of that stage, unflattened
(N, C, H, W); the losses flatten. The paper distils ``feats["stage3"]`` (64x8x8 on 32x32 input).

State-dict keys (``conv1``, ``bn1``, ``stage{1,2,3}.{i}.{conv1,bn1,conv2,bn2,shortcut}``, ``fc``)
are this module's own; reference-code checkpoints are not loaded directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from study import registry

__all__ = ["FEATURE_LAYERS", "MODELS", "BasicBlock", "ResNet", "build_model", "get"]

FEATURE_LAYERS = ("stage1", "stage2", "stage3")


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU.

    The shortcut is a 1x1 conv + BN projection when the block changes width or resolution
    (the reference code's ``ds``), else the identity.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: stem, three stages of BasicBlocks, 2x2 average pool, linear head.

    ``widths`` are the stem/stage-1, stage-2 and stage-3 channels. Stages 2 and 3 halve the
    resolution in their first block. The head pools to 2x2 (not 1x1, as the reference code
    does), so it sees ``4 * widths[2]`` features: 256 for ResNet56.
    """

    def __init__(self, blocks_per_stage: int, widths: tuple[int, int, int], num_classes: int):
        super().__init__()
        if blocks_per_stage < 1 or num_classes < 1:
            raise ValueError(
                f"blocks_per_stage and num_classes must be >= 1, "
                f"got {blocks_per_stage} and {num_classes}"
            )
        w1, w2, w3 = widths
        self.conv1 = nn.Conv2d(3, w1, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w1)
        self.stage1 = _stage(w1, w1, blocks_per_stage, stride=1)
        self.stage2 = _stage(w1, w2, blocks_per_stage, stride=2)
        self.stage3 = _stage(w2, w3, blocks_per_stage, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(4 * w3, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        x = F.relu(self.bn1(self.conv1(x)))
        s1 = self.stage1(x)
        s2 = self.stage2(s1)
        s3 = self.stage3(s2)
        # flatten, not view: a channels_last pooled tensor is not contiguous in NCHW order
        logits = self.fc(torch.flatten(self.pool(s3), 1))
        return logits, {"stage1": s1, "stage2": s2, "stage3": s3}


def _stage(in_ch: int, out_ch: int, n_blocks: int, stride: int) -> nn.Sequential:
    blocks = [BasicBlock(in_ch, out_ch, stride)]
    blocks += [BasicBlock(out_ch, out_ch, 1) for _ in range(n_blocks - 1)]
    return nn.Sequential(*blocks)


def _init_weights(model: nn.Module) -> None:
    # the reference code's init: Kaiming-normal fan_out convs, BN (1, 0), Linear N(0, 0.01) bias 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def resnet56(num_classes: int) -> ResNet:
    """The paper's model: 3 stages x 9 blocks, widths 16/32/64; 0.858M parameters at 10 classes."""
    return ResNet(9, (16, 32, 64), num_classes)


def tiny(num_classes: int) -> ResNet:
    """Same structure and interface, one block per stage, widths 4/8/16: ~5.8k parameters at
    10 classes, for tests and CPU smoke runs."""
    return ResNet(1, (4, 8, 16), num_classes)


# The built-ins, as the registry's entry points name them. A plugin of the `study.models`
# entry points is a builder of the same shape (docs/plugins.md).
MODELS: dict[str, Callable[[int], nn.Module]] = {"resnet56": resnet56, "tiny": tiny}


def get(name: str) -> Callable[[int], nn.Module]:
    """The builder registered under ``name``, built-in or plugin; ValueError listing the
    installed models otherwise."""
    if name in MODELS:
        return MODELS[name]
    builder = registry.load(registry.MODELS, name)
    if not callable(builder):
        raise registry.PluginError(
            f"model plugin {name!r} ({registry.find(registry.MODELS, name).label}): the entry "
            f"point must name a builder num_classes -> nn.Module, got {type(builder).__name__}")
    return cast(Callable[[int], nn.Module], builder)


def build_model(name: str, num_classes: int) -> nn.Module:
    """A freshly initialised model ``name`` with a ``num_classes``-way head."""
    model = get(name)(num_classes)
    if not isinstance(model, nn.Module):
        raise registry.PluginError(f"model {name!r}: its builder must return a torch.nn.Module, "
                                   f"got {type(model).__name__}")
    return model
