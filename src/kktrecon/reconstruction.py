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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from kktrecon.kkt import stationarity_loss
from kktrecon.models import MLP, load_checkpoint, warn_if_unsupported, with_modified_relu
from kktrecon.progress import progress_bar
from kktrecon.runs import (
    atomic_write_bytes,
    atomic_write_json,
    config_to_dict,
    dtype_name,
    load_state,
    package_versions,
    prepare_run_dir,
    read_json,
    resolve_device,
    resolve_dtype,
    save_state,
)

__all__ = [
    "CANDIDATES_FILE",
    "CHECKPOINT_FILE",
    "MANIFEST_FILE",
    "ReconstructionConfig",
    "ReconstructionDivergedError",
    "ReconstructionResult",
    "reconstruct",
]

CANDIDATES_FILE = "candidates.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
MANIFEST_FILE = "reconstruction.json"


@dataclass(frozen=True)
class ReconstructionConfig:
    """Hyperparameters of the attack. Defaults: the reference's released MNIST winner.

    Args:
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
        if self.candidates is not None and (self.candidates < 2 or self.candidates % 2):
            raise ValueError(
                f"Expected `candidates` to be an even number >= 2 (half per label). Got {self.candidates}."
            )
        for name in ("init_scale", "lr", "alpha", "box"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Expected `{name}` > 0. Got {getattr(self, name)}.")
        for name in ("lambda_lr", "lambda_min", "momentum", "kkt_weight", "prior_weight", "lambda_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"Expected `{name}` >= 0. Got {getattr(self, name)}.")
        if self.iterations < 0 or self.checkpoint_every < 0 or self.log_every < 1:
            raise ValueError(
                "Expected `iterations` >= 0, `checkpoint_every` >= 0, `log_every` >= 1. "
                f"Got {self.iterations}, {self.checkpoint_every}, {self.log_every}."
            )


class ReconstructionDivergedError(FloatingPointError):
    """The attack's loss became NaN or Inf; the last good checkpoint is kept."""


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
    model: nn.Module, x: torch.Tensor, lam: torch.Tensor, y: torch.Tensor, config: ReconstructionConfig
) -> dict[str, torch.Tensor]:
    """The three terms of the reconstruction loss and their weighted sum (``total``)."""
    m = x.shape[0]
    kkt = stationarity_loss(model, x, lam * y / m, create_graph=True)
    prior = (x - config.box).relu().pow(2).sum() + (-config.box - x).relu().pow(2).sum()
    hinge = (config.lambda_min - lam).relu().pow(2).sum()
    total = config.kkt_weight * kkt + config.prior_weight * prior + config.lambda_weight * hinge
    return {"total": total, "kkt": kkt, "prior": prior, "lambda": hinge}


