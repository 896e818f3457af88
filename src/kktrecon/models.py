"""Victim models: bias-policy ReLU MLPs, the modified ReLU of the attack, checks and checkpoints.

The theory (Lyu & Li 2019; Ji & Telgarsky 2020) needs Φ(θ; x) homogeneous in θ. A ReLU MLP with
no biases, or with a bias in the first layer only (the reference code's choice), satisfies
Φ(cθ; x) = c^L Φ(θ; x) with L the number of linear layers; biases in later layers break it
(the paper's ablation). Checkpoints are a safetensors file of weights and a JSON manifest; loading
never unpickles.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from kktrecon.runs import (
    atomic_write_bytes,
    atomic_write_json,
    config_from_dict,
    config_to_dict,
    read_json,
    resolve_device,
)

__all__ = [
    "BIAS_POLICIES",
    "MLP",
    "CheckpointError",
    "ModelConfig",
    "ModifiedReLU",
    "UnsupportedModelError",
    "build_model",
    "load_checkpoint",
    "save_checkpoint",
    "validate",
    "with_modified_relu",
]

MODEL_FILE = "model.safetensors"
MANIFEST_FILE = "model.json"

# Which linear layers carry a bias, by policy: f(layer index, number of layers) -> bool.
BIAS_POLICIES: dict[str, Any] = {
    "none": lambda i, n: False,
    "first": lambda i, n: i == 0 and n > 1,
    "all": lambda i, n: i < n - 1,
}
# Policies under which Φ is homogeneous in θ (the theory's assumption).
HOMOGENEOUS_POLICIES = frozenset({"none", "first"})


@dataclass(frozen=True)
class ModelConfig:
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
            raise ValueError(f"Expected `bias` to be one of {sorted(BIAS_POLICIES)}. Got {self.bias!r}.")
        if not self.input_shape or any(int(d) <= 0 for d in self.input_shape):
            raise ValueError(f"Expected `input_shape` to be positive dimensions. Got {self.input_shape}.")
        if any(int(w) <= 0 for w in self.hidden):
            raise ValueError(f"Expected `hidden` widths to be positive. Got {self.hidden}.")
        if self.num_outputs < 1:
            raise ValueError(f"Expected `num_outputs` >= 1. Got {self.num_outputs}.")
        if not self.init_scale > 0:
            raise ValueError(f"Expected `init_scale` > 0. Got {self.init_scale}.")
        if self.hidden_init_scale is not None and not self.hidden_init_scale > 0:
            raise ValueError(f"Expected `hidden_init_scale` > 0 or None. Got {self.hidden_init_scale}.")

    @property
    def input_dim(self) -> int:
        return math.prod(self.input_shape)

    @property
    def depth(self) -> int:
        """Number of linear layers L: the degree of homogeneity in θ when the policy allows it."""
        return len(self.hidden) + 1


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
            raise ValueError(f"Expected `alpha` > 0. Got {alpha}.")
        self.alpha = float(alpha)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return _ModifiedReLUFunction.apply(z, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class MLP(nn.Module):
    """ReLU MLP ``d → hidden… → num_outputs`` with a bias policy and a swappable activation."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        dims = [config.input_dim, *config.hidden, config.num_outputs]
        n = len(dims) - 1
        policy = BIAS_POLICIES[config.bias]
        self.layers = nn.ModuleList(nn.Linear(dims[i], dims[i + 1], bias=policy(i, n)) for i in range(n))
        self.activation: nn.Module = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], -1)
        for layer in self.layers[:-1]:
            h = self.activation(layer(h))
        return self.layers[-1](h)


