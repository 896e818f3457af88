"""Counting: p against d·n, as the law of data reconstruction reads it."""

from __future__ import annotations

import pytest

from kktrecon.attack.capacity import capacity
from kktrecon.models import CNNConfig, MLPConfig, build_model


def test_the_reference_mlp_has_room_and_the_default_cnn_has_not() -> None:
    mlp = capacity(build_model(MLPConfig(hidden=(1000, 1000), bias="first")), (1, 28, 28), 20)
    assert mlp.parameters == 784 * 1000 + 1000 + 1000 * 1000 + 1000
    assert mlp.ratio == pytest.approx(113.9, abs=0.1) and "room for the whole training set" in mlp.reading
    cnn = capacity(build_model(CNNConfig()), (1, 28, 28), 20)
    assert cnn.ratio == pytest.approx(0.41, abs=0.01) and "cannot be read back" in cnn.reading
    assert capacity(build_model(CNNConfig(channels=(32, 64), hidden=(100,))), (1, 28, 28), 20).ratio > 5
    record = mlp.to_dict()
    assert record["dn"] == 784 * 20 and record["ratio"] == mlp.ratio
    assert str(mlp).startswith("p = 1,786,000, d·n = 15,680")
