"""Generated 2-D toy data (the paper's Fig. 2): points in [-1, 1]² with balanced binary labels."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from kktrecon.data.dataset import DataConfig, is_int
from kktrecon.data.registry import Built, DatasetSpec, Task, register_dataset
from kktrecon.errors import DataError

__all__ = ["make_toy"]


def _spiral(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # The reference's simple_2d spiral: 12 turns, radius from 0.5 to 1, random balanced labels.
    angle = np.linspace(0, 12 * 2 * np.pi, n)
    radius = np.linspace(0.5, 1.0, n)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    y = np.zeros(n, dtype=np.int64)
    y[n // 2 :] = 1
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return x, y[perm]


def _grid(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # rows x cols = n with rows the largest divisor <= sqrt(n); n is even, so one side is even and
    # the checkerboard is exactly balanced.
    rows = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    cols = n // rows
    i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    xs = np.linspace(-1.0, 1.0, cols) if cols > 1 else np.zeros(1)
    ys = np.linspace(-1.0, 1.0, rows) if rows > 1 else np.zeros(1)
    x = np.stack([xs[j.ravel()], ys[i.ravel()]], axis=1)
    return x, ((i + j) % 2).ravel().astype(np.int64)


_TOY_LAYOUTS: dict[str, Callable[[int, int], tuple[np.ndarray, np.ndarray]]] = {"spiral": _spiral, "grid": _grid}


def make_toy(layout: str, n: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``n`` labelled points in [-1, 1]² for quick, visual experiments.

    Args:
        layout: ``"spiral"`` (the reference's 12-turn spiral, radius 0.5 to 1, labels a seeded random
            balanced assignment) or ``"grid"`` (a near-square grid over [-1, 1]² with checkerboard
            labels; deterministic, ``seed`` unused).
        n: Number of points; even, so that the two labels are balanced.
        seed: Seed of the spiral's label assignment.

    Returns:
        ``(x, y)``: float64 points of shape (n, 2) and int64 labels 0/1, n/2 of each.

    Example:
        >>> x, y = make_toy("grid", 20)
        >>> x.shape, int(y.sum())
        (torch.Size([20, 2]), 10)
    """
    if layout not in _TOY_LAYOUTS:
        raise DataError(f"Expected `layout` to be one of {sorted(_TOY_LAYOUTS)}. Got {layout!r}.")
    if not is_int(n) or n < 2 or n % 2:
        raise DataError(f"Expected `n` to be a positive even integer (balanced labels). Got {n!r}.")
    if not is_int(seed):
        raise DataError(f"Expected `seed` to be an integer. Got {seed!r}.")
    x, y = _TOY_LAYOUTS[layout](int(n), int(seed))
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)), torch.from_numpy(y)


def _build_toy(spec: DatasetSpec, config: DataConfig, data_root: str | Path | None) -> Built:
    n = 2 * config.n_per_class
    x, y = make_toy(config.task, n, seed=config.seed)
    return Built(
        x_train=x.numpy(),
        y_train=y.numpy(),
        x_test=np.zeros((0, 2)),
        y_test=np.zeros(0, dtype=np.int64),
        mean=np.zeros(2),
        train_indices=np.arange(n, dtype=np.int64),
        test_indices=np.zeros(0, dtype=np.int64),
        data_root=None,
    )


_BINARY = ("-1", "+1")

register_dataset(
    DatasetSpec(
        name="toy",
        display_name="toy 2-D",
        folder="",
        train_files=(),
        test_files=(),
        input_shape=(2,),
        match_downsample=1,
        tasks={
            "spiral": Task("spiral", _BINARY, description="12-turn spiral, random balanced labels"),
            "grid": Task("grid", _BINARY, description="near-square grid, checkerboard labels"),
        },
        reader=None,
        build=_build_toy,
    )
)
