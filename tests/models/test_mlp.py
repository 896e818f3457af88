"""MLP victims: homogeneity per bias policy, bias placement, the reference initialisation, config checks."""

from __future__ import annotations

import pytest
import torch

from kktrecon.models import (
    MLPConfig,
    build_model,
    validate,
)
from tests.models.helpers import SMALL, scaled


@pytest.mark.parametrize("bias", ["none", "first"])
def test_homogeneous_policies_satisfy_phi_c_theta_equals_c_power_L(bias: str) -> None:
    cfg = MLPConfig(input_shape=(1, 4, 4), hidden=(12, 9), bias=bias, init_scale=0.3)
    model = build_model(cfg, dtype=torch.float64)
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    for c in (0.5, 3.0):
        torch.testing.assert_close(scaled(model, c)(x), c**cfg.depth * model(x))


def test_bias_in_every_layer_breaks_homogeneity_and_validate_says_so() -> None:
    cfg = MLPConfig(input_shape=(1, 4, 4), hidden=(12, 9), bias="all", init_scale=0.3)
    model = build_model(cfg, dtype=torch.float64)
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    assert not torch.allclose(scaled(model, 3.0)(x), 3.0**cfg.depth * model(x))
    assert any("not homogeneous" in r for r in validate(model))
    assert validate(build_model(SMALL)) == []


def test_bias_policies_place_biases() -> None:
    def biases(policy: str) -> list[bool]:
        m = build_model(MLPConfig(input_shape=(3,), hidden=(4, 4), bias=policy))
        return [layer.bias is not None for layer in m.layers]

    assert biases("none") == [False, False, False]
    assert biases("first") == [True, False, False]
    assert biases("all") == [True, True, False]


def test_reference_initialisation_scale_and_determinism() -> None:
    cfg = MLPConfig(input_shape=(784,), hidden=(1000, 1000))
    a, b = build_model(cfg, seed=3), build_model(cfg, seed=3)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    assert a.layers[0].weight.std().item() == pytest.approx(1e-4, rel=0.02)
    assert a.layers[0].bias.std().item() == pytest.approx(1e-4, rel=0.2)
    # later layers keep PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert a.layers[1].weight.abs().max().item() <= 1 / 1000**0.5 + 1e-6
    assert not torch.equal(a.layers[1].weight, build_model(cfg, seed=4).layers[1].weight)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match=r"Expected `bias` to be one of \['all', 'first', 'none'\]\. Got 'some'"):
        MLPConfig(bias="some")
    with pytest.raises(ValueError, match=r"Expected `init_scale` > 0\. Got 0"):
        MLPConfig(init_scale=0)


def test_model_config_is_the_deprecated_name_of_mlp_config() -> None:
    from kktrecon.models import ModelConfig
    from kktrecon.models.mlp import ModelConfig as from_module

    assert ModelConfig is MLPConfig and from_module is MLPConfig
