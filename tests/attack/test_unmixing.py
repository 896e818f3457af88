"""First-layer unmixing: exact where the theory says (a dense first layer trained by SGD), refusals elsewhere."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from kktrecon.attack import Preprocessing, Victim, run_attack
from kktrecon.attack.unmixing import NoTrainingSignalError, UnmixConfig, _recipe_decay, row_space
from kktrecon.errors import ConfigError, UnsupportedModelError

SHAPE = (1, 6, 6)


def _images(n: int = 5, seed: int = 0) -> torch.Tensor:
    """Sparse non-negative images in [0, 1] (about 60 % of pixels at 0), as digits on a black background."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *SHAPE, generator=g, dtype=torch.float64)
    return torch.where(torch.rand(n, *SHAPE, generator=g, dtype=torch.float64) < 0.6, 0.0, x)


def _trained(pixels: torch.Tensor, *, momentum: float = 0.9, batch: int = 2, wd: float = 0.0, seed: int = 0):
    """A default-init 36-24-24-1 MLP trained by minibatch SGD on mean-subtracted ``pixels``; (victim, θ₀)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 1))
    model = model.double()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    mean = pixels.mean(0)
    x, y = pixels - mean, torch.arange(len(pixels), dtype=torch.float64) % 2
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=momentum, weight_decay=wd)
    for step in range(60):
        rows = torch.arange(step * batch, step * batch + batch) % len(x)
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(model(x[rows])[:, 0], y[rows]).backward()
        opt.step()
    recipe = {"optimizer": "sgd", "lr": 0.05, "momentum": momentum, "weight_decay": wd, "steps": 60}
    victim = Victim.from_module(model.eval(), SHAPE, preprocessing=Preprocessing(mean), initial_state=initial,
                                recipe=recipe, n_train=len(pixels))  # fmt: skip
    return victim, initial


def test_row_space_is_exactly_the_training_images_and_unmixing_recovers_each_exactly() -> None:
    pixels = _images()
    victim, _ = _trained(pixels)
    space = row_space(victim)
    assert space.rank == 5 and space.drop > 1e6
    assert float(space.residual(pixels).max()) < 1e-8
    assert float(space.residual(torch.rand(3, *SHAPE, dtype=torch.float64)).min()) > 0.1  # not in the span
    candidates = run_attack("unmix", victim, progress=False)
    found = victim.preprocessing.to_pixels(candidates.x).flatten(1)
    error = (found[:, None, :] - pixels.flatten(1)[None]).abs().amax(dim=2).min(dim=0).values
    assert float(error.max()) < 1e-6  # every training image, pixel for pixel, scale and sign included


def test_weight_decay_factor_from_the_recipe_and_fitted_agree_and_unmixing_stays_exact() -> None:
    pixels = _images(seed=1)
    victim, _ = _trained(pixels, wd=0.05)
    from_recipe = row_space(victim)
    fitted = row_space(dataclasses.replace(victim, recipe=None))
    assert from_recipe.rank == fitted.rank == 5
    assert fitted.decay == pytest.approx(from_recipe.decay, abs=1e-6) and from_recipe.decay < 0.9
    assert float(from_recipe.residual(pixels).max()) < 1e-8


def test_recipe_decay_follows_torch_sgd_with_momentum() -> None:
    w = torch.ones(3, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9, weight_decay=0.01)
    for _ in range(17):  # no loss: θ₀'s share decays alone
        opt.zero_grad()
        w.grad = torch.zeros(3)
        opt.step()
    recipe = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}
    assert _recipe_decay(recipe, 17) == pytest.approx(float(w[0]), rel=1e-6)
    assert (
        _recipe_decay({"weight_decay": 0.0}, 5) == 1.0
        and _recipe_decay({"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.1}, 5) is None
    )


def test_initial_weights_equal_to_the_final_ones_are_no_training_signal() -> None:
    victim, _ = _trained(_images())
    same = dataclasses.replace(victim, initial_state=victim.model.state_dict())
    with pytest.raises(NoTrainingSignalError, match="did not change"):
        run_attack("unmix", same, progress=False)


def test_initial_weights_of_another_seed_show_no_rank_drop() -> None:
    victim, _ = _trained(_images())
    _, other = _trained(_images(), seed=1)
    with pytest.raises(NoTrainingSignalError, match="no rank drop"):
        run_attack("unmix", dataclasses.replace(victim, initial_state=other), progress=False)


def test_initial_weights_that_do_not_fit_and_a_convolutional_first_layer_are_refused() -> None:
    victim, initial = _trained(_images())
    bad = {**initial, "1.weight": torch.zeros(24, 35, dtype=torch.float64)}
    with pytest.raises(ConfigError, match=r"'1.weight' of shape \(24, 36\)"):
        run_attack("unmix", dataclasses.replace(victim, initial_state=bad), progress=False)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, 1))
    with pytest.raises(UnsupportedModelError, match="Conv2d"):
        run_attack("unmix", Victim.from_module(conv, SHAPE, initial_state=conv.state_dict()), progress=False)


def test_without_initial_weights_the_family_is_refused_up_front() -> None:
    victim, _ = _trained(_images())
    with pytest.raises(ConfigError, match="initial_state"):
        run_attack("unmix", dataclasses.replace(victim, initial_state=None), progress=False)


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="min_drop"):
        UnmixConfig(min_drop=0.5)


def test_reconstruct_attack_unmix_on_a_run_directory_recovers_its_images(tmp_path) -> None:
    from typer.testing import CliRunner

    from kktrecon.cli import app
    from kktrecon.data import SAMPLE_ROOT
    from kktrecon.evaluation import evaluate

    runner = CliRunner()
    trained = runner.invoke(app, [
        "train", "--n-per-class", "3", "--test-per-class", "20", "--hidden", "40", "--init", "pytorch",
        "--batch-size", "2", "--momentum", "0.9", "--lr", "0.01", "--steps", "60", "--out", str(tmp_path / "v"),
        "--data-root", str(SAMPLE_ROOT), "--device", "cpu",
    ])  # fmt: skip
    assert trained.exit_code == 0, trained.output
    rec = runner.invoke(app, ["reconstruct", str(tmp_path / "v"), "--attack", "unmix", "--out", str(tmp_path / "r"),
                              "--device", "cpu"])  # fmt: skip
    assert rec.exit_code == 0 and "rank 6" in rec.output, rec.output
    metrics = evaluate(tmp_path / "r", data_root=SAMPLE_ROOT, draw=None).metrics
    assert metrics["n_recovered"] >= 5  # of 6
    unknown = runner.invoke(app, ["reconstruct", str(tmp_path / "v"), "--attack", "nope", "--out", str(tmp_path / "x")])
    assert unknown.exit_code == 1 and "unmix" in unknown.output
