"""Victim training: full-batch gradient descent on the logistic loss, the reference recipe.

Gradient descent on the logistic loss over a separable set drives a homogeneous network towards
a KKT point of the max-margin problem (Lyu & Li 2019), which is what the attack inverts. The
reference (Haim et al. 2022, nivha/dataset_reconstruction) trains d-1000-1000-1 with a bias on the
first layer only, first layer initialised N(0,1)·1e-4, SGD lr 0.01 without momentum, full batch.

Runs write ``model.safetensors`` + ``model.json`` into their own directory, and checkpoint the
weights every ``checkpoint_every`` steps so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kktrecon.data import DataConfig, Dataset, load_dataset
from kktrecon.models import MANIFEST_FILE, MLP, ModelConfig, build_model, load_checkpoint, save_checkpoint
from kktrecon.progress import progress_bar
from kktrecon.runs import (
    config_from_dict,
    config_to_dict,
    load_state,
    package_versions,
    prepare_run_dir,
    register_nested,
    resolve_device,
    resolve_dtype,
    save_state,
)

__all__ = ["SCHEDULES", "TrainConfig", "TrainResult", "train"]

STATE_FILE = "train_state.safetensors"


def _constant(lr: float, loss: float, initial_loss: float, cap: float) -> float:
    return lr


def _loss_scaled(lr: float, loss: float, initial_loss: float, cap: float) -> float:
    # The logistic gradient shrinks with the loss; scaling the step by ℓ₀/ℓ keeps the progress per
    # step roughly constant (normalised GD), capped at ``cap``·lr for stability.
    return lr * min(cap, max(1.0, initial_loss / max(loss, 1e-300)))


SCHEDULES: dict[str, Callable[[float, float, float, float], float]] = {
    "constant": _constant,
    "loss-scaled": _loss_scaled,
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a victim.

    Args:
        data: which training set (dataset, task, samples per class).
        hidden: hidden-layer widths of the MLP.
        bias: bias policy (``none``, ``first`` — the reference — or ``all``).
        init_scale: first-layer initialisation scale (reference 1e-4).
        hidden_init_scale: N(0,1)·scale for later layers; None keeps PyTorch's default (reference).
        lr: gradient-descent step size (reference 0.01).
        steps: step budget.
        loss_threshold: stop early once the training loss falls below this.
        schedule: ``constant`` (reference) or ``loss-scaled`` (step ∝ 1/loss, capped at ``max_lr_factor``).
        max_lr_factor: cap of the ``loss-scaled`` schedule's step relative to ``lr``.
        dtype: ``float32`` or ``float64`` (reference).
        seed: initialisation seed.
        eval_every: steps between recorded points of the loss curve.
        checkpoint_every: steps between resumable checkpoints (0: never).
    """

    data: DataConfig = field(default_factory=lambda: DataConfig(n_per_class=10))
    hidden: tuple[int, ...] = (1000, 1000)
    bias: str = "first"
    init_scale: float = 1e-4
    hidden_init_scale: float | None = None
    lr: float = 0.01
    steps: int = 100_000
    loss_threshold: float | None = None
    schedule: str = "constant"
    max_lr_factor: float = 1000.0
    dtype: str = "float32"
    seed: int = 0
    eval_every: int = 1000
    checkpoint_every: int = 10_000

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Expected `schedule` to be one of {sorted(SCHEDULES)}. Got {self.schedule!r}.")
        resolve_dtype(self.dtype)
        if self.steps < 0:
            raise ValueError(f"Expected `steps` >= 0. Got {self.steps}.")
        if not self.lr > 0:
            raise ValueError(f"Expected `lr` > 0. Got {self.lr}.")
        if self.eval_every < 1:
            raise ValueError(f"Expected `eval_every` >= 1. Got {self.eval_every}.")
        if self.checkpoint_every < 0:
            raise ValueError(f"Expected `checkpoint_every` >= 0. Got {self.checkpoint_every}.")
        if self.loss_threshold is not None and not self.loss_threshold > 0:
            raise ValueError(f"Expected `loss_threshold` > 0 or None. Got {self.loss_threshold}.")

    def model_config(self, data: Dataset) -> ModelConfig:
        outputs = 1 if data.num_classes == 2 else data.num_classes
        return ModelConfig(
            input_shape=data.input_shape,
            hidden=tuple(self.hidden),
            num_outputs=outputs,
            bias=self.bias,
            init_scale=self.init_scale,
            hidden_init_scale=self.hidden_init_scale,
        )


