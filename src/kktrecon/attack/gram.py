"""The Gram identity of per-sample gradients, one rule per layer type (as opacus registers grad samplers).

For a layer z = f(θ_l; a) that is linear in its parameters, the per-sample gradient of a scalar gᵢ is
determined by the layer's input aᵢ and δᵢ = ∂gᵢ/∂zᵢ, so inner products of per-sample gradients never
need the gradients themselves:

    ⟨∇_{θ_l} gᵢ, ∇_{θ_l} gⱼ⟩ = pair(aᵢ, aⱼ, δᵢ, δⱼ)        ⟨∇_{θ_l} gᵢ, θ_l⟩ = δᵢ · zᵢ  (homogeneous layers)

For ``nn.Linear`` the pair term is (δᵢ·δⱼ)(aᵢ·aⱼ + [bias]); for ``nn.Conv2d`` it is the inner product of
the per-sample weight gradients δᵢ Uᵢᵀ (U the unfolded input patches: C_in·k² × positions, small for
any convolution) plus that of the bias gradients Σₚ δᵢ. The KKT diagnostic (:mod:`kktrecon.attack.kkt`)
and the Gram form of the attack (:mod:`kktrecon.attack.gram_loss`) both go through :data:`GRAM_RULES`;
a layer type with a registered rule makes both work for networks that contain it. Tensors keep their
natural shapes, with leading batch dimensions: (..., m, features) for Linear, (..., m, C, H, W) for Conv2d.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GRAM_RULES", "Conv2dRule", "GramRule", "LinearRule", "gram_rule", "register_gram_rule"]


class GramRule:
    """How one layer type enters the Gram identity (see the module docstring)."""

    def supports(self, layer: nn.Module) -> bool:
        """Whether this instance's settings are covered (e.g. a convolution's groups); else no rule applies."""
        return True

    def forward(self, layer: nn.Module, a: Tensor) -> Tensor:
        """The layer's output z for a batch of inputs ``a`` (batch first)."""
        raise NotImplementedError

    def backward(self, layer: nn.Module, delta: Tensor, a: Tensor) -> Tensor:
        """∂g/∂a from δ = ∂g/∂z (``a``: the layer's inputs, for their shape): handed to the layer below."""
        raise NotImplementedError

    def pair(self, layer: nn.Module, a: Tensor, delta: Tensor) -> Tensor:
        """⟨∇_θ gᵢ, ∇_θ gⱼ⟩ of this layer for all pairs of one batch, (..., m, m)."""
        raise NotImplementedError

    def summed_sq(self, layer: nn.Module, a: Tensor, delta: Tensor) -> Tensor:
        """‖Σⱼ ∇_θ gⱼ‖² of this layer over each batch's m samples, (...): the sum of :meth:`pair`.

        The attack needs only this sum; a rule overrides it where the summed gradient is cheaper than
        the m × m pairs (a convolution's per-sample gradients are each as large as its weight).
        """
        return self.pair(layer, a, delta).sum(dim=(-2, -1))

    def project(self, layer: nn.Module, z: Tensor, delta: Tensor) -> Tensor:
        """The elementwise terms whose sum over features is ⟨∇_θ gᵢ, θ⟩ (δᵢ·zᵢ for a homogeneous layer)."""
        return delta * z


class LinearRule(GramRule):
    """``nn.Linear``: ∇_W gᵢ = δᵢ aᵢᵀ, ∇_b gᵢ = δᵢ."""

    def forward(self, layer: nn.Module, a: Tensor) -> Tensor:
        return F.linear(a, layer.weight.detach(), None if layer.bias is None else layer.bias.detach())

    def backward(self, layer: nn.Module, delta: Tensor, a: Tensor) -> Tensor:
        return delta @ layer.weight.detach()

    def pair(self, layer: nn.Module, a: Tensor, delta: Tensor) -> Tensor:
        inner = a @ a.transpose(-1, -2)
        if layer.bias is not None:
            inner = inner + 1.0
        return (delta @ delta.transpose(-1, -2)) * inner


