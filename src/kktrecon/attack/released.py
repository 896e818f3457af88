"""The reference sweep's released winners: the attack settings published with the official code.

Haim et al. tuned the attack per victim with a ~100-run sweep scored against the training set and
released the two best settings for MNIST and CIFAR-10 (init_scale, lr, λ_min, α). They are the
attack's best prior knowledge of where good settings lie: the experiments run them, and a sweep
(:mod:`kktrecon.sweeps`) tries them first.
"""

from __future__ import annotations

import dataclasses

from kktrecon.attack.engine import ReconstructionConfig

__all__ = ["SWEPT", "WINNERS", "released_params", "winner"]

#: The names of the hyperparameters a released winner sets, in the order of :data:`WINNERS`.
SWEPT = ("init_scale", "lr", "lambda_min", "alpha")

#: The reference sweep's released winners (init_scale, lr, λ_min, α), by data set.
WINNERS: dict[str, tuple[tuple[float, float, float, float], ...]] = {
    "mnist": ((0.035, 0.0305, 0.447, 150.0), (0.00174, 0.282, 0.415, 19.2)),
    "cifar10": ((8.9e-4, 0.555, 0.498, 19.1), (4.5e-3, 0.346, 0.494, 21.7)),
}


def winner(dataset: str, which: int = 1, **fields: object) -> ReconstructionConfig:
    """A released winner (1 or 2) as an attack config, with ``fields`` replaced."""
    base = ReconstructionConfig(**dict(zip(SWEPT, WINNERS[dataset][which - 1], strict=True)))
    return dataclasses.replace(base, **fields)


def released_params(dataset: str | None = None) -> list[dict[str, float]]:
    """The released winners of ``dataset`` as parameter dicts; every data set's for an unknown one."""
    sets = [WINNERS[dataset]] if dataset in WINNERS else list(WINNERS.values())
    return [dict(zip(SWEPT, values, strict=True)) for pair in sets for values in pair]
