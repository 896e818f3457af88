"""The sweeps' tests share one small victim: an MLP on six embedded MNIST digits, trained once per module."""

from __future__ import annotations

from pathlib import Path

import pytest

from kktrecon.data import SAMPLE_ROOT, DataConfig
from kktrecon.models import MLPConfig
from kktrecon.training import TrainConfig, train


@pytest.fixture(scope="module")
def victim(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("v") / "victim"
    config = TrainConfig(
        data=DataConfig(n_per_class=3, test_per_class=10), model=MLPConfig(hidden=(32, 32)), lr=0.05, steps=200
    )
    train(config, out=path, data_root=SAMPLE_ROOT, device="cpu", progress=False)
    return path
