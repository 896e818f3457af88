"""The Δθ family: a dense layer behind a convolution changes within the span of the training inputs' features;
the attack's candidates come back nearer to the training images than to held-out ones; what cannot be read is
refused with a message."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kktrecon.attack import Preprocessing, Victim, run_attack
from kktrecon.attack import delta as dl
from kktrecon.attack.unmixing import NoTrainingSignalError
from kktrecon.errors import ConfigError, UnsupportedModelError

SHAPE = (1, 8, 8)
N, LR, STEPS = 6, 0.1, 200


def _pixels(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *SHAPE, generator=g, dtype=torch.float64)
    return torch.where(torch.rand(n, *SHAPE, generator=g, dtype=torch.float64) < 0.6, 0.0, x)


def _conv_net() -> nn.Sequential:
    conv = nn.Conv2d(1, 8, 3, stride=2, padding=1)
    return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 1)).double()


@pytest.fixture(scope="module")
def trained() -> tuple[Victim, torch.Tensor]:
    """A default-init conv + dense victim trained by full-batch SGD (its conv layer moves too); (victim, pixels)."""
    torch.manual_seed(0)
    model = _conv_net()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    pixels = _pixels(N, 0)
    mean = pixels.mean(0)
    x, y = pixels - mean, torch.tensor([0.0] * (N // 2) + [1.0] * (N // 2), dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for _ in range(STEPS):
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0], y).backward()
        opt.step()
    recipe = {"optimizer": "sgd", "lr": LR, "steps": STEPS}
    victim = Victim.from_module(model.eval(), SHAPE, preprocessing=Preprocessing(mean), initial_state=initial,
                                recipe=recipe, n_train=N)  # fmt: skip
    return victim, pixels


def _unexplained(victim: Victim, pixels: torch.Tensor, config: dl.DeltaConfig) -> float:
    space = dl.layer_subspace(victim, config, N)
    states = dl.path_states(victim.model, victim, config.stages)
    return float(dl.delta_loss(victim.model, space, states, pixels, victim, config)["unexplained"])


def test_the_training_images_features_explain_the_dense_layers_change_and_held_out_images_do_not(trained) -> None:
    victim, pixels = trained
    config = dl.DeltaConfig(dtype="float64")
    conv = victim.model[0].weight.detach()
    assert float((conv - victim.initial_state["0.weight"]).norm() / conv.norm()) > 0.05  # the features moved
    assert _unexplained(victim, pixels, config) < 0.01
    for seed in (1, 2):
        assert _unexplained(victim, _pixels(N, seed), config) > 0.4


def test_one_step_on_the_dense_layer_alone_writes_exactly_the_training_features_at_theta0() -> None:
    # Oracle: with everything but the dense layer frozen, one SGD step gives ΔW = −lr Σᵢ δᵢ φ(xᵢ; θ₀)ᵀ exactly.
    torch.manual_seed(1)
    model = _conv_net()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _pixels(N, 0), torch.tensor([0.0, 1.0] * (N // 2), dtype=torch.float64)
    nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0], y).backward()
    with torch.no_grad():
        model[3].weight -= LR * model[3].weight.grad
        model[3].bias -= LR * model[3].bias.grad
    victim = Victim.from_module(model.eval(), SHAPE, initial_state=initial, n_train=N)
    assert float(dl.feature_residual(victim, x, rank=N).max()) < 1e-10
    assert float(dl.feature_residual(victim, _pixels(20, 3), rank=N).min()) > 0.05


def test_training_images_lie_nearer_the_dense_layers_change_than_any_held_out_image(trained) -> None:
    # Membership evidence behind convolutions: the conv layer moved, the features at θ₀ still separate.
    victim, pixels = trained
    inputs = victim.preprocessing.to_inputs(pixels)
    held = victim.preprocessing.to_inputs(torch.cat([_pixels(N, seed) for seed in (1, 2, 3)]))
    assert float(dl.feature_residual(victim, inputs).max()) < float(dl.feature_residual(victim, held).min())


def test_the_attack_brings_every_training_image_back_nearer_to_it_than_to_any_other_image(trained) -> None:
    victim, pixels = trained
    held = _pixels(20, 1)
    config = dl.DeltaConfig(dtype="float64", iterations=1500, lr=0.05, tv_weight=0.0)  # noise images: no TV prior
    found = run_attack("delta", victim, config, progress=False)
    assert len(found) == N and found.sources[0]["layer"] == "3" and found.sources[0]["rank"] == N
    candidates = victim.preprocessing.to_pixels(found.x).flatten(1)
    images = torch.cat([pixels, held]).flatten(1)
    nearest = torch.cdist(pixels.flatten(1), candidates).argmin(dim=1)  # each training image's candidate
    owners = torch.cdist(candidates[nearest], images).argmin(dim=1)  # the image each of those is nearest to
    assert torch.equal(owners, torch.arange(N))
    assert float(candidates.min()) >= 0 and float(candidates.max()) <= 1  # the pixel box is a constraint


def test_the_default_layer_is_the_first_dense_layer_behind_others_with_two_outputs_or_more() -> None:
    assert dl.dense_layer(_conv_net()).weight == "3.weight"
    mlp = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    assert dl.dense_layer(mlp).weight == "2.weight"
    assert dl.dense_layer(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 1))).weight == "0.weight"
    assert dl.dense_layer(mlp, "4").bias == "4.bias"


def test_what_cannot_be_read_is_refused_with_a_message(trained) -> None:
    victim, _ = trained
    with pytest.raises(UnsupportedModelError, match=r"nn.Linear.*\['3', '5'\]"):
        dl.dense_layer(victim.model, "0")
    with pytest.raises(UnsupportedModelError, match="without one"):
        dl.dense_layer(nn.Sequential(nn.Conv2d(1, 1, 3), nn.Flatten()))
    unchanged = Victim.from_module(victim.model, SHAPE, initial_state=victim.model.state_dict(), n_train=N)
    with pytest.raises(NoTrainingSignalError, match="did not change"):
        run_attack("delta", unchanged, progress=False)
    with pytest.raises(ConfigError, match="--init-weights"):
        run_attack("delta", Victim.from_module(victim.model, SHAPE, n_train=N), progress=False)
    with pytest.raises(ConfigError, match="candidates"):
        run_attack("delta", Victim.from_module(victim.model, SHAPE, initial_state=victim.initial_state), progress=False)


@pytest.mark.parametrize(
    "fields", [{"stages": ()}, {"stages": (0.5, 1.5)}, {"lr": 0}, {"init_scale": 2.0}, {"rank": 0}, {"candidates": 0}]
)
def test_config_is_checked(fields: dict) -> None:
    with pytest.raises(ConfigError):
        dl.DeltaConfig(**fields)
    assert dl.DeltaConfig(stages=[0, 1]).stages == (0.0, 1.0)
