"""The objective registry: which KKT conditions the attack inverts, chosen by name.

Each :class:`Objective` says, for one kind of victim, how it was trained (the loss whose gradient
flow leads to a KKT point), what a training sample's margin is, and which combination of
per-sample gradients the stationarity condition equates with θ (Haim et al. 2022, eq. 3; Buzaglo,
Haim et al. 2023 for more outputs, weight decay and other losses). The trainer, the attack, the
diagnostic and the evaluation all ask the objective instead of branching on the number of outputs,
so a new kind is one more entry here.

- ``binary``: one logit Φ; labels y ∈ {−1, +1}; θ = Σⱼ λⱼ yⱼ ∇θΦ(xⱼ), λ ≥ 0 (the paper).
- ``multiclass``: K logits; one λⱼ ≥ 0 per sample on its margin Φ_{yⱼ}(xⱼ) − max_{k≠yⱼ} Φ_k(xⱼ)
  (decoreco's form: at a KKT point only the binding constraint of each sample is active).
- ``multiclass-full``: K logits; one λⱼₖ ≥ 0 per sample and wrong class k on Φ_{yⱼ}(xⱼ) − Φ_k(xⱼ),
  the full KKT conditions of the multiclass max-margin problem.
- ``regression``: one output trained by squared error; θ = Σⱼ λⱼ ∇θΦ(xⱼ) with λ free in sign and no
  λ_min (decoreco's general-loss form; weight decay leads to the same condition).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kktrecon.errors import ConfigError
from kktrecon.registry import Registry

__all__ = [
    "OBJECTIVES",
    "Objective",
    "default_objective",
    "get_objective",
    "register_objective",
    "signs_of",
]


@dataclass(frozen=True)
class Objective(ABC):
    """One kind of KKT condition.

    Attributes:
        name: registry key, recorded in manifests.
        description: one line for help texts.
        signed_multipliers: λ may take either sign (no λ_min hinge), as for regression.
        classification: outputs are class scores (accuracy is meaningful); False for regression.
    """

    name: str
    description: str
    signed_multipliers: bool = False
    classification: bool = True

    @abstractmethod
    def check_outputs(self, out: Tensor) -> None:
        """Raise when the victim's raw outputs (B, K) do not fit this objective."""

    @abstractmethod
    def training_loss(self, out: Tensor, labels: Tensor) -> Tensor:
        """The loss the victim is trained on (mean over samples); ``labels`` as :meth:`targets` gives them."""

    @abstractmethod
    def margins(self, out: Tensor, labels: Tensor) -> Tensor:
        """Per-sample margins (B,): how far each sample is on the right side (classification), or −|residual|."""

    def num_outputs(self, num_classes: int) -> int:
        """How many outputs a victim of a task with ``num_classes`` classes has."""
        return 1

    def targets(self, labels: Tensor, values: tuple[float, ...]) -> Tensor:
        """What the loss and the margins compare the outputs with: class indices, or regression targets."""
        return labels

    @abstractmethod
    def errors(self, out: Tensor, labels: Tensor) -> Tensor:
        """Per-sample training error (B,): 1 where misclassified (classification), the squared residual else."""

    @abstractmethod
    def candidate_labels(self, m: int, num_outputs: int) -> Tensor:
        """Labels of m attack candidates: as many per class as m allows, classes in order."""

    def candidate_targets(self, labels: Tensor) -> Tensor:
        """Candidate labels as :meth:`training_loss` takes them (binary: ±1 → 0/1; others: as they are)."""
        return labels

    def init_lambda(self, m: int, num_outputs: int, gen: torch.Generator) -> Tensor:
        """Initial multipliers, float64 on the CPU: U[0, 1], one per candidate (the reference)."""
        return torch.rand(m, generator=gen, dtype=torch.float64)

    def terms(self, out: Tensor, labels: Tensor) -> Tensor:
        """gᵢ (B,), the per-sample functions whose θ-gradients the stationarity condition combines
        (one per sample; ``multiclass-full`` uses its binding constraint here)."""
        return self.margins(out, labels)

    @abstractmethod
    def kkt_sum(self, out: Tensor, lam: Tensor, labels: Tensor) -> Tensor:
        """(1/m) Σⱼ λⱼ gⱼ(Φ(xⱼ)): its θ-gradient is the combination the stationarity condition equates with θ."""

    def output_gradient(self, out: Tensor, lam: Tensor, labels: Tensor) -> Tensor:
        """∂(kkt_sum)/∂out (B, K), differentiable in λ but not through ``out``: no double backward.

        Every kkt_sum is linear in λ and each candidate's term depends on its own outputs only,
        piecewise linearly, so the gradient is λ times a gradient taken once per multiplier column with
        λ = 1: a constant of the outputs almost everywhere. The Gram form back-propagates it by hand;
        a graph free of ``create_graph`` is one ``torch.compile`` can capture.
        """
        probe = out.detach().requires_grad_(True)
        columns = [None] if lam.dim() == 1 else range(lam.shape[1])
        total = torch.zeros_like(out)
        with torch.enable_grad():
            for c in columns:
                ones = torch.ones_like(lam) if c is None else torch.zeros_like(lam).index_fill_(1, torch.tensor([c]), 1)
                (unit,) = torch.autograd.grad(self.kkt_sum(probe, ones.detach(), labels), probe)
                total = total + unit * (lam if c is None else lam[:, c])[:, None]
        return total

    def lambda_penalty(self, lam: Tensor, lambda_min: float, labels: Tensor) -> Tensor:
        """Σ relu(λ_min − λ)²: keeps multipliers away from zero (a sample off the margin has λ = 0)."""
        return (lambda_min - lam).relu().pow(2).sum()

    def multiplier_weights(self, lam: Tensor, labels: Tensor) -> Tensor:
        """One non-negative weight per candidate (m,) for reports and rankings: |λ|, summed over classes."""
        return lam.abs() if lam.dim() == 1 else lam.abs().sum(dim=1)


