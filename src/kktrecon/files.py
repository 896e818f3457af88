"""The files of every kind of run directory, and how they are written: atomically, safetensors or JSON.

Writes go to a temporary file in the same directory and are renamed into place, so an interrupted
run never leaves a half-written file behind. Resumable state is one safetensors file with its meta
as JSON in the header; nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from kktrecon.configs import json_default
from kktrecon.errors import CheckpointError, RunFileNotFoundError

__all__ = [
    "ATTACK_STATE_FILE",
    "CANDIDATES_FILE",
    "METRICS_FILE",
    "PER_SAMPLE_FILE",
    "POOL_DIR",
    "RANKING_FILE",
    "RECONSTRUCTION_FILE",
    "REPORT_FILE",
    "SWEEP_FILE",
    "TRAIN_STATE_FILE",
    "VICTIM_FILE",
    "VICTIM_WEIGHTS_FILE",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "load_state",
    "package_versions",
    "read_json",
    "save_state",
]

# The files of each kind of run directory, named once: every stage reads the others' files by these.
VICTIM_WEIGHTS_FILE = "model.safetensors"  # a victim's weights (safetensors, nothing else)
VICTIM_FILE = "model.json"  # a victim's manifest: recipe, data, metrics; written last
TRAIN_STATE_FILE = "train_state.safetensors"  # resumable training state
CANDIDATES_FILE = "candidates.safetensors"  # an attack's candidates x, multipliers λ, labels y
RECONSTRUCTION_FILE = "reconstruction.json"  # an attack's manifest; written last
ATTACK_STATE_FILE = "checkpoint.safetensors"  # resumable attack state
METRICS_FILE = "metrics.json"  # an evaluation's summary
PER_SAMPLE_FILE = "per_sample.csv"  # an evaluation's row per training sample
REPORT_FILE = "report.html"
RANKING_FILE = "ranking.json"  # a pooled sweep's oracle-free ranking of its candidates
POOL_DIR = "pool"  # inside a sweep directory: its best trials' candidates, pooled and ranked
SWEEP_FILE = "sweep.json"  # a sweep's record: config, victim, versions; written when it starts


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


def save_state(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """A resumable checkpoint: one safetensors file of ``tensors`` with ``meta`` as JSON in its header."""
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, st_save(cpu, metadata={"state": json.dumps(meta, default=json_default)}))


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and ``meta`` of a :func:`save_state` checkpoint, read in one pass.

    Raises:
        CheckpointError: the file is truncated, corrupt, or not a kktrecon checkpoint.
    """
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("state", "{}"))
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is no dict)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} could not be read (truncated or corrupt?): {err}") from err
    if not isinstance(meta, dict) or not meta:
        raise CheckpointError(f"{path} is not a kktrecon checkpoint: it carries no state. Pass --force to start over.")
    return tensors, meta


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON object, with an error that names the file when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise RunFileNotFoundError(f"Expected a JSON file at {path}, but there is none.")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON (truncated or corrupt?): {err}") from err
    except RecursionError:  # nested deeper than the parser's stack
        raise CheckpointError(f"{path} is nested too deeply to be a kktrecon file or spec.") from None
    except ValueError as err:  # e.g. an integer of thousands of digits
        raise CheckpointError(f"{path} holds a value kktrecon does not read: {str(err)[:120]}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"Expected {path} to hold a JSON object. Got {type(obj).__name__}.")
    return obj


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a result, for manifests."""
    versions = {"python": platform.python_version()}
    for name in ("kktrecon", "torch", "numpy", "kornia", "safetensors"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
