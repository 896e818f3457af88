"""Reading and pooling the candidates of one or more reconstruction directories of one victim."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from kktrecon.errors import CheckpointError, ConfigError, RunFileNotFoundError, VictimMismatchError
from kktrecon.runs import CANDIDATES_FILE, RECONSTRUCTION_FILE, read_json

__all__ = ["PooledCandidates", "load_candidates"]


@dataclass(frozen=True)
class PooledCandidates:
    """Candidates of several runs of one victim, concatenated; ``provenance`` is (run, index) per candidate."""

    x: Tensor
    lam: Tensor
    y: Tensor
    provenance: Tensor
    victim_run_dir: Path | None
    rec_dirs: tuple[Path, ...]
    configs: tuple[dict[str, Any], ...]


def _victim_of(rec_dir: Path, manifest: dict[str, Any]) -> tuple[str, Path | None]:
    """The victim's identity (its weights' fingerprint, else its directory) and its directory, if any."""
    victim = manifest.get("victim")
    run_dir = victim.get("run_dir") if isinstance(victim, dict) else None
    fingerprint = victim.get("fingerprint") if isinstance(victim, dict) else None
    if not run_dir and not fingerprint:
        raise CheckpointError(
            f"Expected {rec_dir / RECONSTRUCTION_FILE} to name its victim under victim.run_dir. Got none."
        )
    path = _victim_path(rec_dir, run_dir) if run_dir else None
    return (fingerprint or str(path)), path


def _victim_path(rec_dir: Path, run_dir: str) -> Path:
    path = Path(run_dir)
    # A relative path is taken from the working directory; failing that, from the reconstruction directory.
    if not path.is_absolute() and not path.exists() and (rec_dir / path).exists():
        path = rec_dir / path
    return path.resolve()


def load_candidates(rec_dirs: str | Path | Sequence[str | Path]) -> PooledCandidates:
    """Load and pool the candidates of one or more reconstruction directories of the same victim.

    Args:
        rec_dirs: one directory or several; each holds ``candidates.safetensors`` (tensors ``x``,
            ``lam``, ``y``) and ``reconstruction.json`` (with ``victim.run_dir``).

    Returns:
        The pooled candidates with a (run, index) provenance per candidate.

    Raises:
        FileNotFoundError: when a directory lacks its candidates or manifest.
        VictimMismatchError: when the directories reconstruct different victims or input shapes.
    """
    dirs = [Path(rec_dirs)] if isinstance(rec_dirs, str | Path) else [Path(d) for d in rec_dirs]
    if not dirs:
        raise ConfigError("Expected `rec_dirs` to name at least one reconstruction directory. Got none.")
    xs, lams, ys, prov, configs = [], [], [], [], []
    victims: list[tuple[str, Path | None]] = []
    for run, rec_dir in enumerate(dirs):
        manifest = read_json(rec_dir / RECONSTRUCTION_FILE)
        path = rec_dir / CANDIDATES_FILE
        if not path.is_file():
            raise RunFileNotFoundError(
                f"Expected candidates at {path}, but there are none. Did the reconstruction finish?"
            )
        tensors = load_file(str(path))
        missing = sorted({"x", "lam", "y"} - set(tensors))
        if missing:
            raise CheckpointError(f"Expected tensors x, lam, y in {path}. Missing {missing}.")
        x = tensors["x"].to(torch.float64)
        m = x.shape[0]
        if tuple(tensors["lam"].shape[:1]) != (m,) or tensors["lam"].dim() > 2 or tuple(tensors["y"].shape) != (m,):
            raise CheckpointError(
                f"Expected `lam` of shape ({m},) or ({m}, K) and `y` of shape ({m},) in {path}. "
                f"Got {tuple(tensors['lam'].shape)} and {tuple(tensors['y'].shape)}."
            )
        if xs and x.shape[1:] != xs[0].shape[1:]:
            raise VictimMismatchError(
                f"Cannot pool {rec_dir}: candidates of shape {tuple(x.shape[1:])}, but {dirs[0]} has "
                f"{tuple(xs[0].shape[1:])}."
            )
        victims.append(_victim_of(rec_dir, manifest))
        xs.append(x)
        lams.append(tensors["lam"].to(torch.float64))
        ys.append(tensors["y"].to(torch.float64))
        prov.append(torch.stack([torch.full((m,), run, dtype=torch.int64), torch.arange(m)], dim=1))
        configs.append(manifest)
    if len({identity for identity, _ in victims}) > 1:
        listing = "; ".join(f"{d} -> {v[1] or v[0]}" for d, v in zip(dirs, victims, strict=True))
        raise VictimMismatchError(
            f"Cannot pool reconstructions of different victims; pass directories of one victim. Got {listing}."
        )
    return PooledCandidates(
        x=torch.cat(xs),
        lam=torch.cat(lams),
        y=torch.cat(ys),
        provenance=torch.cat(prov),
        victim_run_dir=next((path for _, path in victims if path is not None), None),
        rec_dirs=tuple(dirs),
        configs=tuple(configs),
    )
