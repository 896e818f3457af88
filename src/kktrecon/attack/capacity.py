"""Counting before attacking: can the weights hold the training set at all? (Iurada et al., ICLR 2026)

A network with p parameters trained on n inputs of dimension d gives p numbers to solve for n·d
unknowns. "A law of data reconstruction" finds the whole training set recoverable when p ≫ d·n and
the recovered share collapsing as p/dn falls below one, whatever the attack. Our paper-regime MLP
(784-1000-1000-1, n = 20) has p/dn ≈ 114; the default CNN (convolutions 16/32, a linear read-out)
≈ 0.41, so its 0 of 20 is what counting predicts before it says anything about the attack.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

__all__ = ["Capacity", "capacity"]

#: (upper bound of p/dn, what it means), in order; the last bound is infinite.
READINGS: tuple[tuple[float, str], ...] = (
    (1.0, "p < d·n: fewer parameters than training-set values; the whole training set cannot be read back, "
          "and a zero recovered count is what counting predicts"),
    (10.0, "p ≈ d·n: near the transition; expect part of the training set back at best"),
    (math.inf, "p ≫ d·n: the weights have room for the whole training set (Iurada et al. 2026)"),
)  # fmt: skip


@dataclass(frozen=True)
class Capacity:
    """Parameter count p against input dimension × training-set size d·n, and what the ratio means."""

    parameters: int
    input_dim: int
    n_train: int

    @property
    def ratio(self) -> float:
        return self.parameters / (self.input_dim * self.n_train)

    @property
    def reading(self) -> str:
        return next(text for bound, text in READINGS if self.ratio < bound)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "dn": self.input_dim * self.n_train, "ratio": self.ratio, "reading": self.reading}

    def __str__(self) -> str:
        return f"p = {self.parameters:,}, d·n = {self.input_dim * self.n_train:,}, p/dn = {self.ratio:.3g}"


def capacity(model: nn.Module, input_shape: tuple[int, ...], n_train: int) -> Capacity:
    """The :class:`Capacity` of ``model`` (trainable parameters) for ``n_train`` inputs of ``input_shape``."""
    p = sum(t.numel() for t in model.parameters() if t.requires_grad)
    return Capacity(p, math.prod(input_shape), n_train)
