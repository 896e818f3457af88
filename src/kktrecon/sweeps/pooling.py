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

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from kktrecon.attack.victim import Victim
from kktrecon.candidates import CandidateSet
from kktrecon.errors import ConfigError
from kktrecon.files import POOL_DIR, RANKING_FILE, RECONSTRUCTION_FILE, atomic_write_json, read_json
from kktrecon.sweeps.config import RESULTS_FILE, SWEEP_FILE, load_sweep_config
from kktrecon.sweeps.selection import Features, candidate_features, duplicates, rank

__all__ = ["POOL_DIR", "SweepPool", "pool_sweep", "pooled_features", "write_pool"]

SCORE_TEXT = (
    "oracle-free: the victim's margin yΦ(x) on the candidate with its attack label (ties: how many other trials "
    "found it), among the trials with the lowest stationarity residual"
)


def pooled_features(victim: Victim, rec_dirs: Sequence[Path], *, tau: float) -> tuple[CandidateSet, Features]:
    """The candidates of ``rec_dirs`` pooled (one source per directory), with their oracle-free features."""
    pooled = CandidateSet.concatenate([CandidateSet.load(d) for d in rec_dirs]).to(dtype=torch.float64)
    model = victim.on(torch.device("cpu"), torch.float64)
    objective = victim.objective(victim.recorded_objective or pooled.victim.get("objective"))
    features = candidate_features(
        model, objective, pooled.x, pooled.lam, pooled.y, pooled.source[:, 0], tau=tau, downsample=victim.downsample,
    )  # fmt: skip
    return pooled, features


@dataclass(frozen=True)
class SweepPool:
    """The pooled candidates of a sweep's top trials: distinct ones best first, then their near-duplicates.

    ``candidates.sources`` are the trials (their directories), ``candidates.source`` each candidate's
    (trial, index); ``duplicate_of`` is the position (in this pool) of the distinct candidate it
    duplicates, −1 for a distinct one.
    """

    candidates: CandidateSet
    features: Features
    duplicate_of: torch.Tensor

    @property
    def x(self) -> torch.Tensor:
        return self.candidates.x


def pool_sweep(sweep_dir: str | Path, victim: Victim | None = None, *, top: int = 8) -> SweepPool:
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
        victim = Victim.from_run(recorded)
    pooled, features = pooled_features(victim, [Path(r["dir"]) for r in best], tau=config.tau)
    order = rank(features)
    representative = duplicates(pooled.x, order, tau=config.tau, downsample=victim.downsample)
    distinct = representative[order] == order
    keep = torch.cat([order[distinct], order[~distinct]])
    position = torch.empty_like(keep)
    position[keep] = torch.arange(len(keep))
    duplicate_of = torch.where(representative[keep] == keep, -1, position[representative[keep]])
    kept = Features(*(getattr(features, f)[keep] for f in ("trial", "support", "margin", "weight", "score")))
    return SweepPool(pooled.take(keep), kept, duplicate_of)


def write_pool(sweep_dir: str | Path, victim: Victim | None = None, *, top: int = 8) -> Path:
    """Write the pooled candidates of a sweep as a candidate directory ``SWEEP_DIR/pool``.

    It holds ``candidates.safetensors`` (best first, each with its trial and index), ``reconstruction.json``
    (its victim and source trials) and ``ranking.json`` (the attacker's evidence per candidate), so that
    ``kktrecon evaluate SWEEP_DIR`` scores it like any reconstruction and shows the ranking beside the verdict.
    """
    sweep_dir = Path(sweep_dir)
    pool = pool_sweep(sweep_dir, victim, top=top)
    out = sweep_dir / POOL_DIR
    c = pool.candidates
    c.save(out)
    f = pool.features
    ranking = [
        {
            "rank": i,
            "trial_dir": c.sources[int(c.source[i, 0])]["dir"],
            "index": int(c.source[i, 1]),
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
        "victim": {"run_dir": c.victim.get("run_dir"), "fingerprint": c.victim.get("fingerprint")},
        "sources": [s["dir"] for s in c.sources], "selection": SCORE_TEXT, "config": {"top_trials": top},
        "loss_history": [],
    })  # fmt: skip
    return out
