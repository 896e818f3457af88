"""KKT stationarity of the max-margin problem: the shared math of the diagnostic and the attack.

At a KKT point of min ½‖θ‖² s.t. yᵢΦ(θ; xᵢ) ≥ 1 (Haim et al. 2022, eq. 3),

    θ = Σᵢ λᵢ yᵢ ∇θΦ(θ; xᵢ),  λᵢ ≥ 0,  λᵢ = 0 unless yᵢΦ(θ; xᵢ) = 1.

:func:`kkt_gradients` computes Σⱼ cⱼ ∇θΦ(θ; xⱼ) for any coefficients (the attack differentiates it
again, with ``create_graph``); :func:`diagnose_model` fits λ ≥ 0 for a victim's true training set by
non-negative least squares and reports how far the victim is from stationarity.

This module sees weights and, for the diagnostic, inputs handed to it; it never loads a data set
(``kktrecon.victims.diagnose`` does that for a victim directory).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.optimize import nnls
from torch import nn

from kktrecon.attack.gram import gram_rule
from kktrecon.attack.objectives import Objective, get_objective
from kktrecon.errors import ConfigError, UnsupportedModelError

__all__ = [
    "KKTDiagnosis",
    "diagnose_model",
    "fit_multipliers",
    "kkt_gradients",
    "per_sample_gram",
    "scalar_output",
    "stationarity_residual",
]


def scalar_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Φ(θ; x) of a binary model: its single logit, shape (B,)."""
    out = model(x)
    if out.dim() != 2 or out.shape[1] != 1:
        raise ConfigError(
            f"Expected a binary model with output shape (B, 1). Got {tuple(out.shape)}; for K outputs use an "
            "objective's stationarity sum (kktrecon.attack.objectives)."
        )
    return out[:, 0]


def kkt_gradients(
    model: nn.Module, x: torch.Tensor, coeffs: torch.Tensor, *, create_graph: bool = False
) -> tuple[torch.Tensor, ...]:
    """∇θ Σⱼ cⱼ Φ(θ; xⱼ), one tensor per parameter of ``model`` in ``parameters()`` order."""
    params = [p for p in model.parameters()]
    out = scalar_output(model, x)
    return torch.autograd.grad((out * coeffs).sum(), params, create_graph=create_graph)


def stationarity_residual(model: nn.Module, weighted_sum: torch.Tensor, *, create_graph: bool) -> torch.Tensor:
    """Σ_layers ‖θ_l − ∇_{θ_l} S‖² for a scalar S built from the model's outputs (an objective's ``kkt_sum``)."""
    params = list(model.parameters())
    grads = torch.autograd.grad(weighted_sum, params, create_graph=create_graph)
    return sum(((p.detach() - g) ** 2).sum() for p, g in zip(params, grads, strict=True))


PerSample = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def per_sample_gram(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor | None = None,
    per_sample: PerSample | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gram matrix of per-sample gradients ∇θ gᵢ, gᵢ = ``per_sample``(Φ(xᵢ), labelᵢ) (default: the logit Φ).

    Without materialising the gradients when every parametrised layer has a rule in
    :data:`~kktrecon.attack.gram.GRAM_RULES` (Linear: ⟨∇_W gᵢ, ∇_W gⱼ⟩ = (δᵢ·δⱼ)(aᵢ·aⱼ), δ = ∂g/∂z);
    any other network falls back to per-sample gradients with ``torch.func`` (n × |θ| floats).

    Returns:
        K (n, n) with K_ij = ⟨∇θgᵢ, ∇θgⱼ⟩, p (n,) with pᵢ = ⟨∇θgᵢ, θ⟩, and g (n,).
    """
    labels = torch.zeros(x.shape[0], device=x.device) if labels is None else labels
    per_sample = per_sample or (lambda out, _: _single_output(out))
    if all(gram_rule(m) is not None for m in model.modules() if next(m.parameters(recurse=False), None) is not None):
        return _rule_gram(model, x, labels, per_sample)
    return _functional_gram(model, x, labels, per_sample)


def _single_output(out: torch.Tensor) -> torch.Tensor:
    if out.dim() != 2 or out.shape[1] != 1:
        raise ConfigError(
            f"Expected a binary model with output shape (B, 1). Got {tuple(out.shape)}; pass the objective's margins."
        )
    return out[:, 0]


def _rule_gram(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, per_sample: PerSample
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Gram matrix from each layer's input and output gradient (:mod:`kktrecon.attack.gram`)."""
    captured: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        output.retain_grad()
        captured.append((module, inputs[0], output))

    handles = [m.register_forward_hook(hook) for m in model.modules() if gram_rule(m) is not None]
    try:
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)  # makes every layer output part of a graph
            g = per_sample(model(xx), labels)
            g.sum().backward(inputs=[xx])
    finally:
        for h in handles:
            h.remove()
    n = x.shape[0]
    gram = torch.zeros(n, n, dtype=x.dtype, device=x.device)
    proj = torch.zeros(n, dtype=x.dtype, device=x.device)
    for module, a, z in captured:
        rule = gram_rule(module)
        delta = z.grad.detach()
        gram += rule.pair(module, a.detach(), delta)
        proj += rule.project(module, z.detach(), delta).reshape(n, -1).sum(dim=1)
    return gram, proj, g.detach()


