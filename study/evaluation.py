"""The level-wise test protocol of docs/method.md (the paper-style table of its rows is
results.paper_table).

Every model is evaluated on the whole split once per integer level of each degradation (jpeg 101,
blur 51, awgn 51, saltpepper 26 = 229 copies), plus clean. The number per degradation is the mean
over its levels; "Avg" is the mean of the four. Degraded copies are pure functions of (images,
degradation, level, seed), so every model compared sees identical images; each copy is built once
and fed to every network before the next one is built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from study import degradations
from study.augment import normalise
from study.train import predict

# Combines the networks' logits on one copy into one method's predictions (None: not defined there,
# e.g. the oracle on clean images).
Combiner = Callable[[Mapping[str, torch.Tensor], str], "torch.Tensor | None"]


def copy_seed(seed: int, name: str, level: int) -> np.random.Generator:
    return np.random.default_rng([seed, _index(name), level])


def _index(name: str) -> int:
    """Part of every degraded copy's seed: degradations.stream_index (a built-in's fixed place,
    jpeg 0 to saltpepper 3; a plugin's number from its name)."""
    return degradations.stream_index(name)


def degraded_copy(images: np.ndarray, name: str, level: int, seed: int, salt_value: int
                  ) -> np.ndarray:
    return degradations.degrade_batch(images, name, level, copy_seed(seed, name, level),
                                      salt_value)


def random_level_copy(images: np.ndarray, name: str, seed: int, salt_value: int) -> np.ndarray:
    """One fixed random level per image: the cheap per-epoch validation set of a stage."""
    rng = np.random.default_rng([seed, _index(name), 10_000])
    return degradations.degrade_batch(images, name, degradations.random_levels(name, len(images),
                                                                               rng), rng,
                                      salt_value)


def level_plan(names: Sequence[str], step: int) -> list[tuple[str, int]]:
    plan = [("clean", 0)]
    for name in names:
        plan += [(name, level) for level in degradations.get(name).levels(step)]
    return plan


TIE_RULES = ("all_classes", "tied_classes")


def vote(logits: Sequence[torch.Tensor], tie: str = "all_classes") -> torch.Tensor:
    """Plurality vote of the networks' argmaxes, (N,) class indices.

    A tie (two or more classes with the most votes: 2-2 or 1-1-1-1 among four experts) is
    broken by the logits summed over the networks:
    - "all_classes" (the reference's rule, the default): the argmax of the summed logits over
      every class, which need not be one of the tied classes;
    - "tied_classes": the argmax of the summed logits among the tied classes only (the rule
      of study 0.2 and earlier).
    Without a tie both return the plurality class. tests/test_faithful.py measures how often
    the two disagree on simulated experts.
    """
    if tie not in TIE_RULES:
        raise ValueError(f"tie must be one of {', '.join(TIE_RULES)}, got {tie!r}")
    stacked = torch.stack(list(logits))                        # (M, N, C)
    n_classes = stacked.shape[-1]
    votes = torch.nn.functional.one_hot(stacked.argmax(-1), n_classes).sum(0)   # (N, C)
    summed = stacked.sum(0)
    top = votes == votes.max(1, keepdim=True).values            # the classes with most votes
    if tie == "tied_classes":
        return summed.masked_fill(~top, float("-inf")).argmax(1)
    # a single top class is the plurality winner; on a tie every class competes
    return torch.where(top.sum(1) > 1, summed.argmax(1), votes.argmax(1))


def evaluate(networks: Mapping[str, nn.Module], methods: Mapping[str, Combiner],
             images: np.ndarray, labels: np.ndarray, plan: Sequence[tuple[str, int]],
             copy_fn: Callable[[str, int], np.ndarray], mean: Sequence[float],
             std: Sequence[float], batch_size: int, device: torch.device | str
             ) -> list[dict[str, object]]:
    """Rows (model, degradation, level, accuracy, n_images) for every method and plan entry."""
    y = torch.from_numpy(labels).to(device)
    rows: list[dict[str, object]] = []
    for name, level in plan:
        x_np = images if name == "clean" else copy_fn(name, level)
        x = normalise(x_np, mean, std, device)
        logits = {k: predict(net, x, batch_size) for k, net in networks.items()}
        for method, combine in methods.items():
            pred = combine(logits, name)
            if pred is None:
                continue
            rows.append({"model": method, "degradation": name, "level": level,
                         "accuracy": (pred == y).float().mean().item(), "n_images": len(y)})
    return rows
