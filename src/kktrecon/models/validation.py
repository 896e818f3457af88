"""Does a model fit the method's assumptions? Every reason it does not, fatal or not.

The KKT attack and the diagnostic are implemented for Linear/ReLU/Flatten stacks; biases after the
first layer break homogeneity in θ, so gradient descent need not converge to a KKT point (the attack
may still be tried: the paper's ablation does).
"""

from __future__ import annotations

import warnings

from torch import nn

from kktrecon.errors import UnsupportedModelError
from kktrecon.models.activations import ModifiedReLU

__all__ = ["validate", "warn_if_unsupported"]

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


def warn_if_unsupported(model: nn.Module) -> None:
    """Raise on unsupported layers; warn when homogeneity is broken (the attack may still be tried)."""
    for fatal, reason in _findings(model):
        if fatal:
            raise UnsupportedModelError(reason)
        warnings.warn(reason, UserWarning, stacklevel=3)
