"""The victim's outputs and margins on its training samples, for reading scores against the margin."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kktrecon.attack.objectives import Objective, default_objective
from kktrecon.errors import ConfigError
from kktrecon.tensors import forward_chunked

__all__ = ["forward_chunked", "normalised_margins", "outputs_and_margins"]


def outputs_and_margins(raw: Tensor, labels: Tensor, objective: Objective | None = None) -> tuple[Tensor, Tensor]:
    """Φ (the logit, or the true-class logit) and the objective's margin per sample from raw outputs.

    Args:
        raw: the victim's outputs, (n,), (n, 1) or (n, K).
        labels: (n,) class indices (binary labels may also be given as ±1), or regression targets.
        objective: the victim's objective; default: binary for one output, multiclass for K.
    """
    raw = raw.to("cpu", torch.float64)
    labels = labels.to("cpu")
    if raw.dim() == 1:
        raw = raw[:, None]
    if raw.dim() != 2 or raw.shape[0] != labels.shape[0]:
        raise ConfigError(f"Expected model outputs of shape (n, K) with n = {labels.shape[0]}. Got {tuple(raw.shape)}.")
    objective = objective or default_objective(raw.shape[1])
    if raw.shape[1] == 1 and objective.classification:
        values = set(labels.unique().tolist())
        if not (values <= {0, 1} or values <= {-1, 1}):
            raise ConfigError(f"Expected binary labels in {{0, 1}} or {{-1, 1}}. Got values {sorted(values)}.")
    phi = raw[:, 0] if raw.shape[1] == 1 else raw.gather(1, labels.long()[:, None])[:, 0]
    return phi, objective.margins(raw, labels)


def normalised_margins(margins: Tensor) -> tuple[Tensor, float]:
    """margin / min margin, and the min margin; NaN when the victim misclassifies a training sample."""
    if margins.numel() == 0:
        return margins.clone(), math.nan
    lo = float(margins.min())
    if lo <= 0:
        return torch.full_like(margins, math.nan), lo
    return margins / lo, lo