def _functional_gram(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, per_sample: PerSample, chunk: int = 64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def g_one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return per_sample(functional_call(model, p, (xi[None],)), yi[None])[0]

    rows = []
    for i in range(0, x.shape[0], chunk):
        grads = vmap(grad(g_one), in_dims=(None, 0, 0))(params, x[i : i + chunk], labels[i : i + chunk])
        rows.append(torch.cat([grads[k].flatten(1) for k in params], dim=1))
    jac = torch.cat(rows)
    theta = torch.cat([v.flatten() for v in params.values()])
    with torch.no_grad():
        g = per_sample(model(x), labels)
    return jac @ jac.T, jac @ theta, g.detach()


def fit_multipliers(
    model: nn.Module,
    x: torch.Tensor,
    signs: torch.Tensor,
    *,
    per_sample: PerSample | None = None,
    signed: bool = False,
) -> torch.Tensor:
    """The multipliers minimising ‖θ − Σᵢ λᵢ ∇θgᵢ‖ on the Gram matrix, in float64.

    With the default ``per_sample`` (binary), gᵢ = yᵢΦ(xᵢ) with yᵢ = ``signs``; otherwise ``per_sample``
    receives ``signs`` as its labels. λ ≥ 0 by Lawson–Hanson NNLS, or free in sign (least squares)
    with ``signed`` (regression, decoreco's general losses).
    """
    if per_sample is None:
        gram, proj, _ = per_sample_gram(model, x)
        y = signs.to(gram.dtype)
        gram, proj = y[:, None] * gram * y[None, :], y * proj
    else:
        gram, proj, _ = per_sample_gram(model, x, signs, per_sample)
    g = gram.double().cpu().numpy()
    b = proj.double().cpu().numpy()
    # ‖θ − Jᵀλ‖² = λᵀGλ − 2bᵀλ + ‖θ‖²; with G = LLᵀ this is ‖Lᵀλ − L⁻¹b‖² up to a constant.
    jitter = 1e-12 * max(float(np.trace(g)) / len(g), 1e-300)
    if signed:
        lam = np.linalg.lstsq(g + jitter * np.eye(len(g)), b, rcond=None)[0]
    else:
        chol = np.linalg.cholesky(g + jitter * np.eye(len(g)))
        lam, _ = nnls(chol.T, np.linalg.solve(chol, b), maxiter=50 * len(g))
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
    labels: torch.Tensor,
    *,
    device: torch.device,
    objective: Objective | None = None,
    nonzero_tol: float = 1e-6,
) -> KKTDiagnosis:
    """Fit the multipliers for the training set and report ‖θ − Σλᵢ∇θgᵢ‖ / ‖θ‖, per layer too.

    gᵢ is the objective's margin of sample i: yᵢΦ(xᵢ) (binary, λ ≥ 0), Φ_{yᵢ} − max_{k≠yᵢ} Φ_k
    (multiclass, λ ≥ 0), Φ(xᵢ) (regression, λ free in sign). A victim trained with weight decay
    satisfies the same condition at a stationary point of its regularised loss.

    Args:
        model: the victim (it is copied; the original is not touched).
        x, labels: the training inputs and their labels as the objective takes them (binary: ±1 or
            0/1; multiclass: class indices; regression: targets).
        device: where to compute; the fit runs in float64 for accuracy.
        objective: the victim's objective (default: binary).
        nonzero_tol: λᵢ counts as non-zero above ``nonzero_tol · max |λ|``.

    Returns:
        A :class:`KKTDiagnosis`. ``relative_residual`` is 0 at an exact KKT point and 1 when no
        admissible combination of the per-sample gradients explains any of θ.
    """
    objective = objective or get_objective("binary")
    model = copy.deepcopy(model).to(device=device, dtype=torch.float64)
    if all(float(p.detach().abs().max()) == 0.0 for p in model.parameters()):
        raise UnsupportedModelError(
            "Every parameter of the victim is zero: Φ ≡ 0 has no margin and θ = 0 is trivially stationary, so "
            "there is no KKT point to speak of. Is this a trained model?"
        )
    x = x.to(device=device, dtype=torch.float64)
    labels = labels.to(device=device, dtype=torch.float64)
    per_sample = objective.terms
    lam = fit_multipliers(model, x, labels, per_sample=per_sample, signed=objective.signed_multipliers)
    params = [p for p in model.parameters()]
    with torch.enable_grad():
        grads = torch.autograd.grad((lam * per_sample(model(x), labels)).sum(), params)
    names = [n for n, _ in model.named_parameters()]
    sq = [float(((p.detach() - g) ** 2).sum()) for p, g in zip(params, grads, strict=True)]
    norms = [float((p.detach() ** 2).sum()) for p in params]
    with torch.no_grad():
        out = model(x)
    margins = objective.margins(out, labels)
    min_margin = float(margins.min())
    outputs = out[:, 0] if out.shape[1] == 1 else out.gather(1, labels.long()[:, None])[:, 0]
    scale = max(float(lam.abs().max()), 1e-300)
    return KKTDiagnosis(
        relative_residual=float(np.sqrt(sum(sq) / max(sum(norms), 1e-300))),
        residual_per_layer={n: float(np.sqrt(s / max(q, 1e-300))) for n, s, q in zip(names, sq, norms, strict=True)},
        n=int(x.shape[0]),
        n_nonzero=int((lam.abs() > nonzero_tol * scale).sum()),
        lambdas=lam.tolist(),
        outputs=outputs.tolist(),
        margins=margins.tolist(),
        normalized_margins=(margins / min_margin).tolist() if min_margin > 0 else [float("nan")] * len(margins),
        extra={"min_margin": min_margin, "param_norm": float(np.sqrt(sum(norms))), "objective": objective.name},
    )
