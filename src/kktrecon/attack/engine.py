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

import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from kktrecon.attack.kkt import stationarity_residual
from kktrecon.attack.objectives import Objective, default_objective, get_objective
from kktrecon.checks import check_int, check_number, is_int
from kktrecon.errors import CheckpointError, ConfigError, ReconstructionDivergedError, RunStateError
from kktrecon.models import load_checkpoint, warn_if_unsupported, weights_fingerprint, with_modified_relu
from kktrecon.progress import progress_bar
from kktrecon.runs import (
    ATTACK_STATE_FILE,
    CANDIDATES_FILE,
    RECONSTRUCTION_FILE,
    Run,
    RunKind,
    atomic_write_bytes,
    atomic_write_json,
    check_resumable,
    config_to_dict,
    dtype_name,
    load_state,
    open_run,
    package_versions,
    read_json,
    resolve_device,
    resolve_dtype,
    same_length,
    save_state,
)

__all__ = ["ReconstructionConfig", "ReconstructionResult", "attack_loss", "initial_state", "reconstruct"]


@dataclass(frozen=True)
class ReconstructionConfig:
    """Hyperparameters of the attack. Defaults: the reference's released MNIST winner.

    Args:
        objective: the KKT conditions to invert, a key of the objective registry (``binary``,
            ``multiclass``, ``multiclass-full``, ``regression``); None: the one the victim was trained for.
        candidates: number of candidates m; None means 2n with n read from the victim.
        iterations: optimisation steps (reference: 50,000).
        init_scale: candidates start at N(0, 1)·init_scale.
        lr: SGD step size for the candidates x.
        lambda_lr: SGD step size for the multipliers λ.
        lambda_min: λ hinge threshold; λⱼ below it is penalised.
        alpha: slope of the modified ReLU's sigmoid derivative.
        momentum: SGD momentum for both optimisers.
        kkt_weight, prior_weight, lambda_weight: weights α₁, α₃, α₂ of the three loss terms
            (``prior_weight = 0`` turns the box prior off, as in the 2-D toy).
        box: the prior keeps x in [−box, box].
        seed: seed of the candidates' and multipliers' initialisation.
        dtype: ``float32`` or ``float64``.
        checkpoint_every: iterations between checkpoints (0: never).
        log_every: iterations between points of the loss history.
    """

    objective: str | None = None
    candidates: int | None = None
    iterations: int = 50_000
    init_scale: float = 0.035
    lr: float = 0.0305
    lambda_lr: float = 1e-4
    lambda_min: float = 0.447
    alpha: float = 150.0
    momentum: float = 0.9
    kkt_weight: float = 1.0
    prior_weight: float = 1.0
    lambda_weight: float = 5.0
    box: float = 1.0
    seed: int = 0
    dtype: str = "float32"
    checkpoint_every: int = 1000
    log_every: int = 100

    def __post_init__(self) -> None:
        resolve_dtype(self.dtype)
        if self.objective is not None:
            get_objective(self.objective)
        if self.candidates is not None and (not is_int(self.candidates) or self.candidates < 2 or self.candidates % 2):
            raise ConfigError(
                f"Expected `candidates` to be an even number >= 2 (half per label). Got {self.candidates}."
            )
        for name in ("init_scale", "lr", "alpha", "box"):
            check_number(name, getattr(self, name), low=0, low_open=True)
        for name in ("lambda_lr", "lambda_min", "kkt_weight", "prior_weight", "lambda_weight"):
            check_number(name, getattr(self, name), low=0)
        check_number("momentum", self.momentum, low=0, high=1, high_open=True)
        check_int("iterations", self.iterations, low=0)
        check_int("checkpoint_every", self.checkpoint_every, low=0)
        check_int("log_every", self.log_every, low=1)
        check_int("seed", self.seed)


@dataclass
class ReconstructionResult:
    """Candidates x (m, *input_shape), multipliers λ (m,), labels y (m,) in ±1, and the loss history."""

    x: torch.Tensor
    lam: torch.Tensor
    y: torch.Tensor
    history: list[dict[str, float]]
    out_dir: Path | None
    seconds: float


def attack_loss(
    model: nn.Module,
    x: torch.Tensor,
    lam: torch.Tensor,
    y: torch.Tensor,
    config: ReconstructionConfig,
    objective: Objective | None = None,
) -> dict[str, torch.Tensor]:
    """The three terms of the reconstruction loss and their weighted sum (``total``)."""
    objective = objective or get_objective("binary")
    kkt = stationarity_residual(model, objective.kkt_sum(model(x), lam, y), create_graph=True)
    prior = (x - config.box).relu().pow(2).sum() + (-config.box - x).relu().pow(2).sum()
    hinge = objective.lambda_penalty(lam, config.lambda_min, y)
    total = config.kkt_weight * kkt + config.prior_weight * prior + config.lambda_weight * hinge
    return {"total": total, "kkt": kkt, "prior": prior, "lambda": hinge}


