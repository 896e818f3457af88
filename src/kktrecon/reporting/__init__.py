"""Reporting: the paper's figures and a self-contained HTML page per evaluated run.

What lives here:

- ``figures.py``: Fig. 2 (toy), Fig. 3 (pairs grid), Fig. 4 (SSIM vs. output), loss curves, drawn
  on the Agg canvas and never registered with pyplot.
- ``html.py``: :func:`report`, one offline ``report.html`` (figures embedded, no scripts), and
  :func:`headline`, the one-line result every command prints.

What does not: computing scores. This package reads evaluation results (the plain dataclasses of
``kktrecon.results``) and the files the stages wrote; it never imports ``kktrecon.evaluation``, not
even for types, and evaluation never imports it (a test checks the import graph). The composition
"evaluate, then draw" is ``kktrecon.pipelines``.
"""

from __future__ import annotations

from kktrecon.reporting.figures import (
    FIGURES,
    plot_loss_history,
    plot_pairs,
    plot_ssim_vs_output,
    plot_toy,
    save_figures,
)
from kktrecon.reporting.html import headline, report

__all__ = [
    "FIGURES",
    "headline",
    "plot_loss_history",
    "plot_pairs",
    "plot_ssim_vs_output",
    "plot_toy",
    "report",
    "save_figures",
]
