"""The verdict: which training images were *recovered*, read against the baselines a count needs.

An SSIM above 0.4 alone does not say that a training image leaked: on MNIST a different digit of the
training set, scale-aligned, already reaches SSIM ≈ 0.45–0.5 (min-max: ≈ 0.6–0.7), because flat
black backgrounds score ≈ 1 with a 3×3 window, and held-out digits the victim never saw score as
well ("No Prior, No Leakage", 2025: spurious KKT solutions and chance look-alikes are plentiful).

**Recovered** (the headline): a training image xᵢ is recovered when some candidate's NCC-nearest
image in the pool *training ∪ held-out* (held-out images from the same task and preprocessing) is
xᵢ itself, and that candidate's scale-aligned SSIM with xᵢ exceeds the threshold. A candidate that
merely looks like a digit is as near to some held-out digit as to a training digit, so look-alikes
do not count. Beside it, per training image: the distance ratio d(ĉ, xᵢ) / d(ĉ, nearest held-out
image) of its matched candidate ĉ (after Carlini et al. 2023's extraction criterion: < 1 means
nearer to the training image than to anything unseen), the SSIM its nearest held-out look-alike
reaches, and its chance level (its nearest *other* training image).

**The control** (:func:`control_metrics`): the same verdict applied to as many images the victim never
saw, drawn from outside the pool, as there are candidates. Some of them are nearer to a training image
than to anything in the pool by chance, more the more candidates there are (MNIST n = 20 against 200
held-out images: 40 unseen digits "recover" 3, 320 "recover" 12); a count at or below the control's
is not a result. Where no images outside the pool exist (an audit of a user's model), the control is the
pool's own first images, each judged without its own copy (``left_out``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from kktrecon.errors import ConfigError
from kktrecon.evaluation.matching import match_nearest
from kktrecon.evaluation.scores import aligned_ssim, finite_median, score_matches
from kktrecon.results import Scores, Verdict
from kktrecon.tensors import check_images, ncc_distance

__all__ = ["Verdict", "chance_level", "chance_metrics", "control_metrics", "recovery_verdict", "verdict_metrics"]


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


def control_metrics(
    control: Tensor,
    train: Tensor,
    held_out: Tensor,
    mean: Tensor,
    *,
    threshold: float,
    downsample: int,
    source: str,
    left_out: bool = False,
    at: Sequence[int] = (),
) -> dict[str, Any]:
    """The verdict's count for unseen images as candidates (the module docstring), for ``metrics.json``.

    ``left_out``: the control images are the first ones of ``held_out`` itself, each judged against the
    pool without its own copy (leave one out), for a caller that has no images outside the pool (an audit).
    ``at``: also the count of the first m control images for each m (``n_recovered_at``), read off the same
    judgement: each control image is judged alone, so a prefix recovers what its images recover.
    """
    k = control.shape[0]
    if left_out and (k > held_out.shape[0] or not torch.equal(control, held_out[:k])):
        raise ConfigError(f"A left-out control must be the first images of held_out. Got {k} other images.")
    hidden = torch.arange(k) if left_out else None
    # Only the count: the look-alike and chance baselines are the candidates' verdict's, not computed again.
    _, nearest, best, ssim, _, real = _owners(control.to(train), train, held_out, mean, None, threshold=threshold,
                                              downsample=downsample, hidden=hidden)  # fmt: skip
    where = "each left out of the held-out pool in turn" if left_out else "outside the held-out pool"
    metrics: dict[str, Any] = {
        "n_recovered": int(((best >= 0) & (ssim > threshold)).sum()),
        "count": int(k),
        "source": source,
        "placement": where,
        "criterion": f"the verdict applied to images the victim never saw, {where}, as many as the candidates "
        "(or all there are): what chance reaches with this many candidates",
    }
    if at:
        hits = torch.nonzero(real).flatten()  # control images that recover the training image nearest to them
        first = torch.full((train.shape[0],), k, dtype=torch.int64)  # the first that recovers each (k: none)
        first.scatter_reduce_(0, nearest.cpu()[hits], hits, reduce="amin")
        metrics["n_recovered_at"] = {int(m): int((first < m).sum()) for m in at}
    return metrics


def recovery_verdict(
    candidates: Tensor,
    train: Tensor,
    held_out: Tensor,
    mean: Tensor,
    match: Tensor,
    *,
    threshold: float,
    downsample: int = 1,
    best_buddies: bool = False,
) -> Verdict:
    """Which training images are recovered against the pool training ∪ held-out (see the module docstring).

    Args:
        candidates: (m, C, H, W), mean-subtracted.
        train: (n, C, H, W) training images, mean-subtracted.
        held_out: (h, C, H, W) images of the same task the victim never saw, same preprocessing; h may
            be 0, and then no image can be told from a look-alike (every count is reported as such).
        mean: (C, H, W) training mean.
        match: (n,) each training image's matched candidate (as :func:`score_candidates` chose it).
        threshold: aligned SSIM above which a candidate counts.
        downsample: NCC matching resolution factor (2 for CIFAR-10).
        best_buddies: also require the recovering candidate to be the training image's nearest candidate.
    """
    n = train.shape[0]
    dist, nearest, best, ssim, images, real = _owners(
        candidates, train, held_out, mean, match if best_buddies else None, threshold=threshold, downsample=downsample
    )
    recovered = (best >= 0) & (ssim > threshold)
    ratio, look_index, look_ssim, look_images = _held_out_baselines(
        candidates, train, held_out, mean, match, dist, downsample
    )
    chance = chance_level(train, mean, downsample=downsample).ssim_aligned.cpu() if n >= 2 else torch.zeros(n)
    return Verdict(
        recovered=recovered,
        candidate=torch.where(recovered, best, torch.full_like(best, -1)),
        ssim=ssim,
        images=images,
        distance_ratio=ratio,
        held_out_index=look_index,
        held_out_ssim=look_ssim,
        held_out_images=look_images,
        chance_ssim=chance.to(torch.float64),
        candidate_real=real,
        candidate_nearest=torch.where(nearest < n, nearest, torch.full_like(nearest, -1)).cpu(),
    )


def _owners(
    candidates: Tensor,
    train: Tensor,
    held_out: Tensor,
    mean: Tensor,
    match: Tensor | None,
    *,
    threshold: float,
    downsample: int,
    hidden: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Each training image's best candidate among those whose NCC-nearest pool image it is.

    ``match``: only a training image's matched candidate may serve it (best buddies); None: any.
    ``hidden``: per candidate, a held-out image it may not be matched to (its own copy), or None.
    Returns the candidate-to-pool distances, each candidate's nearest pool image, and per training
    image its best owner (−1: none), that owner's aligned SSIM and image; and which candidates are real.
    """
    n, h = train.shape[0], held_out.shape[0]
    pool = torch.cat([train, held_out.to(train)]) if h else train
    dist = ncc_distance(candidates, pool, downsample=downsample)
    if hidden is not None:
        dist[torch.arange(len(hidden), device=dist.device), n + hidden.to(dist.device)] = math.inf
    nearest = dist.argmin(dim=1)
    owners = torch.nonzero(nearest < n).flatten()
    ssim = torch.zeros(n, dtype=torch.float64)
    best = torch.full((n,), -1, dtype=torch.int64)
    images = torch.zeros((n, *train.shape[1:]), dtype=torch.float64)
    real = torch.zeros(candidates.shape[0], dtype=torch.bool)
    if len(owners):
        _, owner_images, owner_ssim = aligned_ssim(candidates[owners], train[nearest[owners]], mean)
        real[owners.cpu()] = (owner_ssim > threshold).cpu()
        for k, (j, value) in enumerate(zip(owners.tolist(), owner_ssim.cpu().tolist(), strict=True)):
            i = int(nearest[j])
            if match is not None and int(match[i]) != j:
                continue
            if best[i] < 0 or value > ssim[i]:
                best[i], ssim[i], images[i] = j, value, owner_images[k].cpu()
    return dist, nearest, best, ssim, images, real


