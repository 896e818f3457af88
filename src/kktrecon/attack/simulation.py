"""Training simulation (SimuDy; Wang et al., ICLR 2025): the owner's attack for any architecture.

An owner who knows the initial weights θ₀ and the training recipe can replay training on candidate
inputs: K unrolled steps of full-batch gradient descent from θ₀ on m candidates (m = n, labels half
each, the victim's own training loss), with one step size η for all of them, and move the candidates
until the simulated change points where the real one does:

    L(x, η) = 1 − cos(θ_K(x, η) − θ₀, θ_f − θ₀) + w_box · box(pixels) + w_tv · TV(pixels)

Why unroll instead of linearising (Δθ ≈ Σᵢ cᵢ ∇θΦ(θ̄; xᵢ), Loo et al. 2024): on a default-init CNN
(MNIST n = 20, channels 64-128, p/dn = 5.2) the true training set leaves 22–26 % of Δθ unexplained at
any single point θ̄ of the path, and 40 free candidates explain it better than the truth does: the
linearised objective's minima are not the images. Unrolled steps follow the path.

The recipe's T steps at rate lr (momentum μ) move θ by about lr·T/(1 − μ) of mean gradient; K steps
of η₀ = lr·T / (K(1 − μ)) cover the same, and η is learned from there (in log space). Compressed
steps must stay below the stability edge of the training loss: ``steps=None`` takes the smallest K
with η₀ ≤ ``max_step`` (measured on that CNN, with its true training set: 30 steps of 0.18 reproduce
110 steps of 0.05 at cosine 0.986, 300 steps of 0.19 reproduce 1,116 at 0.990; 100 steps of 0.56
only 0.26). Minibatches are simulated as the full batch; Adam is not simulated.

Cost and memory: every iteration differentiates through all K steps, so it costs ≈ 3K training steps
on the m candidates, and its graph holds K copies of θ and K steps' activations. The estimate
(:func:`simulation_memory`) is recorded in the manifest, and a run above ``max_memory_gb`` is
refused before anything is allocated.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from kktrecon.attack.descent import Descent, descend
from kktrecon.attack.families import AttackFamily, register_attack
from kktrecon.attack.objectives import Objective
from kktrecon.attack.terms import total_variation
from kktrecon.attack.victim import Preprocessing, Victim
from kktrecon.candidates import CandidateSet
from kktrecon.checks import check_int, check_number, is_int
from kktrecon.devices import resolve_device, resolve_dtype
from kktrecon.errors import ConfigError, UnsupportedModelError
from kktrecon.files import (
    CANDIDATES_FILE,
    RECONSTRUCTION_FILE,
    atomic_write_json,
    package_versions,
)
from kktrecon.runs import RunKind, open_run

__all__ = [
    "Schedule",
    "Simulation",
    "SimulationConfig",
    "simulate",
    "simulation_loss",
    "simulation_memory",
    "simulation_schedule",
]


@dataclass(frozen=True)
class SimulationConfig:
    """Hyperparameters of the simulation attack.

    Args:
        candidates: m; None: the training-set size n (the simulated batch stands for the training set).
        steps: K, the unrolled steps; None: the fewest with a step size ≤ ``max_step``.
        max_step: the largest simulated step size ``steps=None`` allows (the stability edge).
        iterations: optimisation steps on the candidates.
        lr: Adam's step size on the candidates; step_lr: on log η.
        init_scale: candidates start at N(0, 1)·init_scale (inputs).
        prior_weight: weight of the pixel box [0, 1]; tv_weight: of total variation in pixels.
        max_memory_gb: refuse a run whose unrolled graph is estimated above this.
        seed, dtype, checkpoint_every (0: never), log_every.
    """

    candidates: int | None = None
    steps: int | None = None
    max_step: float = 0.2
    iterations: int = 1000
    lr: float = 0.01
    step_lr: float = 0.01
    init_scale: float = 0.2
    prior_weight: float = 1.0
    tv_weight: float = 0.0
    max_memory_gb: float = 8.0
    seed: int = 0
    dtype: str = "float32"
    checkpoint_every: int = 100
    log_every: int = 10

    def __post_init__(self) -> None:
        resolve_dtype(self.dtype)
        if self.candidates is not None and (not is_int(self.candidates) or self.candidates < 2):
            raise ConfigError(f"Expected `candidates` to be an integer >= 2. Got {self.candidates!r}.")
        if self.steps is not None:
            check_int("steps", self.steps, low=1)
        for name in ("max_step", "lr", "step_lr", "init_scale", "max_memory_gb"):
            check_number(name, getattr(self, name), low=0, low_open=True)
        for name in ("prior_weight", "tv_weight"):
            check_number(name, getattr(self, name), low=0)
        check_int("iterations", self.iterations, low=0)
        check_int("checkpoint_every", self.checkpoint_every, low=0)
        check_int("log_every", self.log_every, low=1)
        check_int("seed", self.seed)


@dataclass(frozen=True)
class Schedule:
    """The simulated training: K steps of size η₀ (and weight decay), from the recipe's T steps."""

    steps: int
    step_size: float
    weight_decay: float
    recipe_steps: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def simulation_schedule(victim: Victim, config: SimulationConfig) -> Schedule:
    """K and η₀ from the victim's recipe (see the module docstring); refuses recipes it cannot simulate."""
    recipe = victim.recipe or {}
    if recipe.get("optimizer", "sgd") != "sgd":
        raise UnsupportedModelError(
            f"The simulation attack replays SGD recipes; this victim was trained with {recipe['optimizer']!r}. "
            "Its per-coordinate scaling is not simulated yet: use the unmix or kkt attack."
        )
    if "lr" not in recipe:
        raise ConfigError("Expected the recipe's `lr` for the simulation attack. Got a recipe without it.")
    steps_run = victim.steps_trained
    if steps_run is None:
        raise ConfigError("Expected the optimiser steps the victim was trained for (the recipe's `steps`). Got none.")
    momentum = float(recipe.get("momentum", 0.0) or 0.0)
    total = float(recipe["lr"]) * steps_run / (1.0 - momentum)
    k = config.steps if config.steps is not None else max(1, math.ceil(total / config.max_step))
    return Schedule(k, total / k, float(recipe.get("weight_decay", 0.0) or 0.0), steps_run)


