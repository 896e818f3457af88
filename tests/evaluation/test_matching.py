"""Matching: NCC nearest neighbours, best buddies, downsampling for CIFAR-sized images."""

from __future__ import annotations

import math

import pytest
import torch

from kktrecon.evaluation import (
    match_nearest,
    ncc_distance,
    score_candidates,
)
from tests.evaluation.helpers import _images


@pytest.mark.parametrize("best_buddies", [False, True])
def test_shuffling_candidates_only_permutes_matches(best_buddies: bool) -> None:
    train, mean = _images(8, seed=3)
    g = torch.Generator().manual_seed(4)
    cands = torch.cat([train[:5] + 0.3 * torch.randn(5, 1, 12, 12, generator=g, dtype=torch.float64)])
    cands = torch.cat([cands, 0.3 * torch.randn(6, 1, 12, 12, generator=g, dtype=torch.float64)])
    perm = torch.randperm(len(cands), generator=g)
    a = score_candidates(cands, train, mean, best_buddies=best_buddies)
    b = score_candidates(cands[perm], train, mean, best_buddies=best_buddies)
    for key in ("ssim_reference", "ssim_aligned", "psnr", "ncc", "scale"):
        torch.testing.assert_close(getattr(a, key), getattr(b, key), equal_nan=True, msg=key)
    matched = b.match >= 0
    assert torch.equal(matched, a.match >= 0)
    assert torch.equal(perm[b.match[matched]], a.match[matched])


def test_best_buddies_never_reuses_a_candidate() -> None:
    train, mean = _images(3, seed=5)
    g = torch.Generator().manual_seed(6)
    # Images 0 and 1 are near copies, so one candidate is the nearest of both.
    train[1] = train[0] + 0.02 * torch.randn(train[0].shape, generator=g, dtype=torch.float64)
    cands = torch.stack([train[0], train[2] + 0.05])
    plain = score_candidates(cands, train, mean)
    assert plain.match.tolist() == [0, 0, 1]  # without best buddies a candidate serves two images
    bb = score_candidates(cands, train, mean, best_buddies=True)
    assert bb.match.tolist() == [0, -1, 1]
    assert bb.ssim_aligned[1] == 0 and bb.ssim_reference[1] == 0
    assert math.isnan(float(bb.psnr[1])) and math.isnan(float(bb.ncc[1]))
    assert torch.all(bb.aligned[1] == 0)


def test_best_buddies_matches_are_unique_on_random_sets() -> None:
    g = torch.Generator().manual_seed(7)
    dist = torch.rand(40, 15, generator=g)
    plain = match_nearest(dist)
    assert len(set(plain.tolist())) < 40  # 40 rows, 15 columns: duplicates are forced
    bb = match_nearest(dist, best_buddies=True)
    used = bb[bb >= 0].tolist()
    assert len(used) == len(set(used)) and len(used) > 0
    for i, j in enumerate(bb.tolist()):
        if j >= 0:
            assert int(dist[:, j].argmin()) == i and int(dist[i].argmin()) == j


def test_ncc_matching_picks_the_right_candidate_among_distractors() -> None:
    train, mean = _images(6, seed=9)
    g = torch.Generator().manual_seed(10)
    # Positive affine copies (contrast and brightness changed) fool L2 but not NCC.
    gains = torch.tensor([0.2, 3.0, 0.5, 5.0, 0.1, 1.5], dtype=torch.float64).view(-1, 1, 1, 1)
    copies = gains * train + torch.linspace(-2, 2, 6, dtype=torch.float64).view(-1, 1, 1, 1)
    distractors = 0.3 * torch.randn(20, 1, 12, 12, generator=g, dtype=torch.float64)
    cands = torch.cat([distractors, copies])
    perm = torch.randperm(len(cands), generator=g)
    s = score_candidates(cands[perm], train, mean)
    assert perm[s.match].tolist() == list(range(20, 26))
    torch.testing.assert_close(s.ncc, torch.zeros(6, dtype=torch.float64), atol=1e-9, rtol=0)
    l2 = torch.cdist(train.flatten(1), cands[perm].flatten(1)).argmin(1)
    assert perm[l2].tolist() != list(range(20, 26))


def test_cifar_shape_with_downsampling() -> None:
    train, mean = _images(5, (3, 32, 32), seed=11)
    g = torch.Generator().manual_seed(12)
    cands = torch.cat([0.2 * torch.randn(10, 3, 32, 32, generator=g, dtype=torch.float64), 0.5 * train + 0.01])
    s = score_candidates(cands, train, mean, downsample=2)
    assert s.match.tolist() == list(range(10, 15))
    assert s.aligned.shape == (5, 3, 32, 32)  # scoring at full resolution
    assert torch.all(s.ssim_aligned > 0.99)
    # The distance is taken after 2x bicubic downsampling, not at full resolution.
    d2 = ncc_distance(train, cands, downsample=2)
    small = torch.nn.functional.interpolate
    manual = ncc_distance(
        small(train, scale_factor=0.5, mode="bicubic"), small(cands, scale_factor=0.5, mode="bicubic")
    )
    torch.testing.assert_close(d2, manual)
    assert not torch.allclose(d2, ncc_distance(train, cands))