class Conv2dRule(GramRule):
    """``nn.Conv2d`` (zero padding, groups 1): ∇_W gᵢ = δᵢ Uᵢᵀ with Uᵢ the unfolded patches, ∇_b gᵢ = Σₚ δᵢ."""

    def supports(self, layer: nn.Module) -> bool:
        return layer.groups == 1 and layer.padding_mode == "zeros" and not isinstance(layer.padding, str)

    def forward(self, layer: nn.Module, a: Tensor) -> Tensor:
        bias = None if layer.bias is None else layer.bias.detach()
        return F.conv2d(a, layer.weight.detach(), bias, layer.stride, layer.padding, layer.dilation)

    def backward(self, layer: nn.Module, delta: Tensor, a: Tensor) -> Tensor:
        weight = layer.weight.detach()
        stride, pad, dil, kernel = layer.stride, layer.padding, layer.dilation, weight.shape[2:]
        out_size = [(delta.shape[-2 + d] - 1) * stride[d] - 2 * pad[d] + dil[d] * (kernel[d] - 1) + 1 for d in range(2)]
        extra = tuple(a.shape[-2 + d] - out_size[d] for d in range(2))  # rows the strided convolution skipped
        return F.conv_transpose2d(delta, weight, None, stride, pad, output_padding=extra, dilation=dil)

    def pair(self, layer: nn.Module, a: Tensor, delta: Tensor) -> Tensor:
        lead = a.shape[:-3]
        patches = F.unfold(a.reshape(-1, *a.shape[-3:]), layer.kernel_size, layer.dilation, layer.padding, layer.stride)
        d = delta.reshape(patches.shape[0], delta.shape[-3], -1)  # (n, C_out, positions)
        grads = (d @ patches.transpose(1, 2)).reshape(*lead, -1)  # per-sample weight gradients, flattened
        inner = grads @ grads.transpose(-1, -2)
        if layer.bias is not None:
            sums = d.sum(dim=2).reshape(*lead, -1)
            inner = inner + sums @ sums.transpose(-1, -2)
        return inner

    def summed_sq(self, layer: nn.Module, a: Tensor, delta: Tensor) -> Tensor:
        # Each batch's summed weight gradient, as one GEMM over its unfolded patches where a patch is short
        # (C_in·k² < 64: a first layer), else as the weight gradient of a convolution over that batch alone:
        # one batch at a time keeps its activations in cache (1.6x faster than one grouped convolution over
        # eight batches, and 2-2.5x faster than per-sample gradients at C_in ≥ 32; benchmarks/NOTES.md).
        lead, m = a.shape[:-4], a.shape[-4]
        a, delta = a.reshape(-1, m, *a.shape[-3:]), delta.reshape(-1, m, *delta.shape[-3:])
        if layer.weight[0].numel() < 64:
            b = a.shape[0]
            patches = F.unfold(a.flatten(0, 1), layer.kernel_size, layer.dilation, layer.padding, layer.stride)
            patches = patches.reshape(b, m, *patches.shape[1:]).transpose(-1, -2).flatten(1, 2)  # (b, m·P, C_in·k²)
            d = delta.flatten(3).transpose(1, 2).flatten(2)  # (b, C_out, m·P)
            total = (d @ patches).pow(2).sum(dim=(1, 2))
        else:
            weight = layer.weight.detach()
            total = torch.stack([
                torch.ops.aten.convolution_backward(
                    d, x, weight, None, layer.stride, layer.padding, layer.dilation, False, [0, 0], 1,
                    [False, True, False],
                )[1].pow(2).sum()
                for x, d in zip(a.unbind(0), delta.unbind(0), strict=True)
            ])  # fmt: skip
        if layer.bias is not None:
            total = total + delta.sum(dim=(1, 3, 4)).pow(2).sum(dim=1)
        return total.reshape(lead)


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
    """The rule of ``layer``'s exact type if it covers this instance's settings, or None."""
    rule = GRAM_RULES.get(type(layer))
    return rule if rule is not None and rule.supports(layer) else None


register_gram_rule(nn.Linear)(LinearRule)
register_gram_rule(nn.Conv2d)(Conv2dRule)
