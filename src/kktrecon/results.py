"""What an evaluation computes, as plain data: the per-image scores, the verdict, the whole result.

Neutral ground between two stages: :mod:`kktrecon.evaluation` fills these dataclasses and
:mod:`kktrecon.reporting` draws them, and neither imports the other (a test checks the import
graph). Nothing here computes: evaluation's ``scores.py``, ``toy.py``, ``verdict.py`` and
``pipeline.py`` fill the fields (and re-export the classes under their old names).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["EvaluationResult", "Scores", "ToyScores", "Verdict"]


@dataclass(frozen=True)
class Scores:
    """Per-training-image scores of a candidate set (all tensors have length n, float64 unless noted).

    Attributes:
        match: index of the matched candidate (int64), -1 when the image has none (best buddies only).
        ncc: NCC distance to the matched candidate (NaN when unmatched).
        ssim_reference: SSIM of the min-max scaled candidate + mean (the paper's protocol); 0 when unmatched.
        ssim_aligned: SSIM of the scale-aligned candidate + mean, clipped to [0, 1]; 0 when unmatched.
        psnr: PSNR in dB of the aligned candidate (data range 1, capped at 100); NaN when unmatched.
        scale: the least-squares scale ``c >= 0`` applied to the candidate (NaN when unmatched).
        aligned: the aligned candidate images in [0, 1], shape (n, C, H, W); zeros when unmatched.
    """

    match: Tensor
    ncc: Tensor
    ssim_reference: Tensor
    ssim_aligned: Tensor
    psnr: Tensor
    scale: Tensor
    aligned: Tensor


@dataclass(frozen=True)
class ToyScores:
    """Per-training-point scores of a candidate set in the 2-D toy.

    Attributes:
        match: index of the nearest candidate (int64), -1 when none (best buddies only).
        distance: Euclidean distance to the matched candidate (inf when unmatched).
    """

    match: Tensor
    distance: Tensor


@dataclass(frozen=True)
class Verdict:
    """Per training image (all tensors length n): recovered or not, and the baselines to read it against.

    Attributes:
        recovered: bool; a candidate whose nearest pool image is this one has aligned SSIM > threshold.
        candidate: the candidate that recovers it (the best such candidate), -1 when none does.
        ssim: that candidate's aligned SSIM (the best among candidates that chose this image; 0 if none).
        images: that candidate, scale-aligned, in [0, 1] (zeros if none), for the figures.
        distance_ratio: d(ĉ, xᵢ) / min_h d(ĉ, h) for the matched candidate ĉ (NaN without held-out images).
        held_out_index: index of xᵢ's NCC-nearest held-out image (-1 without held-out images).
        held_out_ssim: that look-alike's aligned SSIM with xᵢ (0 without held-out images).
        held_out_images: those look-alikes, scale-aligned, in [0, 1] (for the figures).
        chance_ssim: aligned SSIM of xᵢ's nearest other training image (0 when n < 2).
        candidate_real: per *candidate* (m,): its nearest pool image is a training image and their
            aligned SSIM exceeds the threshold (what an attacker's ranking is judged against).
        candidate_nearest: per candidate (m,): the training image nearest to it when that is its
            nearest pool image, else -1 (nearest to a held-out image).
    """

    recovered: Tensor
    candidate: Tensor
    ssim: Tensor
    images: Tensor
    distance_ratio: Tensor
    held_out_index: Tensor
    held_out_ssim: Tensor
    held_out_images: Tensor
    chance_ssim: Tensor
    candidate_real: Tensor
    candidate_nearest: Tensor


@dataclass
class EvaluationResult:
    """Everything :func:`kktrecon.evaluation.evaluate_candidates` computed, ready to write or plot.

    Attributes:
        metrics: the summary written to ``metrics.json``.
        rows: one dict per training sample, the rows of ``per_sample.csv``.
        scores: :class:`Scores` (images) or :class:`ToyScores` (2-D toy).
        is_image: whether the task is an image task.
        labels: training labels (n,), as the dataset gives them (0/1 for binary tasks).
        outputs: the model's output Φ(xᵢ) (binary) or the true-class logit (multiclass), shape (n,).
        margins: yᵢΦ(xᵢ) with yᵢ = ±1 (binary), Φ_y − max_{k≠y} Φ_k (multiclass), shape (n,).
        class_names: names of the classes, indexed by label.
        train_images: training images + mean in [0, 1] (images only).
        points: training points (toy only).
        candidates: the (pooled) candidates: points (toy), or images as the attack made them (mean-subtracted).
        candidate_labels: the candidates' labels (toy only).
        toy_grid: (xs, ys, Φ) on a grid for the decision boundary plot (toy with a model only).
        verdict: which training images were recovered, with their baselines (images only).
        out_dir: where :func:`kktrecon.evaluation.write_evaluation` wrote the files, once it has.
        files: the files written, by name.
    """

    metrics: dict[str, Any]
    rows: list[dict[str, Any]]
    scores: Scores | ToyScores
    is_image: bool
    labels: Tensor
    outputs: Tensor
    margins: Tensor
    class_names: tuple[str, ...]
    train_images: Tensor | None = None
    points: Tensor | None = None
    candidates: Tensor | None = None
    candidate_labels: Tensor | None = None
    toy_grid: tuple[Any, Any, Any] | None = None
    verdict: Verdict | None = None
    out_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
