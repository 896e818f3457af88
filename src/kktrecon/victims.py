"""A victim run directory with its training data, for the stages that may look at it.

The attack reads weights only (``kktrecon.attack`` never imports the data layer): its victim is the
one :class:`~kktrecon.attack.victim.Victim`. Evaluation and the KKT diagnostic are the stages that may
look at the training set: :func:`load_victim` gives them that same victim and, beside it, the
training set reloaded from the recipe recorded in its ``model.json`` and checked to be the set the
victim saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from kktrecon.attack.capacity import capacity
from kktrecon.attack.kkt import KKTDiagnosis, diagnose_model
from kktrecon.attack.victim import Victim
from kktrecon.configs import config_from_dict
from kktrecon.data import DataConfig, Dataset, load_dataset
from kktrecon.devices import resolve_device
from kktrecon.errors import CheckpointError, ConfigError
from kktrecon.files import VICTIM_FILE

__all__ = ["diagnose", "load_victim"]


def load_victim(
    run_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
) -> tuple[Victim, Dataset]:
    """The victim of a run directory (its model on ``device`` in ``dtype``) and its training set, reloaded.

    Raises:
        CheckpointError: the run directory or its manifest is unusable, or the reloaded training
            set is not the one the victim saw (its per-pixel mean differs from the recorded one).
    """
    run_dir = Path(run_dir)
    victim = Victim.from_run(run_dir, device=resolve_device(device), dtype=dtype)
    if "data" not in victim.manifest:
        raise CheckpointError(f"Expected {run_dir / VICTIM_FILE} to hold the data config under 'data'. Got none.")
    config = config_from_dict(DataConfig, victim.manifest["data"])
    dataset = load_dataset(config, data_root=data_root, dtype=dtype, device=resolve_device(device))
    _check_mean(run_dir, dict(victim.manifest), dataset)
    return victim, dataset


def _check_mean(run_dir: Path, manifest: dict[str, Any], dataset: Dataset) -> None:
    # Guard against scoring a reconstruction against a training set other than the one the victim saw
    # (a different data root or dataset version): the reloaded mean must equal the recorded one.
    recorded = manifest.get("train_mean")
    if recorded is None:
        return
    recorded_t = torch.as_tensor(recorded, dtype=torch.float64).flatten()
    reloaded = dataset.mean.detach().to("cpu", torch.float64).flatten()
    if recorded_t.shape != reloaded.shape or float((recorded_t - reloaded).abs().max()) > 1e-4:
        raise CheckpointError(
            f"The reloaded training set does not match the victim at {run_dir}: its per-pixel mean differs from "
            "model.json's train_mean. Check --data-root."
        )


def diagnose(
    victim: nn.Module | str | Path,
    *,
    x: torch.Tensor | None = None,
    signs: torch.Tensor | None = None,
    data_root: str | Path | None = None,
    device: str | torch.device = "cpu",
    nonzero_tol: float = 1e-6,
) -> KKTDiagnosis:
    """How close a victim is to a KKT point: fit λ ≥ 0 on its training set, report ‖θ − Σλᵢyᵢ∇θΦ(xᵢ)‖ / ‖θ‖.

    Args:
        victim: a model, or a victim run directory (its training set is then loaded as recorded in
            ``model.json``).
        x, signs: the training inputs and their ±1 labels (needed when ``victim`` is a model; a run
            directory's objective, multiclass or regression, is read from its manifest).
        data_root: where to read the training set from, for a run directory.
        device: where to compute; the fit runs in float64 for accuracy.
        nonzero_tol: λᵢ counts as non-zero above ``nonzero_tol · max λ``.

    Returns:
        A :class:`~kktrecon.attack.kkt.KKTDiagnosis`. ``relative_residual`` is 0 at an exact KKT
        point and 1 when no non-negative combination of the per-sample gradients explains any of θ.
    """
    dev = resolve_device(device)
    objective = None
    if isinstance(victim, (str, Path)):
        loaded, ds = load_victim(victim, data_root=data_root, device=dev, dtype=torch.float64)
        objective = loaded.objective(loaded.recorded_objective or ds.objective)
        model, x, signs = loaded.model, ds.x_train, objective.targets(ds.y_train, ds.targets)
        weight_decay = (loaded.recipe or {}).get("weight_decay", 0.0)
    elif x is None or signs is None:
        raise ConfigError("Expected `x` and `signs` when `victim` is a model. Got None.")
    else:
        model, weight_decay = victim, None
    result = diagnose_model(model, x, signs, device=dev, objective=objective, nonzero_tol=nonzero_tol)
    result.extra["weight_decay"] = weight_decay
    result.extra["capacity"] = capacity(model, tuple(x.shape[1:]), len(x)).to_dict()
    return result