def initial_state(
    input_shape: tuple[int, ...],
    config: ReconstructionConfig,
    m: int,
    *,
    device: torch.device,
    dtype: torch.dtype,
    objective: Objective | None = None,
    num_outputs: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator]:
    """x ~ N(0,1)·init_scale, then the objective's λ (binary: U[0,1]) and labels (binary: half −1, half +1).

    Drawn from a CPU generator seeded with ``config.seed``, so a run is reproducible on any device.
    """
    objective = objective or get_objective("binary")
    gen = torch.Generator().manual_seed(config.seed)
    x = (torch.randn((m, *input_shape), generator=gen, dtype=torch.float64) * config.init_scale).to(device, dtype)
    lam = objective.init_lambda(m, num_outputs, gen).to(device, dtype)
    y = objective.candidate_labels(m, num_outputs).to(device, dtype)
    return x, lam, y, gen


#: An attack run directory: candidates + manifest when finished, the resumable state kept beside them.
ATTACK_RUN = RunKind(manifest=RECONSTRUCTION_FILE, state=ATTACK_STATE_FILE, outputs=(CANDIDATES_FILE,))
# Config fields that may change between a run and its continuation: the budget and how often it saves.
_FREE_ON_RESUME = ("iterations", "checkpoint_every")


def _victim(
    victim: nn.Module | str | Path, device: torch.device, dtype: torch.dtype, input_shape: tuple[int, ...] | None
) -> tuple[nn.Module, dict[str, Any]]:
    """The victim on ``device`` in ``dtype`` (a copy, never the caller's module) and what is known about it."""
    if isinstance(victim, (str, Path)):
        model, manifest = load_checkpoint(victim, device=device, dtype=dtype)
        info = {
            "run_dir": str(Path(victim).resolve()),
            "n_train": manifest.get("metrics", {}).get("n_train"),
            "input_shape": list(model.config.input_shape),
            "objective": manifest.get("objective"),
        }
    else:
        model = copy.deepcopy(victim).to(device=device, dtype=dtype)
        config = getattr(model, "config", None)
        shape = input_shape or getattr(config, "input_shape", None)
        info = {"run_dir": None, "n_train": None, "input_shape": list(shape) if shape else None, "objective": None}
    model.eval()  # dropout off: the attack explains the network the victim computes at test time
    warn_if_unsupported(model)
    if info["input_shape"] is None:
        raise ConfigError(
            "Expected `input_shape` for a model that does not carry its config (e.g. (1, 28, 28)). Got None."
        )
    info["fingerprint"] = weights_fingerprint(model)
    return model, info


@dataclass(frozen=True)
class _Setup:
    """What the loop needs about the victim: its attack copy, the objective, the candidate count."""

    attack_model: nn.Module
    info: dict[str, Any]
    objective: Objective
    num_outputs: int
    m: int


def _setup(
    victim: nn.Module | str | Path,
    config: ReconstructionConfig,
    *,
    n_train: int | None,
    input_shape: tuple[int, ...] | None,
    device: torch.device,
    dtype: torch.dtype,
) -> _Setup:
    model, info = _victim(victim, device, dtype, input_shape)
    with torch.no_grad():
        out = model(torch.zeros(1, *info["input_shape"], device=device, dtype=dtype))
    name = config.objective or info["objective"] or default_objective(out.shape[1]).name
    objective = get_objective(name)
    objective.check_outputs(out)
    info["objective"] = name
    n = n_train if n_train is not None else info["n_train"]
    if config.candidates is None and n is None:
        raise ConfigError("Expected `candidates` or `n_train`: the victim does not record its training-set size.")
    if config.candidates is None:
        check_int("n_train", n, low=1)
    m = config.candidates if config.candidates is not None else 2 * int(n)
    _check_memory(m, tuple(info["input_shape"]), dtype, device)
    attack_model = with_modified_relu(model, config.alpha)
    for p in attack_model.parameters():
        p.requires_grad_(True)
    return _Setup(attack_model, info, objective, int(out.shape[1]), m)


