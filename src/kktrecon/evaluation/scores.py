"""Scoring a matched pair: SSIM as the paper (min-max) and scale-aligned, PSNR.

Two SSIMs per training image, both the mean of ``kornia.metrics.ssim(window_size=3)``:

- ``ssim_reference`` — the paper's protocol: candidate + training mean, min-max scaled to [0, 1],
  against training image + mean.
- ``ssim_aligned`` — the candidate is first scaled by ``c = max(0, <x̂, x>/<x̂, x̂>)`` (the
  least-squares fit onto the mean-subtracted training image), then + mean and clipped to [0, 1].
  A network without a first-layer bias is 1-homogeneous in its input, so it cannot tell ``c·x``
  from ``x``: the scale of a candidate is not identifiable and min-max scaling punishes good
  candidates with the wrong scale. ``c`` is never negative — a sign flip is a different image.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from kktrecon.errors import ConfigError
from kktrecon.evaluation.matching import match_nearest
from kktrecon.results import Scores
from kktrecon.tensors import check_images, ncc_distance

__all__ = [
    "SSIM_WINDOW",
    "Scores",
    "align_scale",
    "aligned_ssim",
    "finite_median",
    "image_metrics",
    "score_candidates",
    "score_matches",
    "ssim_per_image",
]

SSIM_WINDOW = 3
# PSNR of an exact copy is infinite; cap it (MSE floor 1e-10 -> 100 dB) so that JSON and medians stay finite.
_MSE_FLOOR = 1e-10


def ssim_per_image(a: Tensor, b: Tensor) -> Tensor:
    """Mean of the ``kornia.metrics.ssim(a, b, window_size=3)`` map per image (data range 1).

    Args:
        a: images of shape (n, C, H, W), values in [0, 1].
        b: images of the same shape.

    Returns:
        Tensor of shape (n,).
    """
    import kornia.metrics

    if a.shape[0] == 0:
        return torch.zeros(0, dtype=a.dtype, device=a.device)
    return kornia.metrics.ssim(a, b, window_size=SSIM_WINDOW, max_val=1.0).flatten(1).mean(dim=1)


def align_scale(candidates: Tensor, targets: Tensor) -> Tensor:
    """Least-squares non-negative scale of each candidate onto its target.

    ``c = max(0, <x̂, x> / <x̂, x̂>)``, computed over all entries of each pair; 0 for an all-zero
    candidate. Both are in the mean-subtracted space the network sees.

    Args:
        candidates: tensor of shape (n, ...).
        targets: tensor of the same shape.

    Returns:
        Tensor of shape (n,).

    Example:
        >>> x = torch.randn(2, 1, 4, 4)
        >>> align_scale(0.1 * x, x).round(decimals=4)
        tensor([10., 10.])
    """
    a = candidates.flatten(1)
    b = targets.flatten(1)
    num = (a * b).sum(1)
    den = (a * a).sum(1)
    scale = torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(num))
    return scale.clamp_min(0.0)


def _minmax(x: Tensor) -> Tensor:
    flat = x.flatten(1)
    lo = flat.min(dim=1).values.view(-1, *([1] * (x.dim() - 1)))
    hi = flat.max(dim=1).values.view(-1, *([1] * (x.dim() - 1)))
    # A constant image maps to zeros rather than NaN.
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def score_candidates(
    candidates: Tensor,
    train_images: Tensor,
    mean: Tensor,
    *,
    downsample: int = 1,
    best_buddies: bool = False,
) -> Scores:
    """Match every training image to a candidate and score the pair (see the module docstring).

    Args:
        candidates: reconstructed images, mean-subtracted, shape (m, C, H, W), C in (1, 3).
        train_images: training images, mean-subtracted, shape (n, C, H, W).
        mean: the per-pixel training mean, shape (C, H, W); image + mean is in [0, 1].
        downsample: bicubic downsampling factor applied before NCC matching (1 for MNIST, 2 for CIFAR).
        best_buddies: keep only mutual nearest neighbours; unmatched images get SSIM 0.

    Returns:
        :class:`Scores` with one entry per training image.

    Raises:
        ValueError: on shapes that do not fit together or an empty candidate set.

    Example:
        >>> train = torch.rand(4, 1, 8, 8) - 0.5
        >>> s = score_candidates(train.flip(0), train, torch.full((1, 8, 8), 0.5))
        >>> s.match.tolist()
        [3, 2, 1, 0]
        >>> bool((s.ssim_aligned > 0.999).all())
        True
    """
    check_images("candidates", candidates)
    check_images("train_images", train_images)
    if candidates.shape[1:] != train_images.shape[1:]:
        raise ConfigError(
            f"Expected `candidates` to have the training images' shape {tuple(train_images.shape[1:])}. "
            f"Got {tuple(candidates.shape[1:])}."
        )
    if candidates.shape[0] == 0:
        raise ConfigError("Expected `candidates` to hold at least one candidate. Got 0.")
    if tuple(mean.shape) != tuple(train_images.shape[1:]):
        raise ConfigError(f"Expected `mean` of shape {tuple(train_images.shape[1:])}. Got {tuple(mean.shape)}.")

    device = train_images.device
    cand = candidates.to(device, torch.float64)
    train = train_images.to(torch.float64)
    mean = mean.to(device, torch.float64)

    dist = ncc_distance(train, cand, downsample=downsample)
    return score_matches(cand, train, mean, dist, match_nearest(dist, best_buddies=best_buddies))


def aligned_ssim(candidates: Tensor, targets: Tensor, mean: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Pairwise scale-aligned SSIM: candidate i scaled onto target i, + mean, clipped to [0, 1].

    Args:
        candidates, targets: mean-subtracted images of the same shape (n, C, H, W).
        mean: the per-pixel training mean (C, H, W).

    Returns:
        The scales (n,), the aligned candidates in [0, 1] (n, C, H, W) and their SSIM (n,).
    """
    scale = align_scale(candidates, targets)
    aligned = (scale.view(-1, 1, 1, 1) * candidates + mean).clamp(0.0, 1.0)
    return scale, aligned, ssim_per_image(aligned, (targets + mean).clamp(0.0, 1.0))


