"""Victim training: full-batch gradient descent on the logistic loss (the reference recipe), or as users train.

Gradient descent on the logistic loss over a separable set drives a homogeneous network towards
a KKT point of the max-margin problem (Lyu & Li 2019), which is what the attack inverts. The
reference (Haim et al. 2022, nivha/dataset_reconstruction) trains d-1000-1000-1 with a bias on the
first layer only, first layer initialised N(0,1)·1e-4, SGD lr 0.01 without momentum, full batch.

Beside the reference, a victim may be trained the way people train models (``init="pytorch"``,
minibatches, momentum, Adam, weight decay, a stopping loss): the regime the owner's attacks address
(METHOD §6). Runs write ``model.safetensors`` + ``model.json`` into their own directory, keep the
initial weights θ₀ as ``initial.safetensors`` (the owner's knowledge; the recipe is the manifest's
``training``), and checkpoint the weights and the optimiser's state every ``checkpoint_every`` steps so
an interrupted run resumes where it stopped, bit-identically.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kktrecon.attack.objectives import Objective, get_objective
from kktrecon.checks import check_int, check_number
from kktrecon.configs import config_from_dict, config_to_dict, register_choice, register_nested
from kktrecon.data import DataConfig, Dataset, load_dataset
from kktrecon.devices import ThreadChoice, resolve_device, resolve_dtype
from kktrecon.errors import CheckpointError, ConfigError, RunStateError, TrainingDivergedError
from kktrecon.files import TRAIN_STATE_FILE, VICTIM_FILE, VICTIM_WEIGHTS_FILE, load_state, package_versions, save_state
from kktrecon.models import ARCHITECTURES, MLPConfig, build_model, load_checkpoint, save_checkpoint
from kktrecon.models.checkpoints import INITIAL_WEIGHTS_FILE, save_initial_state
from kktrecon.models.registry import architecture_of, get_architecture
from kktrecon.progress import progress_bar
from kktrecon.runs import Run, RunKind, check_resumable, open_run, same_length

__all__ = [
    "DATA_DECIDED",
    "INITS",
    "OPTIMIZERS",
    "SCHEDULES",
    "TrainConfig",
    "TrainResult",
    "load_train_config",
    "train",
    "train_config_from_dict",
]


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


def _sgd(params: Any, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def _adam(params: Any, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


#: The optimisers a victim may be trained with, by name: (parameters, config) -> a torch optimiser.
OPTIMIZERS: dict[str, Callable[[Any, TrainConfig], torch.optim.Optimizer]] = {"sgd": _sgd, "adam": _adam}


def _init_model(model: nn.Module, gen: torch.Generator) -> None:
    """The architecture's own initialisation, as built: nothing to redo."""


def _init_pytorch(model: nn.Module, gen: torch.Generator) -> None:
    """nn.Linear's and nn.Conv2d's ``reset_parameters`` (Kaiming-uniform, a = √5), drawn from ``gen``."""
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.Linear | nn.Conv2d):
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=gen)
                if layer.bias is not None:
                    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(layer.weight)
                    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    nn.init.uniform_(layer.bias, -bound, bound, generator=gen)


