"""The objective registry: which KKT conditions the attack inverts, chosen by name.

Each :class:`Objective` says, for one kind of victim, what a training sample's margin is, how the
victim was trained (the loss whose gradient flow leads to the KKT point), and which combination of
per-sample gradients the stationarity condition equates with θ (Haim et al. 2022, eq. 3; Buzaglo et
al. 2023 for more outputs). The attack, the trainer, the diagnostic and the evaluation all ask the
objective instead of branching on the number of outputs, so a new kind is one more entry here.

- ``binary``: one logit Φ; labels y ∈ {−1, +1}; margin yΦ(x); θ = Σⱼ λⱼ yⱼ ∇θΦ(xⱼ), λ ≥ 0.
- ``multiclass``: K logits; margin Φ_y(x) − max_{k≠y} Φ_k(x) with one λ per sample (decoreco's form).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kktrecon.errors import ConfigError
from kktrecon.registry import Registry

__all__ = ["OBJECTIVES", "Objective", "default_objective", "get_objective", "register_objective"]


@dataclass(frozen=True)
class Objective:
    """One kind of KKT condition (base class; subclasses implement the methods).

    Attributes:
        name: registry key, recorded in manifests.
        description: one line for help texts.
    """

    name: str
    description: str

    def check_outputs(self, out: Tensor) -> None:
        """Raise when the victim's raw outputs (B, K) do not fit this objective."""
        raise NotImplementedError

    def margins(self, out: Tensor, labels: Tensor) -> Tensor:
        """Per-sample margins (B,) from raw outputs (B, K) and class indices (B,)."""
        raise NotImplementedError

    def training_loss(self, out: Tensor, labels: Tensor) -> Tensor:
        """The loss the victim is trained on (mean over samples)."""
        raise NotImplementedError

    def predictions(self, out: Tensor) -> Tensor:
        """Predicted class indices (B,)."""
        raise NotImplementedError

    def candidate_labels(self, m: int, num_outputs: int) -> Tensor:
        """Labels of m attack candidates: as many per class as m allows, classes in order."""
        raise NotImplementedError

    def kkt_sum(self, out: Tensor, lam: Tensor, labels: Tensor) -> Tensor:
        """(1/m) Σⱼ λⱼ gⱼ(Φ(xⱼ)): its θ-gradient is the sum the stationarity condition equates with θ."""
        raise NotImplementedError


@dataclass(frozen=True)
class BinaryObjective(Objective):
    """One logit; class 0 is y = −1 and class 1 is y = +1 (the paper's setting)."""

    def check_outputs(self, out: Tensor) -> None:
        if out.dim() != 2 or out.shape[1] != 1:
            raise ConfigError(
                f"Expected a binary model with output shape (B, 1). Got {tuple(out.shape)}; multiclass KKT is not "
                "supported yet."
            )

    def margins(self, out: Tensor, labels: Tensor) -> Tensor:
        return signs_of(labels, out.dtype) * out[:, 0]

    def training_loss(self, out: Tensor, labels: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(out[:, 0], labels.to(out.dtype))

    def predictions(self, out: Tensor) -> Tensor:
        return (out[:, 0] > 0).long()

    def candidate_labels(self, m: int, num_outputs: int) -> Tensor:
        # y = (−1, …, −1, +1, …, +1), half each, as the reference code.
        return torch.cat([-torch.ones(m // 2), torch.ones(m - m // 2)])

    def kkt_sum(self, out: Tensor, lam: Tensor, labels: Tensor) -> Tensor:
        self.check_outputs(out)
        return (out[:, 0] * (lam * labels / out.shape[0])).sum()


@dataclass(frozen=True)
class MulticlassObjective(Objective):
    """K logits; the margin of a sample is its true logit minus the largest other one."""

    def check_outputs(self, out: Tensor) -> None:
        if out.dim() != 2 or out.shape[1] < 2:
            raise ConfigError(f"Expected a multiclass model with output shape (B, K), K >= 2. Got {tuple(out.shape)}.")

    def margins(self, out: Tensor, labels: Tensor) -> Tensor:
        idx = labels.long()[:, None]
        true = out.gather(1, idx)[:, 0]
        others = out.scatter(1, idx, -math.inf).max(dim=1).values
        return true - others

    def training_loss(self, out: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(out, labels)

    def predictions(self, out: Tensor) -> Tensor:
        return out.argmax(dim=1)

    def candidate_labels(self, m: int, num_outputs: int) -> Tensor:
        return torch.arange(m) * num_outputs // m

    def kkt_sum(self, out: Tensor, lam: Tensor, labels: Tensor) -> Tensor:
        self.check_outputs(out)
        return (lam * self.margins(out, labels)).sum() / out.shape[0]


def signs_of(labels: Tensor, dtype: torch.dtype) -> Tensor:
    """Binary labels as ±1: class indices 0/1 map to −1/+1, labels already in {−1, +1} stay."""
    labels = labels.to(dtype)
    return labels if bool((labels < 0).any()) else 2 * labels - 1


#: The objective registry. Add entries with :func:`register_objective`.
OBJECTIVES: Registry[Objective] = Registry("objective", ConfigError)


def register_objective(objective: Objective) -> Objective:
    """Add ``objective`` to :data:`OBJECTIVES`, refusing to replace an existing entry."""
    return OBJECTIVES.register(objective.name, objective)


def get_objective(name: str) -> Objective:
    """The objective called ``name``; unknown names list the registered ones."""
    return OBJECTIVES.get_entry(name)


def default_objective(num_outputs: int) -> Objective:
    """The objective a classifier with ``num_outputs`` logits was trained for."""
    return OBJECTIVES["binary" if num_outputs == 1 else "multiclass"]


register_objective(BinaryObjective("binary", "one logit, labels ±1, margin yΦ(x) (Haim et al. 2022)"))
register_objective(
    MulticlassObjective("multiclass", "K logits, margin Φ_y(x) − max_{k≠y} Φ_k(x), one λ per sample (decoreco)")
)
