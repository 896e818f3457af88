"""The KKT attack's loss as a list of terms (as breaching builds its loss from a regulariser lookup).

Each :class:`LossTerm` has a name (the key of its value in the loss history), the config field that
holds its weight, and two forms of one quantity: ``single`` for one trial (candidates (m, …), a
scalar, differentiated through autograd's double backward) and ``batched`` for K trials at once
(candidates (K, m, …), shape (K,), the stationarity term in Gram form). Both engines consume
:data:`TERMS` in order, so a term added here is optimised, logged and checkpointed by both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kktrecon.attack.kkt import stationarity_residual
from kktrecon.attack.objectives import Objective

__all__ = ["TERMS", "BatchedInputs", "LossTerm", "SingleInputs", "total_variation", "weighted_total"]


@dataclass(frozen=True)
class SingleInputs:
    """One trial: its attack copy of the victim, candidates, multipliers, labels, objective and config."""

    model: nn.Module
    x: Tensor
    lam: Tensor
    y: Tensor
    objective: Objective
    config: Any  # a ReconstructionConfig


@dataclass(frozen=True)
class BatchedInputs:
    """K trials: stacked candidates (K, m, …), per-trial hyperparameters (K,), and the stationarity term."""

    x: Tensor
    lam: Tensor
    y: Tensor
    objective: Objective
    lambda_min: Tensor
    box: float
    stationarity: Callable[[], Tensor]  # the Gram-form KKT term of the K trials, (K,)


@dataclass(frozen=True)
class LossTerm:
    """One term of the attack loss; see the module docstring."""

    name: str
    weight: str
    single: Callable[[SingleInputs], Tensor]
    batched: Callable[[BatchedInputs], Tensor]


def _kkt_single(inp: SingleInputs) -> Tensor:
    return stationarity_residual(inp.model, inp.objective.kkt_sum(inp.model(inp.x), inp.lam, inp.y), create_graph=True)


def _prior_single(inp: SingleInputs) -> Tensor:
    box = inp.config.box
    return (inp.x - box).relu().pow(2).sum() + (-box - inp.x).relu().pow(2).sum()


def _prior_batched(inp: BatchedInputs) -> Tensor:
    x, box = inp.x, inp.box
    return ((x - box).relu().pow(2) + (-box - x).relu().pow(2)).reshape(x.shape[0], -1).sum(dim=1)


def total_variation(x: Tensor, lead: int) -> Tensor:
    """Anisotropic total variation of images (…, C, H, W): the mean |difference| of neighbouring pixels,
    summed over the ``lead`` leading dimensions' images and shaped as them; 0 for inputs that are not images."""
    if x.dim() - lead != 3:
        return x.new_zeros(x.shape[:lead])
    rows = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(lead).mean(dim=-1)
    cols = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(lead).mean(dim=-1)
    return rows + cols


def _tv_single(inp: SingleInputs) -> Tensor:
    return total_variation(inp.x, 1).sum()


def _tv_batched(inp: BatchedInputs) -> Tensor:
    return total_variation(inp.x, 2).sum(dim=1)


def _hinge_single(inp: SingleInputs) -> Tensor:
    return inp.objective.lambda_penalty(inp.lam, inp.config.lambda_min, inp.y)


def _hinge_batched(inp: BatchedInputs) -> Tensor:
    return torch.stack(
        [inp.objective.lambda_penalty(inp.lam[t], inp.lambda_min[t], inp.y[t]) for t in range(inp.x.shape[0])]
    )


#: The attack loss, in order: stationarity (α₁), the box prior (α₃), the λ hinge (α₂), and total
#: variation (a smoothness prior on image candidates, "No Prior, No Leakage" 2025; off by default).
TERMS: tuple[LossTerm, ...] = (
    LossTerm("kkt", "kkt_weight", _kkt_single, lambda inp: inp.stationarity()),
    LossTerm("prior", "prior_weight", _prior_single, _prior_batched),
    LossTerm("lambda", "lambda_weight", _hinge_single, _hinge_batched),
    LossTerm("tv", "tv_weight", _tv_single, _tv_batched),
)


def weighted_total(values: Mapping[str, Tensor], weights: Callable[[int, LossTerm], Any]) -> dict[str, Tensor]:
    """``{"total": Σ weight·value, **values}``, summed in :data:`TERMS` order (the order fixes the rounding)."""
    total: Tensor | None = None
    for i, term in enumerate(TERMS):
        part = weights(i, term) * values[term.name]
        total = part if total is None else total + part
    assert total is not None
    return {"total": total, **values}
