"""The stationarity term in Gram form: the attack loss of K trials as one tensor program.

For Linear/ReLU victims the stationarity term is computed exactly from per-layer Gram matrices
(rules in :data:`~kktrecon.attack.gram.GRAM_RULES`), never from per-sample parameter gradients:

    Σ_l ‖θ_l − Σⱼ δ_{l,j} a_{l,j}ᵀ‖² = ‖θ‖² − 2 Σ_{l,j} δ_{l,j}·z_{l,j}
                                      + Σ_{l,i,j} (δ_{l,i}·δ_{l,j})(a_{l,i}·a_{l,j} + [bias])

where a_{l,j} is the input of linear layer l on candidate j, z_{l,j} its output and δ_{l,j} the
gradient of the objective's stationarity sum with respect to z_{l,j}, back-propagated with the
modified ReLU's derivative sigmoid(α·z). All candidates of all trials go through the network as one
batch (one GEMM per layer); the m × m Gram matrices are batched matmuls. At the demo's size (m = 40,
784-1000-1000-1) this is ≈ 2× faster than the autograd form even for one trial, whose cost is mostly
elementwise work on θ-sized tensors (the inner gradient and its distance to θ, 1.8 M entries).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kktrecon.attack.gram import GramRule, gram_rule
from kktrecon.attack.loop import LossFn, Trial
from kktrecon.attack.objectives import Objective
from kktrecon.attack.terms import TERMS, BatchedInputs, weighted_total
from kktrecon.models import MLP, ModifiedReLU

__all__ = ["GramNet", "gram_attack_loss", "gram_loss"]

_RELU = (nn.ReLU, ModifiedReLU)  # the attack's copy has its ReLUs swapped


@dataclass(frozen=True)
class GramNet:
    """A stack of layers with Gram rules and ReLUs between consecutive ones, e.g. Linear, ReLU, …, Linear."""

    layers: tuple[nn.Module, ...]
    rules: tuple[GramRule, ...]

    @classmethod
    def of(cls, model: nn.Module) -> GramNet | None:
        """The layers of a kktrecon MLP or an ``nn.Sequential`` of [Flatten], layer, ReLU, …, layer; else None."""
        if isinstance(model, MLP):
            layers = list(model.layers)
        elif isinstance(model, nn.Sequential):
            modules = list(model)
            if modules and type(modules[0]) is nn.Flatten:
                modules = modules[1:]
            layers = modules[0::2]
            if not modules or len(modules) % 2 == 0 or not all(type(m) in _RELU for m in modules[1::2]):
                return None
        else:
            return None
        rules = [gram_rule(layer) for layer in layers]
        if any(r is None for r in rules):
            return None
        return cls(tuple(layers), tuple(rules))  # type: ignore[arg-type]

    @cached_property
    def norm_sq(self) -> Tensor:
        """‖θ‖², computed once: the victim's weights are fixed during an attack."""
        weights = sum((layer.weight.detach() ** 2).sum() for layer in self.layers)
        return weights + sum((b.detach() ** 2).sum() for b in (layer.bias for layer in self.layers) if b is not None)


def _modified_relu(z: Tensor, alpha: Tensor) -> Tensor:
    """ReLU forward, sigmoid(α·z) derivative: the attack's activation as a differentiable expression."""
    smooth = F.softplus(alpha * z) / alpha
    return z.clamp_min(0).detach() + smooth - smooth.detach()


