"""Models: homogeneity per bias policy, the modified ReLU, validation, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from kktrecon.models import (
    CheckpointError,
    ModelConfig,
    ModifiedReLU,
    UnsupportedModelError,
    build_model,
    load_checkpoint,
    save_checkpoint,
    validate,
    with_modified_relu,
)

SMALL = ModelConfig(input_shape=(1, 4, 4), hidden=(12, 9), init_scale=0.3)


def _scaled(model: nn.Module, c: float) -> nn.Module:
    import copy

    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(c)
    return other


@pytest.mark.parametrize("bias", ["none", "first"])
def test_homogeneous_policies_satisfy_phi_c_theta_equals_c_power_L(bias: str) -> None:
    cfg = ModelConfig(input_shape=(1, 4, 4), hidden=(12, 9), bias=bias, init_scale=0.3)
    model = build_model(cfg, dtype=torch.float64)
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    for c in (0.5, 3.0):
        torch.testing.assert_close(_scaled(model, c)(x), c**cfg.depth * model(x))


def test_bias_in_every_layer_breaks_homogeneity_and_validate_says_so() -> None:
    cfg = ModelConfig(input_shape=(1, 4, 4), hidden=(12, 9), bias="all", init_scale=0.3)
    model = build_model(cfg, dtype=torch.float64)
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    assert not torch.allclose(_scaled(model, 3.0)(x), 3.0**cfg.depth * model(x))
    assert any("not homogeneous" in r for r in validate(model))
    assert validate(build_model(SMALL)) == []


def test_bias_policies_place_biases() -> None:
    def biases(policy: str) -> list[bool]:
        m = build_model(ModelConfig(input_shape=(3,), hidden=(4, 4), bias=policy))
        return [layer.bias is not None for layer in m.layers]

    assert biases("none") == [False, False, False]
    assert biases("first") == [True, False, False]
    assert biases("all") == [True, True, False]


def test_reference_initialisation_scale_and_determinism() -> None:
    cfg = ModelConfig(input_shape=(784,), hidden=(1000, 1000))
    a, b = build_model(cfg, seed=3), build_model(cfg, seed=3)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    assert a.layers[0].weight.std().item() == pytest.approx(1e-4, rel=0.02)
    assert a.layers[0].bias.std().item() == pytest.approx(1e-4, rel=0.2)
    # later layers keep PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert a.layers[1].weight.abs().max().item() <= 1 / 1000**0.5 + 1e-6
    assert not torch.equal(a.layers[1].weight, build_model(cfg, seed=4).layers[1].weight)


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


def test_validate_rejects_unsupported_layers() -> None:
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 1, bias=False))
    reasons = validate(conv)
    assert any("Conv2d" in r for r in reasons)
    with pytest.raises(UnsupportedModelError, match="Conv2d"):
        validate(conv, strict=True)


def _saved(tmp_path, dtype=torch.float64):
    model = build_model(SMALL, seed=1, dtype=dtype)
    save_checkpoint(tmp_path, model, {"metrics": {"n_train": 4}})
    return model


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path) -> None:
    model = _saved(tmp_path)
    loaded, manifest = load_checkpoint(tmp_path)
    assert loaded.layers[0].weight.dtype == torch.float64
    assert manifest["metrics"] == {"n_train": 4}
    x = torch.randn(7, 1, 4, 4, dtype=torch.float64)
    assert torch.equal(loaded(x), model(x))


def test_truncated_checkpoint_is_refused(tmp_path) -> None:
    _saved(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path)


def test_checkpoint_not_matching_its_json_is_refused(tmp_path) -> None:
    _saved(tmp_path)
    manifest = json.loads((tmp_path / "model.json").read_text())
    manifest["model"]["hidden"] = [12, 10]
    (tmp_path / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="does not match the architecture"):
        load_checkpoint(tmp_path)


def test_checkpoint_with_nan_is_refused(tmp_path) -> None:
    model = build_model(SMALL)
    with torch.no_grad():
        model.layers[1].weight[0, 0] = float("nan")
    save_checkpoint(tmp_path, model, {})
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        load_checkpoint(tmp_path)


def test_missing_checkpoint_names_the_expected_files(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"model\.safetensors and model\.json"):
        load_checkpoint(tmp_path)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match=r"Expected `bias` to be one of \['all', 'first', 'none'\]\. Got 'some'"):
        ModelConfig(bias="some")
    with pytest.raises(ValueError, match=r"Expected `init_scale` > 0\. Got 0"):
        ModelConfig(init_scale=0)
