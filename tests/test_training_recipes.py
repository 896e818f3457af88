"""Victims trained as users train: PyTorch's default init, minibatches, momentum, Adam; θ₀ kept; exact resume."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from kktrecon.attack import Victim
from kktrecon.configs import config_to_dict
from kktrecon.data import DataConfig
from kktrecon.errors import ConfigError
from kktrecon.models import MLPConfig
from kktrecon.training import TrainConfig, train, train_config_from_dict

USER = TrainConfig(
    data=DataConfig(dataset="toy", task="grid", n_per_class=6),
    model=MLPConfig(hidden=(16, 16)),
    init="pytorch",
    lr=0.05,
    steps=40,
    eval_every=10,
    checkpoint_every=7,
    batch_size=4,
    momentum=0.9,
)


def test_pytorch_init_draws_nn_linear_bounds_and_is_kept_as_the_initial_weights(tmp_path) -> None:
    train(USER, out=tmp_path / "v", device="cpu", progress=False)
    victim = Victim.from_run(tmp_path / "v")
    assert victim.initial_state is not None and victim.recipe["init"] == "pytorch"
    w0 = victim.initial_state["layers.0.weight"]
    bound = 1 / math.sqrt(w0.shape[1])  # Kaiming-uniform with a = √5 is U(±1/√fan_in)
    assert float(w0.abs().max()) <= bound and float(w0.abs().max()) > 0.8 * bound
    assert not torch.equal(w0, victim.model.state_dict()["layers.0.weight"])  # it trained from there
    again = train(USER, steps=0, device="cpu", progress=False)  # the same seed draws the same θ₀
    assert torch.equal(again.model.state_dict()["layers.0.weight"], w0)


@pytest.mark.parametrize(
    "recipe", [{}, {"optimizer": "adam", "momentum": 0.0, "lr": 1e-3}, {"batch_size": None, "momentum": 0.5}]
)
def test_minibatch_momentum_and_adam_resume_bit_identically(tmp_path, recipe) -> None:
    config = dataclasses.replace(USER, **recipe)
    full = train(config, out=tmp_path / "full", device="cpu", progress=False)
    train(config, out=tmp_path / "grown", device="cpu", progress=False, steps=20)
    grown = train(config, out=tmp_path / "grown", device="cpu", progress=False, resume=True)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, grown.model.state_dict()[k]), k


def test_stop_at_loss_with_minibatches_reads_the_whole_training_set() -> None:
    result = train(USER, steps=5000, loss_threshold=0.05, device="cpu", progress=False)
    assert result.metrics["steps"] < 5000 and result.metrics["train_loss"] < 0.05


def test_recipes_recorded_before_these_fields_still_load() -> None:
    record = config_to_dict(TrainConfig())
    for name in ("init", "optimizer", "momentum", "batch_size"):
        record.pop(name)
    config = train_config_from_dict(record)
    assert (config.init, config.optimizer, config.momentum, config.batch_size) == ("model", "sgd", 0.0, None)


def test_bad_recipes_are_refused() -> None:
    with pytest.raises(ConfigError, match="`optimizer`"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(ConfigError, match="`init`"):
        TrainConfig(init="xavier")
    with pytest.raises(ConfigError, match="momentum"):
        TrainConfig(optimizer="adam", momentum=0.9)
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(batch_size=0)