def _held_out_baselines(
    candidates: Tensor, train: Tensor, held_out: Tensor, mean: Tensor, match: Tensor, dist: Tensor, downsample: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Distance ratio of each matched candidate, and each training image's nearest held-out look-alike."""
    n, h = train.shape[0], held_out.shape[0]
    if h == 0:
        return (
            torch.full((n,), math.nan, dtype=torch.float64),
            torch.full((n,), -1, dtype=torch.int64),
            torch.zeros(n, dtype=torch.float64),
            torch.zeros((n, *train.shape[1:]), dtype=torch.float64),
        )
    safe = match.clamp_min(0)
    to_train = dist[safe, torch.arange(n, device=dist.device)]
    to_held_out = dist[safe, n:].min(dim=1).values
    ratio = torch.where(match >= 0, to_train / to_held_out.clamp_min(1e-12), torch.full_like(to_train, math.nan))
    look = ncc_distance(train, held_out, downsample=downsample).argmin(dim=1)
    _, images, look_ssim = aligned_ssim(held_out[look].to(train), train, mean)
    return ratio.cpu(), look.cpu(), look_ssim.cpu(), images.cpu()


def verdict_metrics(verdict: Verdict, *, threshold: float, held_out: dict[str, Any]) -> dict[str, Any]:
    """The verdict's counts for ``metrics.json``; ``n_recovered`` is None without held-out images."""
    n = len(verdict.recovered)
    has_pool = held_out.get("count", 0) > 0
    return {
        "n_recovered": int(verdict.recovered.sum()) if has_pool else None,
        "recovered_fraction": float(verdict.recovered.float().mean()) if has_pool and n else None,
        "recovered_criterion": (
            "a candidate whose NCC-nearest image among the training and held-out images is this training image, "
            f"with scale-aligned SSIM > {threshold:g}"
        ),
        "held_out": held_out,
        "held_out_n_reconstructed": int((verdict.held_out_ssim > threshold).sum()) if has_pool else None,
        "held_out_median_ssim_aligned": finite_median(verdict.held_out_ssim) if has_pool else None,
        "median_distance_ratio": finite_median(verdict.distance_ratio),
    }
