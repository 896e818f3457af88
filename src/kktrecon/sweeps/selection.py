"""Oracle-free selection: which candidates look like training data, judged without the training set.

The stationarity loss alone is a poor selector: fits below the true data's own residual exist with
no reconstruction at all (METHOD.md §3; "No Prior, No Leakage", 2025), because the KKT conditions
have many spurious solutions. What an attacker can check without the training set, per candidate:

- **support**: how many *other* trials, started elsewhere with other hyperparameters, found a
  candidate within NCC distance ``tau`` of it. A training image is an attractor that independent
  runs find again; a spurious solution depends on where a run started (after Oz et al. 2024, who
  keep clusters of candidates across runs);
- **margin**: the victim's margin on the candidate with the label the attack gave it. The victim
  fits its training set, so a training image sits on the correct side (margin > 0);
- **weight**: the candidate's multiplier |λ| (its share of the stationarity fit).

A candidate's score is its support, ties broken by margin > 0 and then by weight; a trial's score
(the sweep's ``kkt`` objective) counts its candidates that have support and a positive margin.
``benchmarks/selection_quality.py`` measures how well these predict the oracle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kktrecon.attack.objectives import Objective
from kktrecon.evaluation.matching import ncc_distance
from kktrecon.evaluation.outputs import forward_chunked

__all__ = ["Features", "candidate_features", "dedupe", "rank", "trial_scores"]


@dataclass(frozen=True)
class Features:
    """Per-candidate evidence (all tensors of length N, the pooled candidates of several trials).

    Attributes:
        trial: the trial each candidate comes from (int64).
        support: how many other trials have a candidate within ``tau`` (int64).
        margin: the victim's margin on the candidate with its attack label.
        weight: |λ| of the candidate (summed over classes for per-class multipliers).
        score: the ranking score: support + 0.5·[margin > 0] + a tie-break in weight below 0.5.
    """

    trial: Tensor
    support: Tensor
    margin: Tensor
    weight: Tensor
    score: Tensor


def _distances(x: Tensor, downsample: int) -> Tensor:
    if x.dim() == 4:
        return ncc_distance(x, x, downsample=downsample)
    flat = x.flatten(1).to(torch.float64)
    return torch.cdist(flat, flat)


def candidate_features(
    model: nn.Module,
    objective: Objective,
    x: Tensor,
    lam: Tensor,
    y: Tensor,
    trial: Tensor,
    *,
    tau: float = 0.4,
    downsample: int = 1,
) -> Features:
    """Support, margin and weight of every candidate (see the module docstring); needs no training data.

    Args:
        model: the victim.
        objective: its objective (for the margin of a candidate under its attack label).
        x: pooled candidates (N, *input_shape); lam: (N,) or (N, C); y: (N,) attack labels.
        trial: (N,) the trial of each candidate.
        tau: NCC distance (images) or Euclidean distance (vectors) under which two candidates agree.
        downsample: NCC matching resolution factor (2 for CIFAR-10), as the evaluation uses.
    """
    trial = trial.to("cpu", torch.int64)
    near = (_distances(x.detach(), downsample) < tau).cpu()
    near &= trial[:, None] != trial[None, :]
    others = torch.zeros(len(trial), int(trial.max()) + 1 if len(trial) else 0, dtype=torch.bool)
    for j in torch.unique(trial).tolist():
        others[:, j] = near[:, trial == j].any(dim=1)
    support = others.sum(dim=1)
    labels = y.to("cpu")
    out = forward_chunked(model, x.detach())
    # A regression candidate has no target to measure a margin against: no evidence either way.
    margin = objective.margins(out, labels) if objective.classification else torch.zeros(len(labels))
    weight = objective.multiplier_weights(lam.detach().to("cpu", torch.float64), labels)
    tie = 0.49 * weight / weight.max().clamp_min(1e-300) if len(weight) else weight
    score = support.to(torch.float64) + 0.5 * (margin > 0).to(torch.float64) + tie
    return Features(trial=trial, support=support, margin=margin.to(torch.float64), weight=weight, score=score)


def rank(features: Features) -> Tensor:
    """Candidate indices, best first."""
    return torch.argsort(features.score, descending=True, stable=True)


def dedupe(x: Tensor, order: Tensor, *, tau: float = 0.4, downsample: int = 1) -> Tensor:
    """Walk ``order`` and keep a candidate only when no kept one lies within ``tau`` of it."""
    dist = _distances(x.detach(), downsample).cpu()
    kept: list[int] = []
    for i in order.tolist():
        if not kept or bool((dist[i, kept] >= tau).all()):
            kept.append(i)
    return torch.tensor(kept, dtype=torch.int64)


def trial_scores(features: Features) -> dict[int, float]:
    """A trial's oracle-free score: its candidates that other trials found too and that sit on the correct side."""
    good = (features.support > 0) & (features.margin > 0)
    return {int(t): float(good[features.trial == t].sum()) for t in torch.unique(features.trial).tolist()}
