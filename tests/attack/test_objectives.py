"""Each objective at toy scale: its stationarity loss vanishes at a constructed KKT point of that
objective, grows when a sample moves, and catches a wrong sign or a wrong class assignment.

The victims are linear, Φ(x) = W x, so that ∇_W gᵢ is explicit and KKT points can be built exactly.
"""

from __future__ import annotations

import pytest
import torch

from kktrecon.attack import ReconstructionConfig, attack_loss, get_objective
from kktrecon.attack.kkt import diagnose_model

D, N = 6, 5
CONFIG = ReconstructionConfig(lambda_min=0.0)


def _linear(weight: torch.Tensor) -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(D, weight.shape[0], bias=False)).double()
    with torch.no_grad():
        model[1].weight.copy_(weight)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _data(seed: int = 0) -> torch.Tensor:
    return torch.randn(N, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _kkt(model, x, lam, y, name: str) -> float:
    # kkt_sum averages over the m candidates, so the multipliers of a KKT point are passed scaled by m.
    return float(attack_loss(model, x, lam * x.shape[0], y, CONFIG, get_objective(name))["kkt"])


def test_binary_objective_vanishes_at_its_kkt_point() -> None:
    x = _data()
    y = torch.tensor([-1.0, 1, -1, 1, 1], dtype=torch.float64)
    lam = torch.tensor([0.8, 0.3, 0.5, 1.2, 0.1], dtype=torch.float64)
    model = _linear(((lam * y) @ x)[None])
    assert _kkt(model, x, lam, y, "binary") < 1e-20
    assert _kkt(model, x + 0.1 * torch.eye(N, D, dtype=torch.float64), lam, y, "binary") > 1e-4
    assert _kkt(model, x, lam, -y, "binary") > 1.0


def _multiclass_point() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x, y, λ and W = Σᵢ λᵢ (e_{yᵢ} − e_{kᵢ}) xᵢᵀ with kᵢ = argmax_{k≠yᵢ} (W xᵢ)_k, built to be consistent.

    Three classes; the samples of class 1 lie near +v and those of class 2 near −v, each with runner-up
    class 0. Then W xᵢ's class-0 logit is −Σⱼ λⱼ xⱼ·xᵢ, which beats the other wrong class because the
    two clusters point apart (2 Σ_{other class} λ > Σ_{own class} λ suffices).
    """
    g = torch.Generator().manual_seed(1)
    v = torch.zeros(D, dtype=torch.float64)
    v[0] = 3.0
    y = torch.tensor([1.0, 2, 1, 2, 1], dtype=torch.float64)
    x = torch.where(y[:, None] == 1, v, -v) + 0.3 * torch.randn(N, D, generator=g, dtype=torch.float64)
    lam = torch.tensor([0.7, 0.6, 0.5, 0.8, 0.4], dtype=torch.float64)
    weight = torch.zeros(3, D, dtype=torch.float64)
    for i in range(N):
        weight[int(y[i])] += lam[i] * x[i]
        weight[0] -= lam[i] * x[i]
    runner_up = (x @ weight.T).scatter(1, y.long()[:, None], -torch.inf).argmax(dim=1)
    assert runner_up.tolist() == [0] * N  # the construction is a KKT point of the decoreco form
    return x, y, lam, weight


def test_multiclass_objective_vanishes_at_its_kkt_point() -> None:
    x, y, lam, weight = _multiclass_point()
    model = _linear(weight)
    assert _kkt(model, x, lam, y, "multiclass") < 1e-20
    assert _kkt(model, x + 0.1 * torch.eye(N, D, dtype=torch.float64), lam, y, "multiclass") > 1e-4
    assert _kkt(model, x, lam, 3 - y, "multiclass") > 0.1  # every sample assigned to the other class


def test_full_multiclass_objective_vanishes_at_its_kkt_point() -> None:
    x = _data(2)
    y = torch.tensor([0.0, 1, 2, 1, 0], dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    lam = torch.rand(N, 3, generator=g, dtype=torch.float64) + 0.1
    weight = torch.zeros(3, D, dtype=torch.float64)
    for i in range(N):
        for k in range(3):
            if k != int(y[i]):
                weight[int(y[i])] += lam[i, k] * x[i]
                weight[k] -= lam[i, k] * x[i]
    model = _linear(weight)
    assert _kkt(model, x, lam, y, "multiclass-full") < 1e-20
    assert _kkt(model, x + 0.1 * torch.eye(N, D, dtype=torch.float64), lam, y, "multiclass-full") > 1e-4
    assert _kkt(model, x, lam, (y + 1) % 3, "multiclass-full") > 0.1
    # the true-class column carries no multiplier: changing it changes nothing
    moved = lam.clone()
    moved[torch.arange(N), y.long()] = 5.0
    assert _kkt(model, x, moved, y, "multiclass-full") < 1e-20
    # and the hinge penalises only the wrong-class multipliers
    hinge = get_objective("multiclass-full").lambda_penalty(torch.zeros(N, 3), 0.5, y)
    assert float(hinge) == pytest.approx(N * 2 * 0.25)


def test_regression_objective_vanishes_at_its_kkt_point_with_signed_multipliers() -> None:
    x = _data(4)
    lam = torch.tensor([0.8, -0.3, 0.5, -1.2, 0.1], dtype=torch.float64)  # either sign
    model = _linear((lam @ x)[None])
    y = torch.zeros(N, dtype=torch.float64)  # regression candidates carry no label
    assert _kkt(model, x, lam, y, "regression") < 1e-20
    assert _kkt(model, x + 0.1 * torch.eye(N, D, dtype=torch.float64), lam, y, "regression") > 1e-4
    assert _kkt(model, x, -lam, y, "regression") > 1.0  # a wrong sign is caught
    objective = get_objective("regression")
    assert float(objective.lambda_penalty(lam, 0.5, y)) == 0.0  # no λ_min: negative multipliers are allowed


@pytest.mark.parametrize("name", ["binary", "multiclass", "regression"])
def test_the_diagnostic_finds_the_constructed_multipliers(name: str) -> None:
    x = _data(5)
    lam = torch.tensor([0.8, 0.3, 0.5, 1.2, 0.6], dtype=torch.float64)
    if name == "binary":
        labels = torch.tensor([-1.0, 1, -1, 1, 1], dtype=torch.float64)
        weight = ((lam * labels) @ x)[None]
    elif name == "multiclass":
        x, labels, lam, weight = _multiclass_point()
    else:
        lam = lam * torch.tensor([1.0, -1, 1, -1, 1], dtype=torch.float64)
        labels = (lam @ x)[None] @ x.T
        labels = labels[0]
        weight = (lam @ x)[None]
    d = diagnose_model(_linear(weight), x, labels, device=torch.device("cpu"), objective=get_objective(name))
    assert d.relative_residual < 1e-6
    torch.testing.assert_close(torch.tensor(d.lambdas, dtype=torch.float64), lam, atol=1e-6, rtol=1e-6)


def test_candidate_labels_are_balanced_per_class() -> None:
    assert get_objective("binary").candidate_labels(6, 1).tolist() == [-1, -1, -1, 1, 1, 1]
    labels = get_objective("multiclass").candidate_labels(20, 10)
    assert torch.bincount(labels.long()).tolist() == [2] * 10
    assert get_objective("multiclass-full").init_lambda(4, 3, torch.Generator().manual_seed(0)).shape == (4, 3)