@dataclass
class _AttackState:
    """Everything the loop advances: candidates, multipliers, optimisers, RNG, where it stands."""

    x: torch.Tensor
    lam: torch.Tensor
    y: torch.Tensor
    gen: torch.Generator
    opt_x: torch.optim.Optimizer
    opt_l: torch.optim.Optimizer
    iteration: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    elapsed: float = 0.0

    @classmethod
    def start(
        cls,
        input_shape: tuple[int, ...],
        config: ReconstructionConfig,
        m: int,
        device: torch.device,
        dtype: torch.dtype,
        objective: Objective,
        num_outputs: int,
    ) -> _AttackState:
        x, lam, y, gen = initial_state(
            input_shape, config, m, device=device, dtype=dtype, objective=objective, num_outputs=num_outputs
        )
        x.requires_grad_(True)
        lam.requires_grad_(True)
        opt_x = torch.optim.SGD([x], lr=config.lr, momentum=config.momentum)
        opt_l = torch.optim.SGD([lam], lr=config.lambda_lr, momentum=config.momentum)
        return cls(x, lam, y, gen, opt_x, opt_l)

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        tensors = {"x": self.x, "lam": self.lam, "rng": self.gen.get_state()}
        for key, opt, p in (("momentum_x", self.opt_x, self.x), ("momentum_lam", self.opt_l, self.lam)):
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[key] = buf
        save_state(
            path, tensors, {"iteration": self.iteration, "history": self.history, "seconds": self.elapsed, **meta}
        )

    def restore(self, path: Path, meta: dict[str, Any], config: ReconstructionConfig) -> None:
        """Load ``path`` after checking it was made with ``config`` on the same victim (``meta``)."""
        tensors, saved = load_state(path)
        if not {"x", "lam", "rng"} <= set(tensors) or not {"iteration", "history", "seconds"} <= set(saved):
            raise CheckpointError(f"{path} is not an attack checkpoint; pass --force to start over.")
        check_resumable(saved.get("config", {}), meta["config"], where=path.parent, free=_FREE_ON_RESUME)
        if saved.get("victim") != meta["victim"]:
            raise RunStateError(
                f"Cannot resume {path.parent}: it attacks another victim (weights fingerprint "
                f"{saved.get('victim')} then, {meta['victim']} now). Pass --force to start over for this victim."
            )
        if saved["iteration"] > config.iterations:
            raise RunStateError(
                f"Cannot resume {path.parent} at {config.iterations} iterations: it has already run "
                f"{saved['iteration']}. Ask for at least that many, or pass --force to start over."
            )
        if tensors["x"].shape != self.x.shape:
            raise RunStateError(
                f"Cannot resume {path}: it holds {tuple(tensors['x'].shape)} candidates, "
                f"expected {tuple(self.x.shape)}."
            )
        with torch.no_grad():
            self.x.copy_(tensors["x"])
            self.lam.copy_(tensors["lam"])
        for key, opt, p in (("momentum_x", self.opt_x, self.x), ("momentum_lam", self.opt_l, self.lam)):
            if key in tensors:
                opt.state[p]["momentum_buffer"] = tensors[key].to(device=p.device, dtype=p.dtype)
        self.gen.set_state(tensors["rng"])
        self.iteration, self.history, self.elapsed = saved["iteration"], saved["history"], saved["seconds"]


