"""CNN victims: homogeneity per bias policy, bias placement, initialisation, meta shapes, checkpoints."""

from __future__ import annotations

import pytest
import torch

from kktrecon.models import CNN, CNNConfig, build_model, load_checkpoint, save_checkpoint, validate
from kktrecon.models.registry import parameter_shapes
from tests.models.helpers import scaled

TINY = CNNConfig(input_shape=(2, 9, 9), channels=(3, 4), hidden=(5,), init_scale=0.3)


def _cfg(**kw) -> CNNConfig:
    return CNNConfig(**{**TINY.__dict__, **kw})


def _x(n: int = 5) -> torch.Tensor:
    return torch.randn(n, 2, 9, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("bias", ["none", "first"])
def test_homogeneous_policies_satisfy_phi_c_theta_equals_c_power_L(bias: str) -> None:
    cfg = _cfg(bias=bias)
    model = build_model(cfg, dtype=torch.float64)
    x = _x()
    assert cfg.depth == 4 and model.depth == 4
    assert model(x).abs().min() > 0  # a vanishing output would make the check vacuous
    for c in (0.5, 3.0):
        torch.testing.assert_close(scaled(model, c)(x), c**cfg.depth * model(x))


def test_bias_in_every_layer_breaks_homogeneity_and_validate_says_so() -> None:
    cfg = _cfg(bias="all")
    model = build_model(cfg, dtype=torch.float64)
    x = _x()
    assert not torch.allclose(scaled(model, 3.0)(x), 3.0**cfg.depth * model(x))
    reasons = validate(model)
    assert len(reasons) == 2 and all("not homogeneous" in r for r in reasons)
    assert "layer 'layers.1' (Conv2d)" in reasons[0] and "layer 'layers.2' (Linear)" in reasons[1]
    assert validate(build_model(TINY)) == []


def test_bias_policies_place_biases() -> None:
    def biases(policy: str) -> list[bool]:
        return [layer.bias is not None for layer in build_model(_cfg(bias=policy)).layers]

    assert biases("none") == [False, False, False, False]
    assert biases("first") == [True, False, False, False]
    assert biases("all") == [True, True, True, False]


def test_initialisation_is_seeded_and_scaled_like_the_reference() -> None:
    cfg = CNNConfig(input_shape=(3, 8, 8), channels=(64, 8), init_scale=1e-4)
    a, b = build_model(cfg, seed=3), build_model(cfg, seed=3)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not torch.equal(a.layers[1].weight, build_model(cfg, seed=4).layers[1].weight)
    assert a.layers[0].weight.std().item() == pytest.approx(1e-4, rel=0.1)
    # later layers: PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = 64·3·3
    bound = 1 / (64 * 9) ** 0.5
    assert bound / 2 < a.layers[1].weight.abs().max().item() <= bound + 1e-7
    scaled_init = build_model(CNNConfig(input_shape=(3, 8, 8), channels=(64, 8), hidden_init_scale=0.01))
    assert scaled_init.layers[1].weight.std().item() == pytest.approx(0.01, rel=0.1)


@pytest.mark.parametrize("bias", ["none", "first", "all"])
def test_parameter_shapes_on_meta_match_the_real_state_dict(bias: str) -> None:
    cfg = CNNConfig(input_shape=(1, 28, 28), channels=(16, 32), hidden=(10,), bias=bias)
    real = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
    assert parameter_shapes(cfg) == real
    assert real["layers.2.weight"] == (10, 32 * 7 * 7)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path) -> None:
    model = build_model(TINY, seed=1, dtype=torch.float64)
    save_checkpoint(tmp_path, model, {"metrics": {"n_train": 4}})
    loaded, _ = load_checkpoint(tmp_path)
    assert isinstance(loaded, CNN) and loaded.config == TINY
    x = _x()
    assert torch.equal(loaded(x), model(x))


def test_flat_inputs_are_reshaped_to_the_input_shape() -> None:
    model = build_model(TINY, dtype=torch.float64)
    x = _x()
    torch.testing.assert_close(model(x.reshape(5, -1)), model(x))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bias": "some"}, r"Expected `bias` to be one of \['all', 'first', 'none'\]\. Got 'some'"),
        ({"input_shape": (28, 28)}, r"Expected `input_shape` to be \(channels, height, width\)\. Got \(28, 28\)"),
        ({"channels": ()}, r"Expected `channels` to hold at least one width\. Got \(\)"),
        ({"padding": -1}, r"Expected `padding` to be an integer >= 0\. Got -1"),
        ({"input_shape": (1, 2, 2), "channels": (2, 2, 2), "padding": 0}, r"Expected `input_shape` large enough"),
        ({"init_scale": 0}, r"Expected `init_scale` > 0\. Got 0"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CNNConfig(**kwargs)
