"""The architecture registry: victim kinds by name, each a frozen config and a seeded builder.

A new kind of victim (a CNN, say) is one module that defines its config dataclass and a builder
and calls :func:`register_architecture`; checkpoints record the name, so loading needs no if/elif.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kktrecon.errors import ConfigError
from kktrecon.registry import Registry

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "architecture_of",
    "build_model",
    "get_architecture",
    "parameter_shapes",
    "register_architecture",
]


@dataclass(frozen=True)
class Architecture:
    """A registered kind of victim.

    Attributes:
        name: registry key, recorded in every checkpoint (``"mlp"``).
        config: the frozen dataclass that describes one instance (it has ``input_shape`` and
            ``num_outputs``).
        module: ``module(config)`` constructs the network (PyTorch's default initialisation); built
            on the ``meta`` device it gives the parameter shapes without allocating them.
        build: ``build(config, generator)`` returns it initialised as the reference does, on the CPU
            in float32.
        description: one line for help texts.
    """

    name: str
    config: type
    module: Callable[[Any], nn.Module]
    build: Callable[[Any, torch.Generator], nn.Module]
    description: str = ""


#: The architecture registry. Add entries with :func:`register_architecture`.
ARCHITECTURES: Registry[Architecture] = Registry("architecture", ConfigError)


def register_architecture(arch: Architecture) -> Architecture:
    """Add ``arch`` to :data:`ARCHITECTURES`, refusing to replace an existing entry."""
    return ARCHITECTURES.register(arch.name, arch)


def get_architecture(name: str) -> Architecture:
    """The architecture called ``name``; unknown names list the registered ones."""
    return ARCHITECTURES.get_entry(name)


def architecture_of(config: Any) -> Architecture:
    """The registered architecture whose config class ``config`` is an instance of."""
    for arch in ARCHITECTURES.values():
        if type(config) is arch.config:
            return arch
    raise ConfigError(
        f"Expected a config of a registered architecture ({sorted(ARCHITECTURES)}). Got {type(config).__name__}."
    )


def build_model(
    config: Any,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """A freshly initialised victim for ``config``, deterministic in ``seed``, on ``device`` in ``dtype``."""
    gen = torch.Generator().manual_seed(seed)
    return architecture_of(config).build(config, gen).to(device=device, dtype=dtype)


def parameter_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in the state dict of ``config``'s network, allocating nothing."""
    with torch.device("meta"):
        skeleton = architecture_of(config).module(config)
    return {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
