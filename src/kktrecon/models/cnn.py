"""ReLU CNN victims with a bias policy: convolutions, then a flattening linear head.

The theory (Lyu & Li 2019, used by Haim et al. 2022) needs only Φ(θ; x) homogeneous in θ, which
CNNs can be too; Buzaglo et al. 2023 report reconstructions from CNNs (their code ships none). A
stack of bias-free Conv2d/Linear layers with ReLU between them is: every layer is linear in its own
weights and ReLU is positively homogeneous, so Φ(cθ; x) = c^L Φ(θ; x) for c > 0, with L the number
of parametrised layers. A bias in the first
layer keeps that (it scales with the first layer's weights); biases in later layers break it.

Shape followed: decoreco (gonbuzaglo/decoreco, ``CreateModel.py``) ships no CNN module, but its
initialisation walks ``model.layers`` and scales every layer whose class name contains "conv" or
"linear" in order; :class:`CNN` keeps that layout (all parametrised layers in ``layers``, one shared
``activation``), like :class:`~kktrecon.models.mlp.MLP`, so the same init and the same activation
swap apply. Widths, kernel and stride are our defaults (small strided 3×3 convolutions), not
the paper's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from kktrecon.checks import check_int, check_ints, check_number
from kktrecon.errors import ConfigError
from kktrecon.models.mlp import BIAS_POLICIES
from kktrecon.models.registry import Architecture, register_architecture

__all__ = ["CNN", "POOLS", "CNNConfig", "build_cnn", "conv_output_size"]

#: Pooling after each convolution's ReLU: name -> a module of the pooling size (None: no pooling).
POOLS: dict[str, Callable[[int], nn.Module | None]] = {
    "none": lambda size: None,
    "max": lambda size: nn.MaxPool2d(size),
    "avg": lambda size: nn.AvgPool2d(size),
}


def conv_output_size(size: int, kernel_size: int, stride: int, padding: int) -> int:
    """Length of one spatial dimension after a convolution or pooling (PyTorch's formula, no dilation).

    Example:
        >>> conv_output_size(28, 3, 2, 1)
        14
    """
    return (size + 2 * padding - kernel_size) // stride + 1


@dataclass(frozen=True)
class CNNConfig:
    """Architecture of a ReLU CNN victim.

    Args:
        input_shape: ``(channels, height, width)`` of one input.
        channels: output channels of each Conv2d layer (at least one).
        kernel_size, stride, padding: shared by every convolution.
        pool: ``none``, ``max`` or ``avg``: a ``pool_size`` × ``pool_size`` pooling (stride = size) after each
            convolution's ReLU. Max and average pooling keep Φ homogeneous in θ.
        hidden: widths of linear layers between the flattened features and the head; ``()`` for none.
        num_outputs: 1 for binary tasks (Φ is the single logit), K for multiclass.
        bias: ``none`` (fully homogeneous), ``first`` (only the first convolution has a bias, as the
            reference MLP), ``all`` (every layer but the head has one; not homogeneous).
        init_scale: first-layer weights and bias are drawn N(0, 1)·init_scale (reference: 1e-4).
        hidden_init_scale: when set, later layers are drawn N(0, 1)·hidden_init_scale; None keeps
            PyTorch's default initialisation for them (drawn from the builder's generator).

    Example:
        >>> CNNConfig().depth, CNNConfig().flat_features
        (3, 1568)
    """

    input_shape: tuple[int, ...] = (1, 28, 28)
    channels: tuple[int, ...] = (16, 32)
    kernel_size: int = 3
    stride: int = 2
    padding: int = 1
    pool: str = "none"
    pool_size: int = 2
    hidden: tuple[int, ...] = ()
    num_outputs: int = 1
    bias: str = "first"
    init_scale: float = 1e-4
    hidden_init_scale: float | None = None

    def __post_init__(self) -> None:
        if self.bias not in BIAS_POLICIES:
            raise ConfigError(f"Expected `bias` to be one of {sorted(BIAS_POLICIES)}. Got {self.bias!r}.")
        if len(self.input_shape) != 3:
            raise ConfigError(f"Expected `input_shape` to be (channels, height, width). Got {self.input_shape!r}.")
        check_ints("input_shape", self.input_shape, low=1)
        if not self.channels:
            raise ConfigError(f"Expected `channels` to hold at least one width. Got {self.channels!r}.")
        check_ints("channels", self.channels, low=1)
        check_int("kernel_size", self.kernel_size, low=1)
        check_int("stride", self.stride, low=1)
        check_int("padding", self.padding, low=0)
        if self.pool not in POOLS:
            raise ConfigError(f"Expected `pool` to be one of {sorted(POOLS)}. Got {self.pool!r}.")
        check_int("pool_size", self.pool_size, low=1)
        check_ints("hidden", self.hidden, low=1)
        check_int("num_outputs", self.num_outputs, low=1)
        check_number("init_scale", self.init_scale, low=0, low_open=True)
        if self.hidden_init_scale is not None:
            check_number("hidden_init_scale", self.hidden_init_scale, low=0, low_open=True)
        sizes = self.feature_sizes
        if min(sizes[-1]) < 1:
            raise ConfigError(
                f"Expected `input_shape` large enough for {len(self.channels)} convolutions "
                f"(kernel {self.kernel_size}, stride {self.stride}, padding {self.padding}, pool {self.pool}). "
                f"Got {self.input_shape!r}, whose spatial sizes shrink to {sizes}."
            )

    @property
    def feature_sizes(self) -> list[tuple[int, int]]:
        """(height, width) after each convolution (and its pooling), computed arithmetically (works on meta)."""
        h, w = self.input_shape[1:]
        sizes = []
        for _ in self.channels:
            h = conv_output_size(h, self.kernel_size, self.stride, self.padding)
            w = conv_output_size(w, self.kernel_size, self.stride, self.padding)
            if self.pool != "none":
                h, w = (conv_output_size(v, self.pool_size, self.pool_size, 0) for v in (h, w))
            sizes.append((h, w))
        return sizes

    @property
    def flat_features(self) -> int:
        """Number of features the linear head sees: last channels × height × width."""
        return self.channels[-1] * math.prod(self.feature_sizes[-1])

    @property
    def depth(self) -> int:
        """Number of parametrised layers L: the degree of homogeneity in θ when the policy allows it."""
        return len(self.channels) + len(self.hidden) + 1


class CNN(nn.Module):
    """Conv2d + ReLU stacks, Flatten, Linear + ReLU stacks, a bias-free linear head.

    Every parametrised layer lives in ``layers`` (convolutions first); ``activation`` is one shared
    ``nn.ReLU`` so that :func:`~kktrecon.models.with_modified_relu` swaps it for the attack.
    """

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        n = config.depth
        policy = BIAS_POLICIES[config.bias]
        c, k, s, p = config.input_shape[0], config.kernel_size, config.stride, config.padding
        layers: list[nn.Module] = []
        for i, out in enumerate(config.channels):
            layers.append(nn.Conv2d(c, out, k, stride=s, padding=p, bias=policy(i, n)))
            c = out
        dims = [config.flat_features, *config.hidden, config.num_outputs]
        for j in range(len(dims) - 1):
            layers.append(nn.Linear(dims[j], dims[j + 1], bias=policy(len(config.channels) + j, n)))
        self.layers = nn.ModuleList(layers)
        self.activation: nn.Module = nn.ReLU()
        self.flatten = nn.Flatten()
        self.pooling: nn.Module | None = POOLS[config.pool](config.pool_size)

    @property
    def depth(self) -> int:
        """Number of parametrised layers (the degree of homogeneity in θ)."""
        return self.config.depth

    def ops(self) -> list[nn.Module]:
        """The forward pass as a flat sequence of modules (what the Gram form of the attack walks)."""
        n_conv = len(self.config.channels)
        ops: list[nn.Module] = []
        for i, layer in enumerate(self.layers):
            if i == n_conv:
                ops.append(self.flatten)
            ops.append(layer)
            if i < len(self.layers) - 1:
                ops.append(self.activation)
            if i < n_conv and self.pooling is not None:
                ops.append(self.pooling)
        return ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], *self.config.input_shape)
        for op in self.ops():
            h = op(h)
        return h


def build_cnn(config: CNNConfig, gen: torch.Generator) -> CNN:
    """A freshly initialised :class:`CNN` drawn from ``gen`` (first layer N(0,1)·init_scale, as the reference)."""
    model = CNN(config)
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            scale = config.init_scale if i == 0 else config.hidden_init_scale
            if scale is not None:
                nn.init.normal_(layer.weight, 0.0, 1.0, generator=gen).mul_(scale)
                if layer.bias is not None:
                    nn.init.normal_(layer.bias, 0.0, 1.0, generator=gen).mul_(scale)
            else:  # PyTorch's Conv2d/Linear default, drawn from our generator
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=gen)
                if layer.bias is not None:
                    bound = 1 / math.sqrt(layer.weight[0].numel())  # 1 / sqrt(fan_in)
                    nn.init.uniform_(layer.bias, -bound, bound, generator=gen)
    return model


register_architecture(
    Architecture(
        name="cnn",
        config=CNNConfig,
        module=CNN,
        build=build_cnn,
        description="ReLU CNN: strided Conv2d stacks, then a linear head, with a bias policy",
    )
)
