"""Figures shared by the commands (matplotlib, Agg backend: no display needed).

- ``common.py``: ``save_figure``, ``head_heatmap``, ``line_panels``, ``short_name``;
- ``training.py``: ``loss_curves``, ``training_story`` (training-lab runs);
- ``atlas.py``: ``ablation_panel`` (atlas and compare).
"""

import matplotlib

matplotlib.use("Agg")  # before any submodule imports pyplot: no display needed

from .atlas import ablation_panel  # noqa: E402
from .common import head_heatmap, line_panels, save_figure, short_name  # noqa: E402
from .training import loss_curves, training_story  # noqa: E402

__all__ = ["ablation_panel", "head_heatmap", "line_panels", "loss_curves", "save_figure", "short_name",
           "training_story"]