def gram_attack_loss(
    net: GramNet,
    x: Tensor,
    lam: Tensor,
    y: Tensor,
    objective: Objective,
    *,
    alpha: Tensor,
    lambda_min: Tensor,
    weights: Tensor,
    box: float,
) -> dict[str, Tensor]:
    """The attack loss of K trials (:data:`~kktrecon.attack.terms.TERMS`), each term of shape (K,).

    Args:
        net: the victim's layers.
        x: candidates (K, m, *input_shape); lam: multipliers (K, m) or (K, m, C); y: labels (K, m).
        objective: the KKT conditions (their stationarity sum gives each candidate's output gradient).
        alpha, lambda_min: per-trial modified-ReLU slope and λ hinge threshold, shape (K,).
        weights: per-trial loss weights (K, len(TERMS)), in the terms' order.
        box: the prior keeps x in [−box, box].
    """
    inputs = BatchedInputs(
        x, lam, y, objective, lambda_min, box, lambda: _stationarity(net, x, lam, y, objective, alpha)
    )
    return weighted_total({t.name: t.batched(inputs) for t in TERMS}, lambda i, _: weights[:, i])


def _stationarity(net: GramNet, x: Tensor, lam: Tensor, y: Tensor, objective: Objective, alpha: Tensor) -> Tensor:
    """Σ_l ‖θ_l − Σⱼ ∇_{θ_l} (stationarity sum)‖² of each trial in Gram form (the module docstring), (K,)."""
    k, m = x.shape[:2]
    rows = x.reshape(k * m, -1)
    alpha_rows = alpha.repeat_interleave(m)[:, None].to(rows)
    inputs, outputs = [], []
    h = rows
    last = len(net.layers) - 1
    for i, (layer, rule) in enumerate(zip(net.layers, net.rules, strict=True)):
        inputs.append(h)
        z = rule.forward(layer, h)
        outputs.append(z)
        h = _modified_relu(z, alpha_rows) if i < last else z
    out = outputs[-1].reshape(k, m, -1)
    # u = ∂S/∂Φ for each trial's stationarity sum S = objective.kkt_sum (depends on λ, not on x).
    u = torch.stack([objective.output_gradient(out[t], lam[t], y[t]) for t in range(k)])
    delta = u.reshape(k * m, -1)
    kkt = net.norm_sq.expand(k).clone()
    for i in range(last, -1, -1):
        layer, rule = net.layers[i], net.rules[i]
        cross = rule.project(layer, outputs[i], delta).reshape(k, -1).sum(dim=1)
        pairs = rule.pair(layer, inputs[i].reshape(k, m, -1), delta.reshape(k, m, -1))
        kkt = kkt + (-2.0 * cross + pairs.sum(dim=(1, 2)))
        if i > 0:
            delta = rule.backward(layer, delta) * torch.sigmoid(alpha_rows * outputs[i - 1])
    return kkt


def gram_loss(
    net: GramNet, objective: Objective, group: list[Trial], *, compile_options: dict[str, Any] | None = None
) -> LossFn:
    """The Gram form of the loss for the live trials of ``group``, each trial with its own hyperparameters.

    ``compile_options``: run it through ``torch.compile(**compile_options)`` (the graph has no double
    backward, so it can be captured whole; on a GPU ``mode="reduce-overhead"`` replays it as a CUDA graph).
    """
    program = gram_attack_loss if compile_options is None else torch.compile(gram_attack_loss, **compile_options)
    cfgs = [t.config for t in group]
    x0 = group[0].state.x
    as_tensor = lambda values: torch.tensor(values, dtype=x0.dtype, device=x0.device)  # noqa: E731
    alpha = as_tensor([c.alpha for c in cfgs])
    lambda_min = as_tensor([c.lambda_min for c in cfgs])
    weights = as_tensor([[getattr(c, term.weight) for term in TERMS] for c in cfgs])
    position = {id(t): i for i, t in enumerate(group)}
    box = cfgs[0].box

    def loss(live: list[Trial]) -> dict[str, Tensor]:
        index = torch.tensor([position[id(t)] for t in live], device=alpha.device)
        states = [t.state for t in live]
        return program(
            net, torch.stack([s.x for s in states]), torch.stack([s.lam for s in states]),
            torch.stack([s.y for s in states]), objective, alpha=alpha[index], lambda_min=lambda_min[index],
            weights=weights[index], box=box,
        )  # fmt: skip

    return loss