def score_matches(cand: Tensor, train: Tensor, mean: Tensor, dist: Tensor, match: Tensor) -> Scores:
    """Score each training image against the candidate ``match`` picked for it (-1: unmatched)."""
    matched = match >= 0
    safe = match.clamp_min(0)
    picked = cand[safe]

    reference = _minmax(picked + mean)
    target = (train + mean).clamp(0.0, 1.0)
    scale, aligned, ssim_aligned = aligned_ssim(picked, train, mean)
    ssim_reference = ssim_per_image(reference, target)
    mse = (aligned - target).pow(2).flatten(1).mean(1).clamp_min(_MSE_FLOOR)
    psnr = -10.0 * torch.log10(mse)

    nan = torch.full_like(psnr, math.nan)
    zero = torch.zeros_like(psnr)
    return Scores(
        match=match,
        ncc=torch.where(matched, dist.gather(1, safe[:, None])[:, 0], nan),
        ssim_reference=torch.where(matched, ssim_reference, zero),
        ssim_aligned=torch.where(matched, ssim_aligned, zero),
        psnr=torch.where(matched, psnr, nan),
        scale=torch.where(matched, scale, nan),
        aligned=aligned * matched.view(-1, 1, 1, 1),
    )


def image_metrics(scores: Scores, *, threshold: float, downsample: int) -> dict[str, Any]:
    """Summary counts and medians of per-image scores (SSIM above ``threshold`` counts as reconstructed)."""
    n = len(scores.match)
    return {
        "ssim_threshold": float(threshold),
        "n_reconstructed": int((scores.ssim_aligned > threshold).sum()),
        "n_reconstructed_reference": int((scores.ssim_reference > threshold).sum()),
        "n_matched": int((scores.match >= 0).sum()),
        "median_ssim_aligned": finite_median(scores.ssim_aligned),
        "median_ssim_reference": finite_median(scores.ssim_reference),
        "median_psnr": finite_median(scores.psnr),
        "mean_ssim_aligned": float(scores.ssim_aligned.mean()) if n else None,
        "mean_ssim_reference": float(scores.ssim_reference.mean()) if n else None,
        "downsample": downsample,
        "ssim": f"kornia.metrics.ssim(window_size={SSIM_WINDOW}), mean of the map",
    }


def finite_median(x: Tensor) -> float | None:
    """Median of the finite entries, None when there are none (JSON-ready)."""
    x = x[torch.isfinite(x)]
    return float(x.median()) if x.numel() else None
