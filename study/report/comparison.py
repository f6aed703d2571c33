"""The baseline trial's test table beside the paper's published one (study/published.py)."""

from __future__ import annotations

import pandas as pd

from study import published

__all__ = ["published_comparison"]


def published_comparison(measured: pd.DataFrame, dataset: str | None
                         ) -> tuple[pd.DataFrame | None, str]:
    """The baseline's test table beside the paper's published one, and a note. Rows: methods
    both have; columns (measured, published, diff) x JPEG..Avg. CIFAR-10 has only a remark:
    the measured FusionDistill Avg minus the best of Scratch, Vanilla FT and Fusing."""
    if dataset == "cifar10":
        return None, _cifar10_remark(measured)
    table = published.PUBLISHED.get(dataset or "")
    if table is None:
        return None, (f"The paper publishes no numbers for dataset '{dataset}': no comparison "
                      "(it has CIFAR-100 and Tiny ImageNet tables and a CIFAR-10 remark).")
    methods = [m for m in measured.index if m in table]
    cols = [c for c in published.COLUMNS if c in measured.columns]
    if not methods or not cols:
        return None, "No method of the paper's table was measured in the baseline trial."
    pub = pd.DataFrame({m: dict(zip(published.COLUMNS, table[m])) for m in methods}).T[cols]
    mes = measured.loc[methods, cols].astype(float)
    out = pd.concat({"measured": mes, "published": pub, "diff": mes - pub}, axis=1)
    return out, (f"The baseline trial's test accuracy beside the paper's published "
                 f"{dataset} table (mean over levels, %); diff = measured - published.")


def _cifar10_remark(measured: pd.DataFrame) -> str:
    """The paper's CIFAR-10 remark, with the measured gap it states when the baseline ran
    FusionDistill and at least one of the pre-training baselines it is compared with."""
    avg = measured["Avg"] if "Avg" in measured else pd.Series(dtype=float)
    others = [m for m in ("scratch", "vanilla_ft", "fusing") if m in avg.index]
    if "fusiondistill" not in avg.index or not others:
        return published.CIFAR10_NOTE
    gap = float(avg["fusiondistill"] - avg[others].max())
    return (f"{published.CIFAR10_NOTE} Measured here: {gap:+.1f} points over the best of "
            f"{', '.join(others)}.")
