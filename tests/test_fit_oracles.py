"""train.fit's schedule and its best-epoch selection against numbers worked out by hand.

The learning-rate schedules and the epoch whose weights a stage keeps change every network
silently: a milestone one epoch late trains one epoch at ten times the rate, a tie on validation
that goes to the later epoch keeps other weights. The oracles here are the schedules' formulas
(docs/method.md section 5: multistep divides the rate by 1/gamma at each milestone epoch;
cosine annealing lr * (1 + cos(pi e / T)) / 2) and a one-parameter model whose weight after
each plain-SGD epoch is a product worked out by hand.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pytest
import torch
from torch import nn

from study import train
from study.augment import Batch

W0 = 8.0


class Scalar(nn.Module):
    """One weight w; the loss below is 0.5 w^2, so its gradient is w and one SGD step at rate
    lr (no momentum, no decay) multiplies w by (1 - lr)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([W0], dtype=torch.float64))


def _loss(model: nn.Module, b: Batch) -> torch.Tensor:
    return 0.5 * (model.w ** 2).sum()


def _one_step(epoch: int) -> Iterable[Batch]:
    """One step an epoch: a batch of one (its images are never read)."""
    z = torch.zeros(1, 3, 1, 1)
    return [Batch(z, z, torch.zeros(1, dtype=torch.int64), (("clean", slice(0, 1)),))]


def _fit(schedule: str, epochs: int, *, lr: float, milestones: list[int] | None = None,
         gamma: float = 0.1, t_max: int | None = None, vals: list[float] | None = None,
         ties: str = "earlier") -> tuple[train.FitResult, Scalar]:
    model = Scalar()
    opt = train.make_optimizer(model.parameters(), "sgd", lr, 0.0, 0.0)
    sched = train.make_scheduler(opt, schedule, epochs, milestones or [], gamma, t_max)
    validate = (lambda m, epoch: vals[epoch - 1]) if vals is not None else None
    res = train.fit(model, epochs=epochs, optimizer=opt, scheduler=sched, batches=_one_step,
                    loss_fn=_loss, validate=validate,
                    select="best_val" if vals is not None else "last", ties=ties)
    return res, model


def test_multistep_divides_the_rate_at_each_milestone_epoch() -> None:
    """milestones [2, 3], gamma 0.1, lr 0.5: epochs 1-2 train at 0.5, epoch 3 at 0.05 (after
    2 epochs), epoch 4 at 0.005 (after 3). The weight: 8 * 0.5 * 0.5 * 0.95 * 0.995."""
    res, model = _fit("multistep", 4, lr=0.5, milestones=[2, 3])
    assert [r["lr"] for r in res.history] == pytest.approx([0.5, 0.5, 0.05, 0.005], rel=1e-12)
    want = W0 * (1 - 0.5) * (1 - 0.5) * (1 - 0.05) * (1 - 0.005)
    assert want == pytest.approx(1.8905)
    assert model.w.item() == pytest.approx(want, rel=1e-12)
    assert res.state["w"].item() == pytest.approx(want, rel=1e-12)   # select "last"
    assert res.kept_epoch == 4


@pytest.mark.parametrize(("t_max", "period"), [(6, 6), (None, 4)])
def test_cosine_schedule_is_the_annealing_formula(t_max: int | None, period: int) -> None:
    """lr_e = lr (1 + cos(pi e / T)) / 2 for the epoch after e steps, over 4 epochs: T is
    t_max when set (6: the rate never reaches 0 here), else the number of epochs."""
    res, _ = _fit("cosine", 4, lr=0.4, t_max=t_max)
    want = [0.4 * (1 + math.cos(math.pi * e / period)) / 2 for e in range(4)]
    by_hand = {6: [0.4, 0.2 + 0.2 * math.sqrt(3) / 2, 0.3, 0.2],
               4: [0.4, 0.2 + 0.2 / math.sqrt(2), 0.2, 0.2 - 0.2 / math.sqrt(2)]}[period]
    assert want == pytest.approx(by_hand)
    assert [r["lr"] for r in res.history] == pytest.approx(want, rel=1e-9)


def test_constant_schedule_keeps_the_rate() -> None:
    res, model = _fit("constant", 3, lr=0.25)
    assert [r["lr"] for r in res.history] == [0.25] * 3
    assert model.w.item() == pytest.approx(W0 * 0.75**3, rel=1e-12)


@pytest.mark.parametrize(("ties", "kept"), [("earlier", 2), ("later", 3)])
def test_best_val_keeps_the_weights_of_the_best_epoch_and_breaks_ties_as_told(
        ties: str, kept: int) -> None:
    """Validation 0.5, 0.7, 0.7, 0.6 over four epochs at lr 0.5: the best, 0.7, is reached
    after epochs 2 and 3; the holdout protocol keeps the earlier (w = 8 * 0.5^2 = 2), the
    reference protocol the later (8 * 0.5^3 = 1). The model itself ends at 8 * 0.5^4."""
    res, model = _fit("constant", 4, lr=0.5, vals=[0.5, 0.7, 0.7, 0.6], ties=ties)
    assert res.best_val == 0.7 and res.kept_epoch == kept
    assert res.state["w"].item() == pytest.approx(W0 * 0.5**kept, rel=1e-12)
    assert res.state["w"].item() == pytest.approx({2: 2.0, 3: 1.0}[kept])
    assert model.w.item() == pytest.approx(0.5)
    assert [r["val"] for r in res.history] == [0.5, 0.7, 0.7, 0.6]


def test_best_val_is_the_first_epoch_when_nothing_beats_it() -> None:
    res, _ = _fit("constant", 3, lr=0.5, vals=[0.9, 0.9, 0.1])
    assert res.kept_epoch == 1 and res.state["w"].item() == pytest.approx(W0 * 0.5)
