"""The sweep's research-only ``oracle`` objective: a trial scored by the verdict against the training set.

It lives with the evaluation, not with the sweep, so that the sweep's own modules never import the
training data; a caller that wants the oracle hands :func:`oracle_score` to :func:`kktrecon.sweep`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

__all__ = ["oracle_score"]


def oracle_score(data_root: str | Path | None = None) -> Callable[[Path], float]:
    """A score of a reconstruction directory: how many training images its candidates recover (the verdict)."""

    def score(rec_dir: Path) -> float:
        from kktrecon.evaluation.pipeline import evaluate

        result = evaluate(rec_dir, data_root=data_root, device="cpu", force=True)
        return float(result.metrics.get("n_recovered") or 0)

    return score
