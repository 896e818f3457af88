"""Evaluation: which training samples did a reconstruction recover, and how well.

Implements the evaluation protocol of Haim, Vardi, Yehudai, Shamir & Irani, *Reconstructing Training
Data from Trained Neural Networks* (NeurIPS 2022), §5 and the released code
(``nivha/dataset_reconstruction``, ``evaluations.py``):

1. **Matching.** Each training image is paired with its nearest candidate under the normalised
   cross-correlation (NCC) distance: every image (after optional bicubic downsampling, 2× for CIFAR)
   is standardised per channel, and the distance is the squared L2 distance divided by the number
   of entries. With *best buddies* a pair counts only when the two are mutual nearest neighbours, so
   one candidate can never explain two training images.
2. **Scoring.** Two SSIMs per training image, both the mean of ``kornia.metrics.ssim(window_size=3)``:

   - ``ssim_reference`` — the paper's protocol: candidate + training mean, min-max scaled to [0, 1],
     against training image + mean.
   - ``ssim_aligned`` — the candidate is first scaled by ``c = max(0, <x̂, x>/<x̂, x̂>)`` (the
     least-squares fit onto the mean-subtracted training image), then + mean and clipped to [0, 1].
     A network without a first-layer bias is 1-homogeneous in its input, so it cannot tell ``c·x``
     from ``x``: the scale of a candidate is not identifiable and min-max scaling punishes good
     candidates with the wrong scale. ``c`` is never negative — a sign flip is a different image.

   SSIM > 0.4 counts as reconstructed (the paper's threshold). As a chance level, the same scores
   are computed for each training image against its nearest *other* training image
   (:func:`chance_level`): on MNIST an unrelated digit already scores about 0.45–0.5 aligned
   (0.6–0.7 min-max), since flat black backgrounds match perfectly under a 3×3 window.
3. **The 2-D toy** (the paper's Fig. 2) has no images: each training point's distance to its
   nearest candidate, and how many points have one within a radius, split into points on the margin
   (the KKT support, λᵢ > 0) and off it.

The core (:func:`ncc_distance`, :func:`match_nearest`, :func:`ssim_per_image`,
:func:`score_candidates`, :func:`chance_level`, :func:`score_toy`, :func:`evaluate_candidates`) works on
tensors; the
file-level :func:`evaluate` loads reconstruction and victim directories, pools candidates of several
reconstructions of one victim, and writes ``metrics.json``, ``per_sample.csv`` and the figures.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kktrecon.reconstruction import CANDIDATES_FILE
from kktrecon.reconstruction import MANIFEST_FILE as RECONSTRUCTION_FILE
from kktrecon.runs import (
    atomic_write_json,
    atomic_write_text,
    config_from_dict,
    package_versions,
    read_json,
    resolve_device,
)

__all__ = [
    "EvaluationResult",
    "Scores",
    "ToyScores",
    "VictimMismatchError",
    "align_scale",
    "chance_level",
    "evaluate",
    "evaluate_candidates",
    "load_candidates",
    "match_nearest",
    "ncc_distance",
    "score_candidates",
    "score_toy",
    "ssim_per_image",
    "write_evaluation",
]

METRICS_FILE = "metrics.json"
PER_SAMPLE_FILE = "per_sample.csv"

SSIM_WINDOW = 3
# PSNR of an exact copy is infinite; cap it (MSE floor 1e-10 -> 100 dB) so that JSON and medians stay finite.
_MSE_FLOOR = 1e-10
# Outputs are computed in chunks so that a convolutional victim on a large pool fits in memory.
_FORWARD_CHUNK = 1024


class VictimMismatchError(ValueError):
    """Reconstruction directories to be pooled come from different victims (or input shapes)."""


# --------------------------------------------------------------------------------------------------
# Pure core
# --------------------------------------------------------------------------------------------------


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


def _check_images(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] not in (1, 3):
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"Expected `{name}` to be a (N, C, H, W) tensor with C in (1, 3). Got {shape}.")


def _downsample(x: Tensor, factor: int) -> Tensor:
    if factor == 1:
        return x
    return torch.nn.functional.interpolate(x, scale_factor=1 / factor, mode="bicubic")


def _standardise(x: Tensor) -> Tensor:
    # Per image and channel, with the unbiased std, as the reference's `normalize_batch`. A constant
    # channel has std 0; the floor maps it to zeros instead of NaN.
    flat = x.flatten(2)
    mean = flat.mean(dim=2, keepdim=True)
    std = flat.std(dim=2, keepdim=True).clamp_min(1e-12) if flat.shape[2] > 1 else torch.ones_like(mean)
    return ((flat - mean) / std).flatten(1)


def ncc_distance(a: Tensor, b: Tensor, *, downsample: int = 1) -> Tensor:
    """Pairwise normalised cross-correlation distance between two image sets.

    Each image is (optionally) downsampled by ``downsample`` with bicubic interpolation, standardised
    per channel (minus its mean, divided by its unbiased std), flattened, and compared by squared L2
    distance divided by the number of entries D. For standardised vectors this is ``2(1 - ρ)`` up
    to the (D-1)/D factor of the unbiased std, with ρ the Pearson correlation.

    Args:
        a: images of shape (n, C, H, W).
        b: images of shape (m, C, H, W).
        downsample: integer factor applied to both sets before comparing (1: full resolution).

    Returns:
        Tensor of shape (n, m), float64.

    Example:
        >>> x = torch.rand(3, 1, 8, 8)
        >>> d = ncc_distance(x, x)
        >>> bool((d.diagonal() < 1e-9).all())
        True
    """
    _check_images("a", a)
    _check_images("b", b)
    _check_downsample(downsample)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"Expected `a` and `b` to share an image shape. Got {tuple(a.shape)} and {tuple(b.shape)}.")
    a = _standardise(_downsample(a.to(torch.float64), downsample))
    b = _standardise(_downsample(b.to(a.device, torch.float64), downsample))
    dim = a.shape[1]
    dist = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return dist.clamp_min(0.0) / dim


def _check_downsample(downsample: int) -> None:
    if not isinstance(downsample, int) or isinstance(downsample, bool) or downsample < 1:
        raise ValueError(f"Expected `downsample` to be a positive integer. Got {downsample!r}.")


def match_nearest(dist: Tensor, *, best_buddies: bool = False) -> Tensor:
    """For each row (training sample) the column (candidate) at the smallest distance.

    Args:
        dist: distances of shape (n, m), m >= 1.
        best_buddies: keep a match only when the row is also the candidate's nearest row (mutual
            nearest neighbours), so that no candidate serves two training samples.

    Returns:
        int64 tensor of shape (n,), -1 where a row has no match. Ties go to the lowest index.
    """
    if dist.dim() != 2 or dist.shape[1] == 0:
        raise ValueError(f"Expected `dist` to be an (n, m) matrix with m >= 1. Got {tuple(dist.shape)}.")
    match = dist.argmin(dim=1)
    if best_buddies:
        nearest_row = dist.argmin(dim=0)
        rows = torch.arange(dist.shape[0], device=dist.device)
        match = torch.where(nearest_row[match] == rows, match, torch.full_like(match, -1))
    return match


def ssim_per_image(a: Tensor, b: Tensor) -> Tensor:
    """Mean of the ``kornia.metrics.ssim(a, b, window_size=3)`` map per image (data range 1).

    Args:
        a: images of shape (n, C, H, W), values in [0, 1].
        b: images of the same shape.

    Returns:
        Tensor of shape (n,).
    """
    import kornia.metrics

    if a.shape[0] == 0:
        return torch.zeros(0, dtype=a.dtype, device=a.device)
    return kornia.metrics.ssim(a, b, window_size=SSIM_WINDOW, max_val=1.0).flatten(1).mean(dim=1)


def align_scale(candidates: Tensor, targets: Tensor) -> Tensor:
    """Least-squares non-negative scale of each candidate onto its target.

    ``c = max(0, <x̂, x> / <x̂, x̂>)``, computed over all entries of each pair; 0 for an all-zero
    candidate. Both are in the mean-subtracted space the network sees.

    Args:
        candidates: tensor of shape (n, ...).
        targets: tensor of the same shape.

    Returns:
        Tensor of shape (n,).

    Example:
        >>> x = torch.randn(2, 1, 4, 4)
        >>> align_scale(0.1 * x, x)
        tensor([10., 10.])
    """
    a = candidates.flatten(1)
    b = targets.flatten(1)
    num = (a * b).sum(1)
    den = (a * a).sum(1)
    scale = torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(num))
    return scale.clamp_min(0.0)


def _minmax(x: Tensor) -> Tensor:
    flat = x.flatten(1)
    lo = flat.min(dim=1).values.view(-1, *([1] * (x.dim() - 1)))
    hi = flat.max(dim=1).values.view(-1, *([1] * (x.dim() - 1)))
    # A constant image maps to zeros rather than NaN.
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def score_candidates(
    candidates: Tensor,
    train_images: Tensor,
    mean: Tensor,
    *,
    downsample: int = 1,
    best_buddies: bool = False,
) -> Scores:
    """Match every training image to a candidate and score the pair (see the module docstring).

    Args:
        candidates: reconstructed images, mean-subtracted, shape (m, C, H, W), C in (1, 3).
        train_images: training images, mean-subtracted, shape (n, C, H, W).
        mean: the per-pixel training mean, shape (C, H, W); image + mean is in [0, 1].
        downsample: bicubic downsampling factor applied before NCC matching (1 for MNIST, 2 for CIFAR).
        best_buddies: keep only mutual nearest neighbours; unmatched images get SSIM 0.

    Returns:
        :class:`Scores` with one entry per training image.

    Raises:
        ValueError: on shapes that do not fit together or an empty candidate set.

    Example:
        >>> train = torch.rand(4, 1, 8, 8) - 0.5
        >>> s = score_candidates(train.flip(0), train, torch.full((1, 8, 8), 0.5))
        >>> s.match.tolist()
        [3, 2, 1, 0]
        >>> bool((s.ssim_aligned > 0.999).all())
        True
    """
    _check_images("candidates", candidates)
    _check_images("train_images", train_images)
    if candidates.shape[1:] != train_images.shape[1:]:
        raise ValueError(
            f"Expected `candidates` to have the training images' shape {tuple(train_images.shape[1:])}. "
            f"Got {tuple(candidates.shape[1:])}."
        )
    if candidates.shape[0] == 0:
        raise ValueError("Expected `candidates` to hold at least one candidate. Got 0.")
    if tuple(mean.shape) != tuple(train_images.shape[1:]):
        raise ValueError(f"Expected `mean` of shape {tuple(train_images.shape[1:])}. Got {tuple(mean.shape)}.")

    device = train_images.device
    cand = candidates.to(device, torch.float64)
    train = train_images.to(torch.float64)
    mean = mean.to(device, torch.float64)

    dist = ncc_distance(train, cand, downsample=downsample)
    return _score_matches(cand, train, mean, dist, match_nearest(dist, best_buddies=best_buddies))


def _score_matches(cand: Tensor, train: Tensor, mean: Tensor, dist: Tensor, match: Tensor) -> Scores:
    matched = match >= 0
    safe = match.clamp_min(0)
    picked = cand[safe]

    reference = _minmax(picked + mean)
    target = (train + mean).clamp(0.0, 1.0)
    scale = align_scale(picked, train)
    aligned = (scale.view(-1, 1, 1, 1) * picked + mean).clamp(0.0, 1.0)

    ssim_reference = ssim_per_image(reference, target)
    ssim_aligned = ssim_per_image(aligned, target)
    mse = (aligned - target).pow(2).flatten(1).mean(1).clamp_min(_MSE_FLOOR)
    psnr = -10.0 * torch.log10(mse)

    nan = torch.full_like(psnr, math.nan)
    zero = torch.zeros_like(psnr)
    return Scores(
        match=match,
        ncc=torch.where(matched, dist.gather(1, safe[:, None])[:, 0], nan),
        ssim_reference=torch.where(matched, ssim_reference, zero),
        ssim_aligned=torch.where(matched, ssim_aligned, zero),
        psnr=torch.where(matched, psnr, nan),
        scale=torch.where(matched, scale, nan),
        aligned=aligned * matched.view(-1, 1, 1, 1),
    )


def chance_level(train_images: Tensor, mean: Tensor, *, downsample: int = 1) -> Scores:
    """Scores of each training image against its NCC-nearest *other* training image (leave one out).

    A baseline for reading SSIM: on MNIST a different digit of the training set, scale-aligned,
    already reaches SSIM ≈ 0.45–0.5 (min-max: ≈ 0.6–0.7), because flat black backgrounds score
    ≈ 1 with a 3×3 window. A reconstruction is convincing where it clearly beats this level.

    Args:
        train_images: training images, mean-subtracted, shape (n, C, H, W), n >= 2.
        mean: the per-pixel training mean, shape (C, H, W).
        downsample: as in :func:`score_candidates`.

    Returns:
        :class:`Scores`; ``match`` indexes the training set.
    """
    _check_images("train_images", train_images)
    if train_images.shape[0] < 2:
        raise ValueError(
            f"Expected at least two training images for a leave-one-out baseline. Got {len(train_images)}."
        )
    train = train_images.to(torch.float64)
    mean = mean.to(train.device, torch.float64)
    dist = ncc_distance(train, train, downsample=downsample)
    dist.fill_diagonal_(math.inf)
    return _score_matches(train, train, mean, dist, match_nearest(dist))


def score_toy(candidates: Tensor, points: Tensor, *, best_buddies: bool = False) -> ToyScores:
    """Match each training point of a low-dimensional toy to its nearest candidate (Euclidean).

    Args:
        candidates: shape (m, d).
        points: training points, shape (n, d), in the same (mean-subtracted) coordinates.
        best_buddies: keep only mutual nearest neighbours.

    Returns:
        :class:`ToyScores`.

    Example:
        >>> s = score_toy(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([[1.0, 0.1]]))
        >>> s.match.tolist(), round(s.distance.item(), 3)
        ([1], 0.1)
    """
    if candidates.dim() != 2 or points.dim() != 2 or candidates.shape[1] != points.shape[1]:
        raise ValueError(
            "Expected `candidates` and `points` to be (m, d) and (n, d) tensors. "
            f"Got {tuple(candidates.shape)} and {tuple(points.shape)}."
        )
    if candidates.shape[0] == 0:
        raise ValueError("Expected `candidates` to hold at least one candidate. Got 0.")
    pts = points.to(torch.float64)
    dist = torch.cdist(pts, candidates.to(pts.device, torch.float64))
    match = match_nearest(dist, best_buddies=best_buddies)
    matched = match >= 0
    nearest = dist.gather(1, match.clamp_min(0)[:, None])[:, 0]
    return ToyScores(match=match, distance=torch.where(matched, nearest, torch.full_like(nearest, math.inf)))


# --------------------------------------------------------------------------------------------------
# In-memory evaluation (no files)
# --------------------------------------------------------------------------------------------------


@dataclass
class EvaluationResult:
    """Everything :func:`evaluate_candidates` computed, ready to write or plot.

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
        candidates: the (pooled) candidates (toy only; images are summarised by ``scores.aligned``).
        candidate_labels: the candidates' labels (toy only).
        toy_grid: (xs, ys, Φ) on a grid for the decision boundary plot (toy with a model only).
        out_dir: where :func:`write_evaluation` wrote the files, once it has.
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
    out_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)


