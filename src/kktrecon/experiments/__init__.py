"""Experiments: the paper's figures and the follow-up's findings, one command each.

What lives here:

- ``grid.py``: :class:`Experiment` and :class:`Cell`, a declared grid of victims × attacks at CPU
  and paper scale.
- ``catalog.py``: :data:`EXPERIMENTS`, the paper's Fig. 2–4 and the follow-up's weight-decay,
  multiclass, CNN and regression findings, as data.
- ``runner.py``: :func:`experiment`, which trains, attacks, evaluates (resumable cell by cell) and
  writes a table and the paper-style figures.

What does not: the stages themselves; a cell is an ordinary victim, attack and evaluation run.
"""

from __future__ import annotations

from kktrecon.experiments.catalog import EXPERIMENTS, WINNERS
from kktrecon.experiments.grid import Cell, Experiment
from kktrecon.experiments.runner import ExperimentResult, experiment

__all__ = ["EXPERIMENTS", "WINNERS", "Cell", "Experiment", "ExperimentResult", "experiment"]
