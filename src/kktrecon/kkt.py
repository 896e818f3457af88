"""KKT stationarity of the max-margin problem: the shared math of the diagnostic and the attack.

At a KKT point of min ½‖θ‖² s.t. yᵢΦ(θ; xᵢ) ≥ 1 (Haim et al. 2022, eq. 3),

    θ = Σᵢ λᵢ yᵢ ∇θΦ(θ; xᵢ),  λᵢ ≥ 0,  λᵢ = 0 unless yᵢΦ(θ; xᵢ) = 1.

:func:`kkt_gradients` computes Σⱼ cⱼ ∇θΦ(θ; xⱼ) for any coefficients (the attack differentiates it
again, with ``create_graph``); :func:`diagnose` fits λ ≥ 0 for a victim's true training set by
non-negative least squares and reports how far the victim is from stationarity.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import nnls
from torch import nn

from kktrecon.runs import resolve_device

__all__ = ["KKTDiagnosis", "diagnose", "fit_multipliers", "kkt_gradients", "per_sample_gram", "scalar_output"]


def scalar_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Φ(θ; x) of a binary model: its single logit, shape (B,)."""
    out = model(x)
    if out.dim() != 2 or out.shape[1] != 1:
        raise ValueError(
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
    """Σ_layers ‖θ_l − ∇_{θ_l} Σⱼ cⱼ Φ(xⱼ)‖², the reference attack's KKT term."""
    grads = kkt_gradients(model, x, coeffs, create_graph=create_graph)
    return sum(((p.detach() - g) ** 2).sum() for p, g in zip(model.parameters(), grads, strict=True))


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


def diagnose(
    victim: nn.Module | str | Path,
    *,
    x: torch.Tensor | None = None,
    signs: torch.Tensor | None = None,
    data_root: str | Path | None = None,
    device: str | torch.device = "cpu",
    nonzero_tol: float = 1e-6,
) -> KKTDiagnosis:
    """Fit λ ≥ 0 for the training set and report ‖θ − Σλᵢyᵢ∇θΦ(xᵢ)‖ / ‖θ‖, per layer too.

    Args:
        victim: a model, or a victim run directory (its training set is then loaded from the data
            layer as recorded in ``model.json``).
        x, signs: the training inputs and their ±1 labels (needed when ``victim`` is a model).
        data_root: where to read the training set from, for a run directory.
        device: where to compute; the fit runs in float64 for accuracy.
        nonzero_tol: λᵢ counts as non-zero above ``nonzero_tol · max λ``.

    Returns:
        A :class:`KKTDiagnosis`. ``relative_residual`` is 0 at an exact KKT point and 1 when no
        non-negative combination of the per-sample gradients explains any of θ.
    """
    device = resolve_device(device)
    if isinstance(victim, (str, Path)):
        from kktrecon.data import DataConfig, load_dataset
        from kktrecon.models import load_checkpoint
        from kktrecon.runs import config_from_dict

        model, manifest = load_checkpoint(victim, device=device, dtype=torch.float64)
        data = load_dataset(config_from_dict(DataConfig, manifest["data"]), data_root=data_root, dtype=torch.float64)
        x, signs = data.x_train, data.signs
    else:
        if x is None or signs is None:
            raise ValueError("Expected `x` and `signs` when `victim` is a model. Got None.")
        import copy

        model = copy.deepcopy(victim).to(device=device, dtype=torch.float64)
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
