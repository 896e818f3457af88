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
from torch import Tensor, nn

from kktrecon.attack.gram import GramRule, gram_rule
from kktrecon.attack.loop import LossFn, Trial
from kktrecon.attack.objectives import Objective
from kktrecon.attack.terms import TERMS, BatchedInputs, weighted_total
from kktrecon.models import CNN, MLP, ModifiedReLU

__all__ = ["PASS_THROUGH", "GramNet", "GramOp", "gram_attack_loss", "gram_loss"]

_RELU = (nn.ReLU, ModifiedReLU)  # the attack's copy has its ReLUs swapped
#: Parameter-free, piecewise-linear modules a network may hold between its layers (their Jacobian is used as is).
PASS_THROUGH = (nn.Flatten, nn.MaxPool2d, nn.AvgPool2d, nn.Identity)


@dataclass(frozen=True)
class GramOp:
    """One step of the forward pass: a ``layer`` with a Gram rule, a ``relu``, or a parameter-free ``pass``."""

    kind: str
    module: nn.Module
    rule: GramRule | None = None


@dataclass(frozen=True)
class GramNet:
    """A network as a flat sequence of layers with Gram rules, ReLUs and parameter-free modules."""

    ops: tuple[GramOp, ...]

    @classmethod
    def of(cls, model: nn.Module) -> GramNet | None:
        """A kktrecon MLP or CNN, or an ``nn.Sequential`` of such modules; None if any module lacks a rule."""
        if isinstance(model, (MLP, CNN)):
            modules = model.ops()
        elif isinstance(model, nn.Sequential):
            modules = list(model)
        else:
            return None
        ops = []
        for module in modules:
            if next(module.parameters(), None) is not None:
                rule = gram_rule(module)
                if rule is None:
                    return None
                ops.append(GramOp("layer", module, rule))
            elif type(module) in _RELU:
                ops.append(GramOp("relu", module))
            elif type(module) in PASS_THROUGH:
                ops.append(GramOp("pass", module))
            else:
                return None
        return cls(tuple(ops)) if any(op.kind == "layer" for op in ops) else None

    @property
    def layers(self) -> tuple[nn.Module, ...]:
        return tuple(op.module for op in self.ops if op.kind == "layer")

    @cached_property
    def norm_sq(self) -> Tensor:
        """‖θ‖², computed once: the victim's weights are fixed during an attack."""
        weights = sum((layer.weight.detach() ** 2).sum() for layer in self.layers)
        return weights + sum((b.detach() ** 2).sum() for b in (layer.bias for layer in self.layers) if b is not None)


class _GatedReLU(torch.autograd.Function):
    """ReLU forward; ``gate`` = sigmoid(α·z), computed once by the caller, as its derivative backward.

    The Gram form is differentiated once (no double backward), so the gate needs no gradient here; the
    caller reuses the same differentiable gate to back-propagate δ, where its own derivative does count.
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, gate: Tensor) -> Tensor:
        ctx.save_for_backward(gate)
        return z.clamp_min(0)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        (gate,) = ctx.saved_tensors
        return grad_output * gate, None


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
    h = x.reshape(k * m, *x.shape[2:])
    alpha_rows = alpha.repeat_interleave(m).to(h)
    seen, gates = [], {}  # each op's input; each ReLU's sigmoid(α·z), its derivative
    for i, op in enumerate(net.ops):
        seen.append(h)
        if op.kind == "layer":
            h = op.rule.forward(op.module, h)
        elif op.kind == "relu":
            gates[i] = torch.sigmoid(_per_row(alpha_rows, h) * h)
            h = _GatedReLU.apply(h, gates[i].detach())
        else:
            h = op.module(h)
    out = h.reshape(k, m, -1)
    # u = ∂S/∂Φ for each trial's stationarity sum S = objective.kkt_sum (depends on λ, not on x).
    u = torch.stack([objective.output_gradient(out[t], lam[t], y[t]) for t in range(k)])
    delta = u.reshape(h.shape)
    kkt = net.norm_sq.expand(k).clone()
    first = next(i for i, op in enumerate(net.ops) if op.kind == "layer")
    for i in range(len(net.ops) - 1, first - 1, -1):
        op, a = net.ops[i], seen[i]
        if op.kind == "layer":
            z = seen[i + 1] if i + 1 < len(seen) else h
            cross = op.rule.project(op.module, z, delta).reshape(k, -1).sum(dim=1)
            summed = op.rule.summed_sq(op.module, a.reshape(k, m, *a.shape[1:]), delta.reshape(k, m, *delta.shape[1:]))
            kkt = kkt + (-2.0 * cross + summed)
            if i > first:
                delta = op.rule.backward(op.module, delta, a)
        elif op.kind == "relu":
            delta = delta * gates[i]
        elif isinstance(op.module, nn.Flatten):
            delta = delta.reshape(a.shape)
        else:  # a piecewise-linear module: its Jacobian at the (detached) input, applied to δ
            probe = a.detach().requires_grad_(True)
            with torch.enable_grad():
                (delta,) = torch.autograd.grad(op.module(probe), probe, delta, create_graph=True)
    return kkt


def _per_row(values: Tensor, like: Tensor) -> Tensor:
    """(rows,) values shaped to broadcast over ``like``'s (rows, ...) entries."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


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
