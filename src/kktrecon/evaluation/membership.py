"""Membership evidence: is an image one the model was trained on? ROC of a per-image score, training vs held-out.

The owner's families give a score the verdict does not need a reconstruction for: under (minibatch) SGD the
first layer's change spans exactly the training images (METHOD §6), so an image's relative residual outside
that row space is 0 for a training image and large for any other. The ROC over training (members) and
held-out images (non-members) is reported as LiRA does (Carlini et al. 2022): the true-positive rate at a
low false-positive rate (1 %, 0.1 %), and the AUC. A false-positive rate below 1/h (h held-out images)
cannot be resolved; it is reported as None, and the lowest that can (1/h, i.e. no held-out image above the
threshold) beside it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from kktrecon.errors import ConfigError

__all__ = ["FPRS", "membership_metrics", "roc_auc", "tpr_at_fpr"]

#: The false-positive rates reported (LiRA's convention).
FPRS = (0.01, 0.001)


def _check(members: Tensor, others: Tensor) -> tuple[Tensor, Tensor]:
    members, others = members.detach().double().cpu().flatten(), others.detach().double().cpu().flatten()
    if len(members) == 0 or len(others) == 0:
        raise ConfigError(
            f"Expected scores of at least one member and one non-member. Got {len(members)} and {len(others)}."
        )
    if not (torch.isfinite(members).all() and torch.isfinite(others).all()):
        raise ConfigError("Expected finite membership scores. Got NaN or Inf.")
    return members, others


def roc_auc(members: Tensor, others: Tensor) -> float:
    """P(score of a member > score of a non-member), ties counted half (the Mann–Whitney U statistic).

    Example:
        >>> roc_auc(torch.tensor([3.0, 2.0]), torch.tensor([1.0, 2.0]))
        0.875
    """
    members, others = _check(members, others)
    greater = (members[:, None] > others[None, :]).double().mean()
    ties = (members[:, None] == others[None, :]).double().mean()
    return float(greater + 0.5 * ties)


def tpr_at_fpr(members: Tensor, others: Tensor, fpr: float) -> float | None:
    """The share of members scored strictly above a threshold that at most ``fpr`` of the non-members exceed.

    None when ``fpr`` < 1/h: h non-members cannot resolve it.

    Example:
        >>> tpr_at_fpr(torch.tensor([5.0, 4.0, 0.5]), torch.arange(100.0) / 100, 0.01)
        0.6666666666666666
    """
    members, others = _check(members, others)
    h = len(others)
    allowed = math.floor(fpr * h + 1e-9)
    if allowed < 1 and fpr * h < 1 - 1e-9:
        return None
    ranked = torch.sort(others, descending=True).values
    threshold = ranked[allowed] if allowed < h else -math.inf  # at most ``allowed`` non-members lie above it
    return float((members > threshold).double().mean())


def membership_metrics(member_scores: Tensor, other_scores: Tensor, *, score: str) -> dict[str, Any]:
    """The ROC summary written beside a verdict: AUC, TPR at 1 % and 0.1 % FPR, and at the lowest resolvable FPR.

    Args:
        member_scores: (n,) scores of the training images (higher: more likely a member).
        other_scores: (h,) scores of held-out images of the same task.
        score: what the score is, in words (recorded).
    """
    members, others = _check(member_scores, other_scores)
    h = len(others)
    lowest = 1.0 / h
    ranked = torch.sort(others, descending=True).values
    return {
        "score": score,
        "n_members": len(members),
        "n_non_members": h,
        "auc": roc_auc(members, others),
        **{f"tpr_at_fpr_{f:g}": tpr_at_fpr(members, others, f) for f in FPRS},
        "lowest_resolvable_fpr": lowest,
        "tpr_at_zero_fpr": float((members > ranked[0]).double().mean()),  # above every held-out image
        "member_score_min": float(members.min()),
        "non_member_score_max": float(others.max()),
    }
