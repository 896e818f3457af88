"""The attack's modified ReLU."""

from __future__ import annotations

import torch
from torch import nn

from kktrecon.models import (
    ModifiedReLU,
    build_model,
    with_modified_relu,
)
from tests.models.helpers import SMALL


def test_modified_relu_keeps_forward_and_uses_sigmoid_derivative() -> None:
    z = torch.linspace(-2, 2, 41, dtype=torch.float64, requires_grad=True)
    act = ModifiedReLU(alpha=7.0)
    out = act(z)
    torch.testing.assert_close(out, torch.relu(z))
    (g,) = torch.autograd.grad(out.sum(), z, create_graph=True)
    torch.testing.assert_close(g, torch.sigmoid(7.0 * z))
    # second-order signal: the derivative itself depends on z (it is 0 for the true ReLU)
    (h,) = torch.autograd.grad(g.sum(), z)
    torch.testing.assert_close(h, 7.0 * torch.sigmoid(7.0 * z) * (1 - torch.sigmoid(7.0 * z)))


def test_with_modified_relu_is_a_copy_with_the_same_outputs() -> None:
    model = build_model(SMALL, dtype=torch.float64)
    attack = with_modified_relu(model, 50.0)
    assert isinstance(attack.activation, ModifiedReLU) and isinstance(model.activation, nn.ReLU)
    x = torch.randn(6, 1, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(attack(x), model(x))
