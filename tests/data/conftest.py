"""Fixtures of the data tests: independent reads of the real subsets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kktrecon.data import load_dataset
from tests.data.oracles import read_cifar, read_mnist


@pytest.fixture(scope="module")
def mnist(data_root: Path) -> dict[str, np.ndarray]:
    return read_mnist(data_root)


@pytest.fixture(scope="module")
def cifar(data_root: Path) -> dict[str, np.ndarray]:
    return read_cifar(data_root)


@pytest.fixture(scope="module")
def mnist_odd_even(data_root: Path):
    return load_dataset(data_root=data_root)  # the defaults: odd/even, 250 per class, 500 per class test
