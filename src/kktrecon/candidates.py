"""Candidate sets: what every attack produces and every verdict reads.

A :class:`CandidateSet` is m candidate inputs x (m, *input_shape) with their multipliers λ (m,) or
(m, C), their attack labels y (m,) and their provenance: ``source`` (m, 2) holds, for each candidate,
an index into ``sources`` (which attack, trial, iteration, directory produced it) and its index
there. Reconstruction runs, sweep pools, experiment read-outs and the audit all write and read this
one format, so "pool" means one thing: a candidate set concatenated from several sources.

On disk it is one safetensors file, ``candidates.safetensors``: the tensors ``x``, ``lam``, ``y`` and
``source``, and in the header the format version, the victim (weights fingerprint, run directory,
input shape, objective) and the sources as JSON. Files written before the format was versioned
(``x``, ``lam``, ``y`` only, the victim named by the ``reconstruction.json`` beside them) still load.
This module sits below the attack and the evaluation: it reads no training data and scores nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save
from torch import Tensor

from kktrecon.errors import CheckpointError, ConfigError, RunFileNotFoundError, VictimMismatchError
from kktrecon.files import CANDIDATES_FILE, RECONSTRUCTION_FILE, atomic_write_bytes, read_json

__all__ = ["CANDIDATES_FORMAT", "CandidateSet", "victim_identity"]

#: The version written into every candidate file's header.
CANDIDATES_FORMAT = "kktrecon.candidates/1"


@dataclass(frozen=True)
class CandidateSet:
    """Candidates of one victim with their multipliers, attack labels and provenance.

    Attributes:
        x: candidates (m, *input_shape).
        lam: multipliers (m,) or (m, C).
        y: attack labels (m,).
        source: (m, 2) int64: index into ``sources``, index within that source.
        sources: what produced each group of candidates, e.g. ``{"attack": "kkt", "trial": 3,
            "iteration": 4000, "dir": "…"}``.
        victim: who was attacked: ``fingerprint``, ``run_dir``, ``input_shape``, ``objective`` (as known).
    """

    x: Tensor
    lam: Tensor
    y: Tensor
    source: Tensor
    sources: tuple[Mapping[str, Any], ...] = ({},)
    victim: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        m = self.x.shape[0] if self.x.dim() else -1
        if self.lam.dim() not in (1, 2) or self.lam.shape[0] != m or tuple(self.y.shape) != (m,):
            raise CheckpointError(
                f"Expected `lam` of shape ({m},) or ({m}, K) and `y` of shape ({m},). "
                f"Got {tuple(self.lam.shape)} and {tuple(self.y.shape)}."
            )
        if tuple(self.source.shape) != (m, 2):
            raise CheckpointError(f"Expected `source` of shape ({m}, 2). Got {tuple(self.source.shape)}.")
        if m and (int(self.source[:, 0].min()) < 0 or int(self.source[:, 0].max()) >= len(self.sources)):
            raise CheckpointError(f"Expected every candidate's source to index the {len(self.sources)} sources.")

    @classmethod
    def of(
        cls, x: Tensor, lam: Tensor, y: Tensor, *, victim: Mapping[str, Any] | None = None, **source: Any
    ) -> CandidateSet:
        """One source's candidates; ``source`` describes it (``attack=``, ``trial=``, ``iteration=``, …)."""
        m = x.shape[0]
        index = torch.stack([torch.zeros(m, dtype=torch.int64), torch.arange(m)], dim=1)
        return cls(x, lam, y, index, (dict(source),), dict(victim or {}))

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def take(self, index: Tensor | Sequence[int]) -> CandidateSet:
        """The candidates at ``index`` (a boolean mask or positions), in that order."""
        index = torch.as_tensor(index)
        return CandidateSet(
            self.x[index], self.lam[index], self.y[index], self.source[index], self.sources, self.victim
        )

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> CandidateSet:
        """x, λ and y on ``device`` in ``dtype`` (the provenance stays int64 on the CPU)."""
        move = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        return CandidateSet(move(self.x), move(self.lam), move(self.y), self.source, self.sources, self.victim)

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/candidates.safetensors`` atomically; returns its path."""
        path = Path(directory) / CANDIDATES_FILE
        tensors = {"x": self.x, "lam": self.lam, "y": self.y, "source": self.source}
        header = {
            "format": CANDIDATES_FORMAT,
            "victim": json.dumps(dict(self.victim), default=str),
            "sources": json.dumps([dict(s) for s in self.sources], default=str),
        }
        atomic_write_bytes(path, st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, header))
        return path

    @classmethod
    def load(cls, where: str | Path) -> CandidateSet:
        """Read a candidate set from a directory (its ``candidates.safetensors``) or from the file itself.

        Raises:
            RunFileNotFoundError: there is no candidate file.
            CheckpointError: the file is corrupt, lacks x / lam / y, or names no victim.
        """
        where = Path(where)
        path = where / CANDIDATES_FILE if where.is_dir() or not where.suffix else where
        if not path.is_file():
            raise RunFileNotFoundError(
                f"Expected candidates at {path}, but there are none. Did the reconstruction finish?"
            )
        try:
            with safe_open(str(path), framework="pt") as fh:
                header = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is no dict)
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path} could not be read (truncated or corrupt?): {err}") from err
        missing = sorted({"x", "lam", "y"} - set(tensors))
        if missing:
            raise CheckpointError(f"Expected tensors x, lam, y in {path}. Missing {missing}.")
        x = tensors["x"]
        if "format" in header:
            victim, sources = json.loads(header["victim"]), tuple(json.loads(header["sources"]))
            if len(sources) == 1:  # one run's candidates: their source is where they are now
                sources = ({**sources[0], "dir": str(path.parent.resolve())},)
        else:  # written before the format was versioned: the victim is named by the manifest beside it
            victim, sources = _legacy_victim(path.parent), ({"dir": str(path.parent.resolve())},)
        source = tensors.get("source")
        if source is None:
            source = torch.stack([torch.zeros(len(x), dtype=torch.int64), torch.arange(len(x))], dim=1)
        candidates = cls(x, tensors["lam"], tensors["y"], source.to(torch.int64), sources, victim)
        if not victim_identity(candidates.victim):
            raise CheckpointError(f"Expected {path} (or the manifest beside it) to name its victim. Got none.")
        return candidates

    @classmethod
    def concatenate(cls, sets: Sequence[CandidateSet]) -> CandidateSet:
        """One set holding all of ``sets`` in order; their sources are kept, each candidate's re-indexed.

        Raises:
            ConfigError: no set given.
            VictimMismatchError: the sets attack different victims or have different input shapes.
        """
        if not sets:
            raise ConfigError("Expected at least one candidate set to concatenate. Got none.")
        first = sets[0]
        for s in sets[1:]:
            if s.input_shape != first.input_shape:
                raise VictimMismatchError(
                    f"Cannot pool candidates of shape {s.input_shape} with candidates of shape {first.input_shape}."
                )
        identities = [victim_identity(s.victim) for s in sets]
        if len(set(identities)) > 1:
            raise VictimMismatchError(
                f"Cannot pool candidates of different victims; pass candidates of one victim. Got {identities}."
            )
        offsets = torch.tensor([0] + [len(s.sources) for s in sets]).cumsum(0).tolist()
        source = torch.cat([s.source + torch.tensor([offsets[i], 0]) for i, s in enumerate(sets)])
        victim = next((s.victim for s in sets if s.victim.get("run_dir")), first.victim)
        return cls(
            torch.cat([s.x for s in sets]),
            torch.cat([s.lam for s in sets]),
            torch.cat([s.y for s in sets]),
            source,
            tuple(src for s in sets for src in s.sources),
            victim,
        )


def victim_identity(victim: Mapping[str, Any]) -> str | None:
    """What makes two candidate sets comparable: the victim's weights fingerprint, else its directory."""
    return victim.get("fingerprint") or victim.get("run_dir") or None


def _legacy_victim(directory: Path) -> dict[str, Any]:
    manifest = directory / RECONSTRUCTION_FILE
    victim = read_json(manifest).get("victim") if manifest.is_file() else None
    if not isinstance(victim, dict):
        return {}
    out = dict(victim)
    run_dir = out.get("run_dir")
    if run_dir:  # a relative path is taken from the working directory; failing that, from the run's directory
        path = Path(run_dir)
        if not path.is_absolute() and not path.exists() and (directory / path).exists():
            path = directory / path
        out["run_dir"] = str(path.resolve())
    return out
