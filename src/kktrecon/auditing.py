"""A privacy audit of a user's own model: which of its training images can be read back from its weights?

The user brings a model trained in their own code (a state dict or safetensors file and a JSON
description of its ``nn.Sequential``, or the ``nn.Module`` itself) and the images it was trained on
(an image folder or an ``.npz``), ideally with held-out images of the same task. The audit checks
everything before writing anything, then runs the oracle-free sweep of the attack within a wall-time
budget (:mod:`kktrecon.sweeps`), pools its best candidates and only then compares them with the
training images: the verdict (recovered: nearer to that image than to any other training or held-out
image, aligned SSIM > 0.4), the attacker's own ranking, recovery against the model's margin, the
model's validity findings (homogeneity, closeness to a KKT point) and what raises or lowers the risk.

Its owner knows more than the weights (METHOD §6): with the initial weights (``init_weights``) the audit
also runs the owner's families (:mod:`kktrecon.attack.unmixing` on a dense first layer; behind convolutions,
:mod:`kktrecon.attack.delta` on the dense layer they feed, else the simulation), pools every
family's candidates under the one verdict, says per family what ran, what it recovered and what could not
run (and which input would let it), and adds membership evidence: each image's residual outside the first
layer's change, as an ROC over training and held-out images. The recipe (``recipe``: optimiser, lr,
momentum, weight decay, batch size, steps, loss) and the preprocessing as torchvision declares it
(``normalize``: per-channel mean and std, inverted for display and matching) are inputs too, and the
architecture may be the user's own factory (``arch="package.module:make_model"``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import json
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from kktrecon.attack.config import ReconstructionConfig
from kktrecon.attack.kkt import diagnose_model
from kktrecon.attack.objectives import get_objective
from kktrecon.attack.victim import Preprocessing, Victim
from kktrecon.candidates import CandidateSet
from kktrecon.checks import check_int, check_number
from kktrecon.configs import config_to_dict
from kktrecon.data.folder import Images, load_images
from kktrecon.devices import resolve_device
from kktrecon.errors import CheckpointError, ConfigError, RunStateError, UnsupportedModelError
from kktrecon.evaluation import evaluate_candidates, membership_metrics
from kktrecon.evaluation.verdict import control_metrics
from kktrecon.files import POOL_DIR, atomic_write_json, package_versions, read_json
from kktrecon.models.checkpoints import check_state_dict
from kktrecon.models.spec import fit_weights, load_weights
from kktrecon.models.validation import findings
from kktrecon.pipelines import write_evaluation
from kktrecon.reporting.html import write_audit_report
from kktrecon.runs import Run, RunKind, check_resumable, open_run
from kktrecon.sweeps import SweepConfig, sweep

__all__ = ["RECIPE_FIELDS", "AuditConfig", "AuditResult", "audit", "load_factory", "load_recipe"]

AUDIT_FILE = "audit.json"
AUDIT_REPORT = "audit.html"
MEANS = ("train", "none")
#: An audit directory: its record when it starts, its report when it ends, its sweep and evaluation.
AUDIT_RUN = RunKind(
    manifest=AUDIT_REPORT, state=AUDIT_FILE, dirs=("sweep", "evaluation", "unmix", "delta", "simulate"), what="audit"
)
#: The fields a recipe file may hold (anything else is refused): how the model was trained.
RECIPE_FIELDS = {
    "optimizer": "sgd or adam",
    "lr": "step size",
    "momentum": "SGD momentum",
    "weight_decay": "L2 weight decay",
    "batch_size": "minibatch size (null: full batch)",
    "steps": "optimiser steps taken",
    "epochs": "epochs taken",
    "loss": "the loss, e.g. bce, cross-entropy",
    "loss_threshold": "the loss training stopped below",
    "schedule": "constant (or the scheduler's name)",
    "seed": "the initialisation seed",
}


@dataclass(frozen=True)
class AuditConfig:
    """How the audit attacks.

    Args:
        budget_s: wall-time budget of the sweep (the checks and the evaluation come on top, briefly).
        mean: the preprocessing the model was trained with after scaling pixels to [0, 1]:
            ``train`` subtracts the per-pixel mean of the training images (the reference recipe),
            ``none`` nothing.
        iterations: attack iterations per trial; None: 2,000, fewer when the budget is short.
        trials: at most this many trials; None: batches until the budget is spent. With both
            ``trials`` and ``iterations`` set (and budget to spare) the audit does not depend on the
            machine's speed.
        batch: trials that advance together.
        top: how many of the best trials are pooled.
        seed: seed of the sweep.
        normalize: the torchvision ``Normalize(mean, std)`` the model's inputs went through after scaling pixels
            to [0, 1], per channel: (mean₁, …, mean_C, std₁, …, std_C); None: ``mean`` decides. Inverted for
            display and matching.
        rank: the first layer's rank for the unmixing; None reads it from the singular values (Adam: 2n).
        simulate_iterations: iterations of the simulation family (:mod:`kktrecon.attack.simulation`), run
            with θ₀ and an SGD recipe where no dense layer of two outputs or more follows the convolutions; its
            time comes out of the budget.
    """

    budget_s: float = 900.0
    mean: str = "train"
    iterations: int | None = None
    trials: int | None = None
    batch: int = 8
    top: int = 4
    seed: int = 0
    normalize: tuple[float, ...] | None = None
    rank: int | None = None
    simulate_iterations: int = 300

    def __post_init__(self) -> None:
        check_number("budget_s", self.budget_s, low=0, low_open=True)
        check_int("simulate_iterations", self.simulate_iterations, low=1)
        if self.mean not in MEANS:
            raise ConfigError(f"Expected `mean` to be one of {list(MEANS)}. Got {self.mean!r}.")
        if self.iterations is not None:
            check_int("iterations", self.iterations, low=1)
        if self.trials is not None:
            check_int("trials", self.trials, low=1)
        check_int("batch", self.batch, low=1)
        check_int("top", self.top, low=1)
        if self.normalize is not None:
            values = tuple(self.normalize)
            if len(values) < 2 or len(values) % 2 or not all(isinstance(v, int | float) for v in values):
                raise ConfigError(f"Expected `normalize` as MEAN,…,STD,… (two numbers per channel). Got {values}.")
            if any(v <= 0 for v in values[len(values) // 2 :]):
                raise ConfigError(f"Expected positive standard deviations in `normalize`. Got {values}.")
        if self.rank is not None:
            check_int("rank", self.rank, low=1)


@dataclass
class AuditResult:
    """What the audit found: the headline numbers, which training files were recovered, where the report is."""

    out: Path
    report: Path
    metrics: dict[str, Any]
    recovered: list[str]
    seconds: float


@dataclass(frozen=True)
class _Inputs:
    victim: Victim
    objective: str
    train: Images
    held_out: Images | None
    findings: list[Any]
    row_space: Any = None  # the unmixing's row space when θ₀ was given and fits (checked up front)
    unmix_note: str | None = None  # why the unmixing cannot run, when it cannot

    @property
    def mean(self) -> np.ndarray:
        """The per-pixel image added back for display and matching (the verdict's space is pixels − mean)."""
        pre = self.victim.preprocessing
        shape = self.victim.input_shape
        return np.zeros(shape) if pre.mean is None else pre.mean.expand(shape).numpy()

    def inputs(self, pixels: np.ndarray) -> torch.Tensor:
        """Images in [0, 1] as the model sees them."""
        return self.victim.preprocessing.to_inputs(torch.as_tensor(pixels, dtype=torch.float64))

    def verdict_space(self, inputs: torch.Tensor) -> torch.Tensor:
        """The model's inputs as the verdict reads them: pixels − :attr:`mean`."""
        pixels = self.victim.preprocessing.to_pixels(inputs.to(torch.float64))
        return pixels - torch.as_tensor(self.mean, dtype=torch.float64)


def audit(
    model: nn.Module | None = None,
    *,
    weights: str | Path | None = None,
    arch: str | Path | None = None,
    train: str | Path,
    held_out: str | Path | None = None,
    init_weights: str | Path | Mapping[str, torch.Tensor] | None = None,
    recipe: str | Path | Mapping[str, Any] | None = None,
    out: str | Path = "kktrecon-audit",
    config: AuditConfig | None = None,
    device: str | torch.device = "auto",
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> AuditResult:
    """Audit a model: which of its training images can be read back from its weights?

    Args:
        model: the model itself (any homogeneous ``nn.Module`` of Linear, Conv2d, ReLU, Flatten,
            pooling); or give ``weights`` and ``arch``.
        weights: a safetensors file, or a PyTorch state dict (read with ``torch.load(weights_only=True)``).
        arch: a JSON file describing the ``nn.Sequential`` the state dict's keys belong to, or the user's own
            factory ``package.module:make_model`` (called without arguments; it must return an ``nn.Module``).
        train: the training images: a folder (``DIR/<class>/<image>.png``) or an ``.npz`` (``x``, ``y``).
            One model output means two classes (output > 0: the second in sorted folder order);
            K outputs mean K classes.
        held_out: images of the same task the model never saw, in the same form; without them a
            recovered image cannot be told from a look-alike (the report says so).
        init_weights: the model's weights before training (a file read as safely as ``weights``, or a state
            dict): enables the owner's families and the membership evidence.
        recipe: how it was trained (a JSON file or a dict of :data:`RECIPE_FIELDS`; unknown fields refused).
        out: the audit's directory.
        config: budget and preprocessing; keyword ``overrides`` replace its fields.
        device: where the attack runs.
        resume: continue an interrupted audit in ``out``.
        force: delete an earlier audit in ``out`` first.
        progress: show progress.

    Raises:
        ConfigError, DataError, CheckpointError, UnsupportedModelError: bad input, before anything
            is written (the message names the file, the tensor or the layer).
    """
    config = dataclasses.replace(config or AuditConfig(), **overrides)
    start = time.perf_counter()
    given = copy.deepcopy(model) if model is not None else None
    inputs = _check_inputs(given, weights, arch, train, held_out, config, init_weights, recipe)
    paths = [Path(p) for p in (weights, train, held_out, init_weights, recipe) if isinstance(p, str | Path)]
    if arch is not None and not _is_factory(arch):
        paths.append(Path(arch))
    _check_out(Path(out), paths)
    dev = resolve_device(device)
    run = _open(Path(out), inputs, config, resume=resume, force=force)  # locked until the audit returns
    out = run.path
    x_train = inputs.inputs(inputs.train.x)
    y_train = torch.as_tensor(inputs.train.y)
    model = inputs.victim.model.to(torch.float64).eval()
    diagnosis = _diagnose(model, x_train, y_train, inputs.objective)
    owner = _run_owner_families(out, inputs, config, resume=resume, progress=progress)
    n = len(y_train)
    attack = ReconstructionConfig(objective=inputs.objective, candidates=2 * n)
    remaining = config.budget_s - (time.perf_counter() - start)
    per_iteration = _batch_iteration_seconds(model, inputs, 2 * n, config.batch, dev)
    iterations = config.iterations or _iterations(per_iteration, remaining)
    shortest = per_iteration * iterations * 2  # one round of trials, then the best one's extension (charged half)
    if progress:
        Console(stderr=True).print(
            f"audit: {n} training images, {2 * n} candidates per trial, {iterations} iterations per trial, "
            f"batches of {config.batch} until the budget ({remaining / 60:.1f} min left) is spent",
            highlight=False,
        )
    if shortest > remaining:  # said up front: the sweep always finishes its first round
        Console(stderr=True, markup=False).print(
            f"warning: the budget cannot hold one round of {config.batch} trials on {n} images; the sweep alone "
            f"will take about {shortest / 60:.1f} min. Raise --budget, or lower --batch or --iterations.",
            highlight=False,
        )
    # The best trial is extended to three times its length (the budget check charges it up front).
    sweep_config = SweepConfig(
        trials=config.trials or 10_000, iterations=iterations, batch=config.batch, seed=config.seed, attack=attack,
        extend=2 * iterations,
    )  # fmt: skip
    swept = sweep(
        model,
        out / "sweep",
        sweep_config,
        input_shape=inputs.victim.input_shape,
        budget_s=max(remaining, 1.0),
        pool_top=config.top,
        device=dev,
        resume=resume and (out / "sweep").exists(),
        progress=progress,
    )
    kkt = CandidateSet.load(out / "sweep" / POOL_DIR).to(dtype=torch.float64)
    pools = {"kkt": kkt, **owner}
    metrics, files = _evaluate(out, inputs, model, x_train, y_train, pools)
    metrics.update(
        trials=sum(r["state"] == "COMPLETE" for r in swept.rows),
        iterations_per_trial=iterations,
        budget_short_by_s=max(0.0, shortest - remaining),
        sweep_seconds=swept.seconds,
        diagnosis=diagnosis,
        findings=[str(f) for f in inputs.findings],
        held_out_given=inputs.held_out is not None,
        initial_weights_given=inputs.victim.initial_state is not None,
        families=_families(inputs, pools, metrics.pop("_per_family")),
    )
    membership = _membership(inputs)
    if membership is not None:
        metrics["membership"] = membership
    recovered = [inputs.train.files[i] for i, hit in enumerate(metrics.pop("_recovered")) if hit]
    metrics["recovered_files"] = recovered
    report = write_audit_report(out, metrics, files)
    seconds = time.perf_counter() - start
    atomic_write_json(out / AUDIT_FILE, {**read_json(out / AUDIT_FILE), "metrics": metrics, "seconds": seconds})
    return AuditResult(out=out, report=report, metrics=metrics, recovered=recovered, seconds=seconds)


def _check_out(out: Path, inputs: list[Path]) -> None:
    """Refuse an output folder inside an input folder (its figures would be read as images next time), or
    an input inside a folder the audit owns (``--force`` removes those).

    Raises:
        ConfigError: naming the output folder and the input.
    """
    where = out.resolve()
    for given in inputs:
        path = given.resolve()
        if path.is_dir() and where.is_relative_to(path):
            raise ConfigError(f"Expected --out outside the image folder {given}. Got {out}, inside it.")
        owned = [where / name for name in (AUDIT_RUN.manifest, AUDIT_RUN.state, *AUDIT_RUN.dirs)]
        if any(path.is_relative_to(o) for o in owned):
            raise ConfigError(f"Expected {given} outside what the audit writes in {out} ({list(AUDIT_RUN.dirs)}).")


def _is_factory(arch: str | Path) -> bool:
    """``package.module:function`` rather than a JSON file."""
    text = str(arch)
    return ":" in text and not text.endswith(".json") and not Path(text).exists()


def load_factory(spec: str) -> nn.Module:
    """The model the user's factory ``package.module:function`` returns (the current directory importable).

    Raises:
        ConfigError: the module cannot be imported, has no such function, the call fails, or it returns no
            ``nn.Module``.
    """
    module_name, _, function = spec.partition(":")
    if not module_name or not function.isidentifier():
        raise ConfigError(f"Expected --arch as a JSON file or package.module:function. Got {spec!r}.")
    sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # the user's code: any failure to import is theirs to fix, in one line
        raise ConfigError(f"Could not import {module_name!r} for --arch {spec}: {type(err).__name__}: {err}") from None
    finally:
        sys.path.remove(str(Path.cwd()))
    factory = getattr(module, function, None)
    if not callable(factory):
        raise ConfigError(f"Expected {module_name}.{function} to be a function returning an nn.Module. Got none.")
    try:
        model = factory()
    except Exception as err:
        raise ConfigError(f"--arch {spec} raised {type(err).__name__}: {err}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"Expected --arch {spec} to return an nn.Module. Got {type(model).__name__}.")
    return model


def load_recipe(recipe: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A training recipe from a JSON file or a dict, its fields among :data:`RECIPE_FIELDS`.

    Raises:
        ConfigError: unreadable JSON, not an object, an unknown field, or a number that is not one.
    """
    if isinstance(recipe, Mapping):
        record = dict(recipe)
    else:
        try:
            record = json.loads(Path(recipe).read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"Could not read the recipe {recipe}: {err}") from None
    if not isinstance(record, dict):
        raise ConfigError(f"Expected the recipe to be a JSON object. Got {type(record).__name__}.")
    unknown = sorted(set(record) - set(RECIPE_FIELDS))
    if unknown:
        raise ConfigError(f"Expected recipe fields among {sorted(RECIPE_FIELDS)}. Got unknown {unknown}.")
    for name in ("lr", "momentum", "weight_decay", "steps", "epochs", "loss_threshold"):
        value = record.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
            raise ConfigError(f"Expected the recipe's `{name}` to be a non-negative number. Got {value!r}.")
    if record.get("optimizer", "sgd") not in ("sgd", "adam"):
        raise ConfigError(f"Expected the recipe's `optimizer` to be sgd or adam. Got {record['optimizer']!r}.")
    return record


def _initial_state(init: str | Path | Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The initial weights, read as safely as the weights, checked against the model's names and shapes."""
    where = str(init) if isinstance(init, str | Path) else "the initial weights"
    tensors = load_weights(init) if isinstance(init, str | Path) else dict(init)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}
    check_state_dict(expected, got, where=where, against="the model's weights")
    bad = sorted(k for k, v in tensors.items() if not torch.isfinite(v).all())
    if bad:
        raise CheckpointError(f"{where} holds NaN or Inf values in {bad}.")
    return {k: v.detach().to(torch.float64) for k, v in tensors.items()}


def _check_inputs(
    model: nn.Module | None,
    weights: str | Path | None,
    arch: str | Path | None,
    train: str | Path,
    held_out: str | Path | None,
    config: AuditConfig,
    init_weights: str | Path | Mapping[str, torch.Tensor] | None = None,
    recipe: str | Path | Mapping[str, Any] | None = None,
) -> _Inputs:
    """Everything the audit needs, checked; raises before anything is written."""
    recorded = load_recipe(recipe) if recipe is not None else None
    if model is None:
        if weights is None or arch is None:
            raise ConfigError("Expected a model, or both --weights and --arch. Got neither.")
        if _is_factory(arch):
            built = load_factory(str(arch))
            fit_weights(built, load_weights(weights), where=str(weights))
            shape = getattr(built, "input_shape", None) or getattr(getattr(built, "config", None), "input_shape", None)
            if shape is None:  # the images decide: the first layer's inputs must fit them (checked below)
                shape = load_images(train).x.shape[1:]
            victim = Victim.from_module(built.eval(), tuple(shape))
        else:
            victim = Victim.from_spec(weights, arch)
    elif getattr(getattr(model, "config", None), "input_shape", None) is None:
        raise ConfigError("Expected the model to carry `config.input_shape`; pass arch= (a JSON spec) instead.")
    else:
        victim = Victim.from_module(model.eval())
    model, shape = victim.model, victim.input_shape
    fatal = [f for f in findings(model) if f.fatal]
    if fatal:
        raise UnsupportedModelError("The attack cannot handle this model: " + "; ".join(str(f) for f in fatal))
    images = load_images(train, shape=tuple(shape))
    held = load_images(held_out, shape=tuple(shape), class_names=images.class_names) if held_out else None
    k = victim.num_outputs
    classes = len(images.class_names)
    if (k == 1 and classes != 2) or (k > 1 and k != classes):
        raise ConfigError(
            f"Expected a model with one output for two classes, or one output per class. The model has {k} outputs "
            f"and {train} has {classes} classes ({list(images.class_names)})."
        )
    victim = dataclasses.replace(victim, preprocessing=_preprocessing(config, images, shape), n_train=len(images.y))
    if init_weights is not None:
        initial = _initial_state(init_weights, model)
        victim = dataclasses.replace(victim, initial_state=initial, recipe=recorded)
    elif recorded is not None:
        victim = dataclasses.replace(victim, recipe=recorded)
    space, note = _owner_row_space(victim, config)
    return _Inputs(victim, victim.objective().name, images, held, findings(model), space, note)


def _preprocessing(config: AuditConfig, images: Images, shape: tuple[int, ...]) -> Preprocessing:
    """What the model's inputs are, from pixels in [0, 1]: Normalize(mean, std) per channel, the training mean, or 0."""
    if config.normalize is not None:
        values = torch.as_tensor(config.normalize, dtype=torch.float64)
        channels = len(values) // 2
        if len(shape) != 3 or channels != shape[0]:
            raise ConfigError(
                f"Expected --normalize with one mean and one std per channel ({shape[0] if len(shape) == 3 else '?'} "
                f"channels: {2 * shape[0] if len(shape) == 3 else '?'} numbers). Got {len(values)} numbers."
            )
        return Preprocessing(values[:channels].view(-1, 1, 1), values[channels:].view(-1, 1, 1))
    mean = images.x.mean(axis=0) if config.mean == "train" else np.zeros(images.x.shape[1:])
    return Preprocessing(torch.as_tensor(mean))


def _owner_row_space(victim: Victim, config: AuditConfig) -> tuple[Any, str | None]:
    """The first layer's row space when θ₀ is given and the first layer is dense; else why the unmixing cannot run.

    Raises:
        NoTrainingSignalError: θ₀ equals the final weights, or (for SGD) the change shows no rank drop.
    """
    from kktrecon.attack.unmixing import UnmixConfig, first_dense_layer, row_space

    if victim.initial_state is None:
        return None, "needs the initial weights (--init-weights): the first layer's change spans the training images"
    try:
        first_dense_layer(victim.model)
    except UnsupportedModelError as err:
        return None, str(err)
    rank = config.rank
    if rank is None and (victim.recipe or {}).get("optimizer") == "adam":
        rank = 2 * (victim.n_train or 1)  # Adam's scaling leaves no clean drop (measured: 2n unmixes best)
    return row_space(victim, UnmixConfig(rank=rank)), None


def _delta_note(inputs: _Inputs) -> str | None:
    """Why the Δθ family does not run for these inputs (None: it runs)."""
    from kktrecon.attack.delta import dense_layer

    victim = inputs.victim
    if victim.initial_state is None:
        return "needs the initial weights (--init-weights): it reads a dense layer's change from θ₀"
    if inputs.row_space is not None:
        return "the first layer is dense: its change is unmixed exactly (the unmix family)"
    try:
        layer = dense_layer(victim.model)
    except UnsupportedModelError as err:
        return str(err)
    if layer.layer.out_features < 2:
        return "the only dense layer has one output: its change has rank one and carries no single image"
    return None


def _simulation_note(inputs: _Inputs) -> str | None:
    """Why the simulation family does not run for these inputs (None: it runs)."""
    victim = inputs.victim
    if victim.initial_state is None or victim.recipe is None:
        return "needs the initial weights and the recipe (--init-weights, --recipe): it replays training from θ₀"
    if inputs.row_space is not None:
        return "the first layer is dense: its change is unmixed exactly (the unmix family), no simulation needed"
    if _delta_note(inputs) is None:
        return "a dense layer follows the convolutions: its change is read by the delta family, no simulation needed"
    if (victim.recipe or {}).get("optimizer", "sgd") != "sgd":
        return "it replays SGD recipes; this one is Adam"
    if victim.steps_trained is None:
        return "needs the recipe's `steps` or `epochs` (how long it was trained)"
    return None


def _run_owner_families(
    out: Path, inputs: _Inputs, config: AuditConfig, *, resume: bool, progress: bool
) -> dict[str, CandidateSet]:
    """Every owner family the inputs allow, each into its own subdirectory; their candidates by family name."""
    from kktrecon.attack.delta import dense_layer

    victim = inputs.victim
    run = functools.partial(_run_owner_family, out, victim, resume=resume, progress=progress)
    if inputs.row_space is not None:
        space = inputs.row_space
        rank = space.rank if config.rank or (victim.recipe or {}).get("optimizer") == "adam" else None
        note = f"unmixing the first layer's change (rank {space.rank}, drop {space.drop:.3g}, decay {space.decay:.6g})"
        return run("unmix", note, bar=False, rank=rank)
    if _delta_note(inputs) is None:
        name = dense_layer(victim.model).weight.removesuffix(".weight")
        return run("delta", f"explaining the change of the dense layer {name!r} by candidates' features (the first "
                   "layer is not dense)")  # fmt: skip
    if _simulation_note(inputs) is None:
        return run("simulate", f"replaying the recipe from θ₀ on candidates ({config.simulate_iterations} iterations; "
                   "no dense layer follows the first)", iterations=config.simulate_iterations)  # fmt: skip
    return {}


def _run_owner_family(
    out: Path, victim: Victim, name: str, note: str, *, resume: bool, progress: bool, bar: bool = True, **settings: Any
) -> dict[str, CandidateSet]:
    """One owner family into ``out/name`` (resumed where its state is), said first; its candidates by name."""
    from kktrecon.attack import get_attack, run_attack

    if progress:
        Console(stderr=True).print(f"audit: {note}", highlight=False)
    done = resume and (out / name / get_attack(name).kind.state).exists()
    found = run_attack(name, victim, out=out / name, resume=done, progress=progress and bar, device="cpu", **settings)
    return {name: found.to(dtype=torch.float64)}


def _families(
    inputs: _Inputs, pools: dict[str, CandidateSet], recovered: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per family: whether it ran, its candidates, what it recovered alone and its unseen control at as many
    candidates; or why it could not run."""
    rows = []
    why_not = {"unmix": inputs.unmix_note, "delta": _delta_note(inputs), "simulate": _simulation_note(inputs)}
    for name in ("kkt", "unmix", "delta", "simulate"):
        if name in pools:
            row: dict[str, Any] = {"family": name, "ran": True, "candidates": len(pools[name])}
            row.update(recovered.get(name, {}))
            if name == "unmix" and inputs.row_space is not None:
                row.update(inputs.row_space.describe())
            rows.append(row)
        else:
            rows.append({"family": name, "ran": False, "why_not": why_not.get(name)})
    return rows


def _membership(inputs: _Inputs) -> dict[str, Any] | None:
    """Each training and held-out image's residual outside what the owner's family reads as membership evidence:
    the first layer's row space (unmix), or the dense layer's change seen through the features at θ₀ (delta).
    None without held-out images, or where neither family runs."""
    from kktrecon.attack.delta import feature_residual

    if inputs.held_out is None:
        return None
    if inputs.row_space is not None:
        space = inputs.row_space
        train = space.residual(torch.as_tensor(inputs.train.x, dtype=torch.float64))
        held = space.residual(torch.as_tensor(inputs.held_out.x, dtype=torch.float64))
        return membership_metrics(-train, -held, score="minus the relative residual outside the first layer's change")
    if _delta_note(inputs) is None:  # one subspace and one copy of the model for both sets
        n = len(inputs.train.x)
        scores = feature_residual(inputs.victim, inputs.inputs(np.concatenate([inputs.train.x, inputs.held_out.x])))
        train, held = scores[:n], scores[n:]
        return membership_metrics(-train, -held, score="minus the relative residual of the features at θ₀ outside "
                                  "the top-2n subspace of the dense layer's change")  # fmt: skip
    return None


def _state_fingerprint(state: Mapping[str, torch.Tensor] | None) -> str | None:
    """SHA-256 of a state dict as a safetensors file (None for none): which initial weights an audit read."""
    if state is None:
        return None
    import hashlib

    from safetensors.torch import save as st_save

    return hashlib.sha256(st_save({k: v.detach().contiguous().cpu() for k, v in state.items()})).hexdigest()


def _open(out: Path, inputs: _Inputs, config: AuditConfig, *, resume: bool, force: bool) -> Run:
    """Create or reopen an audit directory (the shared lifecycle); ``force`` removes only the audit's own files."""
    record = {
        "format": "kktrecon.audit/1",
        "fingerprint": inputs.victim.fingerprint,
        "train_files": list(inputs.train.files),
        "initial_weights": _state_fingerprint(inputs.victim.initial_state),
        "recipe": inputs.victim.recipe,
        "config": config_to_dict(config),
        "versions": package_versions(),
    }
    run = open_run(out, AUDIT_RUN, force=force, resume=resume)
    if run.status != "new":
        saved = read_json(run.path / AUDIT_FILE)
        keys = ("fingerprint", "train_files", "initial_weights", "recipe")
        if tuple(saved.get(k) for k in keys) != tuple(record[k] for k in keys):
            raise RunStateError(
                f"Cannot resume {out}: it audits another model, other training images, other initial weights or "
                "another recipe; --force."
            )
        check_resumable(saved.get("config", {}), record["config"], where=out, free=("budget_s",))
    atomic_write_json(run.path / AUDIT_FILE, record)
    return run


def _diagnose(model: nn.Module, x: torch.Tensor, y: torch.Tensor, objective: str) -> dict[str, Any]:
    """Does the model fit its training set, and how close is it to a KKT point of the max-margin problem?"""
    obj = get_objective(objective)
    with torch.no_grad():
        out = model(x)
    margins = obj.margins(out, y)
    result = {"train_accuracy": float((margins > 0).double().mean()), "min_margin": float(margins.min())}
    try:
        d = diagnose_model(model, x, y.to(torch.float64), device=torch.device("cpu"), objective=obj)
        result.update(relative_residual=d.relative_residual, n_nonzero=d.n_nonzero, n=d.n)
    except (UnsupportedModelError, RuntimeError) as err:  # too large to materialise per-sample gradients
        result["relative_residual_error"] = str(err)
    return result


def _iterations(per_batch_iteration: float, budget_s: float) -> int:
    """Iterations per trial so that at least two batches of trials fit the budget (at least 100, at most 2,000)."""
    return int(max(100, min(2000, math.floor(0.45 * budget_s / max(per_batch_iteration, 1e-6)))))


def _batch_iteration_seconds(model: nn.Module, inputs: _Inputs, m: int, batch: int, device: torch.device) -> float:
    """Seconds of one iteration of a batch of trials on this victim and machine (a short, warmed-up probe)."""
    from kktrecon.attack.batched import reconstruct_batch

    probe = [
        ReconstructionConfig(objective=inputs.objective, candidates=m, iterations=3, seed=i, checkpoint_every=0)
        for i in range(batch)
    ]
    shape = inputs.victim.input_shape
    reconstruct_batch(model, probe, input_shape=shape, device=device, progress=False)
    t0 = time.perf_counter()
    reconstruct_batch(model, probe, input_shape=shape, device=device, progress=False)
    return (time.perf_counter() - t0) / 3


def _evaluate(
    out: Path,
    inputs: _Inputs,
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    pools: dict[str, CandidateSet],
) -> tuple[dict[str, Any], dict[str, Path]]:
    """The verdict on every family's candidates pooled (and on each family's alone), images in memory.

    The verdict reads pixels − mean (:meth:`_Inputs.verdict_space`), whatever the model's own preprocessing.
    """
    mean = torch.as_tensor(inputs.mean, dtype=torch.float64)
    held = inputs.verdict_space(inputs.inputs(inputs.held_out.x)) if inputs.held_out is not None else None
    train = inputs.verdict_space(x_train)
    with torch.no_grad():
        outputs = model(x_train.to(torch.float64))
    common = {
        "outputs": outputs,
        "class_names": inputs.train.class_names,
        "downsample": inputs.victim.downsample,
        "held_out": held,
        "held_out_source": f"{len(held)} images given with --held-out" if held is not None else "none given",
        "objective": inputs.objective,
    }
    per_family: dict[str, dict[str, Any]] = {}
    if len(pools) > 1:
        for name, pool in pools.items():
            alone = evaluate_candidates(inputs.verdict_space(pool.x), train, y_train, mean, **common)
            per_family[name] = {"n_recovered": int(alone.metrics.get("n_recovered", 0))}
    pooled = CandidateSet.concatenate(list(pools.values())) if len(pools) > 1 else next(iter(pools.values()))
    result = evaluate_candidates(
        inputs.verdict_space(pooled.x), train, y_train, mean, lam=pooled.lam, candidate_labels=pooled.y, **common
    )
    if len(pools) == 1:
        per_family[next(iter(pools))] = {"n_recovered": int(result.metrics.get("n_recovered", 0))}
    if held is not None and len(held) >= 2:
        # The unseen control at each count of candidates judged: pooled, and each family alone (a prefix).
        k = min(len(pooled.x), len(held))
        result.metrics["control"] = control_metrics(
            held[:k], train, held, mean, threshold=result.metrics["ssim_threshold"],
            downsample=inputs.victim.downsample, source=f"the first {k} of the {len(held)} images given with "
            "--held-out", left_out=True, at=[len(pool.x) for pool in pools.values()],
        )  # fmt: skip
        for name, pool in pools.items():
            per_family[name]["control_n_recovered"] = result.metrics["control"]["n_recovered_at"][len(pool.x)]
    result.metrics["attacker"] = {"criterion": "oracle-free ranking of the pooled sweep (see the sweep's pool)"}
    if result.verdict is not None:
        real = result.verdict.candidate_real
        result.metrics["attacker"].update(
            precision_at_10=float(real[:10].float().mean()), precision_at_20=float(real[:20].float().mean())
        )
    for row, name in zip(result.rows, inputs.train.files, strict=True):
        row["file"] = name
    files = write_evaluation(result, out / "evaluation")
    metrics = dict(result.metrics)
    metrics["_recovered"] = result.verdict.recovered.tolist() if result.verdict is not None else [False] * len(x_train)
    metrics["_per_family"] = per_family
    return metrics, files
