"""A privacy audit of a user's own model: which of its training images can be read back from its weights?

The user brings a model trained in their own code (a state dict or safetensors file and a JSON
description of its ``nn.Sequential``, or the ``nn.Module`` itself) and the images it was trained on
(an image folder or an ``.npz``), ideally with held-out images of the same task. The audit checks
everything before writing anything, then runs the oracle-free sweep of the attack within a wall-time
budget (:mod:`kktrecon.sweeps`), pools its best candidates and only then compares them with the
training images: the verdict (recovered: nearer to that image than to any other training or held-out
image, aligned SSIM > 0.4), the attacker's own ranking, recovery against the model's margin, the
model's validity findings (homogeneity, closeness to a KKT point) and what raises or lowers the risk.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
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
from kktrecon.errors import ConfigError, RunStateError, UnsupportedModelError
from kktrecon.evaluation import evaluate_candidates
from kktrecon.files import POOL_DIR, atomic_write_json, package_versions, read_json
from kktrecon.models.validation import findings
from kktrecon.pipelines import write_evaluation
from kktrecon.reporting.html import write_audit_report
from kktrecon.runs import Run, RunKind, check_resumable, open_run
from kktrecon.sweeps import SweepConfig, sweep

__all__ = ["AuditConfig", "AuditResult", "audit"]

AUDIT_FILE = "audit.json"
AUDIT_REPORT = "audit.html"
MEANS = ("train", "none")
#: An audit directory: its record when it starts, its report when it ends, its sweep and evaluation.
AUDIT_RUN = RunKind(manifest=AUDIT_REPORT, state=AUDIT_FILE, dirs=("sweep", "evaluation"), what="audit")


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
    """

    budget_s: float = 900.0
    mean: str = "train"
    iterations: int | None = None
    trials: int | None = None
    batch: int = 8
    top: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        check_number("budget_s", self.budget_s, low=0, low_open=True)
        if self.mean not in MEANS:
            raise ConfigError(f"Expected `mean` to be one of {list(MEANS)}. Got {self.mean!r}.")
        if self.iterations is not None:
            check_int("iterations", self.iterations, low=1)
        if self.trials is not None:
            check_int("trials", self.trials, low=1)
        check_int("batch", self.batch, low=1)
        check_int("top", self.top, low=1)


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

    @property
    def mean(self) -> np.ndarray:
        assert self.victim.preprocessing.mean is not None
        return self.victim.preprocessing.mean.numpy()


def audit(
    model: nn.Module | None = None,
    *,
    weights: str | Path | None = None,
    arch: str | Path | None = None,
    train: str | Path,
    held_out: str | Path | None = None,
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
        arch: a JSON file describing the ``nn.Sequential`` the state dict's keys belong to.
        train: the training images: a folder (``DIR/<class>/<image>.png``) or an ``.npz`` (``x``, ``y``).
            One model output means two classes (output > 0: the second in sorted folder order);
            K outputs mean K classes.
        held_out: images of the same task the model never saw, in the same form; without them a
            recovered image cannot be told from a look-alike (the report says so).
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
    inputs = _check_inputs(copy.deepcopy(model) if model is not None else None, weights, arch, train, held_out, config)
    _check_out(Path(out), [Path(p) for p in (weights, arch, train, held_out) if p is not None])
    dev = resolve_device(device)
    run = _open(Path(out), inputs, config, resume=resume, force=force)  # locked until the audit returns
    out = run.path
    x_train = torch.as_tensor(inputs.train.x - inputs.mean)
    y_train = torch.as_tensor(inputs.train.y)
    model = inputs.victim.model.to(torch.float64).eval()
    diagnosis = _diagnose(model, x_train, y_train, inputs.objective)
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
    metrics, files = _evaluate(out, inputs, model, x_train, y_train)
    metrics.update(
        trials=sum(r["state"] == "COMPLETE" for r in swept.rows),
        iterations_per_trial=iterations,
        budget_short_by_s=max(0.0, shortest - remaining),
        sweep_seconds=swept.seconds,
        diagnosis=diagnosis,
        findings=[str(f) for f in inputs.findings],
        held_out_given=inputs.held_out is not None,
    )
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


def _check_inputs(
    model: nn.Module | None,
    weights: str | Path | None,
    arch: str | Path | None,
    train: str | Path,
    held_out: str | Path | None,
    config: AuditConfig,
) -> _Inputs:
    """Everything the audit needs, checked; raises before anything is written."""
    if model is None:
        if weights is None or arch is None:
            raise ConfigError("Expected a model, or both --weights and --arch. Got neither.")
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
    mean = images.x.mean(axis=0) if config.mean == "train" else np.zeros(images.x.shape[1:])
    victim = dataclasses.replace(victim, preprocessing=Preprocessing(torch.as_tensor(mean)))
    return _Inputs(victim, victim.objective().name, images, held, findings(model))


def _open(out: Path, inputs: _Inputs, config: AuditConfig, *, resume: bool, force: bool) -> Run:
    """Create or reopen an audit directory (the shared lifecycle); ``force`` removes only the audit's own files."""
    record = {
        "format": "kktrecon.audit/1",
        "fingerprint": inputs.victim.fingerprint,
        "train_files": list(inputs.train.files),
        "config": config_to_dict(config),
        "versions": package_versions(),
    }
    run = open_run(out, AUDIT_RUN, force=force, resume=resume)
    if run.status != "new":
        saved = read_json(run.path / AUDIT_FILE)
        if (saved.get("fingerprint"), saved.get("train_files")) != (record["fingerprint"], record["train_files"]):
            raise RunStateError(f"Cannot resume {out}: it audits another model or other training images; --force.")
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
    out: Path, inputs: _Inputs, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor
) -> tuple[dict[str, Any], dict[str, Path]]:
    """The verdict on the pooled candidates, with the training and held-out images in memory."""
    pooled = CandidateSet.load(out / "sweep" / POOL_DIR).to(dtype=torch.float64)
    held = torch.as_tensor(inputs.held_out.x - inputs.mean) if inputs.held_out is not None else None
    downsample = inputs.victim.downsample
    result = evaluate_candidates(
        pooled.x,
        x_train,
        y_train,
        torch.as_tensor(inputs.mean),
        model=model,
        lam=pooled.lam,
        candidate_labels=pooled.y,
        class_names=inputs.train.class_names,
        downsample=downsample,
        held_out=held,
        held_out_source=f"{len(held)} images given with --held-out" if held is not None else "none given",
        objective=inputs.objective,
    )
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
    return metrics, files
