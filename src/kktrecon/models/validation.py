"""Does a model fit the method's assumptions? Every reason it does not, fatal or not, layer by layer.

The theory behind the attack (Lyu & Li 2019, as used by Haim et al. 2022) needs Φ(θ; x) positively
homogeneous in θ, and the attack's copy replaces every ``nn.ReLU`` by the modified ReLU. Each leaf
layer is judged by the rule registered for its exact type in :data:`LAYER_RULES` (opacus'
``register_grad_sampler`` pattern, no if/elif chains):

- supported: Linear, Conv1d/Conv2d, ReLU, pooling, Flatten, Identity, Dropout (in eval mode);
  a bias after the first parametrised layer breaks homogeneity: reported, but not fatal (the
  paper's ablation attacks such models anyway);
- fatal: normalisation layers, activations other than ReLU, and any leaf type without a rule.

Only layers are checked, not how a custom ``forward`` wires them (residual sums, functional calls
such as ``F.relu`` that the attack cannot swap).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from kktrecon.errors import UnsupportedModelError
from kktrecon.models.activations import ModifiedReLU

__all__ = ["LAYER_RULES", "Finding", "findings", "register_layer_rule", "validate", "warn_if_unsupported"]


@dataclass(frozen=True)
class Finding:
    """One reason a model does not fit the method.

    Attributes:
        layer: the layer's qualified name in ``named_modules()`` (``"3"``, ``"layers.1"``); ``""`` for
            the model itself.
        kind: the layer's type name (``"BatchNorm1d"``).
        fatal: True when the attack cannot be run on the model as it is.
        reason: why, in a sentence.
    """

    layer: str
    kind: str
    fatal: bool
    reason: str

    def __str__(self) -> str:
        where = f"layer {self.layer!r}" if self.layer else "the model"
        return f"{where} ({self.kind}): {self.reason}"


@dataclass
class _Walk:
    """What a rule may need to know about the layers before it."""

    parametrised: int = 0  # parametrised layers seen so far, in named_modules() order
    issues: list[tuple[bool, str]] = field(default_factory=list)

    def fatal(self, reason: str) -> None:
        self.issues.append((True, reason))

    def note(self, reason: str) -> None:
        self.issues.append((False, reason))


#: A rule looks at one layer and records its issues on the walk (none when the layer is fine).
Rule = Callable[[nn.Module, _Walk], None]

#: Layer type -> rule. Looked up by exact type: a subclass may override ``forward``.
LAYER_RULES: dict[type[nn.Module], Rule] = {}
_SUPPORTED: set[type[nn.Module]] = set()


def register_layer_rule(*types: type[nn.Module], supported: bool) -> Callable[[Rule], Rule]:
    """Decorator: judge layers of ``types`` with the rule; ``supported`` lists them in messages as such."""

    def register(rule: Rule) -> Rule:
        for t in types:
            LAYER_RULES[t] = rule
            if supported:
                _SUPPORTED.add(t)
        return rule

    return register


@register_layer_rule(nn.Linear, nn.Conv1d, nn.Conv2d, supported=True)
def _parametrised(module: nn.Module, walk: _Walk) -> None:
    # Linear in its own weights: each such layer adds one to the degree of homogeneity. A bias is
    # homogeneous only in the first layer, where it scales with that layer's weights.
    if walk.parametrised > 0 and getattr(module, "bias", None) is not None:
        walk.note(
            f"has a bias but is parametrised layer {walk.parametrised + 1}: Φ is then not homogeneous in θ, so "
            "gradient descent need not converge to a KKT point of the max-margin problem (the theory assumes "
            "homogeneity; only a first-layer bias keeps it)"
        )
    walk.parametrised += 1


# ReLU and the attack's ModifiedReLU: max(0, c·z) = c·max(0, z) for c > 0.
# Flatten, Identity: reshapes. AvgPool, AdaptiveAvgPool: linear maps of their input.
# MaxPool: max(c·a) = c·max(a) for c > 0, piecewise linear like ReLU.
# Each therefore passes the degree of homogeneity through unchanged.
@register_layer_rule(
    nn.ReLU,
    ModifiedReLU,
    nn.Flatten,
    nn.Identity,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    supported=True,
)
def _homogeneous(module: nn.Module, walk: _Walk) -> None:
    return None


@register_layer_rule(nn.Dropout, nn.Dropout1d, nn.Dropout2d, supported=True)
def _dropout(module: nn.Module, walk: _Walk) -> None:
    # In eval mode dropout is the identity; in training mode it makes Φ random.
    if module.training:
        walk.note("is in training mode, so Φ is random; call model.eval() first (in eval mode dropout is the identity)")


@register_layer_rule(nn.Sequential, nn.ModuleList, nn.ModuleDict, supported=True)
def _container(module: nn.Module, walk: _Walk) -> None:
    return None  # its children are judged one by one


_NORMS = [
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LocalResponseNorm,
    *([nn.RMSNorm] if hasattr(nn, "RMSNorm") else []),
]


@register_layer_rule(*_NORMS, supported=False)
def _normalisation(module: nn.Module, walk: _Walk) -> None:
    walk.fatal(
        "normalisation is not supported: it shifts and rescales by statistics of the data, so Φ is not "
        "homogeneous in θ, and its running statistics are not parameters of the max-margin problem"
    )


_ACTIVATIONS = [
    nn.Tanh,
    nn.Sigmoid,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.Mish,
    nn.Softplus,
    nn.Softsign,
    nn.Hardtanh,
    nn.ReLU6,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.LogSigmoid,
    nn.Tanhshrink,
    nn.PReLU,
    nn.Softmax,
    nn.LogSoftmax,
]


@register_layer_rule(*_ACTIVATIONS, supported=False)
def _other_activation(module: nn.Module, walk: _Walk) -> None:
    walk.fatal(
        f"activation not supported: {type(module).__name__} is not positively homogeneous, and the attack's "
        "modified ReLU replaces only ReLU"
    )


@register_layer_rule(nn.LeakyReLU, supported=False)
def _leaky_relu(module: nn.Module, walk: _Walk) -> None:
    walk.fatal(
        "activation not supported yet: LeakyReLU is positively homogeneous, but the attack's modified ReLU "
        "replaces only ReLU"
    )


def _unknown(module: nn.Module, walk: _Walk) -> None:
    if next(module.children(), None) is not None:
        # A user class that holds layers: its children are judged; parameters of its own are not.
        own = [name for name, _ in module.named_parameters(recurse=False)]
        if own:
            walk.fatal(f"has parameters of its own {own} used in a custom forward, which validate cannot check")
        return
    walk.fatal(
        f"unknown layer type, not supported: it may break homogeneity in θ. Supported layers: {supported_layers()}"
    )


def supported_layers() -> list[str]:
    """Names of the layer types the method supports, for messages."""
    return sorted(t.__name__ for t in _SUPPORTED)


def findings(model: nn.Module) -> list[Finding]:
    """Every reason ``model`` does not fit the method, one :class:`Finding` per layer and reason.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1))
        >>> [(f.layer, f.kind, f.fatal) for f in findings(model)]
        [('1', 'Tanh', True), ('2', 'Linear', False)]
    """
    walk = _Walk()
    found: list[Finding] = []
    for name, module in model.named_modules():
        LAYER_RULES.get(type(module), _unknown)(module, walk)
        found += [Finding(name, type(module).__name__, fatal, reason) for fatal, reason in walk.issues]
        walk.issues.clear()
    if walk.parametrised == 0:
        found.append(
            Finding("", type(model).__name__, True, "has no Linear or convolution layer: there is no θ to explain")
        )
    return found


def validate(model: nn.Module, *, strict: bool = False) -> list[str]:
    """Every reason ``model`` does not fit the method's assumptions (empty when it fits).

    Args:
        model: any ``nn.Module``; each leaf layer is judged by :data:`LAYER_RULES`.
        strict: raise instead of returning when there is any reason.

    Raises:
        UnsupportedModelError: with ``strict``, naming every reason.
    """
    reasons = [str(f) for f in findings(model)]
    if strict and reasons:
        raise UnsupportedModelError(_joined(reasons))
    return reasons


def warn_if_unsupported(model: nn.Module) -> None:
    """Warn for each non-fatal reason (the attack may still be tried); raise naming every fatal one.

    Raises:
        UnsupportedModelError: the model has layers the method does not support.
    """
    found = findings(model)
    for f in found:
        if not f.fatal:
            warnings.warn(str(f), UserWarning, stacklevel=3)
    fatal = [str(f) for f in found if f.fatal]
    if fatal:
        raise UnsupportedModelError(_joined(fatal))


def _joined(reasons: list[str]) -> str:
    if len(reasons) == 1:
        return f"The model does not fit the method: {reasons[0]}."
    return f"The model does not fit the method ({len(reasons)} reasons): " + "; ".join(reasons) + "."
