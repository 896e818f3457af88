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
Victims that are not Linear/ReLU stacks run their trials one after the other with the ordinary engine.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kktrecon.attack.engine import (
    ATTACK_RUN,
    ReconstructionConfig,
    ReconstructionResult,
    _AttackState,
    _finished_as_asked,
    _load_result,
    _setup,
    _write_result,
    reconstruct,
)
from kktrecon.attack.objectives import Objective
from kktrecon.errors import ConfigError
from kktrecon.models import MLP, ModifiedReLU
from kktrecon.progress import progress_bar
from kktrecon.runs import config_to_dict, open_run, resolve_device, resolve_dtype

__all__ = ["BatchOutcome", "GramNet", "gram_attack_loss", "reconstruct_batch"]

# Hyperparameters every trial of a batch shares (they fix the shapes and the schedule of the program).
SHARED = ("objective", "candidates", "iterations", "dtype", "checkpoint_every", "log_every", "box")


@dataclass(frozen=True)
class GramNet:
    """A Linear/ReLU stack as its layers: weights Wₗ, biases bₗ (or None), ReLU between consecutive layers."""

    weights: tuple[Tensor, ...]
    biases: tuple[Tensor | None, ...]

    @classmethod
    def of(cls, model: nn.Module) -> GramNet | None:
        """The layers of a kktrecon MLP or an ``nn.Sequential`` of [Flatten], Linear, ReLU, …, Linear; else None."""
        if isinstance(model, MLP):
            linears = list(model.layers)
        elif isinstance(model, nn.Sequential):
            kinds = [type(m) for m in model]
            if kinds and kinds[0] is nn.Flatten:
                kinds = kinds[1:]
            relu = (nn.ReLU, ModifiedReLU)  # the attack's copy has its ReLUs swapped
            ok = all((k is nn.Linear) if i % 2 == 0 else (k in relu) for i, k in enumerate(kinds))
            if not kinds or not ok or kinds[-1] is not nn.Linear:
                return None
            linears = [m for m in model if isinstance(m, nn.Linear)]
        else:
            return None
        return cls(tuple(m.weight.detach() for m in linears), tuple(_bias(m) for m in linears))

    def norm_sq(self) -> Tensor:
        return sum((w**2).sum() for w in self.weights) + sum((b**2).sum() for b in self.biases if b is not None)


def _bias(layer: nn.Linear) -> Tensor | None:
    return None if layer.bias is None else layer.bias.detach()


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
    """The attack loss of K trials, each term of shape (K,), the stationarity term in Gram form.

    Args:
        net: the victim's layers.
        x: candidates (K, m, *input_shape); lam: multipliers (K, m) or (K, m, C); y: labels (K, m).
        objective: the KKT conditions (their stationarity sum gives each candidate's output gradient).
        alpha, lambda_min: per-trial modified-ReLU slope and λ hinge threshold, shape (K,).
        weights: per-trial loss weights (K, 3): stationarity, prior, λ hinge.
        box: the prior keeps x in [−box, box].
    """
    k, m = x.shape[:2]
    rows = x.reshape(k * m, -1)
    alpha_rows = alpha.repeat_interleave(m)[:, None].to(rows)
    inputs, outputs = [], []
    h = rows
    for i, (w, b) in enumerate(zip(net.weights, net.biases, strict=True)):
        inputs.append(h)
        z = F.linear(h, w, b)
        outputs.append(z)
        h = _modified_relu(z, alpha_rows) if i < len(net.weights) - 1 else z
    out = outputs[-1].reshape(k, m, -1)
    # u = ∂S/∂Φ for each trial's stationarity sum S = objective.kkt_sum (depends on λ, not on x).
    probe = out.detach().requires_grad_(True)
    with torch.enable_grad():
        total = sum(objective.kkt_sum(probe[t], lam[t], y[t]) for t in range(k))
        (u,) = torch.autograd.grad(total, probe, create_graph=True)
    delta = u.reshape(k * m, -1)
    kkt = net.norm_sq().expand(k).clone()
    for i in range(len(net.weights) - 1, -1, -1):
        kkt = kkt + _layer_terms(delta, inputs[i], outputs[i], net.biases[i] is not None, k, m)
        if i > 0:
            delta = (delta @ net.weights[i]) * torch.sigmoid(alpha_rows * outputs[i - 1])
    prior = ((x - box).relu().pow(2) + (-box - x).relu().pow(2)).reshape(k, -1).sum(dim=1)
    hinge = torch.stack([objective.lambda_penalty(lam[t], lambda_min[t], y[t]) for t in range(k)])
    total = weights[:, 0] * kkt + weights[:, 1] * prior + weights[:, 2] * hinge
    return {"total": total, "kkt": kkt, "prior": prior, "lambda": hinge}


