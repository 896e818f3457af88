"""The simulation family: replaying the recipe on the true data reproduces Δθ exactly; the attack climbs
towards it, resumes bit-identically, and refuses what it cannot simulate before writing anything."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from kktrecon.attack import Preprocessing, Victim, get_objective, run_attack
from kktrecon.attack import simulation as sim
from kktrecon.errors import ConfigError, UnsupportedModelError

SHAPE = (1, 6, 6)
LR, STEPS = 0.1, 12


def _pixels(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *SHAPE, generator=g, dtype=torch.float64)
    return torch.where(torch.rand(n, *SHAPE, generator=g, dtype=torch.float64) < 0.5, 0.0, x)


def _victim(optimizer: str = "sgd") -> tuple[Victim, torch.Tensor, torch.Tensor]:
    """A default-init conv victim trained by full-batch GD (the recipe exactly); (victim, inputs, 0/1 labels)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(27, 1)).double()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    pixels = _pixels(4, 0)
    mean = pixels.mean(0)
    x, y = pixels - mean, torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for _ in range(STEPS):
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0], y).backward()
        opt.step()
    recipe = {"optimizer": optimizer, "lr": LR, "steps": STEPS}
    victim = Victim.from_module(model.eval(), SHAPE, preprocessing=Preprocessing(mean), initial_state=initial,
                                recipe=recipe, n_train=4)  # fmt: skip
    return victim, x, y


def _loss(victim: Victim, x: torch.Tensor, y: torch.Tensor, schedule: sim.Schedule) -> dict[str, torch.Tensor]:
    model = victim.model
    theta0 = {k: victim.initial_state[k] for k, _ in model.named_parameters()}
    target = torch.cat([(p.detach() - theta0[k]).flatten() for k, p in model.named_parameters()])
    log_step = torch.tensor(math.log(schedule.step_size), dtype=torch.float64)
    return sim.simulation_loss(model, theta0, target, x, y, get_objective("binary"), log_step, schedule,
                               victim.preprocessing, sim.SimulationConfig(prior_weight=0.0))  # fmt: skip


def test_replaying_the_recipe_on_the_training_set_gives_the_real_change_and_held_out_data_does_not() -> None:
    victim, x, y = _victim()
    exact = sim.Schedule(steps=STEPS, step_size=LR, weight_decay=0.0, recipe_steps=STEPS)
    terms = _loss(victim, x, y, exact)
    assert float(terms["cosine"]) == pytest.approx(1.0, abs=1e-12)
    assert float(terms["scale"]) == pytest.approx(1.0, abs=1e-10)
    held_out = _pixels(4, 1) - victim.preprocessing.mean
    assert float(_loss(victim, held_out, y, exact)["cosine"]) < 0.95
    # the default schedule covers the recipe's lr·T in the fewest steps of at most max_step
    schedule = sim.simulation_schedule(victim, sim.SimulationConfig(max_step=0.25))
    assert schedule.steps == math.ceil(LR * STEPS / 0.25) and schedule.step_size * schedule.steps == pytest.approx(1.2)
    by_epochs = dataclasses.replace(victim, recipe={"lr": LR, "epochs": 3, "batch_size": 3})
    assert by_epochs.steps_trained == 6  # 3 epochs of ⌈4 / 3⌉ minibatches


def test_the_attack_raises_the_cosine_and_a_resumed_run_is_bit_identical(tmp_path, interrupt_at) -> None:
    victim, _, _ = _victim()
    config = sim.SimulationConfig(iterations=40, checkpoint_every=10, log_every=1, lr=0.05, max_step=0.4)
    whole = run_attack("simulate", victim, config, out=tmp_path / "whole", progress=False)
    history = (tmp_path / "whole" / "reconstruction.json").read_text()
    assert json.loads(history)["attack"] == "simulate"
    points = json.loads(history)["loss_history"]
    assert points[-1]["cosine"] > points[0]["cosine"] + 0.05
    restore = interrupt_at(sim, "simulation_loss", 25)
    with pytest.raises(KeyboardInterrupt):
        run_attack("simulate", victim, config, out=tmp_path / "cut", progress=False)
    restore()
    resumed = run_attack("simulate", victim, config, out=tmp_path / "cut", resume=True, progress=False)
    assert torch.equal(resumed.x, whole.x)
    longer = run_attack("simulate", victim, dataclasses.replace(config, iterations=45), out=tmp_path / "cut",
                        resume=True, progress=False)  # fmt: skip
    assert not torch.equal(longer.x, whole.x)  # a finished run extends


def test_what_it_cannot_simulate_is_refused_before_anything_is_written(tmp_path) -> None:
    adam, _, _ = _victim("adam")
    with pytest.raises(UnsupportedModelError, match="replays SGD"):
        run_attack("simulate", adam, out=tmp_path / "adam", progress=False)
    victim, _, _ = _victim()
    with pytest.raises(ConfigError, match="initial_state"):
        run_attack("simulate", dataclasses.replace(victim, initial_state=None), out=tmp_path / "none", progress=False)
    with pytest.raises(ConfigError, match="max_memory_gb"):
        run_attack("simulate", victim, out=tmp_path / "big", progress=False, max_memory_gb=1e-9)
    assert not any((tmp_path / name).exists() for name in ("adam", "none", "big"))
