"""The report on optuna-dashboard: the figures it does not draw itself, and the summary note,
saved into the study's system attributes, where its study page reads them."""

from __future__ import annotations

from typing import Any

import optuna_dashboard

from study.report.page import Rendered

__all__ = ["PUSHED", "push_to_dashboard"]

# Figures that optuna-dashboard does not draw itself; pushed into the study under these ids so
# that a second `study report` overwrites them instead of piling up copies.
PUSHED = ("levels", "paired", "subsets", "surface", "fusion_weights", "budget")


def push_to_dashboard(study: Any, rendered: Rendered) -> list[str]:
    """The figures optuna-dashboard does not draw itself, and the summary note, into the
    study's system attributes (where the dashboard's study page reads them); returns their
    graph ids."""
    ids = []
    for name, fig in rendered.figures.items():
        if name.split("-")[0] in PUSHED:     # subsets-<param> goes with subsets
            gid = f"report-{name}".replace(".", "_")
            optuna_dashboard.save_plotly_graph_object(study, fig, graph_object_id=gid)
            ids.append(gid)
    optuna_dashboard.save_note(study, rendered.note)
    return ids
