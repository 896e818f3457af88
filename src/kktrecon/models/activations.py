"""The attack's activation: ReLU forward, a smooth surrogate derivative backward.

With the true ReLU the per-sample gradient ∇θΦ(x) depends on x only through a piecewise-constant
activation pattern, which gives the attack no second-order signal; the reference code
(``ModifiedRelu``) uses sigmoid(α·z) as the derivative so that it flows to x.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from kktrecon.errors import ConfigError

__all__ = ["ModifiedReLU", "with_modified_relu"]


class _ModifiedReLUFunction(torch.autograd.Function):
    """ReLU forward; sigmoid(α·z) as its derivative backward (itself differentiable in z)."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.save_for_backward(z)
        ctx.alpha = alpha
        return z.clamp_min(0)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        (z,) = ctx.saved_tensors
        return grad_output * torch.sigmoid(ctx.alpha * z), None


class ModifiedReLU(nn.Module):
    """The reconstruction copy's activation (reference ``ModifiedRelu``).

    The forward pass is exactly ReLU, so Φ is unchanged. With the true ReLU the per-sample gradient
    ∇θΦ(x) depends on x only through a piecewise-constant activation pattern, which gives the
    attack no second-order signal; the smooth surrogate derivative lets it flow to x.
    """

    def __init__(self, alpha: float) -> None:
        super().__init__()
        if not alpha > 0:
            raise ConfigError(f"Expected `alpha` > 0. Got {alpha}.")
        self.alpha = float(alpha)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return _ModifiedReLUFunction.apply(z, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


def with_modified_relu(model: nn.Module, alpha: float) -> nn.Module:
    """A copy of ``model`` whose ``nn.ReLU`` modules are :class:`ModifiedReLU` (outputs unchanged).

    Works on any module tree (nested ``Sequential``/``ModuleList``/``ModuleDict``, user classes, a
    bare ``nn.ReLU``); ``model`` itself is not touched. Only ReLU *modules* are swapped: a
    functional ``F.relu`` inside a custom ``forward`` keeps the true ReLU's derivative.

    Raises:
        ConfigError: ``alpha`` is not positive.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 2), nn.Sequential(nn.ReLU(), nn.Linear(2, 1)))
        >>> with_modified_relu(net, 20.0)[1][0]
        ModifiedReLU(alpha=20.0)
    """
    ModifiedReLU(alpha)  # refuse a bad alpha even when there is nothing to swap
    clone = copy.deepcopy(model)
    if isinstance(clone, (nn.ReLU, ModifiedReLU)):
        return ModifiedReLU(alpha)
    for parent in list(clone.modules()):
        # every registration, not named_children(): that skips a ReLU instance registered twice (nn.Sequential
        # with one shared nn.ReLU), which would keep the true ReLU's derivative at its second place
        for name, child in list(parent._modules.items()):
            if isinstance(child, (nn.ReLU, ModifiedReLU)):
                # add_module replaces the registered child under any name ("0", "layers", dict keys)
                parent.add_module(name, ModifiedReLU(alpha))
    return clone
