"""The paper's published results (accuracy %, mean over the levels of each degradation, ResNet56),
for putting a reproduction beside them (`study report`). Columns: JPEG, Blur, AWGN, SAPN, Avg.

Daultani & Larochelle, "Consolidating Separate Degradations Model via Weights Fusion and
Distillation", WACV 2024 Workshops; the same tables are in docs/method.md.
"""

from __future__ import annotations

__all__ = ["COLUMNS", "CIFAR10_NOTE", "NOTES", "OPTIMISTIC", "PUBLISHED"]

COLUMNS = ("JPEG", "Blur", "AWGN", "SAPN", "Avg")
PUBLISHED: dict[str, dict[str, tuple[float, float, float, float, float]]] = {
    "cifar100": {
        "oracle": (63.4, 58.2, 65.4, 74.1, 65.3),
        "ensemble": (59.3, 25.3, 43.6, 58.7, 46.7),
        "scratch": (59.1, 54.3, 61.0, 66.0, 60.1),
        "vanilla_ft": (62.2, 56.0, 63.8, 70.2, 63.1),
        "modelsoups": (1.1, 1.0, 1.2, 1.0, 1.1),
        "fusing": (62.3, 56.4, 64.1, 70.5, 63.3),
        "fusiondistill": (64.5, 58.6, 66.4, 73.7, 65.8),
    },
    "tinyimagenet": {
        "oracle": (56.3, 50.3, 57.7, 60.6, 56.2),
        "ensemble": (53.1, 17.4, 45.4, 49.9, 35.5),   # its Avg is not its columns' mean: NOTES
        "scratch": (54.0, 48.2, 55.3, 58.2, 53.9),
        "vanilla_ft": (55.2, 48.1, 56.6, 59.7, 54.9),
        "modelsoups": (0.5, 0.5, 0.5, 0.5, 0.5),
        "fusing": (54.2, 47.1, 55.2, 58.8, 53.8),
        "fusiondistill": (56.7, 48.5, 58.2, 61.9, 56.3),
    },
}
# Rows whose published numbers disagree with each other, kept as published: dataset -> method
# -> what is wrong, said beside the row wherever the table is compared (`study report`). Every
# other Avg is the mean of its four columns to the rounding (tests/test_published.py).
NOTES: dict[str, dict[str, str]] = {
    "tinyimagenet": {
        "ensemble": ("The paper's Tiny ImageNet Ensemble Avg, 35.5, is not the mean of its own "
                     "four columns (53.1, 17.4, 45.4, 49.9: mean 41.45); both are shown as "
                     "published, so its Avg diff compares with a number the columns do not "
                     "give."),
    },
}
# CIFAR-10 has no published table, only this comparison.
CIFAR10_NOTE = ("For CIFAR-10 the paper publishes no table, only that FusionDistill's average "
                "is 1.3 points above the best pre-training baseline.")
# What every place that shows test numbers of `pipeline.protocol: reference` says with them.
OPTIMISTIC = ("Reference protocol (protocol: reference): every training image trained and the "
              "checkpoints were chosen on the test set, as the reference code does. These test "
              "numbers are optimistic; they are for comparing with the paper's tables only.")
