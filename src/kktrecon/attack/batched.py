"""K attack trials as one tensor program: the engine of sweeps.

A sweep runs many trials of the attack on one victim with different hyperparameters (Haim et al.'s
reference sweeps ~100 per victim). For victims whose layers all have Gram rules, every trial's
candidates go through the network as one batch and the stationarity term is computed in Gram form
(:mod:`kktrecon.attack.gram_loss`). Each trial keeps its own step size, α, λ_min and loss weights,
its own SGD optimisers, checkpoint and result directory: a batched trial is an ordinary
reconstruction run, evaluable and resumable alone. Victims whose layers lack a rule in
:data:`~kktrecon.attack.gram.GRAM_RULES` run their trials one after the other with the autograd form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kktrecon.attack.config import ReconstructionConfig, ReconstructionResult
from kktrecon.attack.engine import reconstruct
from kktrecon.attack.gram_loss import GramNet, gram_loss
from kktrecon.attack.loop import Trial, optimise, setup
from kktrecon.attack.victim import VictimLike
from kktrecon.devices import resolve_device, resolve_dtype
from kktrecon.errors import ConfigError

__all__ = ["BatchOutcome", "reconstruct_batch"]

# Hyperparameters every trial of a batch shares (they fix the shapes and the schedule of the program).
SHARED = ("objective", "candidates", "iterations", "dtype", "checkpoint_every", "log_every", "box")


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
    if any(c.split is not None for c in configs):
        raise ConfigError(
            "Expected the trials of a batch to run without sample splitting (it changes a trial's candidate "
            "count, which a batch shares). Run split trials one at a time with reconstruct()."
        )
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
    for t in active:
        t.engine = "gram"
    for group in _by_iteration(active):
        label = f"{len(group)} trial{'s' if len(group) != 1 else ''}"
        optimise(group, gram_loss(net, s.objective, group), configs[0].iterations, label=label, progress=progress)
    for t in trials:
        if t.result is None and t.error is None:
            t.finish(s)
    return BatchOutcome([t.result for t in trials], [t.error for t in trials])


def _by_iteration(trials: list[Trial]) -> list[list[Trial]]:
    groups: dict[int, list[Trial]] = {}
    for t in trials:
        groups.setdefault(t.state.iteration, []).append(t)
    return [groups[k] for k in sorted(groups)]