register_nested("TrainConfig", "data", DataConfig)


@dataclass
class TrainResult:
    """A trained victim, where it was saved, and what was measured."""

    model: MLP
    metrics: dict[str, Any]
    history: list[dict[str, float]]
    run_dir: Path | None


def _loss_and_error(model: MLP, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic loss (BCE on the logit; cross-entropy for K outputs), its output, and the error rate."""
    out = model(x)
    if out.shape[1] == 1:
        logit = out[:, 0]
        loss = F.binary_cross_entropy_with_logits(logit, y.to(logit.dtype))
        pred = (logit > 0).long()
    else:
        loss = F.cross_entropy(out, y)
        pred = out.argmax(dim=1)
    return loss, (pred != y).to(out.dtype).mean()


@torch.no_grad()
def evaluate_model(model: MLP, data: Dataset) -> dict[str, Any]:
    """Training loss and error, test accuracy, and per-sample outputs and margins yᵢΦ(xᵢ)."""
    loss, err = _loss_and_error(model, data.x_train, data.y_train)
    out = model(data.x_train)
    metrics: dict[str, Any] = {"train_loss": float(loss), "train_error": float(err)}
    if len(data.x_test):
        _, test_err = _loss_and_error(model, data.x_test, data.y_test)
        metrics["test_accuracy"] = 1.0 - float(test_err)
    else:
        metrics["test_accuracy"] = None
    if out.shape[1] == 1:
        margins = data.signs.to(out.dtype) * out[:, 0]
        metrics["outputs"] = out[:, 0].tolist()
    else:
        true = out.gather(1, data.y_train[:, None])[:, 0]
        others = out.scatter(1, data.y_train[:, None], float("-inf")).max(dim=1).values
        margins = true - others
        metrics["outputs"] = out.tolist()
    metrics["margins"] = margins.tolist()
    metrics["min_margin"] = float(margins.min())
    return metrics


def _save_state(run_dir: Path, model: MLP, step: int, history: list[dict[str, float]], elapsed: float) -> None:
    save_state(run_dir / STATE_FILE, model.state_dict(), {"step": step, "history": history, "elapsed": elapsed})


def _load_state(run_dir: Path, model: MLP) -> tuple[int, list[dict[str, float]], float]:
    tensors, meta = load_state(run_dir / STATE_FILE)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            v.copy_(tensors[k])
    return meta["step"], meta["history"], meta["elapsed"]


def train(
    config: TrainConfig | None = None,
    *,
    out: str | Path | None = None,
    data: Dataset | None = None,
    data_root: str | Path | None = None,
    device: str | torch.device = "auto",
    force: bool = False,
    resume: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> TrainResult:
    """Train a victim by full-batch gradient descent and (with ``out``) save it as a run directory.

    Args:
        config: the recipe; keyword ``overrides`` replace its fields (``train(steps=1000)``).
        out: run directory to write ``model.safetensors`` and ``model.json`` into.
        data: an already loaded training set (must match ``config.data``); loaded otherwise.
        data_root: where the data layer reads the dataset from.
        device: ``auto`` picks CUDA when present.
        force: overwrite an existing run in ``out``.
        resume: continue from ``out``'s last checkpoint.
        progress: show a progress bar.

    Returns:
        :class:`TrainResult` with the model, its metrics (``train_error``, ``test_accuracy``,
        ``train_loss``, margins, outputs) and the loss curve.

    Raises:
        RunDirectoryExistsError: ``out`` holds a run and neither ``force`` nor ``resume`` was given.
        FloatingPointError: the loss became NaN or Inf.
    """
    config = dataclasses.replace(config or TrainConfig(), **overrides)
    dev = resolve_device(device)
    dtype = resolve_dtype(config.dtype)
    if data is None:
        data = load_dataset(config.data, data_root=data_root, dtype=dtype, device=dev)
    elif data.config != config.data:
        raise ValueError(f"Expected `data` loaded with {config.data}. Got {data.config}.")
    data = _on(data, dev, dtype)
    run_dir = None
    if out is not None:
        run_dir = prepare_run_dir(out, force=force or resume, marker=MANIFEST_FILE)
        if not resume and (run_dir / STATE_FILE).exists() and not force:
            raise FileExistsError(f"{run_dir} holds an unfinished run; pass --resume to continue or --force.")
    model = build_model(config.model_config(data), seed=config.seed, device=dev, dtype=dtype)

    step, history, elapsed = 0, [], 0.0
    if resume and run_dir is not None:
        if (run_dir / MANIFEST_FILE).exists() and not (run_dir / STATE_FILE).exists():
            model, manifest = load_checkpoint(run_dir, device=dev, dtype=dtype)
            return TrainResult(model, manifest["metrics"], manifest.get("history", []), run_dir)
        if (run_dir / STATE_FILE).exists():
            step, history, elapsed = _load_state(run_dir, model)

    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.0)
    schedule = SCHEDULES[config.schedule]
    initial_loss: float | None = history[0]["loss"] if history else None
    start = time.perf_counter() - elapsed
    loss_value = float("nan")
    needs_loss = config.schedule != "constant" or config.loss_threshold is not None
    with progress_bar("train", total=config.steps, enabled=progress, completed=step) as bar:
        while step < config.steps:
            loss, err = _loss_and_error(model, data.x_train, data.y_train)
            # Reading the loss synchronises a GPU: only where the schedule, the threshold or the log needs it.
            logging = step % config.eval_every == 0
            if logging or needs_loss:
                loss_value = float(loss.detach())
                if initial_loss is None:
                    initial_loss = loss_value
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"Training loss became {loss_value} at step {step}; lower the step size.")
            if logging:
                point = {"step": step, "loss": loss_value, "train_error": float(err)}
                if len(data.x_test):
                    with torch.no_grad():
                        _, test_err = _loss_and_error(model, data.x_test, data.y_test)
                    point["test_accuracy"] = 1.0 - float(test_err)
                history.append(point)
                bar.update(postfix=_postfix(point))
            if config.loss_threshold is not None and loss_value < config.loss_threshold:
                break
            if needs_loss:
                for group in opt.param_groups:
                    group["lr"] = schedule(config.lr, loss_value, initial_loss, config.max_lr_factor)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.advance(1)
            if run_dir is not None and config.checkpoint_every and step % config.checkpoint_every == 0:
                _save_state(run_dir, model, step, history, time.perf_counter() - start)

    seconds = time.perf_counter() - start
    metrics = evaluate_model(model, data)
    if not math.isfinite(metrics["train_loss"]):
        raise FloatingPointError(f"Training loss became {metrics['train_loss']} by step {step}; lower the step size.")
    metrics.update({"steps": step, "time_s": seconds, "n_train": len(data.x_train)})
    history.append({"step": step, "loss": metrics["train_loss"], "train_error": metrics["train_error"]})
    if run_dir is not None:
        manifest = {
            "format": "kktrecon.victim/1",
            "training": config_to_dict(config),
            "data": config_to_dict(config.data),
            "data_root": data.data_root,
            "train_indices": data.train_indices.tolist(),
            "train_mean": data.mean.reshape(-1).tolist(),
            "seed": config.seed,
            "device": str(dev),
            "versions": package_versions(),
            "metrics": metrics,
            "history": history,
        }
        save_checkpoint(run_dir, model, manifest)
        (run_dir / STATE_FILE).unlink(missing_ok=True)
    return TrainResult(model, metrics, history, run_dir)


def _on(data: Dataset, device: torch.device, dtype: torch.dtype) -> Dataset:
    """``data`` with its float tensors on ``device`` in ``dtype`` and its labels on ``device``."""
    return dataclasses.replace(
        data,
        x_train=data.x_train.to(device=device, dtype=dtype),
        x_test=data.x_test.to(device=device, dtype=dtype),
        y_train=data.y_train.to(device),
        y_test=data.y_test.to(device),
        mean=data.mean.to(device=device, dtype=dtype),
    )


def _postfix(point: dict[str, float]) -> str:
    text = f"loss {point['loss']:.3g} · train err {point['train_error']:.3f}"
    if "test_accuracy" in point:
        text += f" · test acc {point['test_accuracy']:.3f}"
    return text


def load_train_config(manifest: dict[str, Any]) -> TrainConfig:
    """The recipe recorded in a victim's ``model.json``."""
    return config_from_dict(TrainConfig, manifest["training"])
