"""BudgetPanel: stacked bars, table and summary follow the rows of engine.estimate.estimate."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path

import numpy as np
import pytest

from engine.estimate import estimate
from engine.recipe import Recipe
from gui.budget_panel import BudgetPanel
from gui.teachers import known_shape

RECIPES = Path(__file__).resolve().parents[2] / "resources" / "recipes"
MBERT = "hub:google-bert/bert-base-multilingual-cased"


@pytest.fixture()
def panel(qtbot):
    widget = BudgetPanel()
    qtbot.addWidget(widget)
    return widget


def mbert_rows(name: str = "mbert-maximum.toml") -> list[dict]:
    return estimate(Recipe.load(RECIPES / name), known_shape(MBERT))


def stacked_tops(panel: BudgetPanel) -> np.ndarray:
    encoder = panel.bars["encoder"].opts
    head = panel.bars["head"].opts
    assert np.allclose(np.asarray(encoder["y0"]), np.asarray(panel.bars["embeddings"].opts["height"]))
    return np.asarray(head["y0"]) + np.asarray(head["height"])


def test_rows_become_stacked_bars_table_and_summary(panel):
    rows = mbert_rows()
    panel.update_rows(rows)

    assert np.allclose(stacked_tops(panel), [row["total_params"] / 1e6 for row in rows])
    assert panel.table.rowCount() == 5
    assert [panel.table.item(r, 0).text() for r in range(5)] == [row["name"] for row in rows]
    # the paper's arithmetic: mBERT 177.9M -> 22.8M (-87%)
    assert panel.table.item(0, 1).text() == "177.9M"
    assert panel.table.item(4, 1).text() == "22.8M"
    assert "87.2% smaller" in panel.summary.text()
    ticks = panel.plot.getAxis("bottom")._tickLevels[0]
    assert [label for _, label in ticks] == ["teacher", "1 trim vocab", "2 distill", "3 prune", "4 shrink"]


def test_new_rows_replace_old_ones(panel):
    panel.update_rows(mbert_rows())
    panel.update_rows(mbert_rows("mbert-moderate.toml"))

    assert panel.table.rowCount() == 3
    assert len(panel.bars["embeddings"].opts["height"]) == 3
    assert "29.2% smaller" in panel.summary.text()
    assert panel.rows()[-1]["name"] == "02-prune"

    panel.update_rows([])
    assert panel.table.rowCount() == 0 and panel.summary.text() == ""
    assert len(panel.bars["encoder"].opts["height"]) == 0


def test_message_shows_and_hides(panel):
    panel.update_rows(mbert_rows())
    panel.show_message("fix the highlighted field")
    assert not panel.message.isHidden() and "highlighted" in panel.message.text()
    panel.update_rows(mbert_rows())
    assert panel.message.isHidden()
