"""KKT stationarity of the max-margin problem: the shared math of the diagnostic and the attack.

At a KKT point of min ½‖θ‖² s.t. yᵢΦ(θ; xᵢ) ≥ 1 (Haim et al. 2022, eq. 3),

    θ = Σᵢ λᵢ yᵢ ∇θΦ(θ; xᵢ),  λᵢ ≥ 0,  λᵢ = 0 unless yᵢΦ(θ; xᵢ) = 1.

:func:`kkt_gradients` computes Σⱼ cⱼ ∇θΦ(θ; xⱼ) for any coefficients (the attack differentiates it
again, with ``create_graph``); :func:`diagnose` fits λ ≥ 0 for a victim's true training set by
non-negative least squares and reports how far the victim is from stationarity.

This module sees weights and, for the diagnostic, inputs handed to it; it never loads a data set
(``kktrecon.victims.diagnose`` does that for a victim directory).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.optimize import nnls
from torch import nn

from kktrecon.errors import ConfigError, UnsupportedModelError

__all__ = [
    "KKTDiagnosis",
    "diagnose_model",
    "fit_multipliers",
    "kkt_gradients",
    "per_sample_gram",
    "scalar_output",
    "stationarity_loss",
    "stationarity_residual",
]


def scalar_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Φ(θ; x) of a binary model: its single logit, shape (B,)."""
    out = model(x)
    if out.dim() != 2 or out.shape[1] != 1:
        raise ConfigError(
            f"Expected a binary model with output shape (B, 1). Got {tuple(out.shape)}; multiclass KKT is not "
            "supported yet."
        )
    return out[:, 0]


def kkt_gradients(
    model: nn.Module, x: torch.Tensor, coeffs: torch.Tensor, *, create_graph: bool = False
) -> tuple[torch.Tensor, ...]:
    """∇θ Σⱼ cⱼ Φ(θ; xⱼ), one tensor per parameter of ``model`` in ``parameters()`` order."""
    params = [p for p in model.parameters()]
    out = scalar_output(model, x)
    return torch.autograd.grad((out * coeffs).sum(), params, create_graph=create_graph)


def stationarity_loss(model: nn.Module, x: torch.Tensor, coeffs: torch.Tensor, *, create_graph: bool) -> torch.Tensor:
    """Σ_layers ‖θ_l − ∇_{θ_l} Σⱼ cⱼ Φ(xⱼ)‖² for a binary model, the reference attack's KKT term."""
    return stationarity_residual(model, (scalar_output(model, x) * coeffs).sum(), create_graph=create_graph)


def stationarity_residual(model: nn.Module, weighted_sum: torch.Tensor, *, create_graph: bool) -> torch.Tensor:
    """Σ_layers ‖θ_l − ∇_{θ_l} S‖² for a scalar S built from the model's outputs (an objective's ``kkt_sum``)."""
    params = list(model.parameters())
    grads = torch.autograd.grad(weighted_sum, params, create_graph=create_graph)
    return sum(((p.detach() - g) ** 2).sum() for p, g in zip(params, grads, strict=True))


