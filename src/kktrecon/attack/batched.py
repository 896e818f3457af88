"""K attack trials as one tensor program: the engine of sweeps.

A sweep runs many trials of the attack on one victim with different hyperparameters (Haim et al.'s
reference sweeps ~100 per victim). At the demo's size (m = 40 candidates, a 784-1000-1000-1 MLP) one
trial is not GEMM-bound: most of an iteration is elementwise work on θ-sized tensors (the inner
gradient Σⱼ cⱼ∇θΦ(xⱼ) and its distance to θ, 1.8 M entries), which stacking trials would only repeat.
For Linear/ReLU victims this module therefore computes the stationarity term in Gram form, exactly:

    Σ_l ‖θ_l − Σⱼ δ_{l,j} a_{l,j}ᵀ‖² = ‖θ‖² − 2 Σ_{l,j} δ_{l,j}·z_{l,j}
                                      + Σ_{l,i,j} (δ_{l,i}·δ_{l,j})(a_{l,i}·a_{l,j} + [bias])

where a_{l,j} is the input of linear layer l on candidate j, z_{l,j} its output and δ_{l,j} the
gradient of the objective's stationarity sum with respect to z_{l,j}, back-propagated with the
modified ReLU's derivative sigmoid(α·z). Every trial's candidates go through the network as one
batch (one GEMM per layer for all K·m candidates); the m × m Gram matrices are batched matmuls. Each
trial keeps its own step size, α, λ_min and loss weights, its own SGD optimisers, checkpoint and
result directory: a batched trial is an ordinary reconstruction run, evaluable and resumable alone.
Victims whose layers lack a rule in :data:`~kktrecon.attack.gram.GRAM_RULES` run their trials one after
the other with the ordinary engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kktrecon.attack.config import ReconstructionConfig, ReconstructionResult
from kktrecon.attack.engine import reconstruct
from kktrecon.attack.gram import GramRule, gram_rule
from kktrecon.attack.loop import LossFn, Trial, optimise, setup
from kktrecon.attack.objectives import Objective
from kktrecon.attack.terms import TERMS, BatchedInputs, weighted_total
from kktrecon.attack.victim import VictimLike
from kktrecon.devices import resolve_device, resolve_dtype
from kktrecon.errors import ConfigError
from kktrecon.models import MLP, ModifiedReLU

__all__ = ["BatchOutcome", "GramNet", "gram_attack_loss", "reconstruct_batch"]

# Hyperparameters every trial of a batch shares (they fix the shapes and the schedule of the program).
SHARED = ("objective", "candidates", "iterations", "dtype", "checkpoint_every", "log_every", "box")
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

    def norm_sq(self) -> Tensor:
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
    probe = out.detach().requires_grad_(True)
    with torch.enable_grad():
        total = sum(objective.kkt_sum(probe[t], lam[t], y[t]) for t in range(k))
        (u,) = torch.autograd.grad(total, probe, create_graph=True)
    delta = u.reshape(k * m, -1)
    kkt = net.norm_sq().expand(k).clone()
    for i in range(last, -1, -1):
        layer, rule = net.layers[i], net.rules[i]
        cross = rule.project(layer, outputs[i], delta).reshape(k, -1).sum(dim=1)
        pairs = rule.pair(layer, inputs[i].reshape(k, m, -1), delta.reshape(k, m, -1))
        kkt = kkt + (-2.0 * cross + pairs.sum(dim=(1, 2)))
        if i > 0:
            delta = rule.backward(layer, delta) * torch.sigmoid(alpha_rows * outputs[i - 1])
    return kkt


@dataclass
class BatchOutcome:
    """What a batch returns: one result per trial (None where the trial failed) and why each failed."""

    results: list[ReconstructionResult | None]
    errors: list[str | None] = field(default_factory=list)


def reconstruct_batch(
    victim: VictimLike,
    configs: Sequence[ReconstructionConfig],
    *,
    outs: Sequence[str | Path | None] | None = None,
    n_train: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    device: str | torch.device = "auto",
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
) -> BatchOutcome:
    """Run K trials of the attack on one victim together (see the module docstring).

    Args:
        victim: a victim run directory or a model, as for :func:`~kktrecon.attack.reconstruct`.
        configs: one config per trial; they must agree on ``objective``, ``candidates``, ``iterations``,
            ``dtype``, ``checkpoint_every``, ``log_every`` and ``box`` and may differ in the rest.
        outs: one reconstruction directory per trial (or None each: nothing written).
        resume, force: as for :func:`~kktrecon.attack.reconstruct`, applied to every trial.

    Returns:
        A :class:`BatchOutcome`. A trial whose loss becomes NaN/Inf stops (its last checkpoint is
        kept) and is reported in ``errors``; the others carry on.
    """
    configs = list(configs)
    outs = list(outs) if outs is not None else [None] * len(configs)
    if not configs or len(outs) != len(configs):
        raise ConfigError(f"Expected one output per config and at least one config. Got {len(configs)}, {len(outs)}.")
    for name in SHARED:
        values = {repr(getattr(c, name)) for c in configs}
        if len(values) > 1:
            raise ConfigError(f"Expected the trials of a batch to share `{name}`. Got {sorted(values)}.")
    dev, dtype = resolve_device(device), resolve_dtype(configs[0].dtype)
    s = setup(victim, configs[0], n_train=n_train, input_shape=input_shape, device=dev, dtype=dtype)
    net = GramNet.of(s.attack_model)
    if net is None:  # a layer without a Gram rule: one trial after the other with the ordinary engine
        shared = {"n_train": n_train, "input_shape": input_shape, "device": dev, "resume": resume, "force": force}
        pairs = zip(configs, outs, strict=True)
        results = [reconstruct(victim, c, out=o, progress=progress, **shared) for c, o in pairs]
        return BatchOutcome(list(results), [None] * len(results))
    trials = [Trial.open(c, o, s, resume=resume, force=force) for c, o in zip(configs, outs, strict=True)]
    active = [t for t in trials if t.result is None]
    for group in _by_iteration(active):
        label = f"{len(group)} trial{'s' if len(group) != 1 else ''}"
        optimise(group, _batched_loss(net, s.objective, group), configs[0].iterations, label=label, progress=progress)
    for t in trials:
        if t.result is None and t.error is None:
            t.finish(s)
    return BatchOutcome([t.result for t in trials], [t.error for t in trials])


def _by_iteration(trials: list[Trial]) -> list[list[Trial]]:
    groups: dict[int, list[Trial]] = {}
    for t in trials:
        groups.setdefault(t.state.iteration, []).append(t)
    return [groups[k] for k in sorted(groups)]


def _batched_loss(net: GramNet, objective: Objective, group: list[Trial]) -> LossFn:
    """The Gram form of the loss for the live trials of ``group``, each trial with its own hyperparameters."""
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
        return gram_attack_loss(
            net, torch.stack([s.x for s in states]), torch.stack([s.lam for s in states]),
            torch.stack([s.y for s in states]), objective, alpha=alpha[index], lambda_min=lambda_min[index],
            weights=weights[index], box=box,
        )  # fmt: skip

    return loss
