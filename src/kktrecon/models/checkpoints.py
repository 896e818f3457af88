"""Victim checkpoints: a safetensors file of weights and a JSON manifest; loading never unpickles."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from kktrecon.configs import config_from_dict, config_to_dict
from kktrecon.devices import resolve_device
from kktrecon.errors import CheckpointError
from kktrecon.files import VICTIM_FILE, VICTIM_WEIGHTS_FILE, atomic_write_bytes, atomic_write_json, read_json
from kktrecon.models.registry import architecture_of, get_architecture, parameter_shapes

__all__ = [
    "INITIAL_WEIGHTS_FILE",
    "check_state_dict",
    "load_checkpoint",
    "load_initial_state",
    "read_header",
    "save_checkpoint",
    "save_initial_state",
    "weights_fingerprint",
]

#: A victim's weights before training (θ₀), kept beside ``model.safetensors``: what its owner knows.
INITIAL_WEIGHTS_FILE = "initial.safetensors"


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


def save_initial_state(run_dir: str | Path, model: nn.Module) -> None:
    """Write the model's weights as they are now (before training) as ``initial.safetensors``, atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(Path(run_dir) / INITIAL_WEIGHTS_FILE, st_save(tensors))


def load_initial_state(run_dir: str | Path, model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The θ₀ kept in ``run_dir`` (None for victims trained before it was kept), checked against ``model``'s shapes.

    Raises:
        CheckpointError: a truncated file, or tensors that do not fit the model.
    """
    path = Path(run_dir) / INITIAL_WEIGHTS_FILE
    if not path.is_file():
        return None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_state_dict(expected, read_header(path), where=str(path), against="the victim's weights")
    try:
        tensors = st_load(path.read_bytes())
    except (SafetensorError, ValueError, OSError) as err:
        raise CheckpointError(f"{path} could not be read (truncated or corrupt?): {err}") from err
    p = next(iter(model.state_dict().values()))
    return {k: v.to(device=p.device, dtype=p.dtype) for k, v in tensors.items()}


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
    if not isinstance(manifest["model"], dict):
        raise CheckpointError(f"{run_dir / VICTIM_FILE}: expected 'model' to be an object. Got {manifest['model']!r}.")
    header = read_header(weights_path)
    check_state_dict(
        parameter_shapes(config), header, where=str(weights_path), against=f"the architecture in {VICTIM_FILE}"
    )
    try:
        tensors = st_load(weights_path.read_bytes())
    except (SafetensorError, ValueError, OSError) as err:
        raise CheckpointError(f"{weights_path} could not be read (truncated or corrupt?): {err}") from err
    bad = sorted(k for k, v in tensors.items() if not torch.isfinite(v).all())
    if bad:
        raise CheckpointError(f"{weights_path} holds NaN or Inf values in {bad}.")
    stored = {v.dtype for v in tensors.values()}
    model = arch.build(config, torch.Generator())
    model.load_state_dict(tensors)
    target = dtype if dtype is not None else (stored.pop() if len(stored) == 1 else torch.float32)
    return model.to(device=resolve_device(device), dtype=target), manifest


def read_header(path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every tensor in a safetensors file, from its header alone."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            slices = {k: fh.get_slice(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is no dict)
            return {k: (tuple(v.get_shape()), _DTYPES.get(v.get_dtype())) for k, v in slices.items()}
    except (SafetensorError, ValueError, OSError) as err:
        raise CheckpointError(f"{path} could not be read (truncated or corrupt?): {err}") from err


def check_state_dict(
    expected: dict[str, tuple[int, ...]],
    got: dict[str, tuple[tuple[int, ...], torch.dtype | None]],
    *,
    where: str,
    against: str = "the architecture",
) -> None:
    """Refuse weights whose names, shapes or dtypes do not fit the architecture; name the first misfit.

    Raises:
        CheckpointError: a missing, unexpected or misshapen tensor, or one that is not floating point.
    """
    shapes = {k: shape for k, (shape, _) in got.items()}
    if shapes != expected:
        missing = sorted(set(expected) - set(shapes))
        extra = sorted(set(shapes) - set(expected))
        wrong = [k for k in expected if k in shapes and expected[k] != shapes[k]]
        first = (
            f"tensor {wrong[0]!r} has shape {shapes[wrong[0]]}, expected {expected[wrong[0]]}"
            if wrong
            else f"tensor {missing[0]!r} is missing"
            if missing
            else f"tensor {extra[0]!r} is not part of the architecture"
        )
        raise CheckpointError(
            f"{where} does not match {against}: {first}. Missing {missing}, unexpected {extra}, "
            f"wrong shape {[(k, shapes[k], expected[k]) for k in wrong]}."
        )
    not_float = sorted(k for k, (_, dt) in got.items() if dt is None or not dt.is_floating_point)
    if not_float:
        raise CheckpointError(
            f"{where}: expected floating-point weights. Got {[(k, str(got[k][1])) for k in not_float]}."
        )


# safetensors dtype names -> torch dtypes (unknown names map to None and are refused).
_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