def initial_state(
    input_shape: tuple[int, ...], config: ReconstructionConfig, m: int, *, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator]:
    """x ~ N(0,1)·init_scale, λ ~ U[0,1], y = (−1,…,−1, +1,…,+1), from a seeded CPU generator."""
    gen = torch.Generator().manual_seed(config.seed)
    x = (torch.randn((m, *input_shape), generator=gen, dtype=torch.float64) * config.init_scale).to(device, dtype)
    lam = torch.rand(m, generator=gen, dtype=torch.float64).to(device, dtype)
    y = torch.cat([-torch.ones(m // 2), torch.ones(m - m // 2)]).to(device, dtype)
    return x, lam, y, gen


def _victim(
    victim: nn.Module | str | Path, device: torch.device, dtype: torch.dtype
) -> tuple[nn.Module, dict[str, Any]]:
    if isinstance(victim, (str, Path)):
        model, manifest = load_checkpoint(victim, device=device, dtype=dtype)
        info = {
            "run_dir": str(Path(victim).resolve()),
            "n_train": manifest.get("metrics", {}).get("n_train"),
            "input_shape": list(model.config.input_shape),
        }
        return model, info
    model = victim.to(device=device, dtype=dtype)
    shape = list(model.config.input_shape) if isinstance(model, MLP) else None
    return model, {"run_dir": None, "n_train": None, "input_shape": shape}


def _optimisers(
    x: torch.Tensor, lam: torch.Tensor, config: ReconstructionConfig
) -> tuple[torch.optim.SGD, torch.optim.SGD]:
    opt_x = torch.optim.SGD([x], lr=config.lr, momentum=config.momentum)
    opt_l = torch.optim.SGD([lam], lr=config.lambda_lr, momentum=config.momentum)
    return opt_x, opt_l


def _momentum(opt: torch.optim.Optimizer, p: torch.Tensor) -> torch.Tensor | None:
    return opt.state.get(p, {}).get("momentum_buffer")


def _save_checkpoint(
    path: Path,
    *,
    x: torch.Tensor,
    lam: torch.Tensor,
    opt_x: torch.optim.Optimizer,
    opt_l: torch.optim.Optimizer,
    gen: torch.Generator,
    iteration: int,
    history: list[dict[str, float]],
    seconds: float,
    config: ReconstructionConfig,
) -> None:
    tensors = {"x": x, "lam": lam, "rng": gen.get_state()}
    for key, opt, p in (("momentum_x", opt_x, x), ("momentum_lam", opt_l, lam)):
        buf = _momentum(opt, p)
        if buf is not None:
            tensors[key] = buf
    meta = {"iteration": iteration, "history": history, "seconds": seconds, "config": config_to_dict(config)}
    save_state(path, tensors, meta)


def reconstruct(
    victim: nn.Module | str | Path,
    config: ReconstructionConfig | None = None,
    *,
    out: str | Path | None = None,
    n_train: int | None = None,
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
        device: ``auto`` picks CUDA when present.
        resume: continue from ``out``'s checkpoint (bit-identical to an uninterrupted run).
        force: overwrite an existing reconstruction in ``out``.
        progress: show a progress bar with the loss terms.

    Raises:
        ReconstructionDivergedError: the loss became NaN/Inf (the last checkpoint is kept).
        UnsupportedModelError: the model has layers the attack does not support.
    """
    config = dataclasses.replace(config or ReconstructionConfig(), **overrides)
    dev = resolve_device(device)
    dtype = resolve_dtype(config.dtype)
    model, info = _victim(victim, dev, dtype)
    warn_if_unsupported(model)
    if info["input_shape"] is None:
        raise ValueError("Cannot infer the input shape of a model that is not a kktrecon MLP; pass a run directory.")
    n = n_train if n_train is not None else info["n_train"]
    if config.candidates is None and n is None:
        raise ValueError("Expected `candidates` or `n_train`: the victim does not record its training-set size.")
    m = config.candidates if config.candidates is not None else 2 * int(n)
    attack_model = with_modified_relu(model, config.alpha)
    for p in attack_model.parameters():
        p.requires_grad_(True)

    out_dir = None
    checkpoint = None
    if out is not None:
        out_dir = prepare_run_dir(out, force=force or resume, marker=MANIFEST_FILE)
        checkpoint = out_dir / CHECKPOINT_FILE
        if resume and (out_dir / MANIFEST_FILE).exists():
            return _load_result(out_dir, dev, dtype)
        if checkpoint.exists() and not (resume or force):
            raise FileExistsError(
                f"{out_dir} holds an unfinished reconstruction; pass --resume to continue or --force."
            )

    x, lam, y, gen = initial_state(tuple(info["input_shape"]), config, m, device=dev, dtype=dtype)
    x.requires_grad_(True)
    lam.requires_grad_(True)
    opt_x, opt_l = _optimisers(x, lam, config)
    iteration, history, elapsed = 0, [], 0.0
    if resume and checkpoint is not None and checkpoint.exists():
        iteration, history, elapsed = _restore(checkpoint, x, lam, opt_x, opt_l, gen, config, dev, dtype)

    start = time.perf_counter() - elapsed
    last_good = iteration if checkpoint is not None and checkpoint.exists() else None
    with progress_bar("reconstruct", total=config.iterations, enabled=progress, completed=iteration) as bar:
        while iteration < config.iterations:
            terms = attack_loss(attack_model, x, lam, y, config)
            if not torch.isfinite(terms["total"]):
                where = (
                    f"; last good checkpoint: iteration {last_good} in {checkpoint}" if last_good is not None else ""
                )
                raise ReconstructionDivergedError(
                    f"Reconstruction loss became {float(terms['total'].detach())} at iteration {iteration}{where}. "
                    "Lower --lr or --init-scale."
                )
            gx, gl = torch.autograd.grad(terms["total"], [x, lam])
            x.grad, lam.grad = gx, gl
            opt_x.step()
            opt_l.step()
            if iteration % config.log_every == 0:
                point = {"iteration": iteration, **{k: float(v.detach()) for k, v in terms.items()}}
                point["seconds"] = time.perf_counter() - start
                history.append(point)
                bar.update(postfix=f"kkt {point['kkt']:.4g} · prior {point['prior']:.3g} · λ {point['lambda']:.3g}")
            iteration += 1
            bar.advance(1)
            if checkpoint is not None and config.checkpoint_every and iteration % config.checkpoint_every == 0:
                _save_checkpoint(
                    checkpoint, x=x, lam=lam, opt_x=opt_x, opt_l=opt_l, gen=gen, iteration=iteration,
                    history=history, seconds=time.perf_counter() - start, config=config,
                )  # fmt: skip
                last_good = iteration

    seconds = time.perf_counter() - start
    result = ReconstructionResult(x.detach(), lam.detach(), y, history, out_dir, seconds)
    if out_dir is not None:
        _write_result(out_dir, result, config, info, m, dev)
    return result


def _restore(
    checkpoint: Path,
    x: torch.Tensor,
    lam: torch.Tensor,
    opt_x: torch.optim.Optimizer,
    opt_l: torch.optim.Optimizer,
    gen: torch.Generator,
    config: ReconstructionConfig,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[int, list[dict[str, float]], float]:
    tensors, meta = load_state(checkpoint)
    saved = meta.get("config", {})
    mine = config_to_dict(config)
    differs = sorted(k for k in mine if k not in ("iterations", "checkpoint_every") and saved.get(k) != mine[k])
    if differs:
        raise ValueError(
            f"Cannot resume {checkpoint}: its config differs in {differs} "
            f"(checkpoint {[saved.get(k) for k in differs]}, now {[mine[k] for k in differs]})."
        )
    if tensors["x"].shape != x.shape:
        raise ValueError(
            f"Cannot resume {checkpoint}: it holds {tuple(tensors['x'].shape)} candidates, expected {tuple(x.shape)}."
        )
    with torch.no_grad():
        x.copy_(tensors["x"])
        lam.copy_(tensors["lam"])
    for key, opt, p in (("momentum_x", opt_x, x), ("momentum_lam", opt_l, lam)):
        if key in tensors:
            opt.state[p]["momentum_buffer"] = tensors[key].to(device=device, dtype=dtype)
    gen.set_state(tensors["rng"])
    return meta["iteration"], meta["history"], meta["seconds"]


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
        out_dir / MANIFEST_FILE,
        {
            "format": "kktrecon.reconstruction/1",
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
    manifest = read_json(out_dir / MANIFEST_FILE)
    tensors = st_load((out_dir / CANDIDATES_FILE).read_bytes())
    return ReconstructionResult(
        tensors["x"].to(device, dtype),
        tensors["lam"].to(device, dtype),
        tensors["y"].to(device, dtype),
        manifest.get("loss_history", []),
        out_dir,
        float(manifest.get("timings", {}).get("total_s", 0.0)),
    )
