"""The objective a study optimises, on evaluation rows small enough to average by hand.

docs/method.md: a degradation's number is the mean over its levels (and seeds); `avg` is the
mean of those per-degradation means, not the mean of all degraded rows pooled. The two differ
as soon as the degradations are evaluated at different numbers of levels (JPEG's 101 levels
against salt-and-pepper's 26), so the rows here give the degradations 3 and 2 levels and
unequal means: pooling every row would weight JPEG 3:2 and move the objective of every trial.
"""

from __future__ import annotations

import math

import pytest

from study import results


def _rows() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for seed, shift in ((0, 0.0), (1, 0.02)):   # two replicate seeds, 0.02 apart
        out.append({"model": "fusiondistill", "split": "val", "seed": seed,
                    "degradation": "clean", "level": 0, "accuracy": 0.95 + shift})
        for level, acc in ((1, 0.3), (51, 0.6), (101, 0.9)):
            out.append({"model": "fusiondistill", "split": "val", "seed": seed,
                        "degradation": "jpeg", "level": level, "accuracy": acc + shift})
        for level, acc in ((0, 0.4), (50, 0.2)):
            out.append({"model": "fusiondistill", "split": "val", "seed": seed,
                        "degradation": "awgn", "level": level, "accuracy": acc + shift})
    # rows the objective must not read: another model, another split
    out.append({"model": "ensemble", "split": "val", "seed": 0, "degradation": "jpeg",
                "level": 1, "accuracy": 0.0})
    out.append({"model": "fusiondistill", "split": "test", "seed": 0, "degradation": "awgn",
                "level": 0, "accuracy": 1.0})
    return out


def test_avg_is_the_mean_of_the_degradations_means() -> None:
    # by hand: jpeg (0.3 + 0.6 + 0.9) / 3 = 0.6, awgn (0.4 + 0.2) / 2 = 0.3, each + 0.01 (the
    # seeds' mean shift); avg (0.61 + 0.31) / 2 = 0.46. Pooled: (1.8 + 0.6) / 5 + 0.01 = 0.49.
    rows = _rows()
    assert results.metric_value(rows, "fusiondistill", "val.jpeg") == pytest.approx(0.61)
    assert results.metric_value(rows, "fusiondistill", "val.awgn") == pytest.approx(0.31)
    assert results.metric_value(rows, "fusiondistill", "val.avg") == pytest.approx(0.46)
    assert results.metric_value(rows, "fusiondistill", "val.avg") != pytest.approx(0.49)
    assert results.metric_value(rows, "fusiondistill", "val.clean") == pytest.approx(0.96)
    assert math.isnan(results.metric_value(rows, "fusiondistill", "val.blur"))
    assert results.objective_values(rows, [("fusiondistill", "val.avg"),
                                           ("fusiondistill", "test.avg")]) == pytest.approx(
        [0.46, 1.0])


def test_the_paper_table_averages_the_same_way() -> None:
    """paper_table's Avg column (percent) is the same mean of means."""
    t = results.paper_table([r for r in _rows() if r["split"] == "val"], ["fusiondistill"])
    assert t.loc["fusiondistill", ["JPEG", "AWGN", "Avg", "Clean"]].tolist() == pytest.approx(
        [61.0, 31.0, 46.0, 96.0])
