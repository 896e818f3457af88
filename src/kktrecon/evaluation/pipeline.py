"""Evaluation as a pipeline: candidates and a training set in, metrics and a table out.

:func:`evaluate_candidates` composes the pure steps (matching, scoring, the chance level, the toy
score) on tensors held in memory; :func:`write_evaluation` writes its result; :func:`evaluate` is
the file-level stage: it pools reconstruction directories of one victim, reloads the victim and its
training set, and writes ``metrics.json`` and ``per_sample.csv``.

Evaluation never draws: figures are reporting's, and the two packages do not import each other.
Both writers take a ``draw`` function (:data:`FigureWriter`) that puts figures beside the metrics,
before ``metrics.json`` lists the files; :mod:`kktrecon.pipelines` passes
:func:`kktrecon.reporting.save_figures`, which is what the public :func:`kktrecon.evaluate` and the
CLI call.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kktrecon.attack.objectives import get_objective
from kktrecon.checks import check_int
from kktrecon.data import Dataset, load_dataset
from kktrecon.errors import CheckpointError, ConfigError, DataError, RunDirectoryExistsError, RunFileNotFoundError
from kktrecon.evaluation.candidates import load_candidates
from kktrecon.evaluation.outputs import forward_chunked, normalised_margins, outputs_and_margins
from kktrecon.evaluation.scores import image_metrics, score_candidates
from kktrecon.evaluation.toy import score_toy, toy_grid, toy_metrics
from kktrecon.evaluation.verdict import chance_metrics, control_metrics, recovery_verdict, verdict_metrics
from kktrecon.files import (
    METRICS_FILE,
    PER_SAMPLE_FILE,
    POOL_DIR,
    RANKING_FILE,
    RECONSTRUCTION_FILE,
    SWEEP_FILE,
    atomic_write_json,
    atomic_write_text,
    package_versions,
    read_json,
)
from kktrecon.results import EvaluationResult, Scores, ToyScores, Verdict
from kktrecon.victims import load_victim

__all__ = [
    "EvaluationConfig",
    "EvaluationResult",
    "FigureWriter",
    "control_images",
    "evaluate",
    "evaluate_candidates",
    "held_out_pool",
    "write_evaluation",
]

#: Draws an evaluation's figures into a directory and returns the files written, by name
#: (:func:`kktrecon.reporting.save_figures` is one).
FigureWriter = Callable[[EvaluationResult, Path], dict[str, Path]]


@dataclass(frozen=True)
class EvaluationConfig:
    """How candidates are matched and counted.

    Args:
        best_buddies: keep only mutual nearest neighbours when matching.
        threshold: SSIM above which a training image counts as reconstructed (0.4 in the paper).
        toy_radius: toy only — a point counts as found when a candidate lies within this distance.
        margin_tol: toy only — a point is on the margin when its normalised margin (margin divided by
            the smallest training margin) is at most ``1 + margin_tol``. The default 0.1 allows for
            finite training: gradient descent on the logistic loss weighs sample i by about
            exp(−qᵢ) (qᵢ its unnormalised margin), so with the smallest margin q near 7–20 a sample
            10 % further out still carries a weight of e^(−0.7)…e^(−2) relative to the support.
        held_out: how many held-out images (the victim's test split) join the pool that decides
            whether a training image is *recovered*; None: as many as training images, at least 200
            (capped by what the split holds); 0: none, and then no count can tell leaks from
            look-alikes (``n_recovered`` is not reported).
    """

    best_buddies: bool = False
    threshold: float = 0.4
    toy_radius: float = 0.05
    margin_tol: float = 0.1
    held_out: int | None = None

    def __post_init__(self) -> None:
        if self.held_out is not None:
            check_int("held_out", self.held_out, low=0)
        if not (isinstance(self.threshold, int | float) and -1.0 <= self.threshold <= 1.0):
            raise ConfigError(f"Expected `threshold` to be an SSIM value in [-1, 1]. Got {self.threshold!r}.")
        if not (isinstance(self.toy_radius, int | float) and self.toy_radius > 0):
            raise ConfigError(f"Expected `toy_radius` to be a positive number. Got {self.toy_radius!r}.")
        if not (isinstance(self.margin_tol, int | float) and self.margin_tol >= 0):
            raise ConfigError(f"Expected `margin_tol` to be a non-negative number. Got {self.margin_tol!r}.")


def evaluate_candidates(
    candidates: Tensor,
    x_train: Tensor,
    y_train: Tensor,
    mean: Tensor,
    config: EvaluationConfig | None = None,
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
    held_out: Tensor | None = None,
    held_out_source: str = "given",
    control: Tensor | None = None,
    control_source: str = "given",
    objective: str | None = None,
    **overrides: Any,
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
        held_out: images of the same task the victim never saw, mean-subtracted like ``x_train``
            (h, *input_shape): the pool a candidate must be nearer to the training image than to.
            None: no pool, so ``n_recovered`` is not reported.
        held_out_source: where ``held_out`` came from, for ``metrics.json``.
        control: more images the victim never saw, outside ``held_out``: the first m of them are judged
            by the same verdict as candidates (``metrics["control"]``, the count chance reaches with m
            candidates). None: no control.
        control_source: where ``control`` came from, for ``metrics.json``.
        objective: the victim's objective (for its margins); default: binary for one output, multiclass
            for K. For ``regression``, ``y_train`` holds the regression targets.
        config: matching and counting settings; keyword ``overrides`` replace its fields
            (``best_buddies``, ``threshold``, ``toy_radius``, ``margin_tol``).

    Returns:
        :class:`EvaluationResult` (``out_dir`` None; pass it to :func:`write_evaluation` to save).

    Raises:
        ConfigError: on inconsistent shapes or arguments out of range.
    """
    config = dataclasses.replace(config or EvaluationConfig(), **overrides)
    n, m = x_train.shape[0], candidates.shape[0]
    is_image = x_train.dim() == 4 if is_image is None else is_image
    _check_shapes(candidates, x_train, y_train, lam=lam, candidate_labels=candidate_labels, provenance=provenance)
    if provenance is None:
        provenance = torch.stack([torch.zeros(m, dtype=torch.int64), torch.arange(m)], dim=1)
    source_index = torch.arange(n) if source_index is None else source_index
    if outputs is None:
        if model is None:
            raise ConfigError("Expected `model` or `outputs` (the victim's outputs on x_train). Got neither.")
        outputs = forward_chunked(model, x_train)
    phi, margins = outputs_and_margins(outputs, y_train, get_objective(objective) if objective else None)
    normalised, min_margin = normalised_margins(margins)
    labels = y_train.detach().to("cpu")
    if class_names is None:
        class_names = tuple(str(c) for c in range(max(int(labels.max()) + 1 if n else 0, 2)))
    metrics: dict[str, Any] = {
        "kind": "image" if is_image else "toy",
        "n_train": n,
        "n_candidates": m,
        "multiclass": bool(outputs.dim() == 2 and outputs.shape[1] > 1),
        "best_buddies": bool(config.best_buddies),
        "min_margin": min_margin,
    }
    scores: Scores | ToyScores
    verdict = None
    if is_image:
        pool = (held_out if held_out is not None else x_train[:0]).detach()
        images = (candidates.detach(), x_train.detach(), mean.detach())
        scores, verdict, found = _score_images(*images, pool, held_out_source, downsample, config)
        metrics.update(found)
        if control is not None and len(control) and len(pool):
            metrics["control"] = control_metrics(
                control[:m].detach(), x_train.detach(), pool, mean.detach(), threshold=config.threshold,
                downsample=downsample, source=control_source,
            )  # fmt: skip
    else:
        scores = score_toy(
            candidates.detach().flatten(1), x_train.detach().flatten(1), best_buddies=config.best_buddies
        )
        scores = ToyScores(match=scores.match.to("cpu"), distance=scores.distance.to("cpu"))
        metrics.update(toy_metrics(scores, normalised, toy_radius=config.toy_radius, margin_tol=config.margin_tol))
    lam_cpu = lam.detach().to("cpu", torch.float64) if lam is not None else None
    if lam_cpu is not None and lam_cpu.dim() == 2:  # one multiplier per wrong class: report their sum
        lam_cpu = lam_cpu.abs().sum(dim=1)
    columns = dict(
        source_index=source_index, labels=labels, phi=phi, margins=margins, normalised=normalised, lam=lam_cpu
    )
    rows = _rows(scores, provenance.detach().to("cpu", torch.int64), config, verdict=verdict, **columns)
    result = EvaluationResult(
        metrics=metrics,
        rows=rows,
        scores=scores,
        is_image=is_image,
        labels=labels,
        outputs=phi,
        margins=margins,
        class_names=tuple(class_names),
        verdict=verdict,
    )
    _attach_inputs(result, candidates, x_train, mean, candidate_labels=candidate_labels, model=model)
    return result


def _check_shapes(
    candidates: Tensor,
    x_train: Tensor,
    y_train: Tensor,
    *,
    lam: Tensor | None,
    candidate_labels: Tensor | None,
    provenance: Tensor | None,
) -> None:
    n, m = x_train.shape[0], candidates.shape[0]
    if tuple(y_train.shape) != (n,):
        raise ConfigError(f"Expected `y_train` of shape ({n},). Got {tuple(y_train.shape)}.")
    if candidates.shape[1:] != x_train.shape[1:]:
        raise ConfigError(
            f"Expected `candidates` of shape (m, {', '.join(map(str, x_train.shape[1:]))}) like the training "
            f"inputs. Got {tuple(candidates.shape)}."
        )
    for name, value in (("lam", lam), ("candidate_labels", candidate_labels)):
        if value is not None and tuple(value.shape[:1]) != (m,):
            raise ConfigError(f"Expected `{name}` of shape ({m},). Got {tuple(value.shape)}.")
    if provenance is not None and tuple(provenance.shape) != (m, 2):
        raise ConfigError(f"Expected `provenance` of shape ({m}, 2). Got {tuple(provenance.shape)}.")


def _score_images(
    candidates: Tensor,
    x_train: Tensor,
    mean: Tensor,
    held_out: Tensor,
    source: str,
    downsample: int,
    config: EvaluationConfig,
) -> tuple[Scores, Verdict, dict[str, Any]]:
    """Match and score every training image, then the verdict against training ∪ held-out; their metrics."""
    scores = score_candidates(candidates, x_train, mean, downsample=downsample, best_buddies=config.best_buddies)
    verdict = recovery_verdict(
        candidates,
        x_train,
        held_out.to(x_train),
        mean,
        scores.match,
        threshold=config.threshold,
        downsample=downsample,
        best_buddies=config.best_buddies,
    )
    scores = Scores(**{k: v.to("cpu") for k, v in vars(scores).items()})
    metrics = image_metrics(scores, threshold=config.threshold, downsample=downsample)
    if x_train.shape[0] >= 2:
        metrics.update(chance_metrics(x_train, mean, threshold=config.threshold, downsample=downsample))
    held = {"count": int(held_out.shape[0]), "source": source if len(held_out) else None}
    metrics.update(verdict_metrics(verdict, threshold=config.threshold, held_out=held))
    return scores, verdict, metrics


def _rows(
    scores: Scores | ToyScores,
    provenance: Tensor,
    config: EvaluationConfig,
    *,
    source_index: Tensor,
    labels: Tensor,
    phi: Tensor,
    margins: Tensor,
    normalised: Tensor,
    lam: Tensor | None,
    verdict: Verdict | None,
) -> list[dict[str, Any]]:
    """One row per training sample: its output and margin, its scores, and the matched candidate."""
    rows = []
    for i in range(len(labels)):
        j = int(scores.match[i])
        row: dict[str, Any] = {
            "index": i,
            "source_index": int(source_index[i]),
            "label": int(labels[i]),
            "output": float(phi[i]),
            "margin": float(margins[i]),
            "normalized_margin": float(normalised[i]),
        }
        if isinstance(scores, Scores):
            row.update(
                ssim_reference=float(scores.ssim_reference[i]),
                ssim_aligned=float(scores.ssim_aligned[i]),
                psnr=float(scores.psnr[i]),
            )
        else:
            row.update(
                distance=float(scores.distance[i]),
                on_margin=bool(normalised[i] <= 1.0 + config.margin_tol),
                found=bool(scores.distance[i] <= config.toy_radius),
            )
        row.update(
            candidate=int(provenance[j, 1]) if j >= 0 else -1,
            candidate_run=int(provenance[j, 0]) if j >= 0 else -1,
            **{"lambda": float(lam[j]) if (j >= 0 and lam is not None) else math.nan},
        )
        if isinstance(scores, Scores):
            row.update(ncc_distance=float(scores.ncc[i]), scale=float(scores.scale[i]))
        if verdict is not None:
            row.update(_verdict_columns(verdict, provenance, i))
        rows.append(row)
    return rows


def _verdict_columns(verdict: Verdict, provenance: Tensor, i: int) -> dict[str, Any]:
    j = int(verdict.candidate[i])
    return {
        "recovered": bool(verdict.recovered[i]),
        "recovered_by": int(provenance[j, 1]) if j >= 0 else -1,
        "recovered_by_run": int(provenance[j, 0]) if j >= 0 else -1,
        "recovered_ssim": float(verdict.ssim[i]),
        "distance_ratio": float(verdict.distance_ratio[i]),
        "held_out_index": int(verdict.held_out_index[i]),
        "held_out_ssim": float(verdict.held_out_ssim[i]),
        "chance_ssim": float(verdict.chance_ssim[i]),
    }


def _attach_inputs(
    result: EvaluationResult,
    candidates: Tensor,
    x_train: Tensor,
    mean: Tensor,
    *,
    candidate_labels: Tensor | None,
    model: torch.nn.Module | None,
) -> None:
    """What the figures draw: training images in [0, 1], or the toy's points, candidates and boundary."""
    if result.is_image:
        result.train_images = (
            x_train.detach().to("cpu", torch.float64) + mean.detach().to("cpu", torch.float64)
        ).clamp(0.0, 1.0)
        result.candidates = candidates.detach().to("cpu", torch.float64)  # as the attacker holds them
        return
    result.points = x_train.detach().to("cpu", torch.float64).flatten(1)
    result.candidates = candidates.detach().to("cpu", torch.float64).flatten(1)
    if candidate_labels is not None:
        result.candidate_labels = candidate_labels.detach().to("cpu")
    if model is not None and result.points.shape[1] == 2:
        result.toy_grid = toy_grid(model, result.points, result.candidates)


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


def write_evaluation(
    result: EvaluationResult, out_dir: str | Path, *, draw: FigureWriter | None = None
) -> dict[str, Path]:
    """Write ``metrics.json``, ``per_sample.csv`` and, with ``draw``, the figures into ``out_dir``.

    Every file is written atomically. Non-finite numbers become ``null`` in JSON and ``nan``/``inf``
    in the CSV. :func:`kktrecon.pipelines.write_evaluation` is this with reporting's figures.

    Args:
        result: what :func:`evaluate_candidates` returned.
        out_dir: the directory to write into (created when missing).
        draw: draws the figures into ``out_dir`` before ``metrics.json`` lists the files written
            (:func:`kktrecon.reporting.save_figures`: ``fig_pairs.png`` and ``fig_ssim_vs_output.png``
            for images, ``fig_toy.png`` for the toy); None: no figures.

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

    if draw is not None:
        files.update(draw(result, out_dir))
    result.metrics["files"] = sorted(files)

    atomic_write_json(out_dir / METRICS_FILE, _json_safe(result.metrics))
    files[METRICS_FILE] = out_dir / METRICS_FILE
    result.out_dir = out_dir
    result.files = files
    return files


def _pool_of_sweep(rec_dirs: str | Path | Sequence[str | Path]) -> str | Path | Sequence[str | Path]:
    """A sweep directory stands for its pooled candidates (``SWEEP_DIR/pool``, written by the sweep)."""

    def one(path: Path) -> Path:
        if not (path / RECONSTRUCTION_FILE).exists() and (path / POOL_DIR / RECONSTRUCTION_FILE).exists():
            return path / POOL_DIR
        if not (path / RECONSTRUCTION_FILE).exists() and (path / SWEEP_FILE).exists():
            raise RunFileNotFoundError(
                f"{path} is a sweep without pooled candidates: no trial of it finished (see its results.json and "
                "trials/*/error.txt), or it was interrupted before pooling; run it again with --resume."
            )
        return path

    if isinstance(rec_dirs, str | Path):
        return one(Path(rec_dirs))
    return [one(Path(d)) for d in rec_dirs]


def attacker_metrics(ranking_path: Path, verdict: Verdict, *, ks: tuple[int, ...] = (10, 20)) -> dict[str, Any]:
    """How good the attacker's oracle-free ranking is: the fraction of its top-k candidates that are real."""
    ranking = read_json(ranking_path)
    real = verdict.candidate_real
    return {
        "criterion": ranking.get("criterion"),
        **{f"precision_at_{k}": float(real[:k].float().mean()) if len(real) else None for k in ks},
        "n_real_candidates": int(real.sum()),
        "n_candidates": len(real),
    }


def held_out_pool(dataset: Dataset, wanted: int | None) -> tuple[Tensor, str]:
    """The first images of the victim's test split (same task and preprocessing) and where they came from.

    ``wanted`` None: as many as training images, at least 200; capped by what the split holds.
    """
    n, available = dataset.x_train.shape[0], dataset.x_test.shape[0]
    wanted = max(n, 200) if wanted is None else wanted
    k = min(wanted, available)
    config = dataset.config
    source = (
        f"test split of {config.dataset} ({config.task}): the first {k} of the {available} test images selected "
        f"({config.test_per_class} per class), training mean subtracted"
    )
    if k < wanted:
        source += f"; {wanted} were asked for (raise test_per_class to get more)"
    return dataset.x_test[:k], source


def control_images(
    dataset: Dataset, held_out: Tensor, wanted: int, *, data_root: str | Path | None
) -> tuple[Tensor, str]:
    """Up to ``wanted`` test images of the task outside ``held_out`` (the verdict's control), and their source.

    Read from the same split with more images per class than the victim's recorded ``test_per_class``;
    an image equal to one of the pool is left out. Empty where the split holds no more (the toy, a sample).
    """
    config = dataset.config
    classes = max(len(dataset.class_names), 1)
    per_class = config.test_per_class + math.ceil(wanted / classes)
    try:
        more = load_dataset(config, data_root=data_root, dtype=dataset.x_train.dtype, device=held_out.device,
                            test_per_class=per_class).x_test  # fmt: skip
    except DataError:  # the split cannot give this many per class: take what the recorded count gives
        more = dataset.x_test
    if len(held_out):
        exact = dict(compute_mode="donot_use_mm_for_euclid_dist")  # an identical image is at distance exactly 0
        outside = torch.cdist(more.flatten(1), held_out.flatten(1).to(more), **exact).min(dim=1).values > 0
        more = more[outside]
    found = more[:wanted]
    source = (
        f"test split of {config.dataset} ({config.task}): {len(found)} images outside the held-out pool "
        f"({wanted} wanted), training mean subtracted"
    )
    return found, source


def evaluate(
    rec_dirs: str | Path | Sequence[str | Path],
    config: EvaluationConfig | None = None,
    *,
    data_root: str | Path | None = None,
    device: str | torch.device = "cpu",
    out_dir: str | Path | None = None,
    draw: FigureWriter | None = None,
    force: bool = False,
    **overrides: Any,
) -> EvaluationResult:
    """Score the candidates of one or more reconstructions of a victim against its training set.

    Loads the candidates of every directory in ``rec_dirs`` (pooled; they must share a victim), the
    victim named in their ``reconstruction.json``, and its training set, then matches and scores as
    described in the module docstring.

    Args:
        rec_dirs: reconstruction directory or directories of the same victim.
        data_root: where the datasets live (None: the data layer's default).
        config: matching and counting settings (:class:`EvaluationConfig`); keyword ``overrides``
            replace its fields.
        device: where to run the victim and the scoring.
        out_dir: where to write; defaults to the first reconstruction directory.
        draw: draws the figures, as in :func:`write_evaluation`; None: no figures
            (:func:`kktrecon.evaluate` passes reporting's).
        force: replace an earlier evaluation in the output directory (refused otherwise).

    Returns:
        :class:`EvaluationResult`, with ``out_dir`` and ``files`` set.

    Writes:
        ``metrics.json`` (summary), ``per_sample.csv`` (one row per training sample) and what ``draw`` draws.

    Raises:
        VictimMismatchError: when the directories come from different victims.
        FileNotFoundError: when a directory lacks its files.
    """
    pooled = load_candidates(_pool_of_sweep(rec_dirs))
    target = Path(out_dir) if out_dir is not None else pooled.rec_dirs[0]
    if (target / METRICS_FILE).exists() and not force:
        raise RunDirectoryExistsError(
            f"{target} already holds an evaluation ({METRICS_FILE}); pass --force to replace it, or --out elsewhere."
        )
    if pooled.victim_run_dir is None:
        raise CheckpointError(
            f"{pooled.rec_dirs[0]} attacked a model held in memory, not a victim directory: evaluate it with "
            "kktrecon.evaluate_candidates and the training images (kktrecon.audit does)."
        )
    victim, ds = load_victim(pooled.victim_run_dir, data_root=data_root, device=device)
    config = dataclasses.replace(config or EvaluationConfig(), **overrides)
    held_out, source = held_out_pool(ds, config.held_out)
    control, control_source = None, ""
    if ds.is_image and len(held_out):  # without a pool there is no verdict, so no control either
        control, control_source = control_images(ds, held_out, len(pooled.x), data_root=data_root)
    objective = get_objective(victim.manifest.get("objective") or ds.objective)
    result = evaluate_candidates(
        pooled.x.to(ds.x_train.device),
        ds.x_train,
        objective.targets(ds.y_train, ds.targets),
        ds.mean,
        config,
        model=victim.model,
        lam=pooled.lam,
        candidate_labels=pooled.y,
        provenance=pooled.provenance,
        source_index=ds.train_indices,
        class_names=ds.class_names,
        is_image=ds.is_image,
        downsample=victim.downsample,
        held_out=held_out,
        held_out_source=source,
        control=control,
        control_source=control_source,
        objective=objective.name,
    )
    ranking = pooled.rec_dirs[0] / RANKING_FILE
    if len(pooled.rec_dirs) == 1 and ranking.is_file() and result.verdict is not None:
        result.metrics["attacker"] = attacker_metrics(ranking, result.verdict)
    result.metrics.update(
        {
            "rec_dirs": [str(d.resolve()) for d in pooled.rec_dirs],
            "n_candidates_per_run": [int((pooled.provenance[:, 0] == r).sum()) for r in range(len(pooled.rec_dirs))],
            "victim_run_dir": str(pooled.victim_run_dir),
            "objective": objective.name,
            "data": victim.manifest.get("data"),
            "class_names": list(result.class_names),
            "versions": package_versions(),
        }
    )
    write_evaluation(result, target, draw=draw)
    return result
