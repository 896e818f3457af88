"""The KKT reconstruction attack (Haim et al., NeurIPS 2022, §4), as the reference code computes it.

Given only the weights θ of a victim, search for m candidates xⱼ with labels yⱼ (half −1, half +1)
and multipliers λⱼ that satisfy the stationarity condition of the max-margin problem:

    L = Σ_layers ‖θ_l − ∂/∂θ_l [(1/m) Σⱼ λⱼ yⱼ Φ(θ; xⱼ)]‖²            (KKT term, weight ``kkt_weight``)
      + Σ relu(x − 1)² + Σ relu(−1 − x)²                               (box prior, weight ``prior_weight``)
      + Σⱼ relu(λ_min − λⱼ)²                                           (λ hinge, weight ``lambda_weight`` = 5)

The inner gradient is differentiated again (``create_graph``) through a copy of the model whose
ReLU derivative is sigmoid(α·z) (:class:`kktrecon.models.ModifiedReLU`). x and λ have separate
SGD optimisers with momentum 0.9. The attack never reads training images.

Runs checkpoint atomically every ``checkpoint_every`` iterations (candidates, λ, both optimisers'
momentum, the RNG state, the loss history); a resumed run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kktrecon.attack.config import ReconstructionConfig, ReconstructionResult
from kktrecon.attack.gram_loss import GramNet, gram_loss
from kktrecon.attack.loop import ATTACK_RUN, AfterStep, LossFn, Setup, Trial, initial_state, optimise, setup
from kktrecon.attack.objectives import Objective, get_objective
from kktrecon.attack.splitting import as_split, split_candidates
from kktrecon.attack.terms import TERMS, SingleInputs, weighted_total
from kktrecon.attack.victim import VictimLike
from kktrecon.devices import resolve_device, resolve_dtype
from kktrecon.errors import ConfigError, ReconstructionDivergedError, UnsupportedModelError

__all__ = [
    "ATTACK_RUN",
    "ENGINES",
    "ReconstructionConfig",
    "ReconstructionResult",
    "attack_loss",
    "initial_state",
    "reconstruct",
]


def attack_loss(
    model: nn.Module,
    x: torch.Tensor,
    lam: torch.Tensor,
    y: torch.Tensor,
    config: ReconstructionConfig,
    objective: Objective | None = None,
) -> dict[str, torch.Tensor]:
    """The terms of the loss (:data:`~kktrecon.attack.terms.TERMS`) and their weighted sum (``total``)."""
    inputs = SingleInputs(model, x, lam, y, objective or get_objective("binary"), config)
    return weighted_total({t.name: t.single(inputs) for t in TERMS}, lambda _, t: getattr(config, t.weight))


def reconstruct(
    victim: VictimLike,
    config: ReconstructionConfig | None = None,
    *,
    out: str | Path | None = None,
    n_train: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    device: str | torch.device = "auto",
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    engine: str = "auto",
    **overrides: Any,
) -> ReconstructionResult:
    """Run the KKT attack on a victim's weights.

    Args:
        victim: a victim run directory (``model.safetensors`` + ``model.json``) or a model.
        config: hyperparameters; keyword ``overrides`` replace fields (``reconstruct(d, iterations=10)``).
        out: directory for ``candidates.safetensors``, ``reconstruction.json`` and the checkpoint.
        n_train: training-set size n, for the default m = 2n; read from the victim's manifest otherwise.
        input_shape: the shape of one input, for a model that does not carry its config (any
            homogeneous ``nn.Module``: Linear, Conv2d, ReLU, Flatten, pooling).
        device: ``auto`` picks CUDA when present.
        resume: continue an interrupted run in ``out`` (bit-identical to an uninterrupted one); on a
            finished run, return it when ``iterations`` is unchanged and extend it when larger.
        force: delete an existing reconstruction in ``out`` and start over.
        progress: show a progress bar with the loss terms.
        engine: how the loss is computed, one of :data:`ENGINES`: ``gram`` (exact, for victims whose
            layers all have Gram rules; ≈ 2× faster on a CPU), ``autograd`` (any homogeneous network),
            ``compiled`` (the Gram form through ``torch.compile``), or ``auto``: gram where it applies,
            else autograd. All give the same loss up to rounding.

    Raises:
        ReconstructionDivergedError: the loss became NaN/Inf (the last checkpoint is kept).
        RunStateError: resuming with other hyperparameters, another victim, or fewer iterations.
        UnsupportedModelError: the model has layers the attack does not support.
    """
    config = dataclasses.replace(config or ReconstructionConfig(), **overrides)
    if engine != "auto" and engine not in ENGINES:
        raise ConfigError(f"Expected `engine` to be auto or one of {sorted(ENGINES)}. Got {engine!r}.")
    dev = resolve_device(device)
    dtype = resolve_dtype(config.dtype)
    s = setup(victim, config, n_train=n_train, input_shape=input_shape, device=dev, dtype=dtype)
    trial = Trial.open(config, out, s, resume=resume, force=force)
    if trial.result is not None:
        return trial.result
    trial.engine, loss = _engine(engine, s, trial)
    after = _splitter(s, config) if config.split is not None else None
    optimise([trial], loss, config.iterations, label="reconstruct", progress=progress, after=after)
    if trial.diverged is not None:
        value, iteration = trial.diverged
        where = (
            f"; last good checkpoint: iteration {trial.last_good} in {trial.checkpoint}"
            if trial.last_good is not None
            else ""
        )
        raise ReconstructionDivergedError(
            f"Reconstruction loss became {value} at iteration {iteration}{where}. Lower --lr or --init-scale."
        )
    trial.finish(s)
    assert trial.result is not None
    return trial.result


def _splitter(s: Setup, config: ReconstructionConfig) -> AfterStep:
    """The sample-splitting step (:mod:`kktrecon.attack.splitting`), every ``config.split.every`` iterations."""
    split = config.split
    assert split is not None
    budget = split.budget if split.budget is not None else 2 * s.m

    def after(trial: Trial, done: int) -> None:
        if done % split.every:
            return
        st = trial.state
        outcome = split_candidates(s.attack_model, s.objective, st.x, st.lam, st.y, split, budget=budget)
        st.splits.append(
            {"iteration": done, "split": outcome.split, "candidates": int(outcome.x.shape[0]),
             "kkt_before": outcome.loss_before, "kkt_after": outcome.loss_after}
        )  # fmt: skip
        if outcome.split:
            index = torch.tensor(outcome.split, device=st.x.device)
            grown = outcome.lam.shape[0] / st.lam.shape[0]
            momentum = {  # the copies move as their parent did; λ's momentum scales as λ does
                key: as_split(buf, index, grown if key == "momentum_lam" else None)
                for key, buf in st.momentum().items()
            }
            st.replace(outcome.x, outcome.lam, outcome.y, momentum)

    return after


def _autograd(s: Setup, trial: Trial) -> LossFn:
    """The autograd form of the loss for one trial, its terms shaped (1,) for the shared loop."""

    def loss(trials: list[Trial]) -> dict[str, torch.Tensor]:
        (t,) = trials
        terms = attack_loss(s.attack_model, t.state.x, t.state.lam, t.state.y, t.config, s.objective)
        return {k: v.reshape(1) for k, v in terms.items()}

    return loss


#: ``torch.compile`` options of the ``compiled`` engine, per device type (CUDA graphs on a GPU).
COMPILE_OPTIONS: dict[str, dict[str, Any]] = {"cuda": {"mode": "reduce-overhead"}, "cpu": {}}


def _gram(s: Setup, trial: Trial, *, compiled: bool = False) -> LossFn | None:
    """The Gram form (:mod:`kktrecon.attack.gram_loss`), through ``torch.compile`` if ``compiled`` (for GPUs,
    where an iteration is bound by kernel launches); None for a victim with a layer it has no rule for."""
    net = GramNet.of(s.attack_model)
    if net is None:
        return None
    options = COMPILE_OPTIONS.get(s.device.type, {}) if compiled else None
    return gram_loss(net, s.objective, [trial], compile_options=options)


@dataclass(frozen=True)
class Engine:
    """A form of the loss for one trial: ``make`` gives its loss function, or None where it cannot run."""

    make: Callable[[Setup, Trial], LossFn | None]
    auto: bool  # whether ``engine="auto"`` may pick it (in the table's order)
    description: str


#: The engines of :func:`reconstruct`. ``auto`` takes the first automatic one that applies.
ENGINES: dict[str, Engine] = {
    "gram": Engine(_gram, True, "exact Gram form, Linear/ReLU victims; ≈ 2× faster than autograd on a CPU"),
    "autograd": Engine(_autograd, True, "double backward through the victim; any homogeneous network"),
    "compiled": Engine(
        partial(_gram, compiled=True), False, "Gram form through torch.compile (CUDA graphs on a GPU), compiled first"
    ),
}


def _engine(name: str, s: Setup, trial: Trial) -> tuple[str, LossFn]:
    for candidate, engine in ENGINES.items():
        if (name == candidate or (name == "auto" and engine.auto)) and (loss := engine.make(s, trial)) is not None:
            return candidate, loss
    raise UnsupportedModelError(
        f"Expected a victim whose layers all have Gram rules for engine {name!r}; this one has others. "
        "Use engine='auto' or 'autograd'."
    )
