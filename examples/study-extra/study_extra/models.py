"""ResNet20 (He et al., 2016, the CIFAR family): study's ResNet with 3 blocks a stage, widths
16/32/64, 0.27M parameters at 10 classes. It returns (logits, features) with the features of
stage1..stage3, as every model of `study` must (the losses distil them by name)."""

from __future__ import annotations

from study.models import ResNet

__all__ = ["resnet20"]


def resnet20(num_classes: int) -> ResNet:
    return ResNet(3, (16, 32, 64), num_classes)
