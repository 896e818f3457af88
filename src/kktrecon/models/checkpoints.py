"""Victim checkpoints: a safetensors file of weights and a JSON manifest; loading never unpickles."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from kktrecon.errors import CheckpointError
from kktrecon.models.registry import architecture_of, get_architecture
from kktrecon.runs import (
    VICTIM_FILE,
    VICTIM_WEIGHTS_FILE,
    atomic_write_bytes,
    atomic_write_json,
    config_from_dict,
    config_to_dict,
    read_json,
    resolve_device,
)

__all__ = ["load_checkpoint", "save_checkpoint", "weights_fingerprint"]


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's weights as a safetensors file: which victim a run belongs to."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return hashlib.sha256(st_save(tensors)).hexdigest()


def save_checkpoint(run_dir: str | Path, model: nn.Module, manifest: dict[str, Any]) -> None:
    """Write ``model.safetensors`` (weights only) and ``model.json`` (``manifest`` + architecture), atomically.

    ``model`` is a registered architecture: it carries its config as ``model.config``.
    """
    run_dir = Path(run_dir)
    config = model.config
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(run_dir / VICTIM_WEIGHTS_FILE, st_save(tensors))
    record = {**manifest, "architecture": architecture_of(config).name, "model": config_to_dict(config)}
    atomic_write_json(run_dir / VICTIM_FILE, record)


def load_checkpoint(
    run_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a victim from ``run_dir`` (no unpickling) and return it with its parsed manifest.

    Raises:
        CheckpointError: file missing or truncated, tensors that do not match the manifest's
            architecture, or NaN/Inf weights.
    """
    run_dir = Path(run_dir)
    weights_path = run_dir / VICTIM_WEIGHTS_FILE
    if not weights_path.is_file() or not (run_dir / VICTIM_FILE).is_file():
        raise CheckpointError(
            f"{run_dir} is not a victim run directory: expected {VICTIM_WEIGHTS_FILE} and {VICTIM_FILE} there."
        )
    try:
        manifest = read_json(run_dir / VICTIM_FILE)
    except ValueError as err:
        raise CheckpointError(str(err)) from err
    if "model" not in manifest:
        raise CheckpointError(f"{run_dir / VICTIM_FILE} has no 'model' section describing the architecture.")
    try:
        arch = get_architecture(manifest.get("architecture", "mlp"))
        config = config_from_dict(arch.config, manifest["model"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{run_dir / VICTIM_FILE}: invalid 'model' section: {err}") from err
    try:
        tensors = st_load(weights_path.read_bytes())
    except (SafetensorError, ValueError, OSError) as err:
        raise CheckpointError(f"{weights_path} could not be read (truncated or corrupt?): {err}") from err
    model = arch.build(config, torch.Generator())
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != got:
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        raise CheckpointError(
            f"{weights_path} does not match the architecture in {VICTIM_FILE}: missing {missing}, unexpected "
            f"{extra}, wrong shape {[(k, got[k], expected[k]) for k in wrong]}."
        )
    bad = sorted(k for k, v in tensors.items() if not torch.isfinite(v).all())
    if bad:
        raise CheckpointError(f"{weights_path} holds NaN or Inf values in {bad}.")
    stored = {v.dtype for v in tensors.values()}
    model.load_state_dict(tensors)
    target = dtype if dtype is not None else (stored.pop() if len(stored) == 1 else torch.float32)
    return model.to(device=resolve_device(device), dtype=target), manifest