#: How the weights start: ``model`` (the architecture's own: the reference's tiny first layer) or ``pytorch``
#: (PyTorch's default for every Linear and Conv2d, as a user's model starts), drawn from the seed.
INITS: dict[str, Callable[[nn.Module, torch.Generator], None]] = {"model": _init_model, "pytorch": _init_pytorch}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a victim.

    Args:
        data: which training set (dataset, task, samples per class).
        model: the architecture's own config, of a registered architecture: :class:`~kktrecon.models.MLPConfig`
            (the paper's d-1000-1000-1 with a first-layer bias, N(0,1)·1e-4 first layer) or
            :class:`~kktrecon.models.CNNConfig`. Its ``input_shape`` and ``num_outputs`` are the data's
            to decide (:data:`DATA_DECIDED`): training sets them from the loaded training set.
        lr: step size (reference 0.01).
        weight_decay: L2 penalty coefficient of the optimiser (0: the paper; Buzaglo et al. 2023 find
            that weight decay makes victims leak more).
        steps: step budget (optimiser steps: minibatches, not epochs).
        loss_threshold: stop early once the training loss falls below this.
        schedule: ``constant`` (reference) or ``loss-scaled`` (step ∝ 1/loss, capped at ``max_lr_factor``).
        max_lr_factor: cap of the ``loss-scaled`` schedule's step relative to ``lr``.
        dtype: ``float32`` or ``float64`` (reference).
        seed: initialisation seed.
        eval_every: steps between recorded points of the loss curve.
        checkpoint_every: steps between resumable checkpoints (0: never).
        init: ``model`` (the architecture's own initialisation: the reference) or ``pytorch`` (PyTorch's
            default for every Linear and Conv2d layer, as users' models start; see :data:`INITS`).
        optimizer: ``sgd`` (reference) or ``adam`` (:data:`OPTIMIZERS`).
        momentum: SGD momentum (reference 0).
        batch_size: minibatch size; None: the full batch (reference). Each epoch visits the training set
            in an order drawn from ``seed`` and the epoch's number (so a resumed run draws the same).

    Example:
        >>> TrainConfig(model=MLPConfig(hidden=(40, 40)), steps=1000).model.hidden
        (40, 40)
    """

    data: DataConfig = field(default_factory=lambda: DataConfig(n_per_class=10))
    model: Any = field(default_factory=MLPConfig)
    lr: float = 0.01
    weight_decay: float = 0.0
    steps: int = 100_000
    loss_threshold: float | None = None
    schedule: str = "constant"
    max_lr_factor: float = 1000.0
    dtype: str = "float32"
    seed: int = 0
    eval_every: int = 1000
    checkpoint_every: int = 10_000
    init: str = "model"
    optimizer: str = "sgd"
    momentum: float = 0.0
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if not any(type(self.model) is arch.config for arch in ARCHITECTURES.values()):
            configs = sorted(arch.config.__name__ for arch in ARCHITECTURES.values())
            raise ConfigError(f"Expected `model` to be the config of a registered architecture ({configs}). "
                              f"Got {self.model!r}.")  # fmt: skip
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"Expected `schedule` to be one of {sorted(SCHEDULES)}. Got {self.schedule!r}.")
        for name, table in (("init", INITS), ("optimizer", OPTIMIZERS)):
            if getattr(self, name) not in table:
                raise ConfigError(f"Expected `{name}` to be one of {sorted(table)}. Got {getattr(self, name)!r}.")
        check_number("momentum", self.momentum, low=0, high=1)
        if self.momentum and self.optimizer != "sgd":
            raise ConfigError(f"Expected `momentum` 0 with optimizer {self.optimizer!r} (it is SGD's). "
                              f"Got {self.momentum}.")  # fmt: skip
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, low=1)
        resolve_dtype(self.dtype)
        check_int("steps", self.steps, low=0)
        check_number("lr", self.lr, low=0, low_open=True)
        check_number("weight_decay", self.weight_decay, low=0)
        check_number("max_lr_factor", self.max_lr_factor, low=1)
        check_int("seed", self.seed)
        check_int("eval_every", self.eval_every, low=1)
        check_int("checkpoint_every", self.checkpoint_every, low=0)
        if self.loss_threshold is not None:
            check_number("loss_threshold", self.loss_threshold, low=0, low_open=True)

    def model_config(self, data: Dataset) -> Any:
        """The architecture's config for ``data``: ``model`` with the input shape and output count ``data`` decides."""
        outputs = get_objective(data.objective).num_outputs(data.num_classes)
        return dataclasses.replace(self.model, input_shape=data.input_shape, num_outputs=outputs)


#: The fields of every architecture's config that the training set decides (and training sets).
DATA_DECIDED = ("input_shape", "num_outputs")
# The architecture's fields that TrainConfig carried itself (beside ``model``, then the architecture's
# name) in the flat records of victims trained before ``model`` held the architecture's config.
_FLAT_MODEL_FIELDS = ("hidden", "channels", "kernel_size", "stride", "bias", "init_scale", "hidden_init_scale")

register_nested("TrainConfig", "data", DataConfig)
register_choice(
    "TrainConfig",
    "model",
    key="architecture",
    cls_of=lambda name: get_architecture(name).config,
    name_of=lambda config: architecture_of(config).name,
)


def train_config_from_dict(record: Mapping[str, Any], *, decided: Mapping[str, Any] | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from its saved dict, nested (today's) or flat (victims trained before).

    A flat record names the architecture under ``model`` and carries its fields beside the recipe's;
    it lacks the fields the data decided, which ``decided`` (the built architecture's) may supply.
    Fields of the flat record that the architecture does not take were ignored then and are dropped.
    """
    if isinstance(record, Mapping) and _is_flat(record):
        arch = get_architecture(record.get("model", "mlp"))
        takes = {f.name for f in dataclasses.fields(arch.config)}
        model = {k: v for k, v in record.items() if k in _FLAT_MODEL_FIELDS and k in takes}
        model.update({k: v for k, v in (decided or {}).items() if k in DATA_DECIDED})
        rest = {k: v for k, v in record.items() if k not in _FLAT_MODEL_FIELDS and k != "model"}
        record = {**rest, "model": {"architecture": arch.name, **model}}
    return config_from_dict(TrainConfig, record)


def _is_flat(record: Mapping[str, Any]) -> bool:
    return isinstance(record.get("model"), str) or any(k in record for k in _FLAT_MODEL_FIELDS)


@dataclass
class TrainResult:
    """A trained victim, where it was saved, and what was measured."""

    model: nn.Module
    metrics: dict[str, Any]
    history: list[dict[str, float]]
    run_dir: Path | None


def _loss_and_error(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor, objective: Objective
) -> tuple[torch.Tensor, torch.Tensor]:
    """The objective's training loss (BCE on the logit, cross-entropy for K outputs, MSE) and its error."""
    out = model(x)
    return objective.training_loss(out, targets), objective.errors(out, targets).mean()


def _targets(data: Dataset) -> tuple[torch.Tensor, torch.Tensor, Objective]:
    objective = get_objective(data.objective)
    return objective.targets(data.y_train, data.targets), objective.targets(data.y_test, data.targets), objective


@torch.no_grad()
def evaluate_model(model: nn.Module, data: Dataset) -> dict[str, Any]:
    """Training loss and error, test accuracy (or error), and per-sample outputs and margins yᵢΦ(xᵢ)."""
    y_train, y_test, objective = _targets(data)
    loss, err = _loss_and_error(model, data.x_train, y_train, objective)
    out = model(data.x_train)
    metrics: dict[str, Any] = {"train_loss": float(loss), "train_error": float(err), "test_accuracy": None}
    if len(data.x_test):
        _, test_err = _loss_and_error(model, data.x_test, y_test, objective)
        metrics["test_error"] = float(test_err)
        if objective.classification:  # report accuracy as the paper does
            metrics["test_accuracy"] = 1.0 - float(test_err)
    margins = objective.margins(out, y_train)
    metrics["outputs"] = out[:, 0].tolist() if out.shape[1] == 1 else out.tolist()
    metrics["margins"] = margins.tolist()
    metrics["min_margin"] = float(margins.min())
    return metrics


#: A victim run directory: weights + manifest when finished, the resumable state kept beside them.
VICTIM_RUN = RunKind(manifest=VICTIM_FILE, state=TRAIN_STATE_FILE, outputs=(VICTIM_WEIGHTS_FILE, INITIAL_WEIGHTS_FILE))
# Config fields that may change between a run and its continuation: the budget and how often it saves.
_FREE_ON_RESUME = ("steps", "checkpoint_every")


@dataclass
class _Progress:
    """Where a training run stands: steps done, the loss curve so far, seconds spent."""

    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    elapsed: float = 0.0
    optimizer: Mapping[str, torch.Tensor] = field(default_factory=dict)


_OPTIM = "optimizer."  # prefix of the optimiser's state tensors in a training checkpoint


def _save_state(
    path: Path, model: nn.Module, progress: _Progress, config: TrainConfig, opt: torch.optim.Optimizer | None = None
) -> None:
    meta = {"step": progress.step, "history": progress.history, "elapsed": progress.elapsed}
    tensors = dict(model.state_dict())
    if opt is not None:  # momentum buffers, Adam's moments and step counts: a resumed run continues exactly
        for index, state in opt.state_dict()["state"].items():
            for key, value in state.items():
                tensors[f"{_OPTIM}{index}.{key}"] = torch.as_tensor(value)
    save_state(path, tensors, {**meta, "config": config_to_dict(config)})


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor]) -> None:
    """Put the optimiser state of a :func:`_save_state` checkpoint back into ``opt``."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith(_OPTIM):
            index, _, key = name.removeprefix(_OPTIM).partition(".")
            state.setdefault(int(index), {})[key] = value
    if state:
        record = opt.state_dict()
        opt.load_state_dict({"state": state, "param_groups": record["param_groups"]})


def _resume_view(record: Mapping[str, Any], data: Dataset) -> dict[str, Any]:
    """A recorded recipe as resuming compares it: in today's form (a flat record of an older victim is
    nested first, for ``data``), the architecture's fields as ``model.<name>`` so that a refusal names them."""
    config = train_config_from_dict(record)
    flat = config_to_dict(dataclasses.replace(config, model=config.model_config(data)))
    model = flat.pop("model")
    return {**flat, **{f"model.{k}": v for k, v in model.items()}}


def _check_resumable(recorded: Mapping[str, Any], config: TrainConfig, data: Dataset, where: Path) -> None:
    current = _resume_view(config_to_dict(config), data)
    check_resumable(_resume_view(recorded, data), current, where=where, free=_FREE_ON_RESUME)


def _load_state(path: Path, model: nn.Module, config: TrainConfig, data: Dataset) -> _Progress:
    tensors, meta = load_state(path)
    _check_resumable(meta.get("config", {}), config, data, path.parent)
    weights = sorted(k for k in tensors if not k.startswith(_OPTIM))
    if weights != sorted(model.state_dict()) or not {"step", "history", "elapsed"} <= set(meta):
        raise CheckpointError(f"{path} does not hold this victim's weights; pass --force to start over.")
    if meta["step"] > config.steps:
        raise RunStateError(
            f"Cannot resume {path.parent} at {config.steps} steps: it has already run {meta['step']}. "
            f"Ask for at least {meta['step']} steps, or pass --force to start over."
        )
    with torch.no_grad():
        for k, v in model.state_dict().items():
            v.copy_(tensors[k])
    return _Progress(meta["step"], meta["history"], meta["elapsed"], optimizer=tensors)


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
        force: delete an existing run in ``out`` and start over.
        resume: continue an interrupted run in ``out``; on a finished run, return it when ``steps``
            is unchanged and extend it (bit-identically to an uninterrupted run) when larger.
        progress: show a progress bar.

    Returns:
        :class:`TrainResult` with the model, its metrics (``train_error``, ``test_accuracy``,
        ``train_loss``, margins, outputs) and the loss curve.

    Raises:
        ConfigError: an override that is no field of :class:`TrainConfig` (architecture fields go in ``model``).
        RunDirectoryExistsError: ``out`` holds a run and neither ``force`` nor ``resume`` was given.
        RunStateError: resuming with another recipe, or with fewer steps than already run.
        TrainingDivergedError: the loss became NaN or Inf.
    """
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise ConfigError(f"Expected overrides among TrainConfig's fields (the architecture's go in `model`, "
                          f"e.g. model=MLPConfig(hidden=(100,))). Got {unknown}.")  # fmt: skip
    config = dataclasses.replace(config or TrainConfig(), **overrides)
    dev = resolve_device(device)
    dtype = resolve_dtype(config.dtype)
    if data is None:
        data = load_dataset(config.data, data_root=data_root, dtype=dtype, device=dev)
    elif data.config != config.data:
        raise ConfigError(f"Expected `data` loaded with {config.data}. Got {data.config}.")
    data = _on(data, dev, dtype)
    config = dataclasses.replace(config, model=config.model_config(data))  # recorded as built
    model = build_model(config.model, seed=config.seed, device=dev, dtype=dtype)
    INITS[config.init](model, torch.Generator(device=dev).manual_seed(config.seed))
    run = open_run(out, VICTIM_RUN, force=force, resume=resume) if out is not None else None
    state = _Progress()
    if run is not None and run.status == "finished":
        finished = _finished_result(run, config, data, dev)
        if finished is not None:
            return finished
    if run is not None and run.status == "new":
        save_initial_state(run.path, model)
    if run is not None and run.status != "new":
        state = _load_state(run.state, model, config, data)
    _fit(model, data, config, state, run.state if run is not None else None, progress=progress)
    metrics = evaluate_model(model, data)
    if not math.isfinite(metrics["train_loss"]):
        raise TrainingDivergedError(
            f"Training loss became {metrics['train_loss']} by step {state.step}; lower the step size."
        )
    metrics.update({"steps": state.step, "time_s": state.elapsed, "n_train": len(data.x_train)})
    history = [
        *state.history,
        {"step": state.step, "loss": metrics["train_loss"], "train_error": metrics["train_error"]},
    ]
    if run is not None:
        save_checkpoint(run.path, model, _manifest(config, data, dev, metrics, history))
    return TrainResult(model, metrics, history, run.path if run is not None else None)


def _finished_result(run: Run, config: TrainConfig, data: Dataset, device: torch.device) -> TrainResult | None:
    """The finished run in ``run`` when it ran exactly ``config``; None when it is to be extended."""
    model, manifest = load_checkpoint(run.path, device=device, dtype=resolve_dtype(config.dtype))
    recorded = manifest.get("training", {})
    _check_resumable(recorded, config, data, run.path)
    if same_length(run, done=int(recorded.get("steps", -1)), requested=config.steps, unit="steps"):
        return TrainResult(model, manifest["metrics"], manifest.get("history", []), run.path)
    return None


def _fit(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    state: _Progress,
    checkpoint: Path | None,
    *,
    progress: bool,
) -> None:
    """Gradient descent (full batch or minibatches) from ``state`` to ``config.steps`` (or the loss threshold)."""
    opt = OPTIMIZERS[config.optimizer](model.parameters(), config)
    _restore_optimizer(opt, state.optimizer)
    y_train, y_test, objective = _targets(data)
    schedule = SCHEDULES[config.schedule]
    initial_loss: float | None = state.history[0]["loss"] if state.history else None
    start = time.perf_counter() - state.elapsed
    loss_value = float("nan")
    needs_loss = config.schedule != "constant" or config.loss_threshold is not None
    n = len(data.x_train)
    batch = n if config.batch_size is None else min(config.batch_size, n)
    threads = ThreadChoice(lambda: _probe_step(model, data, y_train, objective), data.x_train.device)
    with threads, progress_bar("train", total=config.steps, enabled=progress, completed=state.step) as bar:
        while state.step < config.steps:
            rows = _minibatch(config, state.step, n, batch, data.x_train.device)
            full = rows is None
            # Reading the loss synchronises a GPU: only where the schedule, the threshold or the log needs it.
            logging = state.step % config.eval_every == 0
            if full:
                loss, err = _loss_and_error(model, data.x_train, y_train, objective)
            elif logging or needs_loss:
                loss, err = _full_loss(model, data)
            if logging or needs_loss:
                loss_value = float(loss.detach())
                if initial_loss is None:
                    initial_loss = loss_value
                if not math.isfinite(loss_value):
                    raise TrainingDivergedError(
                        f"Training loss became {loss_value} at step {state.step}; lower the step size."
                    )
            if logging:
                test = (data.x_test, y_test, objective)
                state.history.append(_log_point(model, test, state.step, loss_value, float(err)))
                bar.update(postfix=_postfix(state.history[-1]))
            if config.loss_threshold is not None and loss_value < config.loss_threshold:
                break
            if needs_loss:
                for group in opt.param_groups:
                    group["lr"] = schedule(config.lr, loss_value, initial_loss, config.max_lr_factor)
            if not full:  # the step's own loss, on its minibatch
                loss = objective.training_loss(model(data.x_train[rows]), y_train[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state.step += 1
            bar.advance(1)
            threads.tick()
            if checkpoint is not None and config.checkpoint_every and state.step % config.checkpoint_every == 0:
                state.elapsed = time.perf_counter() - start
                _save_state(checkpoint, model, state, config, opt)
    state.elapsed = time.perf_counter() - start
    if checkpoint is not None:  # kept after the end, so that the run can be extended
        _save_state(checkpoint, model, state, config, opt)


def _probe_step(model: nn.Module, data: Dataset, y_train: torch.Tensor, objective: Objective) -> None:
    """A full-batch forward and backward that leaves the model as it was (for timing thread counts)."""
    _loss_and_error(model, data.x_train, y_train, objective)[0].backward()
    model.zero_grad(set_to_none=True)


def _full_loss(model: nn.Module, data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole training set's loss and error, without a graph (what a minibatch run stops and logs on)."""
    y_train, _, objective = _targets(data)
    with torch.no_grad():
        return _loss_and_error(model, data.x_train, y_train, objective)


def _minibatch(config: TrainConfig, step: int, n: int, batch: int, device: torch.device) -> torch.Tensor | None:
    """The rows of step ``step``'s minibatch (None: the full batch). Each epoch's order is drawn from the seed and
    the epoch's number alone, so that a resumed run draws what an uninterrupted one would."""
    if batch >= n:
        return None
    per_epoch = math.ceil(n / batch)
    epoch, k = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 1_000_003 + epoch))
    return order[k * batch : (k + 1) * batch].to(device)


