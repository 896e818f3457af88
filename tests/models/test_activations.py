"""The attack's modified ReLU, and swapping it into any module tree."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kktrecon.errors import ConfigError
from kktrecon.models import (
    CNNConfig,
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


class _Nested(nn.Module):
    """A user class holding ReLUs in a ModuleList, a ModuleDict and a nested Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(inplace=True)])
        self.parts = nn.ModuleDict({"conv": nn.Conv2d(3, 2, 3, stride=2, bias=False), "act": nn.ReLU()})
        self.head = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(8, 4, bias=False), nn.ReLU()))
        self.out = nn.Linear(4, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.convs:
            x = layer(x)
        return self.out(self.head(self.parts["act"](self.parts["conv"](x))))


def _sequential_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(3, 2, 3, stride=2, bias=False), nn.ReLU()),
        nn.Flatten(),
        nn.Linear(8, 1, bias=False),
    )


def _kinds(model: nn.Module) -> list[type]:
    return [type(m) for m in model.modules() if isinstance(m, nn.ReLU | ModifiedReLU)]


@pytest.mark.parametrize(
    "make",
    [_Nested, _sequential_cnn, lambda: build_model(CNNConfig(input_shape=(1, 5, 5), channels=(3, 2), init_scale=1))],
)
def test_every_relu_of_any_module_tree_is_swapped_and_the_original_kept(make) -> None:
    torch.manual_seed(0)
    model = make().double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attack = with_modified_relu(model, 5.0)
    assert set(_kinds(attack)) == {ModifiedReLU} and set(_kinds(model)) == {nn.ReLU}
    assert all(m.alpha == 5.0 for m in attack.modules() if isinstance(m, ModifiedReLU))
    x = torch.randn(4, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(attack(x), model(x))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    # the swap is in effect: the input gradient now flows through sigmoid(α·z), not the step function
    (g_model,) = torch.autograd.grad(model(x).sum(), x)
    (g_attack,) = torch.autograd.grad(attack(x).sum(), x)
    assert not torch.allclose(g_model, g_attack)


def test_a_bare_relu_and_a_bad_alpha() -> None:
    assert isinstance(with_modified_relu(nn.ReLU(), 3.0), ModifiedReLU)
    with pytest.raises(ConfigError, match=r"Expected `alpha` > 0\. Got 0"):
        with_modified_relu(nn.Linear(2, 1), 0.0)


def test_a_relu_instance_registered_twice_is_swapped_at_both_places() -> None:
    relu = nn.ReLU()
    user = nn.Sequential(nn.Linear(3, 4), relu, nn.Linear(4, 4), relu, nn.Linear(4, 1))  # a common way to write it
    attack = with_modified_relu(user, 5.0)
    assert isinstance(attack[1], ModifiedReLU) and isinstance(attack[3], ModifiedReLU)
    assert isinstance(user[3], nn.ReLU)  # the user's model untouched
