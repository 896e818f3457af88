"""Matching candidates to training images: nearest and best-buddy matching on NCC distances.

The NCC distance of the reference protocol (downsampled, standardised per channel, squared L2 over
the number of entries) lives in :mod:`kktrecon.tensors`, shared with the oracle-free sweep, and is
re-exported here. With *best buddies* a pair counts only when the two are mutual nearest neighbours,
so one candidate can never explain two training images.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kktrecon.errors import ConfigError
from kktrecon.tensors import check_images, ncc_distance

__all__ = ["check_images", "match_nearest", "ncc_distance"]


def match_nearest(dist: Tensor, *, best_buddies: bool = False) -> Tensor:
    """For each row (training sample) the column (candidate) at the smallest distance.

    Args:
        dist: distances of shape (n, m), m >= 1.
        best_buddies: keep a match only when the row is also the candidate's nearest row (mutual
            nearest neighbours), so that no candidate serves two training samples.

    Returns:
        int64 tensor of shape (n,), -1 where a row has no match. Ties go to the lowest index.
    """
    if dist.dim() != 2 or dist.shape[1] == 0:
        raise ConfigError(f"Expected `dist` to be an (n, m) matrix with m >= 1. Got {tuple(dist.shape)}.")
    match = dist.argmin(dim=1)
    if best_buddies:
        nearest_row = dist.argmin(dim=0)
        rows = torch.arange(dist.shape[0], device=dist.device)
        match = torch.where(nearest_row[match] == rows, match, torch.full_like(match, -1))
    return match
