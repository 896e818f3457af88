"""Sample splitting (Shen, Wang, Qian & Lei, arXiv 2602.08723, 2026): leave a stalled stationary point.

When descent on the KKT loss L = ‖r‖², r = θ − ∇θS(x, λ) (S the objective's stationarity sum), stalls
with one candidate standing for several training points, no move of that candidate lowers L: its
Gauss-Newton term is positive. Replacing xᵢ (multiplier λᵢ) by two copies xᵢ ± εv with λᵢ/2 each
cancels the first-order change, so that

    L(split) = L + ε²/2 · vᵀ Sᵢ v + O(ε⁴),   Sᵢ = ∇²ₓ hᵢ(xᵢ),   hᵢ(x) = −2 r·∇θ[λᵢ yᵢ Φ(θ; x) / m]

(r held fixed). Where Sᵢ has a negative eigenvalue, splitting along its eigenvector lowers the loss.

Which curvature: ReLU's Hessian in x vanishes almost everywhere (∇θΦ is piecewise linear in x), so Sᵢ
of the real network is zero wherever it is defined. The attack already differentiates through the
modified ReLU (derivative sigmoid(α·z) in place of ReLU's step), and that is the gradient field whose
descent stalls, so Sᵢ is autograd's Hessian of hᵢ through the same surrogate derivative. It is a
direction finder, not the loss's exact curvature (the loss's forward pass keeps ReLU's values: on a
2-32-1 test victim the loss fell ≈ 6× faster along it than the estimate said, but as ε², as a split
must). Its smallest eigenpair per candidate comes from shifted power iteration on Hessian-vector
products; ε is the best of a few step sizes judged by the loss itself, so a split is kept only where
it lowers the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kktrecon.attack.kkt import stationarity_residual
from kktrecon.attack.objectives import Objective
from kktrecon.checks import check_int, check_number

__all__ = ["SplitConfig", "SplitOutcome", "as_split", "smallest_curvature", "split_candidates"]


@dataclass(frozen=True)
class SplitConfig:
    """When and how much to split.

    Args:
        every: iterations between split steps (the first after ``every`` iterations).
        max_splits: candidates split at most per step (the most negative curvature first).
        budget: the candidate count m may grow to this (None: twice the initial m).
        power_iterations: Hessian-vector products per eigenpair estimate.
        tol: a curvature counts as negative below −tol × the largest |curvature| of the step.
        steps: the step sizes ε tried (relative to the candidates' RMS norm); the best is taken.
        min_gain: a split is kept only if it lowers the KKT term by more than this × ‖θ‖² (not by rounding).
    """

    every: int = 2000
    max_splits: int = 4
    budget: int | None = None
    power_iterations: int = 20
    tol: float = 1e-3
    steps: tuple[float, ...] = (0.3, 0.1, 0.03, 0.01)
    min_gain: float = 1e-6

    def __post_init__(self) -> None:
        check_int("split.every", self.every, low=1)
        check_int("split.max_splits", self.max_splits, low=1)
        if self.budget is not None:
            check_int("split.budget", self.budget, low=2)
        check_int("split.power_iterations", self.power_iterations, low=2)
        check_number("split.tol", self.tol, low=0)
        for step in self.steps:
            check_number("split.steps", step, low=0, low_open=True)
        check_number("split.min_gain", self.min_gain, low=0)


@dataclass
class SplitOutcome:
    """The candidates after a split step, which were split, and the KKT loss before and after."""

    x: Tensor
    lam: Tensor
    y: Tensor
    split: list[int]
    curvature: Tensor  # each candidate's smallest curvature before the step, (m,)
    loss_before: float
    loss_after: float


def _kkt_loss(model: nn.Module, objective: Objective, x: Tensor, lam: Tensor, y: Tensor) -> Tensor:
    """The attack's stationarity term ‖θ − ∇θS‖² (S = kkt_sum, normalised by the current m)."""
    with torch.enable_grad():
        return stationarity_residual(model, objective.kkt_sum(model(x), lam, y), create_graph=False)


def smallest_curvature(
    model: nn.Module, objective: Objective, x: Tensor, lam: Tensor, y: Tensor, *, iterations: int = 20
) -> tuple[Tensor, Tensor]:
    """Each candidate's smallest eigenvalue of Sᵢ and its unit eigenvector: (m,), (m, *input_shape).

    Sᵢ is block-diagonal over candidates (S is a sum over them), so one Hessian-vector product
    serves all m; shifted power iteration (first ρᵢ ≈ the largest |eigenvalue|, then ρᵢ − Sᵢ) finds
    the smallest eigenpair of every block at once.
    """
    params = list(model.parameters())
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        s = objective.kkt_sum(model(x), lam.detach(), y)
        grads = torch.autograd.grad(s, params, create_graph=True)
        residual = [p.detach() - g.detach() for p, g in zip(params, grads, strict=True)]
        h = -2 * sum((r * g).sum() for r, g in zip(residual, grads, strict=True))
        (grad_h,) = torch.autograd.grad(h, x, create_graph=True)

    def hvp(v: Tensor) -> Tensor:
        if not grad_h.requires_grad:  # h is linear in x (a linear victim): no curvature
            return torch.zeros_like(v)
        (out,) = torch.autograd.grad(grad_h, x, v, retain_graph=True)
        return out

    def unit(v: Tensor) -> Tensor:
        norms = v.reshape(v.shape[0], -1).norm(dim=1).clamp_min(1e-30)
        return v / norms.reshape(-1, *([1] * (v.dim() - 1)))

    def rayleigh(v: Tensor) -> Tensor:
        return (v * hvp(v)).reshape(v.shape[0], -1).sum(dim=1)

    gen = torch.Generator().manual_seed(0)
    v = unit(torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device))
    for _ in range(iterations // 2):
        v = unit(hvp(v))
    rho = rayleigh(v).abs().reshape(-1, *([1] * (x.dim() - 1)))
    w = unit(torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device))
    for _ in range(iterations):
        w = unit(rho * w - hvp(w))
    return rayleigh(w).detach(), w.detach()


