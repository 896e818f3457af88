"""Scores: SSIM against an independent numpy oracle, scale alignment, input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kktrecon.evaluation import (
    Scores,
    align_scale,
    score_candidates,
)
from tests.evaluation.helpers import _images, _oracle


def test_exact_copies_score_one() -> None:
    train, mean = _images(6)
    s = score_candidates(train.clone(), train, mean)
    assert s.match.tolist() == list(range(6))
    torch.testing.assert_close(s.ssim_aligned, torch.ones(6, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(s.ssim_reference, torch.ones(6, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(s.scale, torch.ones(6, dtype=torch.float64))
    assert torch.all(s.psnr == 100.0)  # capped, not inf


@pytest.mark.parametrize("shape", [(1, 10, 10), (3, 8, 8)])
def test_pipeline_agrees_with_independent_oracle(shape: tuple[int, ...]) -> None:
    train, mean = _images(5, shape, seed=1)
    g = torch.Generator().manual_seed(2)
    scales = torch.tensor([0.05, 0.3, 1.0, 2.0, 7.0], dtype=torch.float64).view(-1, 1, 1, 1)
    noisy = scales * (train + 0.15 * torch.randn(train.shape, generator=g, dtype=torch.float64))
    distractors = 0.2 * torch.randn(7, *shape, generator=g, dtype=torch.float64)
    cands = torch.cat([distractors[:3], noisy, distractors[3:]])
    cands = cands[torch.randperm(len(cands), generator=g)]
    s = score_candidates(cands, train, mean)
    expected = _oracle(cands.numpy(), train.numpy(), mean.numpy())
    assert s.match.tolist() == expected["match"]
    for key in ("ncc", "ssim_reference", "ssim_aligned", "psnr"):
        np.testing.assert_allclose(getattr(s, key).numpy(), expected[key], atol=1e-9, err_msg=key)
    # The oracle is not trivially satisfied: noisy candidates at the wrong scale score well below 1.
    assert float(s.ssim_aligned.max()) < 0.99


def test_alignment_never_flips_sign_and_is_scale_invariant() -> None:
    train, mean = _images(4, seed=8)
    assert torch.all(align_scale(-train, train) == 0)
    for i in range(4):  # one candidate each, so that the sign-flipped copy is the match
        flipped = score_candidates(-train[i : i + 1], train[i : i + 1], mean)
        assert flipped.match.tolist() == [0] and float(flipped.scale[0]) == 0.0
        torch.testing.assert_close(flipped.aligned[0], mean.clamp(0, 1))
        assert float(flipped.ssim_aligned[0]) < 0.5

    small = score_candidates(0.1 * train, train, mean)
    torch.testing.assert_close(small.scale, torch.full((4,), 10.0, dtype=torch.float64))
    torch.testing.assert_close(small.ssim_aligned, torch.ones(4, dtype=torch.float64), atol=1e-6, rtol=0)
    assert torch.all(align_scale(torch.zeros_like(train), train) == 0)  # no division by zero


def test_score_candidates_rejects_bad_input() -> None:
    train, mean = _images(3)
    with pytest.raises(ValueError, match="training images' shape"):
        score_candidates(torch.zeros(2, 1, 8, 8, dtype=torch.float64), train, mean)
    with pytest.raises(ValueError, match="at least one candidate"):
        score_candidates(train[:0], train, mean)
    with pytest.raises(ValueError, match=r"`mean` of shape"):
        score_candidates(train, train, mean[0])
    with pytest.raises(ValueError, match=r"`downsample` to be a positive integer"):
        score_candidates(train, train, mean, downsample=0)
    with pytest.raises(ValueError, match=r"C in \(1, 3\)"):
        score_candidates(torch.zeros(2, 2, 8, 8), torch.zeros(2, 2, 8, 8), torch.zeros(2, 8, 8))


# ----------------------------------------------------------------------------------------------
# In-memory evaluation
# ----------------------------------------------------------------------------------------------


def test_scores_is_a_dataclass_of_tensors() -> None:
    train, mean = _images(2)
    s = score_candidates(train, train, mean)
    assert isinstance(s, Scores)
    assert s.match.dtype == torch.int64 and s.ssim_aligned.dtype == torch.float64
