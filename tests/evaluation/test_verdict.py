"""Baselines: the chance level of look-alike training images."""

from __future__ import annotations

import pytest
import torch

from kktrecon.evaluation import (
    chance_level,
    evaluate_candidates,
)
from tests.evaluation.helpers import _images


def test_chance_level_never_matches_an_image_to_itself() -> None:
    train, mean = _images(6, seed=15)
    g = torch.Generator().manual_seed(16)
    train[3] = 0.5 * train[0] + 0.01 * torch.randn(train[0].shape, generator=g, dtype=torch.float64)
    base = chance_level(train, mean)
    assert all(int(j) != i for i, j in enumerate(base.match))
    assert int(base.match[0]) == 3 and int(base.match[3]) == 0
    assert float(base.ssim_aligned[0]) > 0.9 > float(base.ssim_aligned[1])
    r = evaluate_candidates(train, train, torch.tensor([0, 1] * 3), mean, outputs=torch.ones(6))
    assert r.metrics["chance_median_ssim_aligned"] == pytest.approx(float(base.ssim_aligned.median()))
    with pytest.raises(ValueError, match="at least two training images"):
        chance_level(train[:1], mean)