def per_sample_gram(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gram matrix of the per-sample gradients without materialising them, for Linear/ReLU models.

    For a linear layer z = W a + b, ∇_W Φ(xᵢ) = δᵢ aᵢᵀ with δ = ∂Φ/∂z, so
    ⟨∇_W Φ(xᵢ), ∇_W Φ(xⱼ)⟩ = (δᵢ·δⱼ)(aᵢ·aⱼ) and ⟨∇_W Φ(xᵢ), W⟩ + ⟨∇_b Φ(xᵢ), b⟩ = δᵢ·zᵢ.

    Returns:
        K (n, n) with K_ij = ⟨∇θΦ(xᵢ), ∇θΦ(xⱼ)⟩, p (n,) with pᵢ = ⟨∇θΦ(xᵢ), θ⟩, and Φ(x) (n,).
    """
    captured: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        output.retain_grad()
        captured.append((module, inputs[0].reshape(inputs[0].shape[0], -1), output))  # type: ignore[arg-type]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)  # makes every layer output part of a graph
            out = scalar_output(model, xx)
            out.sum().backward(inputs=[xx])
    finally:
        for h in handles:
            h.remove()
    n = x.shape[0]
    gram = torch.zeros(n, n, dtype=x.dtype, device=x.device)
    proj = torch.zeros(n, dtype=x.dtype, device=x.device)
    for module, a, z in captured:
        delta = z.grad.detach()
        a = a.detach()
        dd = delta @ delta.T
        gram += dd * (a @ a.T)
        if module.bias is not None:
            gram += dd
        proj += (delta * z.detach()).sum(dim=1)
    return gram, proj, out.detach()


def fit_multipliers(model: nn.Module, x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """λ ≥ 0 minimising ‖θ − Σᵢ λᵢ yᵢ ∇θΦ(xᵢ)‖ (Lawson–Hanson NNLS on the Gram matrix, float64)."""
    gram, proj, _ = per_sample_gram(model, x)
    y = signs.to(gram.dtype)
    g = (y[:, None] * gram * y[None, :]).double().cpu().numpy()
    b = (y * proj).double().cpu().numpy()
    # ‖θ − Jᵀλ‖² = λᵀGλ − 2bᵀλ + ‖θ‖²; with G = LLᵀ this is ‖Lᵀλ − L⁻¹b‖² up to a constant.
    jitter = 1e-12 * max(float(np.trace(g)) / len(g), 1e-300)
    chol = np.linalg.cholesky(g + jitter * np.eye(len(g)))
    rhs = np.linalg.solve(chol, b)
    lam, _ = nnls(chol.T, rhs, maxiter=50 * len(g))
    return torch.as_tensor(lam, dtype=x.dtype, device=x.device)


@dataclass
class KKTDiagnosis:
    """How close a victim is to a KKT point of the max-margin problem on its training set."""

    relative_residual: float
    residual_per_layer: dict[str, float]
    n: int
    n_nonzero: int
    lambdas: list[float]
    outputs: list[float]
    margins: list[float]
    normalized_margins: list[float]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def diagnose_model(
    model: nn.Module,
    x: torch.Tensor,
    signs: torch.Tensor,
    *,
    device: torch.device,
    nonzero_tol: float = 1e-6,
) -> KKTDiagnosis:
    """Fit λ ≥ 0 for the training set and report ‖θ − Σλᵢyᵢ∇θΦ(xᵢ)‖ / ‖θ‖, per layer too.

    Args:
        model: a binary victim (it is copied; the original is not touched).
        x, signs: the training inputs and their ±1 labels.
        device: where to compute; the fit runs in float64 for accuracy.
        nonzero_tol: λᵢ counts as non-zero above ``nonzero_tol · max λ``.

    Returns:
        A :class:`KKTDiagnosis`. ``relative_residual`` is 0 at an exact KKT point and 1 when no
        non-negative combination of the per-sample gradients explains any of θ.
    """
    model = copy.deepcopy(model).to(device=device, dtype=torch.float64)
    if all(float(p.detach().abs().max()) == 0.0 for p in model.parameters()):
        raise UnsupportedModelError(
            "Every parameter of the victim is zero: Φ ≡ 0 has no margin and θ = 0 is trivially stationary, so "
            "there is no KKT point to speak of. Is this a trained model?"
        )
    x = x.to(device=device, dtype=torch.float64)
    signs = signs.to(device=device, dtype=torch.float64)

    lam = fit_multipliers(model, x, signs)
    grads = kkt_gradients(model, x, lam * signs)
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]
    sq = [float(((p - g) ** 2).sum()) for p, g in zip(params, grads, strict=True)]
    norms = [float((p**2).sum()) for p in params]
    with torch.no_grad():
        outputs = scalar_output(model, x)
    margins = signs * outputs
    min_margin = float(margins.min())
    return KKTDiagnosis(
        relative_residual=float(np.sqrt(sum(sq) / max(sum(norms), 1e-300))),
        residual_per_layer={n: float(np.sqrt(s / max(q, 1e-300))) for n, s, q in zip(names, sq, norms, strict=True)},
        n=int(x.shape[0]),
        n_nonzero=int((lam > nonzero_tol * max(float(lam.max()), 1e-300)).sum()),
        lambdas=lam.tolist(),
        outputs=outputs.tolist(),
        margins=margins.tolist(),
        normalized_margins=(margins / min_margin).tolist() if min_margin > 0 else [float("nan")] * len(margins),
        extra={"min_margin": min_margin, "param_norm": float(np.sqrt(sum(norms)))},
    )
