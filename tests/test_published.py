"""The paper's published tables (study/published.py): every Avg is the mean of its four columns
to the rounding, except the rows a note explains, and each note names a row that exists."""

from __future__ import annotations

import pytest

from study import published


@pytest.mark.parametrize("dataset", sorted(published.PUBLISHED))
def test_every_avg_is_the_mean_of_its_columns_or_carries_a_note(dataset: str) -> None:
    notes = published.NOTES.get(dataset, {})
    for method, (*columns, avg) in published.PUBLISHED[dataset].items():
        mean = sum(columns) / len(columns)
        # one decimal as published: a mean of 63.05 may print as 63.0 or 63.1
        agrees = abs(avg - mean) <= 0.05 + 1e-9
        assert agrees is (method not in notes), (dataset, method, avg, mean)


def test_the_tiny_imagenet_ensemble_row_is_kept_as_published() -> None:
    assert published.PUBLISHED["tinyimagenet"]["ensemble"] == (53.1, 17.4, 45.4, 49.9, 35.5)
    note = published.NOTES["tinyimagenet"]["ensemble"]
    assert "35.5" in note and "41.45" in note


def test_notes_name_published_rows() -> None:
    for dataset, rows in published.NOTES.items():
        assert set(rows) <= set(published.PUBLISHED[dataset]), dataset