def build_model(
    config: ModelConfig,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> MLP:
    """A freshly initialised :class:`MLP`, deterministic in ``seed``, as the reference initialises it."""
    gen = torch.Generator().manual_seed(seed)
    model = MLP(config)
    with torch.no_grad():
        _init_layers(model, config, gen)
    return model.to(device=device, dtype=dtype)


def _init_layers(model: MLP, config: ModelConfig, gen: torch.Generator) -> None:
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


class UnsupportedModelError(ValueError):
    """A model violates an assumption the method relies on."""


_SUPPORTED_LEAVES = (nn.Linear, nn.ReLU, nn.Flatten, ModifiedReLU, nn.Identity)


def _findings(model: nn.Module) -> list[tuple[bool, str]]:
    """(fatal, reason) pairs: unsupported layers are fatal, broken homogeneity is not."""
    findings: list[tuple[bool, str]] = []
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for name, module in model.named_modules():
        if len(list(module.children())) == 0 and not isinstance(module, _SUPPORTED_LEAVES):
            findings.append(
                (True, f"layer {name or type(module).__name__!r} is a {type(module).__name__}; only Linear, ReLU and "
                 "Flatten are supported for now")
            )  # fmt: skip
    if not linears:
        findings.append((True, "model has no Linear layer"))
    for i, layer in enumerate(linears[1:], start=1):
        if layer.bias is not None:
            findings.append(
                (False, f"Linear layer {i} has a bias: Φ is then not homogeneous in θ, so gradient descent need not "
                 "converge to a KKT point of the max-margin problem (the theory assumes homogeneity; only a "
                 "first-layer bias keeps it)")
            )  # fmt: skip
    return findings


def validate(model: nn.Module, *, strict: bool = False) -> list[str]:
    """Every reason ``model`` does not fit the method's assumptions (empty when it fits).

    Checks for layers other than Linear/ReLU/Flatten (the KKT attack and the diagnostic are
    implemented for those) and for biases that break homogeneity in θ. With ``strict`` the first
    reason is raised as :class:`UnsupportedModelError`.
    """
    reasons = [reason for _, reason in _findings(model)]
    if strict and reasons:
        raise UnsupportedModelError(reasons[0])
    return reasons


def with_modified_relu(model: nn.Module, alpha: float) -> nn.Module:
    """A frozen-in-place copy of ``model`` whose ReLUs are :class:`ModifiedReLU` (forward unchanged)."""
    clone = copy.deepcopy(model)

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, (nn.ReLU, ModifiedReLU)):
                setattr(module, name, ModifiedReLU(alpha))
            else:
                swap(child)

    swap(clone)
    return clone


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, inconsistent with its manifest, or holds non-finite values."""


def save_checkpoint(run_dir: str | Path, model: MLP, manifest: dict[str, Any]) -> None:
    """Write ``model.safetensors`` (weights only) and ``model.json`` (``manifest`` + architecture), atomically."""
    run_dir = Path(run_dir)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(run_dir / MODEL_FILE, st_save(tensors))
    atomic_write_json(run_dir / MANIFEST_FILE, {**manifest, "model": config_to_dict(model.config)})


def load_checkpoint(
    run_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[MLP, dict[str, Any]]:
    """Load a victim from ``run_dir`` (no unpickling) and return it with its parsed manifest.

    Raises:
        CheckpointError: file missing or truncated, tensors that do not match the manifest's
            architecture, or NaN/Inf weights.
    """
    run_dir = Path(run_dir)
    weights_path = run_dir / MODEL_FILE
    if not weights_path.is_file() or not (run_dir / MANIFEST_FILE).is_file():
        raise CheckpointError(
            f"{run_dir} is not a victim run directory: expected {MODEL_FILE} and {MANIFEST_FILE} there."
        )
    try:
        manifest = read_json(run_dir / MANIFEST_FILE)
    except ValueError as err:
        raise CheckpointError(str(err)) from err
    if "model" not in manifest:
        raise CheckpointError(f"{run_dir / MANIFEST_FILE} has no 'model' section describing the architecture.")
    try:
        config = config_from_dict(ModelConfig, manifest["model"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{run_dir / MANIFEST_FILE}: invalid 'model' section: {err}") from err
    try:
        tensors = st_load(weights_path.read_bytes())
    except (SafetensorError, ValueError, OSError) as err:
        raise CheckpointError(f"{weights_path} could not be read (truncated or corrupt?): {err}") from err
    model = MLP(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != got:
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        raise CheckpointError(
            f"{weights_path} does not match the architecture in {MANIFEST_FILE}: missing {missing}, unexpected "
            f"{extra}, wrong shape {[(k, got[k], expected[k]) for k in wrong]}."
        )
    bad = sorted(k for k, v in tensors.items() if not torch.isfinite(v).all())
    if bad:
        raise CheckpointError(f"{weights_path} holds NaN or Inf values in {bad}.")
    stored = {v.dtype for v in tensors.values()}
    model.load_state_dict(tensors)
    target = dtype if dtype is not None else (stored.pop() if len(stored) == 1 else torch.float32)
    return model.to(device=resolve_device(device), dtype=target), manifest


def warn_if_unsupported(model: nn.Module) -> None:
    """Raise on unsupported layers; warn when homogeneity is broken (the attack may still be tried)."""
    for fatal, reason in _findings(model):
        if fatal:
            raise UnsupportedModelError(reason)
        warnings.warn(reason, UserWarning, stacklevel=3)
