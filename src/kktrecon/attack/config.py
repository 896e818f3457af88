"""The KKT attack's configuration and result, shared by the single-trial and the batched engines."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from kktrecon.attack.objectives import get_objective
from kktrecon.attack.splitting import SplitConfig
from kktrecon.candidates import CandidateSet
from kktrecon.checks import check_int, check_number, is_int
from kktrecon.configs import register_nested
from kktrecon.devices import resolve_dtype
from kktrecon.errors import ConfigError

__all__ = ["ReconstructionConfig", "ReconstructionResult"]


@dataclass(frozen=True)
class ReconstructionConfig:
    """Hyperparameters of the attack. Defaults: the reference's released MNIST winner.

    Args:
        objective: the KKT conditions to invert, a key of the objective registry (``binary``,
            ``multiclass``, ``multiclass-full``, ``regression``); None: the one the victim was trained for.
        candidates: number of candidates m; None means 2n with n read from the victim.
        iterations: optimisation steps (reference: 50,000).
        init_scale: candidates start at N(0, 1)·init_scale.
        lr: SGD step size for the candidates x.
        lambda_lr: SGD step size for the multipliers λ.
        lambda_min: λ hinge threshold; λⱼ below it is penalised.
        alpha: slope of the modified ReLU's sigmoid derivative.
        momentum: SGD momentum for both optimisers.
        kkt_weight, prior_weight, lambda_weight: weights α₁, α₃, α₂ of the three loss terms
            (``prior_weight = 0`` turns the box prior off, as in the 2-D toy).
        box: the prior keeps x in [−box, box].
        tv_weight: weight of the total-variation prior on image candidates (0: off, the reference).
        seed: seed of the candidates' and multipliers' initialisation.
        dtype: ``float32`` or ``float64``.
        checkpoint_every: iterations between checkpoints (0: never).
        log_every: iterations between points of the loss history.
        split: sample splitting (:mod:`kktrecon.attack.splitting`): every ``split.every`` iterations,
            candidates at a negative curvature of the loss split in two (m grows to ``split.budget``);
            None: never (the reference). Runs one trial at a time.
    """

    objective: str | None = None
    candidates: int | None = None
    iterations: int = 50_000
    init_scale: float = 0.035
    lr: float = 0.0305
    lambda_lr: float = 1e-4
    lambda_min: float = 0.447
    alpha: float = 150.0
    momentum: float = 0.9
    kkt_weight: float = 1.0
    prior_weight: float = 1.0
    lambda_weight: float = 5.0
    box: float = 1.0
    tv_weight: float = 0.0
    seed: int = 0
    dtype: str = "float32"
    checkpoint_every: int = 1000
    log_every: int = 100
    split: SplitConfig | None = None

    def __post_init__(self) -> None:
        resolve_dtype(self.dtype)
        if self.objective is not None:
            get_objective(self.objective)
        if self.candidates is not None and (not is_int(self.candidates) or self.candidates < 2 or self.candidates % 2):
            raise ConfigError(
                f"Expected `candidates` to be an even number >= 2 (half per label). Got {self.candidates}."
            )
        for name in ("init_scale", "lr", "alpha", "box"):
            check_number(name, getattr(self, name), low=0, low_open=True)
        for name in ("lambda_lr", "lambda_min", "kkt_weight", "prior_weight", "lambda_weight", "tv_weight"):
            check_number(name, getattr(self, name), low=0)
        check_number("momentum", self.momentum, low=0, high=1, high_open=True)
        check_int("iterations", self.iterations, low=0)
        check_int("checkpoint_every", self.checkpoint_every, low=0)
        check_int("log_every", self.log_every, low=1)
        check_int("seed", self.seed)


register_nested("ReconstructionConfig", "split", SplitConfig)


@dataclass
class ReconstructionResult:
    """Candidates x (m, *input_shape), multipliers λ (m,), labels y (m,) in ±1, and the loss history.

    ``candidates`` is the same as a :class:`~kktrecon.candidates.CandidateSet` with its provenance.
    """

    x: torch.Tensor
    lam: torch.Tensor
    y: torch.Tensor
    history: list[dict[str, float]]
    out_dir: Path | None
    seconds: float
    candidates: CandidateSet | None = None
