"""Device and dtype names: ``auto``/``cpu``/``cuda[:N]``/``mps`` and ``float32``/``float64``.

Every stage takes its device and dtype explicitly, by these names; nothing sets a global default.
"""

from __future__ import annotations

import torch

from kktrecon.errors import ConfigError

__all__ = ["DTYPES", "dtype_name", "resolve_device", "resolve_dtype"]

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


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
