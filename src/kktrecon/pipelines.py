"""Stages composed one level above them: evaluate, then draw the figures.

Evaluation computes results and writes ``metrics.json`` and ``per_sample.csv``; reporting draws.
The two never import each other (``tests/test_architecture.py`` checks it), so the step that runs one
after the other lives here: each function passes :func:`kktrecon.reporting.save_figures` as the
``draw`` hook of its evaluation counterpart, which calls it before ``metrics.json`` lists the files.
:func:`evaluate` is what :func:`kktrecon.evaluate` and ``kktrecon evaluate`` run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kktrecon.evaluation as evaluation
from kktrecon.reporting import save_figures

if TYPE_CHECKING:
    import torch

    from kktrecon.evaluation import EvaluationConfig
    from kktrecon.results import EvaluationResult

__all__ = ["evaluate", "write_evaluation"]


def evaluate(
    rec_dirs: str | Path | Sequence[str | Path],
    config: EvaluationConfig | None = None,
    *,
    figures: bool = True,
    data_root: str | Path | None = None,
    device: str | torch.device = "cpu",
    out_dir: str | Path | None = None,
    force: bool = False,
    **overrides: Any,
) -> EvaluationResult:
    """Score reconstructions against the victim's training set and draw the paper's figures beside the metrics.

    Every argument but ``figures`` is :func:`kktrecon.evaluation.evaluate`'s.

    Args:
        rec_dirs: reconstruction directory or directories of the same victim (pooled).
        config: matching and counting settings; keyword ``overrides`` replace its fields.
        figures: draw ``fig_pairs.png`` and ``fig_ssim_vs_output.png`` (images; ``fig_attacker.png``
            for a ranked sweep pool) or ``fig_toy.png`` (toy).
        data_root: where the datasets live (None: the data layer's default).
        device: where to run the victim and the scoring.
        out_dir: where to write; defaults to the first reconstruction directory.
        force: replace an earlier evaluation in the output directory (refused otherwise).

    Returns:
        The :class:`~kktrecon.results.EvaluationResult`, with ``out_dir`` and ``files`` set.
    """
    return evaluation.evaluate(
        rec_dirs,
        config,
        data_root=data_root,
        device=device,
        out_dir=out_dir,
        draw=save_figures if figures else None,
        force=force,
        **overrides,
    )


def write_evaluation(result: EvaluationResult, out_dir: str | Path, *, figures: bool = True) -> dict[str, Path]:
    """Write ``metrics.json``, ``per_sample.csv`` and (optionally) the figures of ``result`` into ``out_dir``.

    Args:
        result: what :func:`kktrecon.evaluation.evaluate_candidates` returned.
        out_dir: the directory to write into (created when missing).
        figures: also draw the figures, as :func:`evaluate` does.

    Returns:
        The written files by name; also stored in ``result.files``.
    """
    return evaluation.write_evaluation(result, out_dir, draw=save_figures if figures else None)
