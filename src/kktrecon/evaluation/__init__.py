"""Evaluation: which training samples did a reconstruction recover, and how well.

Implements the evaluation protocol of Haim, Vardi, Yehudai, Shamir & Irani, *Reconstructing Training
Data from Trained Neural Networks* (NeurIPS 2022), §5 and the released code
(``nivha/dataset_reconstruction``, ``evaluations.py``), and reads every count against a baseline.

What lives here (pure functions on tensors apart from the file-level pipeline):

- ``matching.py``: NCC distance (CIFAR-10 at half resolution) and nearest / best-buddy matching.
- ``scores.py``: SSIM (kornia, window 3) as the paper (min-max) and scale-aligned, PSNR, summaries.
- ``verdict.py``: baselines a count is read against: the chance level of look-alike training images.
- ``toy.py``: the 2-D toy's score: points with a candidate nearby, on and off the margin.
- ``membership.py``: membership evidence: ROC of a per-image score over training vs held-out images
  (TPR at 1 % and 0.1 % FPR, AUC), e.g. the residual outside the first layer's change.
- ``outputs.py``: the victim's outputs and margins on its training samples.
- ``candidates.py``: reading and pooling reconstruction directories of one victim.
- ``pipeline.py``: :func:`evaluate_candidates` (in memory) and :func:`evaluate` (files in, metrics and
  ``per_sample.csv`` out; figures through a ``draw`` function it is given).

The result dataclasses live in ``kktrecon.results`` and the oracle-free tensor helpers (NCC distance,
chunked forward) in ``kktrecon.tensors``, so that reporting and the sweep need not import this
package; both are re-exported here.

What does not: drawing (``kktrecon.reporting``; the two never import each other, and
``kktrecon.pipelines`` composes them: :func:`kktrecon.evaluate` evaluates, then draws) and the attack.
"""

from __future__ import annotations

from kktrecon.errors import VictimMismatchError
from kktrecon.evaluation.candidates import load_candidates
from kktrecon.evaluation.matching import match_nearest, ncc_distance
from kktrecon.evaluation.membership import membership_metrics, roc_auc, tpr_at_fpr
from kktrecon.evaluation.oracle import oracle_score
from kktrecon.evaluation.pipeline import (
    EvaluationConfig,
    EvaluationResult,
    FigureWriter,
    evaluate,
    evaluate_candidates,
    write_evaluation,
)
from kktrecon.evaluation.scores import SSIM_WINDOW, Scores, align_scale, score_candidates, ssim_per_image
from kktrecon.evaluation.toy import ToyScores, score_toy
from kktrecon.evaluation.verdict import chance_level

__all__ = [
    "SSIM_WINDOW",
    "EvaluationConfig",
    "EvaluationResult",
    "FigureWriter",
    "Scores",
    "ToyScores",
    "VictimMismatchError",
    "align_scale",
    "chance_level",
    "evaluate",
    "evaluate_candidates",
    "load_candidates",
    "match_nearest",
    "membership_metrics",
    "ncc_distance",
    "oracle_score",
    "roc_auc",
    "score_candidates",
    "score_toy",
    "ssim_per_image",
    "tpr_at_fpr",
    "write_evaluation",
]
