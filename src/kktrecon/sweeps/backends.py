"""Where trial batches run: in this process, or as Ray tasks on a local instance or a cluster.

A backend takes batches of trials (configs and reconstruction directories) and returns, per trial,
None or why it failed. The study (ask, score, tell) stays in the driver; workers only write their
trials' directories, so a cluster needs the sweep directory on a shared filesystem.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from kktrecon.attack.batched import reconstruct_batch
from kktrecon.attack.engine import ReconstructionConfig
from kktrecon.configs import config_from_dict, config_to_dict
from kktrecon.errors import ConfigError, MissingDependencyError
from kktrecon.registry import Registry

__all__ = ["BACKENDS", "LocalBackend", "RayBackend", "check_ray_address", "get_backend", "run_batch"]


def run_batch(
    victim: str | nn.Module,
    configs: Sequence[dict[str, Any]],
    outs: Sequence[str],
    *,
    device: str,
    resume: bool,
    progress: bool,
    input_shape: tuple[int, ...] | None = None,
) -> list[str | None]:
    """Run one batch of trials (plain data in and out, so that it can travel to a Ray worker)."""
    outcome = reconstruct_batch(
        victim, [config_from_dict(ReconstructionConfig, c) for c in configs], outs=list(outs), device=device,
        resume=resume, progress=progress, input_shape=input_shape,
    )  # fmt: skip
    return list(outcome.errors)


Batch = tuple[list[ReconstructionConfig], list[Path]]


class LocalBackend:
    """Runs batches one after the other in this process."""

    slots = 1

    def __init__(self, *, device: str, progress: bool, **_: Any) -> None:
        self.device, self.progress = device, progress

    def run(
        self, victim: str | nn.Module, batches: list[Batch], *, resume: bool, input_shape: tuple[int, ...]
    ) -> list[list[str | None]]:
        return [
            run_batch(
                victim,
                [config_to_dict(c) for c in configs],
                [str(o) for o in outs],
                device=self.device,
                resume=resume,
                progress=self.progress,
                input_shape=input_shape,
            )
            for configs, outs in batches
        ]


class RayBackend:
    """Runs each batch as a Ray task: on the cluster at ``address``, or on a local Ray instance."""

    def __init__(self, *, address: str | None, device: str, progress: bool, **_: Any) -> None:
        check_ray_address(address)
        try:
            import ray
        except ImportError as err:
            raise MissingDependencyError(
                "The Ray backend needs ray: pip install 'kktrecon[cluster]' (or pip install 'ray[default]')."
            ) from err
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        gpu = device.startswith("cuda")
        self.task = ray.remote(num_gpus=1 if gpu else 0, num_cpus=1)(run_batch)
        resources = ray.cluster_resources()
        # One batch per GPU, or per CPU: a batch's tensor program keeps a core busy on its own.
        self.slots = max(1, int(resources.get("GPU" if gpu else "CPU", 1)))
        self.device = device

    def run(
        self, victim: str | nn.Module, batches: list[Batch], *, resume: bool, input_shape: tuple[int, ...]
    ) -> list[list[str | None]]:
        if not isinstance(victim, str):
            raise ConfigError(
                "The Ray backend attacks victim directories; save the model as one, or use --backend local."
            )
        refs = [
            self.task.remote(
                victim,
                [config_to_dict(c) for c in configs],
                [str(o.resolve()) for o in outs],
                device=self.device,
                resume=resume,
                progress=False,
            )
            for configs, outs in batches
        ]
        return self.ray.get(refs)


def check_ray_address(address: str | None, *, timeout_s: float = 5.0) -> None:
    """Refuse a malformed Ray address, or one where nothing answers within ``timeout_s``.

    ``ray.init`` retries an address where nothing listens for minutes without a word, and fails on a
    malformed one with a traceback; a TCP connect tells both apart in seconds. ``None``, ``auto`` and
    ``local`` are Ray's own choices and pass.

    Raises:
        ConfigError: ``address`` is not HOST:PORT (or ray://HOST:PORT) with a port 1–65535, or no
            process accepts a connection there.
    """
    if address is None or address in ("auto", "local"):
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:6379
    if not (sep and host and port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ConfigError(
            f"Expected `address` as HOST:PORT with a port 1–65535 (or ray://HOST:PORT, or auto). Got {address!r}."
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError:
        raise ConfigError(
            f"Expected a Ray cluster at {hostport}. Got no answer within {timeout_s:g} s. Start one with "
            "`ray start --head`, or leave out the address for a local Ray instance."
        ) from None


#: Backends by name.
BACKENDS: Registry[type] = Registry("backend", ConfigError)
BACKENDS.register("local", LocalBackend)
BACKENDS.register("ray", RayBackend)


def get_backend(name: str, *, address: str | None = None, device: str = "auto", progress: bool = True) -> Any:
    """An instance of the backend called ``name``."""
    return BACKENDS.get_entry(name)(address=address, device=device, progress=progress)
