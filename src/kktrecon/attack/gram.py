"""The Gram identity of per-sample gradients, one rule per layer type (as opacus registers grad samplers).

For a layer z = f(θ_l; a) that is linear in its parameters, the per-sample gradient of a scalar gᵢ is
determined by the layer's input aᵢ and δᵢ = ∂gᵢ/∂zᵢ, so inner products of per-sample gradients never
need the gradients themselves:

    ⟨∇_{θ_l} gᵢ, ∇_{θ_l} gⱼ⟩ = pair(aᵢ, aⱼ, δᵢ, δⱼ)        ⟨∇_{θ_l} gᵢ, θ_l⟩ = δᵢ · zᵢ  (homogeneous layers)

For ``nn.Linear`` the pair term is (δᵢ·δⱼ)(aᵢ·aⱼ + [bias]). The KKT diagnostic (:mod:`kktrecon.attack.kkt`)
and the batched attack (:mod:`kktrecon.attack.batched`) both go through :data:`GRAM_RULES`; a layer type
with a registered rule (a Conv2d rule, say) makes both work for networks that contain it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GRAM_RULES", "GramRule", "LinearRule", "gram_rule", "register_gram_rule"]


class GramRule:
    """How one layer type enters the Gram identity (see the module docstring). Shapes: (..., m, features)."""

    def forward(self, layer: nn.Module, a: Tensor) -> Tensor:
        """The layer's output z for inputs ``a`` (rows of the batch)."""
        raise NotImplementedError

    def backward(self, layer: nn.Module, delta: Tensor) -> Tensor:
        """∂g/∂a from δ = ∂g/∂z: the gradient handed to the layer below (before its activation's derivative)."""
        raise NotImplementedError

    def pair(self, layer: nn.Module, a: Tensor, delta: Tensor) -> Tensor:
        """⟨∇_θ gᵢ, ∇_θ gⱼ⟩ of this layer for all pairs of one batch, (..., m, m)."""
        raise NotImplementedError

    def project(self, layer: nn.Module, z: Tensor, delta: Tensor) -> Tensor:
        """The elementwise terms whose sum over features is ⟨∇_θ gᵢ, θ⟩ (δᵢ·zᵢ for a homogeneous layer)."""
        return delta * z


class LinearRule(GramRule):
    """``nn.Linear``: ∇_W gᵢ = δᵢ aᵢᵀ, ∇_b gᵢ = δᵢ."""

    def forward(self, layer: nn.Module, a: Tensor) -> Tensor:
        return F.linear(a, layer.weight.detach(), None if layer.bias is None else layer.bias.detach())

    def backward(self, layer: nn.Module, delta: Tensor) -> Tensor:
        return delta @ layer.weight.detach()

    def pair(self, layer: nn.Module, a: Tensor, delta: Tensor) -> Tensor:
        inner = a @ a.transpose(-1, -2)
        if layer.bias is not None:
            inner = inner + 1.0
        return (delta @ delta.transpose(-1, -2)) * inner


#: Layer type -> its rule. A type missing here makes a network fall back to per-sample gradients.
GRAM_RULES: dict[type[nn.Module], GramRule] = {}

R = TypeVar("R", bound=GramRule)


def register_gram_rule(*layer_types: type[nn.Module]) -> Callable[[type[R]], type[R]]:
    """Class decorator: ``@register_gram_rule(nn.Conv2d)`` on a :class:`GramRule` subclass."""

    def decorate(cls: type[R]) -> type[R]:
        for layer_type in layer_types:
            GRAM_RULES[layer_type] = cls()
        return cls

    return decorate


def gram_rule(layer: nn.Module) -> GramRule | None:
    """The rule of ``layer``'s exact type, or None."""
    return GRAM_RULES.get(type(layer))


register_gram_rule(nn.Linear)(LinearRule)
