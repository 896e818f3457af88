"""The 2-D toy (the paper's Fig. 2): which training points have a candidate nearby, on and off the margin.

There are no images: each training point's distance to its nearest candidate, and how many points
have one within a radius, split into points on the margin (the KKT support, λᵢ > 0) and off it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from kktrecon.errors import ConfigError
from kktrecon.evaluation.matching import match_nearest
from kktrecon.results import ToyScores
from kktrecon.tensors import forward_chunked

__all__ = ["ToyScores", "score_toy", "toy_grid", "toy_metrics"]


def score_toy(candidates: Tensor, points: Tensor, *, best_buddies: bool = False) -> ToyScores:
    """Match each training point of a low-dimensional toy to its nearest candidate (Euclidean).

    Args:
        candidates: shape (m, d).
        points: training points, shape (n, d), in the same (mean-subtracted) coordinates.
        best_buddies: keep only mutual nearest neighbours.

    Returns:
        :class:`ToyScores`.

    Example:
        >>> s = score_toy(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([[1.0, 0.1]]))
        >>> s.match.tolist(), round(s.distance.item(), 3)
        ([1], 0.1)
    """
    if candidates.dim() != 2 or points.dim() != 2 or candidates.shape[1] != points.shape[1]:
        raise ConfigError(
            "Expected `candidates` and `points` to be (m, d) and (n, d) tensors. "
            f"Got {tuple(candidates.shape)} and {tuple(points.shape)}."
        )
    if candidates.shape[0] == 0:
        raise ConfigError("Expected `candidates` to hold at least one candidate. Got 0.")
    pts = points.to(torch.float64)
    dist = torch.cdist(pts, candidates.to(pts.device, torch.float64))
    match = match_nearest(dist, best_buddies=best_buddies)
    matched = match >= 0
    nearest = dist.gather(1, match.clamp_min(0)[:, None])[:, 0]
    return ToyScores(match=match, distance=torch.where(matched, nearest, torch.full_like(nearest, math.inf)))


def toy_grid(model: torch.nn.Module, points: Tensor, candidates: Tensor) -> tuple[Any, Any, Any]:
    """(xs, ys, Φ) on a 161×161 grid covering the points and candidates, for the decision-boundary plot."""
    # The reference plots the toy over [-1.5, 1.5]^2; widen it when points or candidates lie outside.
    extent = 1.5
    finite = torch.cat([points.reshape(-1), candidates.reshape(-1)]).abs()
    finite = finite[torch.isfinite(finite)]
    if finite.numel():
        extent = max(extent, 1.05 * float(finite.max()))
    axis = torch.linspace(-extent, extent, 161, dtype=torch.float64)
    gx, gy = torch.meshgrid(axis, axis, indexing="xy")
    raw = forward_chunked(model, torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1))
    phi = raw[:, 0] if raw.shape[1] == 1 else raw.argmax(dim=1).to(torch.float64)
    return gx.numpy(), gy.numpy(), phi.reshape(gx.shape).numpy()


def toy_metrics(scores: ToyScores, normalised: Tensor, *, toy_radius: float, margin_tol: float) -> dict[str, Any]:
    """How many points have a candidate within ``toy_radius``, on the margin and off it."""
    found = scores.distance <= toy_radius
    on_margin = normalised <= 1.0 + margin_tol
    finite = scores.distance[torch.isfinite(scores.distance)]
    return {
        "toy_radius": float(toy_radius),
        "margin_tol": float(margin_tol),
        "n_found": int(found.sum()),
        "n_margin": int(on_margin.sum()),
        "n_found_margin": int((found & on_margin).sum()),
        "n_off_margin": int((~on_margin).sum()),
        "n_found_off_margin": int((found & ~on_margin).sum()),
        "n_matched": int((scores.match >= 0).sum()),
        "median_distance": float(finite.median()) if finite.numel() else None,
    }
