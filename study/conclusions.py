"""What a difference between two trials can be trusted to say: best versus baseline, with its
uncertainty and a plain sentence.

With replicate seeds (study.replicates > 1) the difference is paired seed by seed (replicate r
of both trials shares its seed: the data split, the initialisations and the degraded copies)
and gets a Student-t interval. With one seed there is no spread to measure, only the
binomial noise of a finite evaluation: an accuracy p measured on n images has a standard
error sqrt(p(1-p)/n), and a difference of two such numbers sqrt(pa(1-pa)/n + pb(1-pb)/n).
That band is conservative: it treats the level-averaged accuracy as one sample of n images,
and ignores that both trials see the same images (pairing would shrink it). At 300 images
and p = 0.4 it is +-7.8 points (95%): a search's best on one seed beats its baseline by more
than that only when the gain is large.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scipy import stats

from study import results

__all__ = ["CONFIDENCE", "Verdict", "compare"]

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Verdict:
    """Best minus baseline on one metric, in accuracy points (percent)."""

    metric: str                 # e.g. "val.avg" of `method`
    method: str
    best: float                 # points, mean over seeds
    baseline: float
    diff: float
    half: float                 # half-width of the interval or band (points); NaN: unknown
    seeds: int
    images: int                 # images behind each number (the smallest evaluated copy)
    how: str                    # "t" (over replicate seeds) or "binomial" (one seed)

    @property
    def outside(self) -> bool:
        return not math.isnan(self.half) and abs(self.diff) > self.half

    def sentence(self) -> str:
        split = "validation" if self.metric.startswith("val.") else "test"
        head = (f"{self.method} {self.metric}: best {self.best:.2f} vs baseline "
                f"{self.baseline:.2f}, {self.diff:+.2f} points")
        if math.isnan(self.half):
            return head + " (no uncertainty: no rows to count images in)"
        if self.how == "t":
            noise = (f"95% interval over {self.seeds} paired replicate seeds "
                     f"[{self.diff - self.half:+.2f}, {self.diff + self.half:+.2f}]")
        else:
            noise = (f"with one seed and {self.images} {split} images per number, binomial "
                     f"noise alone spans +-{self.half:.2f} points (95%)")
        if self.outside:
            verdict = ("the difference lies outside it" if self.how == "t" else
                       "the difference is larger than that noise")
        else:
            verdict = ("the interval includes no difference: not evidence that either is "
                       "better" if self.how == "t" else
                       "the difference is within that noise: not evidence that the searched "
                       "configuration is better (`study confirm` measures it over new seeds)")
        return f"{head}; {noise}: {verdict}."


def compare(best_rows: Sequence[Mapping[str, Any]], baseline_rows: Sequence[Mapping[str, Any]],
            method: str, metric: str, confidence: float = CONFIDENCE) -> Verdict:
    """Best against baseline on `metric` of `method`, from each trial's evaluation rows (every
    replicate seed of each: the rows carry their `seed`)."""
    split = metric.partition(".")[0]

    def per_seed(rows: Sequence[Mapping[str, Any]]) -> dict[int, float]:
        seeds = sorted({int(r["seed"]) for r in rows if r.get("seed") is not None})
        return {s: 100 * results.metric_value([r for r in rows if r.get("seed") == s],
                                              method, metric) for s in seeds}

    b, p = per_seed(best_rows), per_seed(baseline_rows)
    shared = sorted(set(b) & set(p))
    best = sum(b[s] for s in shared) / len(shared) if shared else math.nan
    base = sum(p[s] for s in shared) / len(shared) if shared else math.nan
    images = min((int(r["n_images"]) for r in [*best_rows, *baseline_rows]
                  if r.get("split") == split and r.get("model") == method
                  and r.get("n_images") is not None), default=0)
    if len(shared) >= 2:
        diffs = [b[s] - p[s] for s in shared]
        mean = sum(diffs) / len(diffs)
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
        half = float(stats.t.ppf((1 + confidence) / 2, len(diffs) - 1)) * sd / math.sqrt(
            len(diffs))
        how = "t"
    else:
        z = float(stats.norm.ppf((1 + confidence) / 2))
        pa, pb = best / 100, base / 100
        half = (100 * z * math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / images)
                if images else math.nan)
        how = "binomial"
    return Verdict(metric, method, best, base, best - base, half, len(shared), images, how)
