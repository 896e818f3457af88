"""Sweeps: make the attack work on a victim nobody tuned it for, and say which candidates are real.

What lives here:

- ``config.py``: :class:`SweepConfig`, the search space, the samplers and a sweep directory's files.
- ``study.py``: :func:`sweep`, an Optuna study in SQLite over the reference search space; every
  trial is an ordinary reconstruction directory; killed sweeps resume without losing or repeating
  a trial; a wall-time budget.
- ``backends.py``: where trial batches run (``local``, ``ray``); K trials advance together as one
  program (:mod:`kktrecon.attack.batched`).
- ``selection.py``: oracle-free evidence per candidate (agreement between trials, margin, λ) and
  the ``kkt`` trial score.
- ``pooling.py``: the top trials' candidates pooled and ranked as an attacker would, distinct ones first.

What does not: the attack itself (``kktrecon.attack``) and the oracle verdict
(``kktrecon.evaluation``), which no module here imports: the sweep is oracle-free by construction
(the research-only ``oracle`` objective is a score its caller hands in).
"""

from __future__ import annotations

from kktrecon.sweeps.config import CNN_SPACE, OFFICIAL_SPACE, SPACES, Parameter, SweepConfig
from kktrecon.sweeps.pooling import SweepPool, pool_sweep
from kktrecon.sweeps.selection import Features, candidate_features
from kktrecon.sweeps.study import SweepResult, sweep

__all__ = [
    "CNN_SPACE",
    "OFFICIAL_SPACE",
    "SPACES",
    "Features",
    "Parameter",
    "SweepConfig",
    "SweepPool",
    "SweepResult",
    "candidate_features",
    "pool_sweep",
    "sweep",
]