def reconstruct(
    victim: nn.Module | str | Path,
    config: ReconstructionConfig | None = None,
    *,
    out: str | Path | None = None,
    n_train: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    device: str | torch.device = "auto",
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
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

    Raises:
        ReconstructionDivergedError: the loss became NaN/Inf (the last checkpoint is kept).
        RunStateError: resuming with other hyperparameters, another victim, or fewer iterations.
        UnsupportedModelError: the model has layers the attack does not support.
    """
    config = dataclasses.replace(config or ReconstructionConfig(), **overrides)
    dev = resolve_device(device)
    dtype = resolve_dtype(config.dtype)
    setup = _setup(victim, config, n_train=n_train, input_shape=input_shape, device=dev, dtype=dtype)
    info, m = setup.info, setup.m
    run = open_run(out, ATTACK_RUN, force=force, resume=resume) if out is not None else None
    state = _AttackState.start(tuple(info["input_shape"]), config, m, dev, dtype, setup.objective, setup.num_outputs)
    meta = {"config": config_to_dict(config), "victim": info["fingerprint"]}
    if run is not None and run.status == "finished" and _finished_as_asked(run, config, meta):
        return _load_result(run.path, dev, dtype)
    if run is not None and run.status != "new":
        state.restore(run.state, meta, config)
    checkpoint = run.state if run is not None else None
    _optimise(setup.attack_model, setup.objective, state, config, checkpoint, meta, progress=progress)
    result = ReconstructionResult(state.x.detach(), state.lam.detach(), state.y, state.history, None, state.elapsed)
    if run is not None:
        result.out_dir = run.path
        _write_result(run.path, result, config, info, m, dev)
    return result


def _check_memory(m: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
    """Refuse an attack whose candidates alone (x, its gradient and momentum) exceed the device's memory."""
    need = 3 * m * math.prod(shape) * torch.finfo(dtype).bits // 8
    if device.type == "cuda":
        have = torch.cuda.mem_get_info(device)[1]
    else:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else need
    if need > have:
        raise ConfigError(
            f"Expected the candidates to fit in memory: {m} candidates of shape {shape} need {need / 2**30:.1f} GiB "
            f"for x, its gradient and momentum alone; {device} has {have / 2**30:.1f} GiB. Lower --candidates."
        )


def _finished_as_asked(run: Run, config: ReconstructionConfig, meta: dict[str, Any]) -> bool:
    """Whether the finished run in ``run`` ran exactly ``config`` (else it is to be extended)."""
    manifest = read_json(run.manifest)
    check_resumable(manifest.get("config", {}), meta["config"], where=run.path, free=_FREE_ON_RESUME)
    recorded = manifest.get("victim", {}).get("fingerprint")
    if recorded != meta["victim"]:
        raise RunStateError(
            f"Cannot resume {run.path}: it attacked another victim (weights fingerprint {recorded} then, "
            f"{meta['victim']} now). Pass --force to start over for this victim."
        )
    return same_length(run, done=int(manifest.get("iterations", -1)), requested=config.iterations, unit="iterations")


def _optimise(
    model: nn.Module,
    objective: Objective,
    state: _AttackState,
    config: ReconstructionConfig,
    checkpoint: Path | None,
    meta: dict[str, Any],
    *,
    progress: bool,
) -> None:
    """Advance ``state`` to ``config.iterations``, checkpointing as configured and at the end."""
    start = time.perf_counter() - state.elapsed
    last_good = state.iteration if checkpoint is not None and checkpoint.exists() else None
    with progress_bar("reconstruct", total=config.iterations, enabled=progress, completed=state.iteration) as bar:
        while state.iteration < config.iterations:
            terms = attack_loss(model, state.x, state.lam, state.y, config, objective)
            if not torch.isfinite(terms["total"]):
                where = (
                    f"; last good checkpoint: iteration {last_good} in {checkpoint}" if last_good is not None else ""
                )
                raise ReconstructionDivergedError(
                    f"Reconstruction loss became {float(terms['total'].detach())} at iteration {state.iteration}"
                    f"{where}. Lower --lr or --init-scale."
                )
            gx, gl = torch.autograd.grad(terms["total"], [state.x, state.lam])
            state.x.grad, state.lam.grad = gx, gl
            state.opt_x.step()
            state.opt_l.step()
            if state.iteration % config.log_every == 0:
                point = {"iteration": state.iteration, **{k: float(v.detach()) for k, v in terms.items()}}
                point["seconds"] = time.perf_counter() - start
                state.history.append(point)
                bar.update(postfix=f"kkt {point['kkt']:.4g} · prior {point['prior']:.3g} · λ {point['lambda']:.3g}")
            state.iteration += 1
            bar.advance(1)
            if checkpoint is not None and config.checkpoint_every and state.iteration % config.checkpoint_every == 0:
                state.elapsed = time.perf_counter() - start
                state.save(checkpoint, meta)
                last_good = state.iteration
    state.elapsed = time.perf_counter() - start
    if checkpoint is not None:  # kept after the end, so that the run can be extended
        state.save(checkpoint, meta)


def _write_result(
    out_dir: Path,
    result: ReconstructionResult,
    config: ReconstructionConfig,
    victim: dict[str, Any],
    m: int,
    device: torch.device,
) -> None:
    tensors = {"x": result.x, "lam": result.lam, "y": result.y}
    atomic_write_bytes(out_dir / CANDIDATES_FILE, st_save({k: v.contiguous().cpu() for k, v in tensors.items()}))
    last = result.history[-1] if result.history else {}
    atomic_write_json(
        out_dir / RECONSTRUCTION_FILE,
        {
            "format": "kktrecon.reconstruction/1",
            "objective": victim["objective"],
            "victim": victim,
            "config": config_to_dict(config),
            "candidates": m,
            "iterations": config.iterations,
            "device": str(device),
            "dtype": dtype_name(result.x.dtype),
            "versions": package_versions(),
            "timings": {
                "total_s": result.seconds,
                "ms_per_iteration": 1000 * result.seconds / max(config.iterations, 1),
            },
            "final_loss": last,
            "loss_history": result.history,
        },
    )


def _load_result(out_dir: Path, device: torch.device, dtype: torch.dtype) -> ReconstructionResult:
    manifest = read_json(out_dir / RECONSTRUCTION_FILE)
    tensors = st_load((out_dir / CANDIDATES_FILE).read_bytes())
    return ReconstructionResult(
        tensors["x"].to(device, dtype),
        tensors["lam"].to(device, dtype),
        tensors["y"].to(device, dtype),
        manifest.get("loss_history", []),
        out_dir,
        float(manifest.get("timings", {}).get("total_s", 0.0)),
    )
