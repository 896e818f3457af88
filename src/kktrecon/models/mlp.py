"""ReLU MLP victims with a bias policy (the paper's d-1000-1000-1 and its ablations).

The theory (Lyu & Li 2019; Ji & Telgarsky 2020) needs Φ(θ; x) homogeneous in θ. A ReLU MLP with
no biases, or with a bias in the first layer only (the reference code's choice), satisfies
Φ(cθ; x) = c^L Φ(θ; x) with L the number of linear layers; biases in later layers break it
(the paper's ablation, "biases in all layers").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kktrecon.checks import check_int, check_ints, check_number
from kktrecon.errors import ConfigError
from kktrecon.models.registry import Architecture, register_architecture

__all__ = ["BIAS_POLICIES", "MLP", "MLPConfig", "ModelConfig", "build_mlp"]

# Which linear layers carry a bias, by policy: f(layer index, number of layers) -> bool.
BIAS_POLICIES: dict[str, Any] = {
    "none": lambda i, n: False,
    "first": lambda i, n: i == 0 and n > 1,
    "all": lambda i, n: i < n - 1,
}


@dataclass(frozen=True)
class MLPConfig:
    """Architecture of a ReLU MLP victim.

    Args:
        input_shape: shape of one input, e.g. ``(1, 28, 28)``; inputs are flattened.
        hidden: widths of the hidden layers; ``()`` gives a linear model.
        num_outputs: 1 for binary tasks (Φ is the single logit), K for multiclass.
        bias: ``none`` (fully homogeneous), ``first`` (reference: only the first layer has a bias),
            ``all`` (every hidden layer has one; not homogeneous). The output layer never has one.
        init_scale: first-layer weights and bias are drawn N(0, 1)·init_scale (reference: 1e-4).
        hidden_init_scale: when set, later layers are drawn N(0, 1)·hidden_init_scale (the reference's
            ``model_init_list``); None keeps PyTorch's default for them (the reference's default).
    """

    input_shape: tuple[int, ...] = (1, 28, 28)
    hidden: tuple[int, ...] = (1000, 1000)
    num_outputs: int = 1
    bias: str = "first"
    init_scale: float = 1e-4
    hidden_init_scale: float | None = None

    def __post_init__(self) -> None:
        if self.bias not in BIAS_POLICIES:
            raise ConfigError(f"Expected `bias` to be one of {sorted(BIAS_POLICIES)}. Got {self.bias!r}.")
        if not self.input_shape:
            raise ConfigError(f"Expected `input_shape` to be positive dimensions. Got {self.input_shape}.")
        check_ints("input_shape", self.input_shape, low=1)
        check_ints("hidden", self.hidden, low=1)
        check_int("num_outputs", self.num_outputs, low=1)
        check_number("init_scale", self.init_scale, low=0, low_open=True)
        if self.hidden_init_scale is not None:
            check_number("hidden_init_scale", self.hidden_init_scale, low=0, low_open=True)

    @property
    def input_dim(self) -> int:
        return math.prod(self.input_shape)

    @property
    def depth(self) -> int:
        """Number of linear layers L: the degree of homogeneity in θ when the policy allows it."""
        return len(self.hidden) + 1


#: Deprecated: the name :class:`MLPConfig` had before each architecture's config got its own name.
ModelConfig = MLPConfig


class MLP(nn.Module):
    """ReLU MLP ``d → hidden… → num_outputs`` with a bias policy and a swappable activation."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        dims = [config.input_dim, *config.hidden, config.num_outputs]
        n = len(dims) - 1
        policy = BIAS_POLICIES[config.bias]
        self.layers = nn.ModuleList(nn.Linear(dims[i], dims[i + 1], bias=policy(i, n)) for i in range(n))
        self.activation: nn.Module = nn.ReLU()

    def ops(self) -> list[nn.Module]:
        """The forward pass as a flat sequence of modules (what the Gram form of the attack walks)."""
        ops: list[nn.Module] = [_FLATTEN]
        for layer in self.layers[:-1]:
            ops += [layer, self.activation]
        return [*ops, self.layers[-1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], -1)
        for layer in self.layers[:-1]:
            h = self.activation(layer(h))
        return self.layers[-1](h)


_FLATTEN = nn.Flatten()


def build_mlp(config: MLPConfig, gen: torch.Generator) -> MLP:
    """A freshly initialised :class:`MLP` drawn from ``gen``, as the reference initialises it."""
    model = MLP(config)
    with torch.no_grad():
        _init_layers(model, config, gen)
    return model


def _init_layers(model: MLP, config: MLPConfig, gen: torch.Generator) -> None:
    for i, layer in enumerate(model.layers):
        fan_in = layer.in_features
        if i == 0:
            nn.init.normal_(layer.weight, 0.0, 1.0, generator=gen).mul_(config.init_scale)
            if layer.bias is not None:
                nn.init.normal_(layer.bias, 0.0, 1.0, generator=gen).mul_(config.init_scale)
        elif config.hidden_init_scale is not None:
            nn.init.normal_(layer.weight, 0.0, 1.0, generator=gen).mul_(config.hidden_init_scale)
            if layer.bias is not None:
                nn.init.normal_(layer.bias, 0.0, 1.0, generator=gen).mul_(config.hidden_init_scale)
        else:  # PyTorch's nn.Linear default, drawn from our generator
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=gen)
            if layer.bias is not None:
                bound = 1 / math.sqrt(fan_in)
                nn.init.uniform_(layer.bias, -bound, bound, generator=gen)


register_architecture(
    Architecture(
        name="mlp",
        config=MLPConfig,
        module=MLP,
        build=build_mlp,
        description="ReLU MLP d-…-K with a bias policy (the paper's victims)",
    )
)
