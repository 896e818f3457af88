"""The attack: from a victim's weights alone to candidate training samples (Haim et al. 2022, §4).

What lives here:

- ``objectives.py``: the objective registry (``binary``, ``multiclass``, …): margins, training
  losses and the stationarity sum of each kind of KKT condition. A new kind is one entry.
- ``kkt.py``: stationarity math shared by the attack and the diagnostic (per-sample gradient Gram
  matrices, the NNLS fit of λ ≥ 0).
- ``victim.py``: :class:`Victim`, the model under attack and what is known about it (every stage's one victim).
- ``families.py``: the registry of attack families (the KKT attack first), each a victim and a config in
  and a :class:`~kktrecon.candidates.CandidateSet` out.
- ``unmixing.py``: the owner's family ``unmix``: the first dense layer's change W₁ − W₁⁽⁰⁾ spans the training
  images (SGD); its row space, rank and an unmixing into images (needs the initial weights).
- ``delta.py``: the owner's family ``delta``: a dense layer behind any layers (a CNN's read-out) changes within
  the span of the training inputs' features; candidates whose features span it (needs the initial weights).
- ``simulation.py``: the owner's family ``simulate``: the recipe replayed from θ₀ on candidates (SimuDy);
  ``descent.py``: the Adam loop, checkpoints and resume the owner's gradient families share.
- ``config.py``, ``terms.py``, ``gram.py``: the KKT family's config, its loss as a list of terms, and the
  per-layer Gram rules that let K trials advance as one program.
- ``loop.py``: the one optimisation loop and the life of a trial (open, resume, checkpoint, finish).
- ``engine.py``: :func:`reconstruct`, one trial; ``batched.py``: K trials at once in Gram form.

What does not: data sets, training images and scores. Nothing in this package imports
``kktrecon.data`` or ``kktrecon.evaluation`` (a test checks it): the threat model is an attacker
who holds the weights and nothing else.
"""

from __future__ import annotations

from kktrecon.attack import delta as _delta  # noqa: F401  (registers the owner's family `delta`)
from kktrecon.attack import simulation as _simulation  # noqa: F401  (registers the owner's family `simulate`)
from kktrecon.attack import unmixing as _unmixing  # noqa: F401  (registers the owner's family `unmix`)
from kktrecon.attack.engine import ReconstructionConfig, ReconstructionResult, attack_loss, initial_state, reconstruct
from kktrecon.attack.families import ATTACKS, AttackFamily, get_attack, register_attack, run_attack
from kktrecon.attack.gram import GRAM_RULES, GramRule, register_gram_rule
from kktrecon.attack.kkt import KKTDiagnosis, diagnose_model, fit_multipliers, kkt_gradients, per_sample_gram
from kktrecon.attack.objectives import OBJECTIVES, Objective, get_objective, register_objective
from kktrecon.attack.victim import Preprocessing, Victim
from kktrecon.errors import ReconstructionDivergedError

__all__ = [
    "ATTACKS",
    "GRAM_RULES",
    "OBJECTIVES",
    "AttackFamily",
    "GramRule",
    "KKTDiagnosis",
    "Objective",
    "Preprocessing",
    "ReconstructionConfig",
    "ReconstructionDivergedError",
    "ReconstructionResult",
    "Victim",
    "attack_loss",
    "diagnose_model",
    "fit_multipliers",
    "get_attack",
    "get_objective",
    "initial_state",
    "kkt_gradients",
    "per_sample_gram",
    "reconstruct",
    "register_attack",
    "register_gram_rule",
    "register_objective",
    "run_attack",
]