def _layer_terms(delta: Tensor, a: Tensor, z: Tensor, has_bias: bool, k: int, m: int) -> Tensor:
    """−2 Σⱼ δⱼ·zⱼ + Σᵢⱼ (δᵢ·δⱼ)(aᵢ·aⱼ [+ 1 for the bias]) of one linear layer, per trial (K,)."""
    cross = (delta * z).reshape(k, -1).sum(dim=1)
    d = delta.reshape(k, m, -1)
    g = a.reshape(k, m, -1)
    gram = d @ d.transpose(1, 2)
    inner = g @ g.transpose(1, 2)
    if has_bias:
        inner = inner + 1.0
    return -2.0 * cross + (gram * inner).sum(dim=(1, 2))


@dataclass
class BatchOutcome:
    """What a batch returns: one result per trial (None where the trial failed) and why each failed."""

    results: list[ReconstructionResult | None]
    errors: list[str | None] = field(default_factory=list)


def reconstruct_batch(
    victim: nn.Module | str | Path,
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
    setup = _setup(victim, configs[0], n_train=n_train, input_shape=input_shape, device=dev, dtype=dtype)
    net = GramNet.of(setup.attack_model)
    if net is None:  # not a Linear/ReLU stack: one trial after the other with the ordinary engine
        results = [
            reconstruct(
                victim,
                c,
                out=o,
                n_train=n_train,
                input_shape=input_shape,
                device=dev,
                resume=resume,
                force=force,
                progress=progress,
            )
            for c, o in zip(configs, outs, strict=True)
        ]
        return BatchOutcome(list(results), [None] * len(results))
    trials = [
        _Trial.open(c, o, setup, dev, dtype, resume=resume, force=force) for c, o in zip(configs, outs, strict=True)
    ]
    active = [t for t in trials if t.result is None]
    for group in _by_iteration(active):
        _advance(net, group, setup.objective, configs[0], progress=progress)
    for t in trials:
        if t.result is None and t.error is None:
            t.finish(setup, dev)
    return BatchOutcome([t.result for t in trials], [t.error for t in trials])


@dataclass
class _Trial:
    """One trial of a batch: its config, state, directory and meta, and its result once finished."""

    config: ReconstructionConfig
    state: _AttackState
    checkpoint: Path | None
    out: Path | None
    meta: dict[str, Any]
    result: ReconstructionResult | None = None
    error: str | None = None

    @classmethod
    def open(
        cls, config: ReconstructionConfig, out: str | Path | None, setup: Any, dev: torch.device, dtype: torch.dtype,
        *, resume: bool, force: bool,
    ) -> _Trial:  # fmt: skip
        run = open_run(out, ATTACK_RUN, force=force, resume=resume) if out is not None else None
        shape = tuple(setup.info["input_shape"])
        state = _AttackState.start(shape, config, setup.m, dev, dtype, setup.objective, setup.num_outputs)
        meta = {"config": config_to_dict(config), "victim": setup.info["fingerprint"]}
        trial = cls(config, state, run.state if run else None, run.path if run else None, meta)
        if run is not None and run.status == "finished" and _finished_as_asked(run, config, meta):
            trial.result = _load_result(run.path, dev, dtype)
        elif run is not None and run.status != "new":
            state.restore(run.state, meta, config)
        return trial

    def finish(self, setup: Any, dev: torch.device) -> None:
        s = self.state
        self.result = ReconstructionResult(s.x.detach(), s.lam.detach(), s.y, s.history, self.out, s.elapsed)
        if self.checkpoint is not None:
            s.save(self.checkpoint, self.meta)  # kept after the end, so that the trial can be extended
        if self.out is not None:
            _write_result(self.out, self.result, self.config, setup.info, setup.m, dev)


def _by_iteration(trials: list[_Trial]) -> list[list[_Trial]]:
    groups: dict[int, list[_Trial]] = {}
    for t in trials:
        groups.setdefault(t.state.iteration, []).append(t)
    return [groups[k] for k in sorted(groups)]


def _advance(
    net: GramNet, trials: list[_Trial], objective: Objective, shared: ReconstructionConfig, *, progress: bool
) -> None:
    """Advance trials that stand at the same iteration together to ``shared.iterations``."""
    cfgs = [t.config for t in trials]
    as_tensor = lambda values: torch.tensor(values, dtype=trials[0].state.x.dtype, device=trials[0].state.x.device)  # noqa: E731
    alpha = as_tensor([c.alpha for c in cfgs])
    lambda_min = as_tensor([c.lambda_min for c in cfgs])
    weights = as_tensor([[c.kkt_weight, c.prior_weight, c.lambda_weight] for c in cfgs])
    start = time.perf_counter() - max(t.state.elapsed for t in trials)
    live = list(range(len(trials)))
    first = trials[0].state.iteration
    with progress_bar(f"{len(trials)} trials", total=shared.iterations, enabled=progress, completed=first) as bar:
        for iteration in range(first, shared.iterations):
            live = _step(net, trials, live, objective, alpha, lambda_min, weights, shared.box, iteration, start)
            if not live:
                return
            bar.advance(1)
            done = iteration + 1
            if shared.checkpoint_every and done % shared.checkpoint_every == 0:
                for i in live:
                    trials[i].state.elapsed = time.perf_counter() - start
                    if trials[i].checkpoint is not None:
                        trials[i].state.save(trials[i].checkpoint, trials[i].meta)
    for i in live:
        trials[i].state.elapsed = time.perf_counter() - start


def _step(
    net: GramNet,
    trials: list[_Trial],
    live: list[int],
    objective: Objective,
    alpha: Tensor,
    lambda_min: Tensor,
    weights: Tensor,
    box: float,
    iteration: int,
    start: float,
) -> list[int]:
    """One iteration of the live trials; returns those still live (a non-finite loss stops a trial)."""
    states = [trials[i].state for i in live]
    index = torch.tensor(live, device=alpha.device)
    terms = gram_attack_loss(
        net, torch.stack([s.x for s in states]), torch.stack([s.lam for s in states]),
        torch.stack([s.y for s in states]), objective, alpha=alpha[index], lambda_min=lambda_min[index],
        weights=weights[index], box=box,
    )  # fmt: skip
    finite = torch.isfinite(terms["total"])
    for j in torch.nonzero(~finite).flatten().tolist():  # this trial stops; the others carry on
        trials[
            live[j]
        ].error = f"loss became {float(terms['total'][j].detach())} at iteration {iteration}; last good checkpoint kept"
    if not bool(finite.any()):
        return []
    ok = finite.tolist()
    grads = torch.autograd.grad(terms["total"][finite].sum(), [s.x for s in states] + [s.lam for s in states])
    for j, s in enumerate(states):
        if not ok[j]:
            continue
        s.x.grad, s.lam.grad = grads[j], grads[len(states) + j]
        s.opt_x.step()
        s.opt_l.step()
        if iteration % trials[live[j]].config.log_every == 0:
            point = {"iteration": iteration, **{k: float(v[j].detach()) for k, v in terms.items()}}
            point["seconds"] = time.perf_counter() - start
            s.history.append(point)
        s.iteration = iteration + 1
    return [i for i, good in zip(live, ok, strict=True) if good]