@torch.no_grad()
def _forward(model: torch.nn.Module, x: Tensor) -> Tensor:
    param = next(iter(model.parameters()), None)
    if param is not None:
        x = x.to(param.device, param.dtype)
    chunks = [model(x[i : i + _FORWARD_CHUNK]) for i in range(0, x.shape[0], _FORWARD_CHUNK)]
    out = torch.cat(chunks) if chunks else model(x)
    return out.detach().to("cpu", torch.float64)


def _outputs_and_margins(raw: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Φ and the margin per sample from raw model outputs (n,), (n, 1) or (n, K)."""
    raw = raw.to("cpu", torch.float64)
    labels = labels.to("cpu")
    if raw.dim() == 1:
        raw = raw[:, None]
    if raw.dim() != 2 or raw.shape[0] != labels.shape[0]:
        raise ValueError(f"Expected model outputs of shape (n, K) with n = {labels.shape[0]}. Got {tuple(raw.shape)}.")
    if raw.shape[1] == 1:
        values = set(labels.unique().tolist())
        if values <= {0, 1}:
            signs = 2.0 * labels.to(torch.float64) - 1.0
        elif values <= {-1, 1}:
            signs = labels.to(torch.float64)
        else:
            raise ValueError(f"Expected binary labels in {{0, 1}} or {{-1, 1}}. Got values {sorted(values)}.")
        return raw[:, 0], signs * raw[:, 0]
    true = raw.gather(1, labels.long()[:, None])[:, 0]
    others = raw.scatter(1, labels.long()[:, None], -math.inf).max(dim=1).values
    return true, true - others


def _normalised(margins: Tensor) -> tuple[Tensor, float]:
    """margin / min margin; NaN when the victim misclassifies a training sample (min margin <= 0)."""
    if margins.numel() == 0:
        return margins.clone(), math.nan
    lo = float(margins.min())
    if lo <= 0:
        return torch.full_like(margins, math.nan), lo
    return margins / lo, lo


def _median(x: Tensor) -> float | None:
    x = x[torch.isfinite(x)]
    return float(x.median()) if x.numel() else None


def _toy_grid(model: torch.nn.Module, points: Tensor, candidates: Tensor) -> tuple[Any, Any, Any]:
    # The reference plots the toy over [-1.5, 1.5]^2; widen it when points or candidates lie outside.
    extent = 1.5
    finite = torch.cat([points.reshape(-1), candidates.reshape(-1)]).abs()
    finite = finite[torch.isfinite(finite)]
    if finite.numel():
        extent = max(extent, 1.05 * float(finite.max()))
    axis = torch.linspace(-extent, extent, 241, dtype=torch.float64)
    gx, gy = torch.meshgrid(axis, axis, indexing="xy")
    raw = _forward(model, torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1))
    phi = raw[:, 0] if raw.shape[1] == 1 else raw.argmax(dim=1).to(torch.float64)
    return gx.numpy(), gy.numpy(), phi.reshape(gx.shape).numpy()


def evaluate_candidates(
    candidates: Tensor,
    x_train: Tensor,
    y_train: Tensor,
    mean: Tensor,
    *,
    model: torch.nn.Module | None = None,
    outputs: Tensor | None = None,
    lam: Tensor | None = None,
    candidate_labels: Tensor | None = None,
    provenance: Tensor | None = None,
    source_index: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    is_image: bool | None = None,
    downsample: int = 1,
    best_buddies: bool = False,
    threshold: float = 0.4,
    toy_radius: float = 0.05,
    margin_tol: float = 0.1,
) -> EvaluationResult:
    """Evaluate a candidate set against a training set held in memory (no files read or written).

    Args:
        candidates: reconstructed inputs, mean-subtracted, shape (m, *input_shape).
        x_train: the victim's training inputs, mean-subtracted, shape (n, *input_shape).
        y_train: training labels (n,): 0/1 (or ±1) for binary tasks, class indices for multiclass.
        mean: the per-pixel training mean, shape input_shape.
        model: the victim; used for Φ(xᵢ) (unless ``outputs`` is given) and for the toy's boundary.
        outputs: the victim's raw outputs on ``x_train``, (n,), (n, 1) or (n, K); computed from
            ``model`` when omitted. One of ``model`` and ``outputs`` is required.
        lam: the candidates' multipliers λ (m,), reported for the matched candidate.
        candidate_labels: the candidates' labels (m,) (±1 for binary), used by the toy figure.
        provenance: (m, 2) int64: the reconstruction run of each candidate (index into the pooled
            runs) and its index within that run. Default: one run, candidates in order.
        source_index: position of each training sample in the source dataset (n,). Default: 0..n-1.
        class_names: names of the classes, indexed by label (for figures).
        is_image: whether inputs are images (N, C, H, W); default: ``x_train.dim() == 4``.
        downsample: bicubic downsampling before NCC matching (1 for MNIST, 2 for CIFAR-10).
        best_buddies: keep only mutual nearest neighbours.
        threshold: SSIM above which a training image counts as reconstructed (0.4 in the paper).
        toy_radius: toy only — a point counts as found when a candidate lies within this distance.
        margin_tol: toy only — a point is on the margin when its normalised margin (margin divided by
            the smallest training margin) is at most ``1 + margin_tol``. The default 0.1 allows for
            finite training: gradient descent on the logistic loss weighs sample i by about
            exp(−qᵢ) (qᵢ its unnormalised margin), so with the smallest margin q near 7–20 a sample
            10 % further out still carries a weight of e^(−0.7)…e^(−2) relative to the support.

    Returns:
        :class:`EvaluationResult` (``out_dir`` None; pass it to :func:`write_evaluation` to save).

    Raises:
        ValueError: on inconsistent shapes or arguments out of range.
    """
    n = x_train.shape[0]
    m = candidates.shape[0]
    if is_image is None:
        is_image = x_train.dim() == 4
    if not (isinstance(threshold, int | float) and -1.0 <= threshold <= 1.0):
        raise ValueError(f"Expected `threshold` to be an SSIM value in [-1, 1]. Got {threshold!r}.")
    if not (isinstance(toy_radius, int | float) and toy_radius > 0):
        raise ValueError(f"Expected `toy_radius` to be a positive number. Got {toy_radius!r}.")
    if not (isinstance(margin_tol, int | float) and margin_tol >= 0):
        raise ValueError(f"Expected `margin_tol` to be a non-negative number. Got {margin_tol!r}.")
    if tuple(y_train.shape) != (n,):
        raise ValueError(f"Expected `y_train` of shape ({n},). Got {tuple(y_train.shape)}.")
    if candidates.shape[1:] != x_train.shape[1:]:
        raise ValueError(
            f"Expected `candidates` of shape (m, {', '.join(map(str, x_train.shape[1:]))}) like the training "
            f"inputs. Got {tuple(candidates.shape)}."
        )
    for name, value in (("lam", lam), ("candidate_labels", candidate_labels)):
        if value is not None and tuple(value.shape) != (m,):
            raise ValueError(f"Expected `{name}` of shape ({m},). Got {tuple(value.shape)}.")
    if provenance is None:
        provenance = torch.stack([torch.zeros(m, dtype=torch.int64), torch.arange(m)], dim=1)
    if tuple(provenance.shape) != (m, 2):
        raise ValueError(f"Expected `provenance` of shape ({m}, 2). Got {tuple(provenance.shape)}.")
    if source_index is None:
        source_index = torch.arange(n)
    if outputs is None:
        if model is None:
            raise ValueError("Expected `model` or `outputs` (the victim's outputs on x_train). Got neither.")
        outputs = _forward(model, x_train)
    phi, margins = _outputs_and_margins(outputs, y_train)
    normalised, min_margin = _normalised(margins)
    labels = y_train.detach().to("cpu")
    if class_names is None:
        class_names = tuple(str(c) for c in range(max(int(labels.max()) + 1 if n else 0, 2)))
    lam_cpu = lam.detach().to("cpu", torch.float64) if lam is not None else None
    provenance = provenance.detach().to("cpu", torch.int64)

    metrics: dict[str, Any] = {
        "kind": "image" if is_image else "toy",
        "n_train": n,
        "n_candidates": m,
        "multiclass": bool(outputs.dim() == 2 and outputs.shape[1] > 1),
        "best_buddies": bool(best_buddies),
        "min_margin": min_margin,
    }

    scores: Scores | ToyScores
    if is_image:
        scores = score_candidates(
            candidates.detach(), x_train.detach(), mean.detach(), downsample=downsample, best_buddies=best_buddies
        )
        scores = Scores(**{k: v.to("cpu") for k, v in vars(scores).items()})
        metrics.update(
            {
                "ssim_threshold": float(threshold),
                "n_reconstructed": int((scores.ssim_aligned > threshold).sum()),
                "n_reconstructed_reference": int((scores.ssim_reference > threshold).sum()),
                "n_matched": int((scores.match >= 0).sum()),
                "median_ssim_aligned": _median(scores.ssim_aligned),
                "median_ssim_reference": _median(scores.ssim_reference),
                "median_psnr": _median(scores.psnr),
                "mean_ssim_aligned": float(scores.ssim_aligned.mean()) if n else None,
                "mean_ssim_reference": float(scores.ssim_reference.mean()) if n else None,
                "downsample": downsample,
                "ssim": f"kornia.metrics.ssim(window_size={SSIM_WINDOW}), mean of the map",
            }
        )
        if n >= 2:
            base = chance_level(x_train.detach(), mean.detach(), downsample=downsample)
            metrics.update(
                {
                    "chance_n_reconstructed": int((base.ssim_aligned > threshold).sum()),
                    "chance_n_reconstructed_reference": int((base.ssim_reference > threshold).sum()),
                    "chance_median_ssim_aligned": _median(base.ssim_aligned.to("cpu")),
                    "chance_median_ssim_reference": _median(base.ssim_reference.to("cpu")),
                    "chance_level": "each training image against its NCC-nearest other training image",
                }
            )
    else:
        scores = score_toy(candidates.detach().flatten(1), x_train.detach().flatten(1), best_buddies=best_buddies)
        scores = ToyScores(match=scores.match.to("cpu"), distance=scores.distance.to("cpu"))
        found = scores.distance <= toy_radius
        on_margin = normalised <= 1.0 + margin_tol
        metrics.update(
            {
                "toy_radius": float(toy_radius),
                "margin_tol": float(margin_tol),
                "n_found": int(found.sum()),
                "n_margin": int(on_margin.sum()),
                "n_found_margin": int((found & on_margin).sum()),
                "n_off_margin": int((~on_margin).sum()),
                "n_found_off_margin": int((found & ~on_margin).sum()),
                "n_matched": int((scores.match >= 0).sum()),
                "median_distance": _median(scores.distance),
            }
        )

    rows = []
    for i in range(n):
        j = int(scores.match[i])
        row: dict[str, Any] = {
            "index": i,
            "source_index": int(source_index[i]),
            "label": int(labels[i]),
            "output": float(phi[i]),
            "margin": float(margins[i]),
            "normalized_margin": float(normalised[i]),
        }
        if is_image:
            assert isinstance(scores, Scores)
            row.update(
                ssim_reference=float(scores.ssim_reference[i]),
                ssim_aligned=float(scores.ssim_aligned[i]),
                psnr=float(scores.psnr[i]),
            )
        else:
            assert isinstance(scores, ToyScores)
            row.update(
                distance=float(scores.distance[i]),
                on_margin=bool(normalised[i] <= 1.0 + margin_tol),
                found=bool(scores.distance[i] <= toy_radius),
            )
        row.update(
            candidate=int(provenance[j, 1]) if j >= 0 else -1,
            candidate_run=int(provenance[j, 0]) if j >= 0 else -1,
            **{"lambda": float(lam_cpu[j]) if (j >= 0 and lam_cpu is not None) else math.nan},
        )
        if is_image:
            assert isinstance(scores, Scores)
            row.update(ncc_distance=float(scores.ncc[i]), scale=float(scores.scale[i]))
        rows.append(row)

    result = EvaluationResult(
        metrics=metrics,
        rows=rows,
        scores=scores,
        is_image=is_image,
        labels=labels,
        outputs=phi,
        margins=margins,
        class_names=tuple(class_names),
    )
    if is_image:
        result.train_images = (
            x_train.detach().to("cpu", torch.float64) + mean.detach().to("cpu", torch.float64)
        ).clamp(0.0, 1.0)
    else:
        result.points = x_train.detach().to("cpu", torch.float64).flatten(1)
        result.candidates = candidates.detach().to("cpu", torch.float64).flatten(1)
        if candidate_labels is not None:
            result.candidate_labels = candidate_labels.detach().to("cpu")
        if model is not None and result.points.shape[1] == 2:
            result.toy_grid = _toy_grid(model, result.points, result.candidates)
    return result


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def _json_safe(obj: Any) -> Any:
    """NaN and ±inf are not JSON; write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def _csv_cell(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return format(value, ".8g")
    return str(value)


def write_evaluation(result: EvaluationResult, out_dir: str | Path, *, figures: bool = True) -> dict[str, Path]:
    """Write ``metrics.json``, ``per_sample.csv`` and (optionally) the figures into ``out_dir``.

    Every file is written atomically. Non-finite numbers become ``null`` in JSON and ``nan``/``inf``
    in the CSV.

    Args:
        result: what :func:`evaluate_candidates` returned.
        out_dir: the directory to write into (created when missing).
        figures: also draw ``fig_pairs.png`` and ``fig_ssim_vs_output.png`` (images) or
            ``fig_toy.png`` (toy).

    Returns:
        The written files by name; also stored in ``result.files``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    buffer = io.StringIO()
    columns = list(result.rows[0]) if result.rows else ["index"]
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in result.rows:
        writer.writerow([_csv_cell(row[c]) for c in columns])
    atomic_write_text(out_dir / PER_SAMPLE_FILE, buffer.getvalue())
    files[PER_SAMPLE_FILE] = out_dir / PER_SAMPLE_FILE

    if figures:
        from kktrecon.reporting import save_figures

        files.update(save_figures(result, out_dir))
    result.metrics["files"] = sorted(files)

    atomic_write_json(out_dir / METRICS_FILE, _json_safe(result.metrics))
    files[METRICS_FILE] = out_dir / METRICS_FILE
    result.out_dir = out_dir
    result.files = files
    return files


@dataclass(frozen=True)
class _Candidates:
    x: Tensor
    lam: Tensor
    y: Tensor
    provenance: Tensor
    victim_run_dir: Path
    rec_dirs: tuple[Path, ...]
    configs: tuple[dict[str, Any], ...]


def _victim_path(rec_dir: Path, manifest: dict[str, Any]) -> Path:
    victim = manifest.get("victim")
    run_dir = victim.get("run_dir") if isinstance(victim, dict) else None
    if not run_dir:
        raise ValueError(f"Expected {rec_dir / RECONSTRUCTION_FILE} to name its victim under victim.run_dir. Got none.")
    path = Path(run_dir)
    # A relative path is taken from the working directory; failing that, from the reconstruction directory.
    if not path.is_absolute() and not path.exists() and (rec_dir / path).exists():
        path = rec_dir / path
    return path.resolve()


def load_candidates(rec_dirs: str | Path | Sequence[str | Path]) -> _Candidates:
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
    from safetensors.torch import load_file

    dirs = [Path(rec_dirs)] if isinstance(rec_dirs, str | Path) else [Path(d) for d in rec_dirs]
    if not dirs:
        raise ValueError("Expected `rec_dirs` to name at least one reconstruction directory. Got none.")
    xs, lams, ys, prov, configs = [], [], [], [], []
    victims: list[Path] = []
    for run, rec_dir in enumerate(dirs):
        manifest = read_json(rec_dir / RECONSTRUCTION_FILE)
        path = rec_dir / CANDIDATES_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"Expected candidates at {path}, but there are none. Did the reconstruction finish?"
            )
        tensors = load_file(str(path))
        missing = sorted({"x", "lam", "y"} - set(tensors))
        if missing:
            raise ValueError(f"Expected tensors x, lam, y in {path}. Missing {missing}.")
        x = tensors["x"].to(torch.float64)
        m = x.shape[0]
        if tuple(tensors["lam"].shape) != (m,) or tuple(tensors["y"].shape) != (m,):
            raise ValueError(
                f"Expected `lam` and `y` of shape ({m},) in {path}. "
                f"Got {tuple(tensors['lam'].shape)} and {tuple(tensors['y'].shape)}."
            )
        if xs and x.shape[1:] != xs[0].shape[1:]:
            raise VictimMismatchError(
                f"Cannot pool {rec_dir}: candidates of shape {tuple(x.shape[1:])}, but {dirs[0]} has "
                f"{tuple(xs[0].shape[1:])}."
            )
        victims.append(_victim_path(rec_dir, manifest))
        xs.append(x)
        lams.append(tensors["lam"].to(torch.float64))
        ys.append(tensors["y"].to(torch.float64))
        prov.append(torch.stack([torch.full((m,), run, dtype=torch.int64), torch.arange(m)], dim=1))
        configs.append(manifest)
    if len(set(victims)) > 1:
        listing = "; ".join(f"{d} -> {v}" for d, v in zip(dirs, victims, strict=True))
        raise VictimMismatchError(
            f"Cannot pool reconstructions of different victims; pass directories of one victim. Got {listing}."
        )
    return _Candidates(
        x=torch.cat(xs),
        lam=torch.cat(lams),
        y=torch.cat(ys),
        provenance=torch.cat(prov),
        victim_run_dir=victims[0],
        rec_dirs=tuple(dirs),
        configs=tuple(configs),
    )


@dataclass(frozen=True)
class _Victim:
    model: torch.nn.Module
    manifest: dict[str, Any]
    dataset: Any
    downsample: int


def _load_victim(run_dir: Path, *, data_root: str | Path | None, device: torch.device) -> _Victim:
    """The victim network, its manifest, its training set (reloaded), and the matching downsample factor."""
    from kktrecon.data import DATASETS, DataConfig, load_dataset
    from kktrecon.models import load_checkpoint

    model, manifest = load_checkpoint(run_dir, device=device, dtype=torch.float64)
    model.eval()
    if "data" not in manifest:
        raise ValueError(f"Expected {run_dir / 'model.json'} to hold the data config under 'data'. Got none.")
    config = config_from_dict(DataConfig, manifest["data"])
    dataset = load_dataset(config, data_root=data_root, dtype=torch.float64, device=device)
    name = manifest["data"].get("dataset")
    if name not in DATASETS:
        raise ValueError(f"Expected the victim's dataset to be one of {sorted(DATASETS)}. Got {name!r}.")
    _check_mean(run_dir, manifest, dataset)
    return _Victim(model=model, manifest=manifest, dataset=dataset, downsample=int(DATASETS[name].match_downsample))


def _check_mean(run_dir: Path, manifest: dict[str, Any], dataset: Any) -> None:
    # Guard against scoring a reconstruction against a training set other than the one the victim saw
    # (a different data root or dataset version): the reloaded mean must equal the recorded one.
    recorded = manifest.get("train_mean")
    if recorded is None:
        return
    recorded_t = torch.as_tensor(recorded, dtype=torch.float64).flatten()
    reloaded = dataset.mean.detach().to("cpu", torch.float64).flatten()
    if recorded_t.shape != reloaded.shape or float((recorded_t - reloaded).abs().max()) > 1e-4:
        raise ValueError(
            f"The reloaded training set does not match the victim at {run_dir}: its per-pixel mean differs from "
            "model.json's train_mean. Check --data-root."
        )


def evaluate(
    rec_dirs: str | Path | Sequence[str | Path],
    *,
    data_root: str | Path | None = None,
    best_buddies: bool = False,
    threshold: float = 0.4,
    toy_radius: float = 0.05,
    margin_tol: float = 0.1,
    device: str | torch.device = "cpu",
    out_dir: str | Path | None = None,
    figures: bool = True,
) -> EvaluationResult:
    """Score the candidates of one or more reconstructions of a victim against its training set.

    Loads the candidates of every directory in ``rec_dirs`` (pooled; they must share a victim), the
    victim named in their ``reconstruction.json``, and its training set, then matches and scores as
    described in the module docstring.

    Args:
        rec_dirs: reconstruction directory or directories of the same victim.
        data_root: where the datasets live (None: the data layer's default).
        best_buddies: keep only mutual nearest neighbours when matching.
        threshold: SSIM above which a training image counts as reconstructed (0.4 in the paper).
        toy_radius: 2-D toy only: the distance within which a candidate finds a training point.
        margin_tol: 2-D toy only: tolerance on the normalised margin for "on the margin"
            (see :func:`evaluate_candidates`).
        device: where to run the victim and the scoring.
        out_dir: where to write; defaults to the first reconstruction directory.
        figures: draw the figures (``fig_pairs.png``, ``fig_ssim_vs_output.png`` or ``fig_toy.png``).

    Returns:
        :class:`EvaluationResult`, with ``out_dir`` and ``files`` set.

    Writes:
        ``metrics.json`` (summary), ``per_sample.csv`` (one row per training sample) and figures.

    Raises:
        VictimMismatchError: when the directories come from different victims.
        FileNotFoundError: when a directory lacks its files.
    """
    pooled = load_candidates(rec_dirs)
    dev = resolve_device(device)
    victim = _load_victim(pooled.victim_run_dir, data_root=data_root, device=dev)
    ds = victim.dataset
    is_image = bool(getattr(ds, "is_image", ds.x_train.dim() == 4))
    result = evaluate_candidates(
        pooled.x.to(dev),
        ds.x_train,
        ds.y_train,
        ds.mean,
        model=victim.model,
        lam=pooled.lam,
        candidate_labels=pooled.y,
        provenance=pooled.provenance,
        source_index=torch.as_tensor(ds.train_indices) if getattr(ds, "train_indices", None) is not None else None,
        class_names=tuple(getattr(ds, "class_names", ()) or ()) or None,
        is_image=is_image,
        downsample=victim.downsample,
        best_buddies=best_buddies,
        threshold=threshold,
        toy_radius=toy_radius,
        margin_tol=margin_tol,
    )
    result.metrics.update(
        {
            "rec_dirs": [str(d.resolve()) for d in pooled.rec_dirs],
            "n_candidates_per_run": [int((pooled.provenance[:, 0] == r).sum()) for r in range(len(pooled.rec_dirs))],
            "victim_run_dir": str(pooled.victim_run_dir),
            "data": victim.manifest.get("data"),
            "class_names": list(result.class_names),
            "versions": package_versions(),
        }
    )
    write_evaluation(result, Path(out_dir) if out_dir is not None else pooled.rec_dirs[0], figures=figures)
    return result
