"""kktrecon: read training data back out of trained weights.

Implements the KKT-based reconstruction attack of Haim, Vardi, Yehudai, Shamir & Irani,
*Reconstructing Training Data from Trained Neural Networks* (NeurIPS 2022): a network trained by
gradient descent on the logistic loss sits near a KKT point of the max-margin problem, so its
parameters are a non-negative combination of per-sample gradients at the training points; the
attack searches for inputs whose gradients explain the parameters.

The public API is one function per stage — :func:`train`, :func:`diagnose`, :func:`reconstruct`,
:func:`sweep`, :func:`evaluate`, :func:`report`, :func:`audit`, :func:`experiment` — with the frozen
config dataclasses they take — and the objects every stage shares: one :class:`Victim` (a model and
what is known about it), one :class:`CandidateSet` (what every attack returns and every verdict
reads) and attack families run by name (:func:`run_attack`). Each lives in the package named for its
stage and is imported on first use, so ``import kktrecon`` stays cheap; the command line
(``kktrecon.cli``) is a thin layer over these functions. docs/extending.md says how to add to them.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "load_dataset": "kktrecon.data",
    "DataConfig": "kktrecon.data",
    "MLPConfig": "kktrecon.models",
    "CNNConfig": "kktrecon.models",
    "ModelConfig": "kktrecon.models",
    "build_model": "kktrecon.models",
    "load_checkpoint": "kktrecon.models",
    "TrainConfig": "kktrecon.training",
    "train": "kktrecon.training",
    "diagnose": "kktrecon.victims",
    "Victim": "kktrecon.attack",
    "CandidateSet": "kktrecon.candidates",
    "ReconstructionConfig": "kktrecon.attack",
    "reconstruct": "kktrecon.attack",
    "run_attack": "kktrecon.attack",
    "EvaluationConfig": "kktrecon.evaluation",
    "evaluate": "kktrecon.pipelines",  # evaluation, then reporting's figures
    "report": "kktrecon.reporting",
    "KKTReconError": "kktrecon.errors",
    "SweepConfig": "kktrecon.sweeps",
    "sweep": "kktrecon.sweeps",
    "AuditConfig": "kktrecon.auditing",
    "audit": "kktrecon.auditing",
    "experiment": "kktrecon.experiments",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kktrecon' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
