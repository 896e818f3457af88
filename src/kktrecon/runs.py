"""Run directories: atomic writes, manifests, config round trips, device and dtype names.

Every stage writes into a directory of its own with a JSON manifest (config, versions, seed,
metrics). Writes go to a temporary file in the same directory and are renamed into place, so an
interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from kktrecon.errors import CheckpointError, ConfigError, RunDirectoryExistsError, RunFileNotFoundError, RunStateError

__all__ = [
    "ATTACK_STATE_FILE",
    "CANDIDATES_FILE",
    "DTYPES",
    "METRICS_FILE",
    "PER_SAMPLE_FILE",
    "POOL_DIR",
    "RANKING_FILE",
    "RECONSTRUCTION_FILE",
    "REPORT_FILE",
    "TRAIN_STATE_FILE",
    "VICTIM_FILE",
    "VICTIM_WEIGHTS_FILE",
    "Run",
    "RunDirectoryExistsError",
    "RunKind",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_resumable",
    "config_from_dict",
    "config_to_dict",
    "dtype_name",
    "load_state",
    "open_run",
    "package_versions",
    "prepare_run_dir",
    "read_json",
    "register_nested",
    "resolve_device",
    "resolve_dtype",
    "same_length",
    "save_state",
]

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}

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

C = TypeVar("C")


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map a dtype name (``float32``/``float64``) to a torch dtype; unknown names list the choices."""
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise ConfigError(f"Expected `dtype` to be one of {sorted(DTYPES)}. Got {name}.")
        return name
    if name not in DTYPES:
        raise ConfigError(f"Expected `dtype` to be one of {sorted(DTYPES)}. Got {name!r}.")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """Inverse of :func:`resolve_dtype`."""
    return {v: k for k, v in DTYPES.items()}[dtype]


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None) picks CUDA when present, else CPU; ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` when available.

    Raises:
        ConfigError: an unknown device name, ``meta`` (holds no data), or a device this machine lacks.
    """
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = name if isinstance(name, torch.device) else torch.device(str(name))
    except (RuntimeError, ValueError):
        raise ConfigError(f"Expected `device` to be auto, cpu, cuda, cuda:N or mps. Got {name!r}.") from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available() and (device.index is None or device.index < torch.cuda.device_count()),
        "mps": torch.backends.mps.is_available(),
    }
    if device.type not in available:
        raise ConfigError(f"Expected `device` to be auto, cpu, cuda, cuda:N or mps. Got {name!r}.")
    if not available[device.type]:
        raise ConfigError(f"Expected `device` to be available. Got {name!r}, which this machine does not have.")
    return device


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
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def save_state(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """A resumable checkpoint: one safetensors file of ``tensors`` with ``meta`` as JSON in its header."""
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, st_save(cpu, metadata={"state": json.dumps(meta, default=_json_default)}))


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
    if not isinstance(obj, dict):
        raise CheckpointError(f"Expected {path} to hold a JSON object. Got {type(obj).__name__}.")
    return obj


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return config_to_dict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.dtype):
        return dtype_name(obj)
    if isinstance(obj, torch.device):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A frozen config dataclass as a JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=_json_default))


def config_from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """Rebuild a config dataclass, rejecting unknown keys and restoring tuples and nested configs."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"Expected {cls.__name__} settings as a JSON object. Got {data!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"Unknown keys for {cls.__name__}: {unknown}. Expected a subset of {sorted(fields)}.")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        default = getattr(cls, "__dataclass_fields__")[name].default  # noqa: B009
        nested = _NESTED.get((cls.__name__, name))
        if nested is not None and isinstance(value, Mapping):
            value = config_from_dict(nested, value)
        elif nested is not None and isinstance(value, list):  # a tuple of nested configs
            value = tuple(config_from_dict(nested, v) for v in value)
        elif isinstance(value, list) and (isinstance(default, tuple) or default is dataclasses.MISSING):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


_NESTED: dict[tuple[str, str], type] = {}


def register_nested(owner: str, field: str, cls: type) -> None:
    """Tell :func:`config_from_dict` that ``owner.field`` holds a ``cls`` config (or a tuple of them)."""
    _NESTED[(owner, field)] = cls


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a result, for manifests."""
    versions = {"python": platform.python_version()}
    for name in ("kktrecon", "torch", "numpy", "kornia", "safetensors"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@dataclass(frozen=True)
class RunKind:
    """The files a kind of run directory holds.

    Attributes:
        manifest: written last, atomically: its presence marks a finished run.
        state: the resumable state, rewritten at every checkpoint and kept at the end, so that a
            finished run can be extended bit-identically to an uninterrupted longer run.
        outputs: the other files the run writes (removed with the rest by ``force``).
    """

    manifest: str
    state: str
    outputs: tuple[str, ...] = ()


#: How a run directory was found when it was opened.
RunStatus = Literal["new", "unfinished", "finished"]


@dataclass(frozen=True)
class Run:
    """An opened run directory: where it is, what it holds, and in which state it was found."""

    path: Path
    kind: RunKind
    status: RunStatus

    @property
    def manifest(self) -> Path:
        return self.path / self.kind.manifest

    @property
    def state(self) -> Path:
        return self.path / self.kind.state


def open_run(path: str | Path, kind: RunKind, *, force: bool = False, resume: bool = False) -> Run:
    """Open ``path`` for a run of ``kind``: the one set of force / resume rules every stage follows.

    - a new or empty directory (or one holding unrelated files) starts a new run;
    - ``force`` deletes the run's own files first, so nothing of an earlier run can be mistaken
      for this one's, then starts over;
    - ``resume`` continues an unfinished run or opens a finished one (the caller compares configs
      and returns it, extends it, or refuses);
    - without either, a directory holding a run (finished or not) is refused.

    Raises:
        ConfigError: both ``force`` and ``resume``.
        RunDirectoryExistsError: the directory holds a run and neither flag was given.
    """
    if force and resume:
        raise ConfigError("Expected at most one of `force` (start over) and `resume` (continue). Got both.")
    path = Path(path)
    finished = (path / kind.manifest).exists()
    unfinished = not finished and (path / kind.state).exists()
    if force:
        for name in (kind.manifest, kind.state, *kind.outputs):
            (path / name).unlink(missing_ok=True)
    elif finished and not resume:
        raise RunDirectoryExistsError(
            f"{path} already holds a finished run ({kind.manifest} exists). Choose another directory, pass "
            "--resume to return or extend it, or --force to overwrite it."
        )
    elif unfinished and not resume:
        raise RunDirectoryExistsError(
            f"{path} holds an unfinished run ({kind.state} exists); pass --resume to continue or --force to start over."
        )
    path.mkdir(parents=True, exist_ok=True)
    status: RunStatus = "new" if force else "finished" if finished else "unfinished" if unfinished else "new"
    return Run(path=path, kind=kind, status=status)


def check_resumable(
    saved: Mapping[str, Any], current: Mapping[str, Any], *, where: Path, free: tuple[str, ...]
) -> None:
    """Refuse to resume when a recorded config differs from the current one outside the ``free`` keys.

    Raises:
        RunStateError: the configs differ; the message lists each differing key with both values.
    """
    keys = sorted((set(saved) | set(current)) - set(free))
    differs = [k for k in keys if saved.get(k) != current.get(k)]
    if differs:
        raise RunStateError(
            f"Cannot resume {where}: its config differs in {differs} (then {[saved.get(k) for k in differs]}, "
            f"now {[current.get(k) for k in differs]}). Pass the original settings, or --force to start over."
        )


def same_length(run: Run, *, done: int, requested: int, unit: str) -> bool:
    """Whether a finished run of ``done`` steps is exactly the ``requested`` one (False: extend it).

    Raises:
        RunStateError: ``requested`` is shorter (a run is extended, never shortened), or longer
            while the final state needed to extend it is gone.
    """
    if done > requested:
        raise RunStateError(
            f"Cannot resume {run.path} at {requested} {unit}: it finished at {done}. "
            "A run can be extended, not shortened; pass --force to start over."
        )
    if done < requested and not run.state.exists():
        raise RunStateError(f"Cannot extend {run.path}: its final state ({run.kind.state}) is gone; pass --force.")
    return done == requested


def prepare_run_dir(path: str | Path, *, force: bool = False, marker: str) -> Path:
    """Create ``path`` for a new run; refuse when ``marker`` (the run's manifest) is already there.

    ``force`` allows overwriting. The marker is the file a finished or started run leaves, so an
    empty or unrelated directory is accepted.
    """
    path = Path(path)
    if (path / marker).exists() and not force:
        raise RunDirectoryExistsError(
            f"{path} already holds a run ({marker} exists). Choose another directory or pass --force to overwrite."
        )
    path.mkdir(parents=True, exist_ok=True)
    return path
