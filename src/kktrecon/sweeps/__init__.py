"""Sweeps: make the attack work on a victim nobody tuned it for, and say which candidates are real.

What lives here:

- ``study.py``: :func:`sweep`, an Optuna study in SQLite over the reference search space; every
  trial is an ordinary reconstruction directory; killed sweeps resume without losing or repeating
  a trial; a wall-time budget.
- ``backends.py``: where trial batches run (``local``, ``ray``); K trials advance together as one
  program (:mod:`kktrecon.attack.batched`).
- ``selection.py``: oracle-free evidence per candidate (agreement between trials, margin, λ) and
  the ``kkt`` trial score.
- ``pooling.py``: the top trials' candidates pooled and ranked as an attacker would, distinct ones first.

What does not: the attack itself (``kktrecon.attack``) and the oracle verdict
(``kktrecon.evaluation``), which sweeps call but never replace.
"""

from __future__ import annotations

from kktrecon.sweeps.pooling import SweepPool, pool_sweep
from kktrecon.sweeps.selection import Features, candidate_features
from kktrecon.sweeps.study import OFFICIAL_SPACE, Parameter, SweepConfig, SweepResult, sweep

__all__ = [
    "OFFICIAL_SPACE",
    "Features",
    "Parameter",
    "SweepConfig",
    "SweepPool",
    "SweepResult",
    "candidate_features",
    "pool_sweep",
    "sweep",
]
