"""The generated 2-D toy data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kktrecon.data import (
    DataError,
    load_dataset,
    make_toy,
)

# --- toy data -------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["spiral", "grid"])
def test_toy_shapes_balance_range_determinism(layout):
    x, y = make_toy(layout, 40, seed=3)
    assert x.shape == (40, 2) and y.shape == (40,) and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [20, 20]
    assert float(x.abs().max()) <= 1.0
    x2, y2 = make_toy(layout, 40, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_toy_spiral_follows_reference_and_seed():
    x, y = make_toy("spiral", 20, seed=0)
    angle, radius = np.linspace(0, 24 * np.pi, 20), np.linspace(0.5, 1, 20)
    np.testing.assert_allclose(x.numpy(), np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1))
    assert not all(torch.equal(y, make_toy("spiral", 20, seed=s)[1]) for s in range(1, 5))


def test_toy_grid_is_checkerboard():
    x, y = make_toy("grid", 20)
    assert sorted(set(x[:, 0].tolist())) == pytest.approx([-1, -0.5, 0, 0.5, 1])  # 5 columns
    assert len(set(x[:, 1].tolist())) == 4  # 4 rows
    for a in range(20):
        for b in range(20):
            if float((x[a] - x[b]).abs().sum()) == pytest.approx(0.5):  # horizontal neighbours
                assert y[a] != y[b]


def test_toy_dataset():
    ds = load_dataset(dataset="toy", task="spiral", n_per_class=10, seed=1, dtype=torch.float64)
    assert ds.x_train.shape == (20, 2) and ds.input_shape == (2,) and not ds.is_image
    assert ds.x_test.shape == (0, 2) and ds.y_test.shape == (0,)
    assert torch.equal(ds.mean, torch.zeros(2, dtype=torch.float64))
    assert ds.train_indices.tolist() == list(range(20)) and ds.data_root is None
    assert ds.class_names == ("-1", "+1") and sorted(ds.signs.unique().tolist()) == [-1.0, 1.0]
    assert torch.equal(ds.x_train, make_toy("spiral", 20, seed=1)[0])
    json.dumps(ds.summary())


def test_toy_bad_arguments():
    with pytest.raises(DataError, match=r"Expected `layout` to be one of \['grid', 'spiral'\]. Got 'ring'"):
        make_toy("ring", 10)
    with pytest.raises(DataError, match=r"positive even integer.*Got 7"):
        make_toy("grid", 7)