def simulation_memory(model: nn.Module, input_shape: tuple[int, ...], m: int, steps: int, dtype: torch.dtype) -> int:
    """Bytes the unrolled graph holds (estimate): per step, θ and its gradient (3p) and m candidates' activations
    forward and backward (4 per activation)."""
    p = sum(t.numel() for t in model.parameters())
    sizes: list[int] = []
    hooks = [mod.register_forward_hook(lambda _m, _i, o: sizes.append(o[0].numel())) for mod in model.modules()
             if not list(mod.children())]  # fmt: skip
    try:
        with torch.no_grad():
            ref = next(model.parameters())
            model(torch.zeros(1, *input_shape, device=ref.device, dtype=ref.dtype))
    finally:
        for h in hooks:
            h.remove()
    return steps * (3 * p + 4 * m * sum(sizes)) * torch.finfo(dtype).bits // 8


def _unrolled_change(
    model: nn.Module, theta0: dict[str, Tensor], x: Tensor, targets: Tensor, objective: Objective,
    log_step: Tensor, schedule: Schedule,
) -> Tensor:  # fmt: skip
    """θ_K − θ₀ after K differentiable steps of gradient descent on the candidates, flattened."""
    step = log_step.exp()
    theta = {k: v.detach().requires_grad_(True) for k, v in theta0.items()}
    current = theta
    for _ in range(schedule.steps):
        loss = objective.training_loss(functional_call(model, current, (x,)), targets)
        grads = torch.autograd.grad(loss, list(current.values()), create_graph=True)
        current = {
            k: w - step * (g + schedule.weight_decay * w) for (k, w), g in zip(current.items(), grads, strict=True)
        }
    return torch.cat([(current[k] - theta0[k]).flatten() for k in theta0])


def simulation_loss(
    model: nn.Module, theta0: dict[str, Tensor], target: Tensor, x: Tensor, targets: Tensor, objective: Objective,
    log_step: Tensor, schedule: Schedule, preprocessing: Preprocessing, config: SimulationConfig,
) -> dict[str, Tensor]:  # fmt: skip
    """The loss (``total``) and its parts: the cosine of simulated and real change, the box and TV priors in
    pixels, the step size and the simulated change's length relative to the real one (``scale``)."""
    change = _unrolled_change(model, theta0, x, targets, objective, log_step, schedule)
    cosine = (change @ target) / (change.norm() * target.norm()).clamp_min(1e-30)
    pixels = preprocessing.to_pixels(x)
    box = ((pixels - 1).relu().pow(2) + (-pixels).relu().pow(2)).sum()
    tv = total_variation(pixels, 1).sum()
    total = 1 - cosine + config.prior_weight * box + config.tv_weight * tv
    scale = (change.norm() / target.norm()).detach()
    return {"total": total, "cosine": cosine.detach(), "box": box.detach(), "tv": tv.detach(),
            "step": log_step.exp().detach(), "scale": scale}  # fmt: skip