def split_candidates(
    model: nn.Module, objective: Objective, x: Tensor, lam: Tensor, y: Tensor, config: SplitConfig, *, budget: int
) -> SplitOutcome:
    """One split step: candidates of clearly negative curvature split in two along it where the loss drops.

    The stationarity sum is normalised by m (S = (1/m) Σ λⱼ gⱼ), so after a split to m' candidates every
    λ is rescaled by m'/m: each candidate keeps its weight λ/m, a split one's two copies half of it each.

    Args:
        model: the attack's copy of the victim (modified ReLU).
        objective, x, lam, y: the KKT conditions and the candidates (x (m, …), λ (m,), labels (m,)).
        config: how many to split at most, the step sizes.
        budget: the candidate count may grow to this.
    """
    x, lam, y = x.detach(), lam.detach(), y.detach()
    before = float(_kkt_loss(model, objective, x, lam, y))
    curvature, direction = smallest_curvature(model, objective, x, lam, y, iterations=config.power_iterations)
    room = min(config.max_splits, budget - x.shape[0])
    scale = float(curvature.abs().max()) if curvature.numel() else 0.0
    negative = [int(i) for i in torch.argsort(curvature) if curvature[i] < -config.tol * scale]
    chosen = negative[: max(room, 0)]
    if lam.dim() != 1 or not chosen:
        return SplitOutcome(x, lam, y, [], curvature, before, before)
    rms = float(x.pow(2).mean().sqrt())
    norm_sq = float(sum((p.detach() ** 2).sum() for p in model.parameters()))
    best = (before - config.min_gain * norm_sq, None)
    for step in config.steps:
        trial = _split(x, lam, y, direction, chosen, step * rms)
        loss = float(_kkt_loss(model, objective, *trial))
        if loss < best[0]:
            best = (loss, trial)
    if best[1] is None:
        return SplitOutcome(x, lam, y, [], curvature, before, before)
    return SplitOutcome(*best[1], chosen, curvature, before, best[0])


def _split(
    x: Tensor, lam: Tensor, y: Tensor, direction: Tensor, chosen: list[int], eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    index = torch.tensor(chosen, device=x.device)
    grown = (x.shape[0] + len(chosen)) / x.shape[0]
    moved = as_split(x, index)
    moved[index] = moved[index] + eps * direction[index]
    moved[x.shape[0] :] = moved[x.shape[0] :] - eps * direction[index]
    return moved, as_split(lam, index, grown), as_split(y, index)


def as_split(values: Tensor, index: Tensor, grown: float | None = None) -> Tensor:
    """Per-candidate ``values`` after the candidates at ``index`` split, their copies appended in order.

    ``grown`` = m'/m: the values are multipliers (or their momentum), so the split ones' are halved and
    all rescaled by m'/m, keeping each candidate's weight λ/m; None copies them as they are (x, labels).
    """
    out = torch.cat([values, values[index]])
    if grown is not None:
        out[index] = out[index] / 2
        out[len(values) :] = out[len(values) :] / 2
        out = out * grown
    return out
