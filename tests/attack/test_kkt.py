"""KKT math: the Gram trick against an explicit Jacobian, and the diagnostic at exact KKT points."""

from __future__ import annotations

import pytest
import torch

from kktrecon.attack.kkt import kkt_gradients, per_sample_gram
from kktrecon.models import ModelConfig, build_model
from kktrecon.victims import diagnose


def _jacobian(model, x):
    rows = []
    for i in range(x.shape[0]):
        grads = torch.autograd.grad(model(x[i : i + 1])[0, 0], list(model.parameters()))
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


@pytest.mark.parametrize("bias", ["none", "first", "all"])
def test_gram_trick_matches_explicit_per_sample_gradients(bias: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(input_shape=(5,), hidden=(7, 6), bias=bias, init_scale=0.5), dtype=torch.float64)
    x = torch.randn(4, 5, dtype=torch.float64)
    gram, proj, out = per_sample_gram(model, x)
    jac = _jacobian(model, x)
    theta = torch.cat([p.reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(gram, jac @ jac.T)
    torch.testing.assert_close(proj, jac @ theta)
    torch.testing.assert_close(out, model(x)[:, 0])


def test_euler_identity_for_homogeneous_models() -> None:
    model = build_model(ModelConfig(input_shape=(5,), hidden=(7, 6), bias="first", init_scale=0.5), dtype=torch.float64)
    x = torch.randn(4, 5, dtype=torch.float64)
    _, proj, out = per_sample_gram(model, x)
    torch.testing.assert_close(proj, 3 * out)  # ⟨∇θΦ, θ⟩ = L Φ


def _linear_victim(weight: torch.Tensor):
    model = build_model(ModelConfig(input_shape=(weight.numel(),), hidden=(), bias="none"), dtype=torch.float64)
    with torch.no_grad():
        model.layers[0].weight.copy_(weight[None])
    return model


def test_diagnostic_is_zero_at_the_linear_max_margin_solution() -> None:
    # Homogeneous linear max-margin: points (1,0)+, (-1,0)-, (2,1)+ give w = (1, 0) with margins 1, 1, 2.
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [2.0, 1.0]], dtype=torch.float64)
    signs = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)
    d = diagnose(_linear_victim(torch.tensor([1.0, 0.0], dtype=torch.float64)), x=x, signs=signs)
    assert d.relative_residual < 1e-6
    assert d.lambdas[2] == pytest.approx(0.0, abs=1e-9)  # off the margin: λ = 0
    assert sum(d.lambdas[:2]) == pytest.approx(1.0, abs=1e-6)
    assert d.normalized_margins == pytest.approx([1.0, 1.0, 2.0])


def test_diagnostic_recovers_multipliers_and_detects_a_perturbation() -> None:
    torch.manual_seed(1)
    x = torch.randn(6, 10, dtype=torch.float64)
    signs = torch.tensor([1, -1, 1, -1, 1, -1], dtype=torch.float64)
    lam = torch.tensor([0.5, 1.0, 0.0, 0.3, 0.0, 2.0], dtype=torch.float64)
    weight = (lam * signs) @ x
    d = diagnose(_linear_victim(weight), x=x, signs=signs)
    assert d.relative_residual < 1e-6
    assert d.n_nonzero == 4
    torch.testing.assert_close(torch.tensor(d.lambdas, dtype=torch.float64), lam, atol=1e-8, rtol=1e-6)
    # a θ that is not in the cone of the signed gradients is flagged
    off = weight + 0.5 * weight.norm() * torch.nn.functional.normalize(torch.randn(10, dtype=torch.float64), dim=0)
    assert diagnose(_linear_victim(off), x=x, signs=signs).relative_residual > 0.05


def test_diagnostic_sees_negative_multipliers_as_residual() -> None:
    x = torch.eye(3, dtype=torch.float64)
    signs = torch.ones(3, dtype=torch.float64)
    # θ = x0 - x1 needs λ1 = -1 < 0: NNLS can only explain the x0 part
    d = diagnose(_linear_victim(torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64)), x=x, signs=signs)
    assert d.relative_residual == pytest.approx(2**-0.5, rel=1e-6)


def test_kkt_gradients_are_linear_in_the_coefficients() -> None:
    model = build_model(ModelConfig(input_shape=(5,), hidden=(7,), init_scale=0.5), dtype=torch.float64)
    x = torch.randn(3, 5, dtype=torch.float64)
    c = torch.tensor([0.2, -1.0, 0.7], dtype=torch.float64)
    g1 = kkt_gradients(model, x, c)
    g2 = kkt_gradients(model, x, 2 * c)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(2 * a, b)