@register_attack
class Simulation(AttackFamily):
    """Owner's attack: replay the recipe from θ₀ on candidates until their simulated Δθ points along the real one."""

    name = "simulate"
    config_type = SimulationConfig
    needs = ("initial_state", "recipe")
    description = (
        "unrolled SGD from θ₀ on candidates, matched to θ_f − θ₀ (SimuDy); any architecture; needs θ₀ + recipe"
    )
    kind = RunKind(manifest=RECONSTRUCTION_FILE, state="simulate.state", outputs=(CANDIDATES_FILE,), what="simulation")

    def run(
        self,
        victim: Victim,
        config: Any,
        *,
        out: str | Path | None,
        device: str | torch.device = "cpu",
        resume: bool = False,
        force: bool = False,
        progress: bool = True,
    ) -> CandidateSet:
        dev, dtype = resolve_device(device), resolve_dtype(config.dtype)
        model = victim.on(dev, dtype)
        objective, schedule, m, need = _checked(victim, model, config, dtype)
        run = open_run(out, self.kind, force=force, resume=resume) if out is not None else None
        theta0 = {k: victim.initial_state[k].to(dev, dtype) for k, _ in model.named_parameters()}
        target = torch.cat([(p.detach() - theta0[k]).flatten() for k, p in model.named_parameters()])
        labels = objective.candidate_labels(m, victim.num_outputs).to(dev, dtype)
        targets = objective.candidate_targets(labels)
        gen = torch.Generator().manual_seed(config.seed)
        x0 = torch.randn((m, *victim.input_shape), generator=gen, dtype=torch.float64) * config.init_scale
        log0 = torch.tensor(math.log(schedule.step_size), device=dev, dtype=dtype)
        state = Descent.start({"x": (x0.to(dev, dtype), config.lr), "log_step": (log0, config.step_lr)}, config)
        x, log_step = state.params["x"], state.params["log_step"]
        if run is not None and run.status != "new" and state.restore(run, victim, config.iterations):
            return CandidateSet.load(run.path)

        def loss() -> dict[str, Tensor]:
            return simulation_loss(model, theta0, target, x, targets, objective, log_step, schedule,
                                   victim.preprocessing, config)  # fmt: skip

        descend(state, loss, iterations=config.iterations, checkpoint_every=config.checkpoint_every, run=run,
                victim=victim, what="simulate", progress=progress,
                postfix=lambda p: f"cos {p['cosine']:.4f} · box {p['box']:.3g} · η {p['step']:.3g}")  # fmt: skip
        learned = float(log_step.detach().exp())
        source = {"attack": self.name, "iteration": state.done, "steps": schedule.steps, "step_size": learned}
        candidates = CandidateSet.of(x.detach().clone(), torch.ones(m, device=dev, dtype=dtype), labels,
                                     victim=victim.describe(), **source)  # fmt: skip
        if run is not None:
            candidates.save(run.path)
            atomic_write_json(run.path / self.kind.manifest, {
                "format": "kktrecon.simulate/1", "attack": self.name, "config": state.record,
                "victim": victim.describe(), "schedule": schedule.to_dict(), "learned_step": learned,
                "memory_estimate_bytes": need, "iterations": state.done, "device": str(dev),
                "seconds": state.seconds(), "final": state.history[-1] if state.history else {},
                "loss_history": state.history, "versions": package_versions(),
            })  # fmt: skip
        return candidates


def _checked(
    victim: Victim, model: nn.Module, config: SimulationConfig, dtype: torch.dtype
) -> tuple[Objective, Schedule, int, int]:
    """The objective, schedule, candidate count and memory estimate; refuses what cannot run, writing nothing."""
    objective = victim.objective()
    if not objective.classification:
        raise UnsupportedModelError("The simulation attack replays classifiers; this victim is a regression.")
    schedule = simulation_schedule(victim, config)
    m = config.candidates if config.candidates is not None else victim.n_train
    if m is None:
        raise ConfigError("Expected `candidates`: the victim does not record its training-set size.")
    need = simulation_memory(model, victim.input_shape, m, schedule.steps, dtype)
    if need > config.max_memory_gb * 2**30:
        raise ConfigError(
            f"Expected the unrolled graph to fit in max_memory_gb = {config.max_memory_gb:g}: {schedule.steps} "
            f"steps of {m} candidates need ≈ {need / 2**30:.1f} GiB. Lower `steps` (larger, less stable steps) "
            "or `candidates`, or raise `max_memory_gb`."
        )
    return objective, schedule, m, need


def simulate(victim: Victim, config: SimulationConfig | None = None, **overrides: Any) -> CandidateSet:
    """The simulation's candidates in memory (no run directory)."""
    config = dataclasses.replace(config or SimulationConfig(), **overrides)
    return Simulation().run(victim, config, out=None, progress=False)
