"""Device and dtype names: ``auto``/``cpu``/``cuda[:N]``/``mps`` and ``float32``/``float64``.

Every stage takes its device and dtype explicitly, by these names; nothing sets a global default.
CPU threads are the one process-wide setting torch has: long CPU loops pick theirs with
:func:`pick_threads` and set it only for their own duration (:func:`cpu_threads`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from kktrecon.errors import ConfigError

__all__ = [
    "DTYPES",
    "THREADS_ENV",
    "ThreadChoice",
    "cpu_threads",
    "dtype_name",
    "pick_threads",
    "resolve_device",
    "resolve_dtype",
    "step_seconds",
]

#: Pins the CPU threads of kktrecon's long loops (an integer); unset or ``auto``: measured per run.
THREADS_ENV = "KKTRECON_THREADS"
#: How much faster (relative) fewer threads must be to be chosen over torch's default.
_CLEAR_WIN = 0.2
#: Each timed block repeats the step for at least this long.
_BLOCK_S = 0.02

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


def _pinned_threads() -> int | None:
    value = os.environ.get(THREADS_ENV, "auto").strip()
    if value in ("", "auto"):
        return None
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"Expected {THREADS_ENV} to be a positive integer or auto. Got {value!r}.")
    return int(value)


def pick_threads(step: Callable[[], object], device: torch.device, *, repeats: int = 3) -> int | None:
    """The CPU thread count a loop of ``step`` runs fastest with here, now; None off the CPU.

    torch's default (one thread per core) is fastest on an idle machine, but beside another
    CPU-bound process its threads wait on each other at every parallel region: on a 2-core machine
    an attack iteration took 37 ms with two threads and 9 ms with one (6 ms alone with two;
    benchmarks/NOTES.md). So time ``step`` with the default and with one thread (the median of
    ``repeats`` blocks of ≥ 20 ms, after a warm-up: a training step of 2 ms timed alone, and its best
    of three, missed the neighbour), and take one only if it is clearly faster.
    ``KKTRECON_THREADS`` pins the count instead (results are bit-reproducible for a fixed count).
    """
    if device.type != "cpu":
        return None
    pinned = _pinned_threads()
    default = torch.get_num_threads()
    if pinned is not None or default == 1:
        return pinned or default
    times = {}
    for n in (default, 1):
        with cpu_threads(n):
            times[n] = step_seconds(step, repeats=repeats)
    return 1 if times[1] < (1 - _CLEAR_WIN) * times[default] else default


def step_seconds(step: Callable[[], object], *, repeats: int = 3) -> float:
    """Seconds per call of ``step`` under the machine's load now: after a warm-up, the median over
    ``repeats`` blocks of ≥ 20 ms (a short step timed alone, or the luckiest block, misses a neighbour)."""
    step()
    runs = []
    for _ in range(repeats):
        start, calls = time.perf_counter(), 0
        while calls == 0 or time.perf_counter() - start < _BLOCK_S:
            step()
            calls += 1
        runs.append((time.perf_counter() - start) / calls)
    return sorted(runs)[len(runs) // 2]


class ThreadChoice:
    """The thread count of a long CPU loop, chosen at its start and again every ``every_s`` seconds.

    A neighbour that starts or stops mid-run changes which count is faster (measured: an attack
    with two threads slowed tenfold when two other processes started beside it), so the loop calls
    :meth:`tick` once per step and the choice is re-timed when due. Use as a context manager: the
    process's count is restored on exit. Off the CPU, or pinned by ``KKTRECON_THREADS``, it never
    re-times. ``start`` is a count to begin with (a resumed run's), timed again only when due.
    """

    def __init__(
        self,
        step: Callable[[], object],
        device: torch.device,
        *,
        every_s: float = 60.0,
        start: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.step, self.device, self.every_s, self.clock = step, device, every_s, clock
        self.fixed = device.type != "cpu" or _pinned_threads() is not None
        # pick_threads answers at once where the count is fixed: None off the CPU, else the pinned count
        self.current = pick_threads(step, device) if self.fixed or start is None else start
        self.changes: list[int | None] = [self.current]
        self._before = torch.get_num_threads()
        self._due = clock() + every_s

    def __enter__(self) -> ThreadChoice:
        if self.current is not None:
            torch.set_num_threads(self.current)
        return self

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self._before)

    def tick(self) -> None:
        """Re-time the choice if it is due (a clock read otherwise)."""
        if self.fixed or self.clock() < self._due:
            return
        torch.set_num_threads(self._before)  # time both counts from the process's default
        self.current = pick_threads(self.step, self.device)
        torch.set_num_threads(self.current)
        if self.current != self.changes[-1]:
            self.changes.append(self.current)
        self._due = self.clock() + self.every_s


@contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op CPU threads set to ``n`` inside the block and restored after (None: untouched)."""
    if n is None or n == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