@dataclass(frozen=True)
class BinaryObjective(Objective):
    """One logit; class 0 is y = −1 and class 1 is y = +1 (the paper's setting)."""

    def check_outputs(self, out: Tensor) -> None:
        if out.dim() != 2 or out.shape[1] != 1:
            raise ConfigError(
                f"Expected a binary model with output shape (B, 1) for objective 'binary'. Got {tuple(out.shape)}; "
                "use --objective multiclass for K outputs."
            )

    def training_loss(self, out: Tensor, labels: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(out[:, 0], labels.to(out.dtype))

    def margins(self, out: Tensor, labels: Tensor) -> Tensor:
        return signs_of(labels, out.dtype) * out[:, 0]

    def errors(self, out: Tensor, labels: Tensor) -> Tensor:
        return ((out[:, 0] > 0).long() != labels).to(out.dtype)

    def candidate_labels(self, m: int, num_outputs: int) -> Tensor:
        # y = (−1, …, −1, +1, …, +1), half each, as the reference code.
        return torch.cat([-torch.ones(m // 2), torch.ones(m - m // 2)])

    def candidate_targets(self, labels: Tensor) -> Tensor:
        return (labels > 0).to(labels.dtype)

    def kkt_sum(self, out: Tensor, lam: Tensor, labels: Tensor) -> Tensor:
        self.check_outputs(out)
        return (out[:, 0] * (lam * labels / out.shape[0])).sum()


@dataclass(frozen=True)
class MulticlassObjective(Objective):
    """K logits; a sample's margin is its true logit minus the largest other one."""

    def check_outputs(self, out: Tensor) -> None:
        if out.dim() != 2 or out.shape[1] < 2:
            raise ConfigError(
                f"Expected a multiclass model with output shape (B, K), K >= 2, for objective {self.name!r}. "
                f"Got {tuple(out.shape)}."
            )

    def num_outputs(self, num_classes: int) -> int:
        return num_classes

    def training_loss(self, out: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(out, labels.long())

    def margins(self, out: Tensor, labels: Tensor) -> Tensor:
        idx = labels.long()[:, None]
        return out.gather(1, idx)[:, 0] - out.scatter(1, idx, -math.inf).max(dim=1).values

    def errors(self, out: Tensor, labels: Tensor) -> Tensor:
        return (out.argmax(dim=1) != labels).to(out.dtype)

    def candidate_labels(self, m: int, num_outputs: int) -> Tensor:
        return (torch.arange(m) * num_outputs // m).to(torch.float32)

    def kkt_sum(self, out: Tensor, lam: Tensor, labels: Tensor) -> Tensor:
        self.check_outputs(out)
        return (lam * self.margins(out, labels)).sum() / out.shape[0]


@dataclass(frozen=True)
class FullMulticlassObjective(MulticlassObjective):
    """K logits; one multiplier per sample and wrong class, on Φ_y − Φ_k (the full KKT conditions)."""

    def init_lambda(self, m: int, num_outputs: int, gen: torch.Generator) -> Tensor:
        return torch.rand(m, num_outputs, generator=gen, dtype=torch.float64)

    def kkt_sum(self, out: Tensor, lam: Tensor, labels: Tensor) -> Tensor:
        self.check_outputs(out)
        wrong = self._wrong(out, labels)
        gaps = out.gather(1, labels.long()[:, None]) - out  # Φ_y − Φ_k, zero in the true column
        return (lam * wrong * gaps).sum() / out.shape[0]

    def lambda_penalty(self, lam: Tensor, lambda_min: float, labels: Tensor) -> Tensor:
        # Only the K − 1 wrong-class multipliers exist; the true-class column is unused and unpenalised.
        return ((lambda_min - lam).relu().pow(2) * self._wrong(lam, labels)).sum()

    @staticmethod
    def _wrong(out: Tensor, labels: Tensor) -> Tensor:
        return torch.ones_like(out).scatter(1, labels.long()[:, None], 0.0)


@dataclass(frozen=True)
class RegressionObjective(Objective):
    """One output trained by squared error; λ free in sign on Φ(x), no λ_min (decoreco's general losses)."""

    def check_outputs(self, out: Tensor) -> None:
        if out.dim() != 2 or out.shape[1] != 1:
            raise ConfigError(
                "Expected a regression model with output shape (B, 1) for objective 'regression'. "
                f"Got {tuple(out.shape)}."
            )

    def targets(self, labels: Tensor, values: tuple[float, ...]) -> Tensor:
        if not values:
            raise ConfigError("Expected a regression task (with target values) for objective 'regression'.")
        return torch.as_tensor(values, dtype=torch.float64, device=labels.device)[labels.long()]

    def training_loss(self, out: Tensor, labels: Tensor) -> Tensor:
        return F.mse_loss(out[:, 0], labels.to(out.dtype))

    def margins(self, out: Tensor, labels: Tensor) -> Tensor:
        return -(out[:, 0] - labels.to(out.dtype)).abs()

    def terms(self, out: Tensor, labels: Tensor) -> Tensor:
        return out[:, 0]

    def errors(self, out: Tensor, labels: Tensor) -> Tensor:
        return (out[:, 0] - labels.to(out.dtype)).pow(2)

    def candidate_labels(self, m: int, num_outputs: int) -> Tensor:
        return torch.zeros(m)

    def init_lambda(self, m: int, num_outputs: int, gen: torch.Generator) -> Tensor:
        return torch.randn(m, generator=gen, dtype=torch.float64)

    def kkt_sum(self, out: Tensor, lam: Tensor, labels: Tensor) -> Tensor:
        self.check_outputs(out)
        return (out[:, 0] * lam / out.shape[0]).sum()

    def lambda_penalty(self, lam: Tensor, lambda_min: float, labels: Tensor) -> Tensor:
        return lam.sum() * 0.0


def signs_of(labels: Tensor, dtype: torch.dtype) -> Tensor:
    """Binary labels as ±1: class indices 0/1 map to −1/+1, labels already in {−1, +1} stay."""
    labels = labels.to(dtype)
    return torch.where(labels < 0, labels, 2 * labels - 1)  # elementwise, so that torch.func can vmap it


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
register_objective(MulticlassObjective("multiclass", "K logits, one λ per sample on Φ_y − max_{k≠y} Φ_k (decoreco)"))
register_objective(
    FullMulticlassObjective("multiclass-full", "K logits, one λ per sample and wrong class on Φ_y − Φ_k (full KKT)")
)
register_objective(
    RegressionObjective(
        "regression",
        "one output, squared error, λ free in sign on Φ(x) (decoreco)",
        signed_multipliers=True,
        classification=False,
    )
)
