"""Pooling a sweep: the candidates of its best trials, without duplicates, ranked as an attacker would.

An attacker who ran a sweep holds many candidate sets and no training set. Pooling takes the top
trials by the sweep's objective, scores every candidate by the oracle-free evidence of
:mod:`kktrecon.sweeps.selection` (agreement between trials, margin, multiplier) and orders them so
that one candidate per cluster of near-duplicates comes first, best first, and the near-duplicates
after them. Near-duplicates are kept: two blurry candidates within the agreement distance can be
different digits, and dropping all but the best-scored one lost recoveries (a sweep's top trial,
13 of 20 recovered alone, 8–9 after dropping them at τ = 0.4, 0.2 or 0.1). The pooled set is an
ordinary candidate set: the evaluation scores it against the training set (the oracle verdict)
beside the attacker's ranking.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save as st_save

from kktrecon.attack.objectives import default_objective, get_objective
from kktrecon.errors import ConfigError
from kktrecon.evaluation.candidates import PooledCandidates, load_candidates
from kktrecon.runs import (
    CANDIDATES_FILE,
    POOL_DIR,
    RANKING_FILE,
    RECONSTRUCTION_FILE,
    atomic_write_bytes,
    atomic_write_json,
    read_json,
)
from kktrecon.sweeps.selection import Features, candidate_features, duplicates, rank
from kktrecon.sweeps.study import RESULTS_FILE, SWEEP_FILE, SweepVictim, load_sweep_config

__all__ = ["POOL_DIR", "SweepPool", "pool_sweep", "pooled_features", "write_pool"]

SCORE_TEXT = (
    "oracle-free: the victim's margin yΦ(x) on the candidate with its attack label (ties: how many other trials "
    "found it), among the trials with the lowest stationarity residual"
)


def pooled_features(victim: SweepVictim, rec_dirs: Sequence[Path], *, tau: float) -> tuple[PooledCandidates, Features]:
    """The candidates of ``rec_dirs`` pooled, with their oracle-free features."""
    pooled = load_candidates(list(rec_dirs))
    model = copy.deepcopy(victim.model).to(torch.float64).eval()
    with torch.no_grad():
        outputs = model(pooled.x[:1]).shape[1]
    name = victim.objective or pooled.configs[0].get("objective") or default_objective(outputs).name
    features = candidate_features(
        model, get_objective(name), pooled.x, pooled.lam, pooled.y, pooled.provenance[:, 0], tau=tau,
        downsample=victim.downsample,
    )  # fmt: skip
    return pooled, features


@dataclass(frozen=True)
class SweepPool:
    """The pooled candidates of a sweep's top trials: distinct ones best first, then their near-duplicates."""

    x: torch.Tensor
    lam: torch.Tensor
    y: torch.Tensor
    provenance: torch.Tensor  # (run, index) into ``rec_dirs``
    features: Features
    duplicate_of: torch.Tensor  # position (in this pool) of the distinct candidate it duplicates; -1: distinct
    rec_dirs: tuple[Path, ...]
    victim: Path | None


def pool_sweep(sweep_dir: str | Path, victim: SweepVictim | None = None, *, top: int = 8) -> SweepPool:
    """Pool the ``top`` trials of a sweep by its objective (see the module docstring).

    ``victim``: the sweep's victim; read from ``sweep.json`` when it is a run directory.
    """

    sweep_dir = Path(sweep_dir)
    config = load_sweep_config(sweep_dir)
    rows = read_json(sweep_dir / RESULTS_FILE)["trials"]
    done = [r for r in rows if r["state"] == "COMPLETE"]
    key = "value" if config.objective == "oracle" else "kkt_score"
    best = sorted(done, key=lambda r: r.get(key) or 0.0, reverse=True)[:top]
    if victim is None:
        recorded = read_json(sweep_dir / SWEEP_FILE).get("victim")
        if not recorded:
            raise ConfigError(f"{sweep_dir} swept a model held in memory: pass it as `victim` to pool the sweep.")
        victim = SweepVictim.of(recorded)
    pooled, features = pooled_features(victim, [Path(r["dir"]) for r in best], tau=config.tau)
    order = rank(features)
    representative = duplicates(pooled.x, order, tau=config.tau, downsample=victim.downsample)
    distinct = representative[order] == order
    keep = torch.cat([order[distinct], order[~distinct]])
    position = torch.empty_like(keep)
    position[keep] = torch.arange(len(keep))
    duplicate_of = torch.where(representative[keep] == keep, -1, position[representative[keep]])
    pick = lambda t: t[keep]  # noqa: E731
    kept = Features(*(pick(getattr(features, f)) for f in ("trial", "support", "margin", "weight", "score")))
    return SweepPool(pick(pooled.x), pick(pooled.lam), pick(pooled.y), pick(pooled.provenance), kept,
                     duplicate_of, pooled.rec_dirs, victim.path)  # fmt: skip


def write_pool(sweep_dir: str | Path, victim: SweepVictim | None = None, *, top: int = 8) -> Path:
    """Write the pooled candidates of a sweep as a reconstruction directory ``SWEEP_DIR/pool``.

    It holds ``candidates.safetensors`` (best first), ``reconstruction.json`` (its victim and source
    trials) and ``ranking.json`` (the attacker's evidence per candidate), so that ``kktrecon evaluate
    SWEEP_DIR`` scores it like any reconstruction and shows the attacker's ranking beside the verdict.
    """
    sweep_dir = Path(sweep_dir)
    pool = pool_sweep(sweep_dir, victim, top=top)
    out = sweep_dir / POOL_DIR
    tensors = {"x": pool.x, "lam": pool.lam, "y": pool.y}
    atomic_write_bytes(out / CANDIDATES_FILE, st_save({k: v.contiguous().cpu() for k, v in tensors.items()}))
    f = pool.features
    ranking = [
        {
            "rank": i,
            "trial_dir": str(pool.rec_dirs[int(pool.provenance[i, 0])]),
            "index": int(pool.provenance[i, 1]),
            "score": float(f.score[i]),
            "support": int(f.support[i]),
            "margin": float(f.margin[i]),
            "weight": float(f.weight[i]),
            "duplicate_of": int(pool.duplicate_of[i]) if pool.duplicate_of[i] >= 0 else None,
        }
        for i in range(len(f.score))
    ]
    atomic_write_json(out / RANKING_FILE, {"criterion": SCORE_TEXT, "candidates": ranking})
    atomic_write_json(out / RECONSTRUCTION_FILE, {
        "format": "kktrecon.pool/1", "candidates": len(ranking),
        "victim": {"run_dir": str(pool.victim) if pool.victim else None, "fingerprint": _fingerprint(pool.rec_dirs)},
        "sources": [str(d) for d in pool.rec_dirs], "selection": SCORE_TEXT, "config": {"top_trials": top},
        "loss_history": [],
    })  # fmt: skip
    return out


def _fingerprint(rec_dirs: tuple[Path, ...]) -> str | None:
    return (read_json(rec_dirs[0] / RECONSTRUCTION_FILE).get("victim") or {}).get("fingerprint")
