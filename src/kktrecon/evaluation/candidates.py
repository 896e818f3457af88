"""The candidate sets of one or more reconstruction directories of one victim, pooled for the verdict.

The file format and the pooling rules are :class:`kktrecon.candidates.CandidateSet`'s; this adds what
the evaluation reports per candidate: which directory it came from and its place there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kktrecon.candidates import CandidateSet
from kktrecon.errors import ConfigError
from kktrecon.files import RECONSTRUCTION_FILE, read_json

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


def load_candidates(rec_dirs: str | Path | Sequence[str | Path]) -> PooledCandidates:
    """Load and pool the candidate sets of one or more reconstruction directories of the same victim.

    Args:
        rec_dirs: one directory or several; each holds a :class:`~kktrecon.candidates.CandidateSet`
            (``candidates.safetensors``) and its run's manifest (``reconstruction.json``).

    Returns:
        The pooled candidates (float64) with a (directory, index) provenance per candidate.

    Raises:
        FileNotFoundError: when a directory lacks its candidates or manifest.
        VictimMismatchError: when the directories reconstruct different victims or input shapes.
    """
    dirs = [Path(rec_dirs)] if isinstance(rec_dirs, str | Path) else [Path(d) for d in rec_dirs]
    if not dirs:
        raise ConfigError("Expected `rec_dirs` to name at least one reconstruction directory. Got none.")
    manifests = [read_json(d / RECONSTRUCTION_FILE) for d in dirs]
    sets = [CandidateSet.load(d) for d in dirs]
    pooled = CandidateSet.concatenate(sets).to(dtype=torch.float64)
    run = torch.cat([torch.full((len(c),), i, dtype=torch.int64) for i, c in enumerate(sets)])
    position = torch.cat([torch.arange(len(c)) for c in sets])
    run_dir = pooled.victim.get("run_dir")
    return PooledCandidates(
        x=pooled.x,
        lam=pooled.lam,
        y=pooled.y,
        provenance=torch.stack([run, position], dim=1),
        victim_run_dir=Path(run_dir) if run_dir else None,
        rec_dirs=tuple(dirs),
        configs=tuple(manifests),
    )
