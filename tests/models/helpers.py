"""Small models shared by the model tests."""

from __future__ import annotations

import copy

import torch
from torch import nn

from kktrecon.models import MLPConfig

SMALL = MLPConfig(input_shape=(1, 4, 4), hidden=(12, 9), init_scale=0.3)


def scaled(model: nn.Module, c: float) -> nn.Module:
    """A copy of ``model`` with every parameter multiplied by ``c``."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(c)
    return other