def _log_point(
    model: nn.Module, test: tuple[torch.Tensor, torch.Tensor, Objective], step: int, loss: float, err: float
) -> dict[str, float]:
    point = {"step": step, "loss": loss, "train_error": err}
    x_test, y_test, objective = test
    if len(x_test):
        with torch.no_grad():
            _, test_err = _loss_and_error(model, x_test, y_test, objective)
        key, value = (
            ("test_error", float(test_err))
            if objective.signed_multipliers
            else ("test_accuracy", 1.0 - float(test_err))
        )
        point[key] = value
    return point


def _manifest(
    config: TrainConfig,
    data: Dataset,
    device: torch.device,
    metrics: dict[str, Any],
    history: list[dict[str, float]],
) -> dict[str, Any]:
    return {
        "format": "kktrecon.victim/1",
        "objective": data.objective,
        "training": config_to_dict(config),
        "data": config_to_dict(config.data),
        "data_root": data.data_root,
        "train_indices": data.train_indices.tolist(),
        "train_mean": data.mean.reshape(-1).tolist(),
        "seed": config.seed,
        "device": str(device),
        "versions": package_versions(),
        "metrics": metrics,
        "history": history,
    }


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
    if "test_error" in point:
        text += f" · test err {point['test_error']:.3g}"
    return text


def load_train_config(manifest: Mapping[str, Any]) -> TrainConfig:
    """The recipe recorded in a victim's ``model.json``, also in the flat form of victims trained before.

    Raises:
        ConfigError: the record is not a recipe (unknown keys, an unknown architecture, bad values).
    """
    built = manifest.get("model")
    return train_config_from_dict(manifest["training"], decided=built if isinstance(built, Mapping) else None)
