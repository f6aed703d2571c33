"""The report on optuna-dashboard: the figures it does not draw itself, and the summary note,
saved into the study's system attributes, where its study page reads them."""

from __future__ import annotations

from typing import Any

import optuna_dashboard
import plotly.graph_objects as go

from study.report.figures import frame
from study.report.page import Rendered

__all__ = ["CARD_HEIGHT", "CARD_WIDTH", "PUSHED", "card_figure", "push_to_dashboard"]

# Figures that optuna-dashboard does not draw itself; pushed into the study under these ids so
# that a second `study report` overwrites them instead of piling up copies.
PUSHED = ("levels", "paired", "subsets", "surface", "fusion_weights", "budget")
# optuna-dashboard 0.21 draws a pushed figure into a card 450 px high (a taller figure spills
# over the next card) and half the page wide: ~570 px at a 1280 px browser window.
CARD_HEIGHT = 450
CARD_WIDTH = 560


def card_figure(fig: Any) -> Any:
    """A copy of a report figure fitted to a dashboard card: its height, its title wrapped to
    the card's width, the margins recomputed for them (figures.frame)."""
    card = go.Figure(fig)
    title = card.layout.title.text.replace("<br>", " ")
    return frame(card, title, CARD_HEIGHT, width=CARD_WIDTH)


def push_to_dashboard(study: Any, rendered: Rendered) -> list[str]:
    """The figures optuna-dashboard does not draw itself, and the summary note, into the
    study's system attributes (where the dashboard's study page reads them); returns their
    graph ids."""
    ids = []
    for name, fig in rendered.figures.items():
        if name.split("-")[0] in PUSHED:     # subsets-<param> goes with subsets
            gid = f"report-{name}".replace(".", "_")
            optuna_dashboard.save_plotly_graph_object(study, card_figure(fig),
                                                      graph_object_id=gid)
            ids.append(gid)
    optuna_dashboard.save_note(study, rendered.note)
    return ids
