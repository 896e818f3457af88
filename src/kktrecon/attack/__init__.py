"""The attack: from a victim's weights alone to candidate training samples (Haim et al. 2022, §4).

What lives here:

- ``objectives.py``: the objective registry (``binary``, ``multiclass``, …): margins, training
  losses and the stationarity sum of each kind of KKT condition. A new kind is one entry.
- ``kkt.py``: stationarity math shared by the attack and the diagnostic (per-sample gradient Gram
  matrices, the NNLS fit of λ ≥ 0).
- ``engine.py``: :func:`reconstruct`, the optimisation loop with atomic, bit-identical checkpoints.

What does not: data sets, training images and scores. Nothing in this package imports
``kktrecon.data`` or ``kktrecon.evaluation`` (a test checks it): the threat model is an attacker
who holds the weights and nothing else.
"""

from __future__ import annotations

from kktrecon.attack.engine import ReconstructionConfig, ReconstructionResult, attack_loss, initial_state, reconstruct
from kktrecon.attack.kkt import KKTDiagnosis, diagnose_model, fit_multipliers, kkt_gradients, per_sample_gram
from kktrecon.attack.objectives import OBJECTIVES, Objective, get_objective, register_objective
from kktrecon.errors import ReconstructionDivergedError

__all__ = [
    "OBJECTIVES",
    "KKTDiagnosis",
    "Objective",
    "ReconstructionConfig",
    "ReconstructionDivergedError",
    "ReconstructionResult",
    "attack_loss",
    "diagnose_model",
    "fit_multipliers",
    "get_objective",
    "initial_state",
    "kkt_gradients",
    "per_sample_gram",
    "reconstruct",
    "register_objective",
]
