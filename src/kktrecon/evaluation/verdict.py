"""Reading a score against its baseline: the chance level of look-alike training images.

On MNIST a different digit of the training set, scale-aligned, already reaches SSIM ≈ 0.45–0.5
(min-max: ≈ 0.6–0.7), because flat black backgrounds score ≈ 1 with a 3×3 window. A count of
images above the SSIM threshold means something only next to what look-alikes reach.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from kktrecon.errors import ConfigError
from kktrecon.evaluation.matching import check_images, match_nearest, ncc_distance
from kktrecon.evaluation.scores import Scores, finite_median, score_matches

__all__ = ["chance_level", "chance_metrics"]


def chance_level(train_images: Tensor, mean: Tensor, *, downsample: int = 1) -> Scores:
    """Scores of each training image against its NCC-nearest *other* training image (leave one out).

    A baseline for reading SSIM: on MNIST a different digit of the training set, scale-aligned,
    already reaches SSIM ≈ 0.45–0.5 (min-max: ≈ 0.6–0.7), because flat black backgrounds score
    ≈ 1 with a 3×3 window. A reconstruction is convincing where it clearly beats this level.

    Args:
        train_images: training images, mean-subtracted, shape (n, C, H, W), n >= 2.
        mean: the per-pixel training mean, shape (C, H, W).
        downsample: as in :func:`score_candidates`.

    Returns:
        :class:`Scores`; ``match`` indexes the training set.
    """
    check_images("train_images", train_images)
    if train_images.shape[0] < 2:
        raise ConfigError(
            f"Expected at least two training images for a leave-one-out baseline. Got {len(train_images)}."
        )
    train = train_images.to(torch.float64)
    mean = mean.to(train.device, torch.float64)
    dist = ncc_distance(train, train, downsample=downsample)
    dist.fill_diagonal_(math.inf)
    return score_matches(train, train, mean, dist, match_nearest(dist))


def chance_metrics(train_images: Tensor, mean: Tensor, *, threshold: float, downsample: int) -> dict[str, Any]:
    """The chance-level counts and medians written beside every image result."""
    base = chance_level(train_images, mean, downsample=downsample)
    return {
        "chance_n_reconstructed": int((base.ssim_aligned > threshold).sum()),
        "chance_n_reconstructed_reference": int((base.ssim_reference > threshold).sum()),
        "chance_median_ssim_aligned": finite_median(base.ssim_aligned.to("cpu")),
        "chance_median_ssim_reference": finite_median(base.ssim_reference.to("cpu")),
        "chance_level": "each training image against its NCC-nearest other training image",
    }
