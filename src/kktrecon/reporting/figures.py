"""The paper's figures, drawn from an evaluation result; never registered with pyplot.

Figures follow Haim, Vardi, Yehudai, Shamir & Irani, *Reconstructing Training Data from Trained
Neural Networks* (NeurIPS 2022):

- ``fig_pairs.png`` (their Fig. 3): each training image above its matched reconstruction, best
  SSIM first.
- ``fig_ssim_vs_output.png`` (their Fig. 4): SSIM of each training sample's reconstruction against
  the model's output Φ(xᵢ) on it, coloured by class. Samples near the margin (small |Φ|) are the
  ones the KKT conditions expose.
- ``fig_toy.png`` (their Fig. 2): the 2-D toy's decision boundary, its training points (margin
  points marked) and the candidates.

Figures are :class:`matplotlib.figure.Figure` objects drawn on the Agg canvas, so that nothing
leaks between calls and no display is needed. The functions read an evaluation result's attributes
(:class:`kktrecon.results.EvaluationResult`) and never import the evaluation package.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kktrecon.errors import ConfigError
from kktrecon.files import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from kktrecon.results import EvaluationResult

__all__ = [
    "FIGURES",
    "FIG_ATTACKER",
    "FIG_PAIRS",
    "FIG_SCATTER",
    "FIG_TOY",
    "figure_png",
    "plot_attacker_view",
    "plot_law",
    "plot_loss_history",
    "plot_pairs",
    "plot_panels",
    "plot_ssim_vs_output",
    "plot_toy",
    "save_figures",
]

FIG_PAIRS = "fig_pairs.png"
FIG_SCATTER = "fig_ssim_vs_output.png"
FIG_TOY = "fig_toy.png"
FIG_ATTACKER = "fig_attacker.png"
FIGURES: dict[str, str] = {
    FIG_PAIRS: "Each training image (top) above its scale-aligned reconstruction and, at the bottom, the held-out "
    "image nearest to it: what a look-alike the victim never saw scores. Best SSIM first (cf. Fig. 3 of the paper); "
    "the number under each column is the training index and aligned SSIM, green when the image counts as recovered.",
    FIG_SCATTER: "SSIM of each training sample's best candidate against the model's output on that sample, "
    "coloured by class; filled: scale-aligned SSIM, hollow: the paper's min-max SSIM, ringed: recovered (cf. Fig. 4). "
    "Lines: the threshold and the medians a look-alike reaches (nearest other training image, nearest held-out one).",
    FIG_ATTACKER: "The attacker's view of a sweep: its best candidates, ranked without the training set by how many "
    "independent trials found them (and the victim's margin on them), above the training image the oracle says each "
    "recovers (green) or a blank (red: not a training image).",
    FIG_TOY: "The 2-D toy: decision boundary Φ = 0, training points (ringed: on the margin) and the candidates "
    "(crosses: at the end of the attack, or read out along it); dotted circles have the matching radius.",
}
_DPI = 110
_FONT = 9


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def figure_png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    fig.clear()
    return buffer.getvalue()


def _class_colour(k: int) -> Any:
    from matplotlib import colormaps

    return colormaps["tab10"](k % 10)


def _class_name(names: tuple[str, ...], k: int) -> str:
    return names[k] if 0 <= k < len(names) else str(k)


def plot_pairs(result: EvaluationResult, *, max_pairs: int = 100, per_row: int = 10) -> Figure:
    """The Fig.-3 grid: each training image above its reconstruction and its nearest held-out look-alike.

    A label is green when the image counts as recovered (nearer to its candidate than any held-out or
    other training image, aligned SSIM above the threshold), else red; without a held-out pool, green
    means aligned SSIM above the threshold only. Best SSIM first.

    Args:
        result: an image evaluation (``result.is_image``).
        max_pairs: show at most this many training images (the best ones).
        per_row: training images per row of the grid.

    Returns:
        The figure (not registered with pyplot).
    """
    scores, verdict = result.scores, result.verdict
    if not result.is_image or result.train_images is None:
        raise ConfigError("Expected an image evaluation for the pairs grid. Got a toy evaluation.")
    if max_pairs < 1 or per_row < 1:
        raise ConfigError(f"Expected positive `max_pairs` and `per_row`. Got {max_pairs} and {per_row}.")
    threshold = float(result.metrics.get("ssim_threshold", 0.4))
    pool = verdict is not None and int(result.metrics.get("held_out", {}).get("count", 0)) > 0
    ssim = scores.ssim_aligned.numpy().copy()
    good = verdict.recovered.numpy() if pool else ssim > threshold
    recon = scores.aligned.numpy().copy()
    if pool:  # a recovered image shows the candidate that recovers it, and that candidate's SSIM
        recon[good] = verdict.images.numpy()[good]
        ssim[good] = verdict.ssim.numpy()[good]
    stacks = [result.train_images.numpy(), recon] + ([verdict.held_out_images.numpy()] if pool else [])
    shown = (scores.match.numpy() >= 0) | good
    order = np.argsort(-ssim, kind="stable")[:max_pairs]
    canvas, cells = _grid(stacks, order, shown, per_row=per_row)
    channels, w = stacks[0].shape[1], stacks[0].shape[3]
    inches_per_px = 0.9 / w
    fig = _figure(max(4.0, canvas.shape[1] * inches_per_px), canvas.shape[0] * inches_per_px + 0.7)
    ax = fig.add_subplot()
    image = canvas[..., 0] if channels == 1 else canvas
    ax.imshow(image, cmap="gray" if channels == 1 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
    for (x, y), i in zip(cells, order, strict=True):
        text = f"#{i} {ssim[i]:.2f}" if shown[i] else f"#{i} no match"
        ax.text(x, y, text, ha="center", va="center", fontsize=_FONT - 1, color="#0a6e0a" if good[i] else "#b01010")
    ax.set_axis_off()
    n, k = len(ssim), len(order)
    what = f"best {k} of {n}" if k < n else f"all {n}"
    rows = "training image · reconstruction (scale-aligned)" + (" · nearest held-out image" if pool else "")
    count = (
        f"{int(good.sum())} of {n} recovered (green): nearer to their candidate than any held-out or other "
        f"training image, SSIM > {threshold:g}"
        if pool
        else f"{int(good.sum())} of {n} with SSIM > {threshold:g} (green); no held-out pool, so look-alikes count too"
    )
    ax.set_title(f"Top to bottom: {rows} · {what} shown\n{count}", fontsize=_FONT + 1)
    return fig


def _grid(stacks: list[np.ndarray], order: np.ndarray, shown: np.ndarray, *, per_row: int) -> tuple[np.ndarray, list]:
    """Tile ``stacks[r][i]`` top to bottom for each i in ``order``; returns the canvas and label positions."""
    channels, h, w = stacks[0].shape[1:]
    k = len(order)
    cols = max(1, min(per_row, k))
    rows = max(1, math.ceil(k / cols))
    pad = max(1, w // 14)
    gap = max(4, round(0.5 * h))  # room for the label under each cell
    depth = len(stacks)
    cell_h, cell_w = depth * h + (depth - 1) * pad + gap, w + pad
    canvas = np.ones((rows * cell_h + pad, cols * cell_w + pad, channels))
    labels = []
    for pos, i in enumerate(order):
        r, c = divmod(pos, cols)
        top, left = r * cell_h + pad, c * cell_w + pad
        for level, stack in enumerate(stacks):
            if level == 1 and not shown[i]:  # an unmatched cell stays blank, not mistaken for a black image
                continue
            y = top + level * (h + pad)
            canvas[y : y + h, left : left + w] = stack[i].transpose(1, 2, 0)
        labels.append((left + w / 2, top + depth * h + (depth - 1) * pad + gap * 0.45))
    return canvas, labels


def plot_attacker_view(result: EvaluationResult, *, top: int = 20, per_row: int = 10) -> Figure:
    """A pooled sweep's best candidates as an attacker ranks them (no training data), above the oracle's verdict.

    Top row of each cell: a candidate, min-max scaled on its own (the attacker knows neither the
    training mean nor the scale). Bottom: the training image it recovers, when the oracle says it
    does (label green), else blank (red: nearer to a held-out image, or too unlike its nearest).

    Args:
        result: an image evaluation of a pooled sweep (candidates stored best first).
        top: how many of the best-ranked candidates to show.
        per_row: candidates per row.
    """
    verdict, candidates = result.verdict, result.candidates
    if not result.is_image or verdict is None or candidates is None or result.train_images is None:
        raise ConfigError("Expected an image evaluation with a verdict for the attacker's view.")
    k = min(top, len(candidates))
    shown = _minmax_np(candidates[:k].numpy())
    nearest = verdict.candidate_nearest[:k].numpy()
    real = verdict.candidate_real[:k].numpy()
    matched = np.where(real[:, None, None, None], result.train_images.numpy()[np.clip(nearest, 0, None)], 1.0)
    canvas, cells = _grid([shown, matched], np.arange(k), np.ones(k, dtype=bool), per_row=per_row)
    channels, w = shown.shape[1], shown.shape[3]
    inches_per_px = 0.9 / w
    fig = _figure(max(4.0, canvas.shape[1] * inches_per_px), canvas.shape[0] * inches_per_px + 0.7)
    ax = fig.add_subplot()
    ax.imshow(canvas[..., 0] if channels == 1 else canvas, cmap="gray" if channels == 1 else None, vmin=0.0,
              vmax=1.0, interpolation="nearest")  # fmt: skip
    for (x, y), i in zip(cells, range(k), strict=True):
        label = f"{i + 1}: #{nearest[i]}" if real[i] else f"{i + 1}: —"
        ax.text(x, y, label, ha="center", va="center", fontsize=_FONT - 1, color="#0a6e0a" if real[i] else "#b01010")
    ax.set_axis_off()
    precision = float(real.mean()) if k else 0.0
    ax.set_title(
        f"The attacker's top {k} candidates (ranked without the training set) · below: the training image each "
        f"recovers, per the oracle\n{int(real.sum())} of {k} are real ({precision:.0%})",
        fontsize=_FONT + 1,
    )
    return fig


def _minmax_np(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(len(x), -1)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    return (x - lo[:, None, None, None]) / np.maximum(hi - lo, 1e-12)[:, None, None, None]


def plot_panels(evaluations: list[Path], labels: list[str], *, title: str = "", per_row: int = 5) -> Figure:
    """Fig. 4: one panel per evaluated victim, SSIM against the sample's normalised margin, shared axes.

    Each panel reads an evaluation directory's ``per_sample.csv``: the aligned SSIM of each training
    sample's best candidate against its margin divided by the smallest training margin (1: on the
    margin), coloured by class; recovered samples are ringed. The paper's finding is visible as
    recovered samples crowding at 1.

    Args:
        evaluations: the evaluation directories, one per panel.
        labels: a title per panel.
        title: the figure's title.
        per_row: panels per row.
    """
    import csv as csv_module

    if not evaluations or len(labels) != len(evaluations):
        raise ConfigError(f"Expected one label per evaluation. Got {len(evaluations)} and {len(labels)}.")
    cols = min(per_row, len(evaluations))
    rows_n = math.ceil(len(evaluations) / cols)
    fig = _figure(2.9 * cols, 2.6 * rows_n + 0.4)
    axes = fig.subplots(rows_n, cols, sharex=True, sharey=True, squeeze=False).ravel()
    for ax, folder, label in zip(axes, evaluations, labels, strict=False):
        with (Path(folder) / "per_sample.csv").open(newline="", encoding="utf-8") as fh:
            table = list(csv_module.DictReader(fh))
        margin = np.array([float(r["normalized_margin"]) for r in table])
        ssim = np.array([float(r["ssim_aligned"]) for r in table])
        klass = np.array([int(float(r["label"])) for r in table])
        hit = np.array([r.get("recovered") == "1" for r in table])
        for k in np.unique(klass):
            mask = klass == k
            ax.scatter(margin[mask], ssim[mask], s=12, color=_class_colour(int(k)), alpha=0.8, linewidths=0)
        ax.scatter(margin[hit], ssim[hit], s=40, facecolors="none", edgecolors="k", lw=0.9)
        ax.axhline(0.4, color="0.3", ls="--", lw=0.8)
        ax.set_title(f"{label}\n{int(hit.sum())} of {len(hit)} recovered", fontsize=_FONT)
        ax.tick_params(labelsize=_FONT - 1)
        ax.grid(alpha=0.25)
    for ax in axes[len(evaluations) :]:
        ax.set_axis_off()
    fig.supxlabel("margin yᵢΦ(xᵢ) / smallest training margin (1 = on the margin)", fontsize=_FONT)
    fig.supylabel("aligned SSIM of the best candidate", fontsize=_FONT)
    if title:
        fig.suptitle(
            f"{title}\nringed: recovered (a candidate nearer to it than to any other training or held-out image, "
            "SSIM > 0.4) · dashed: SSIM 0.4",
            fontsize=_FONT + 1,
        )
    return fig


def plot_law(rows: list[dict[str, Any]], *, title: str = "") -> Figure:
    """Recovered fraction against p/dn (log scale), one point per victim, one colour per group.

    Each row is an experiment cell's result (``capacity.ratio``, ``n_recovered``, ``n``, ``group``,
    ``label``). The law of data reconstruction (Iurada et al. 2026) puts the transition at p ≈ d·n,
    drawn as the vertical line.
    """
    if not rows:
        raise ConfigError("Expected at least one result row to draw.")
    fig = _figure(6.4, 4.0)
    ax = fig.subplots()
    groups = list(dict.fromkeys(r.get("group") or "" for r in rows))
    for g, group in enumerate(groups):
        mine = sorted((r for r in rows if (r.get("group") or "") == group), key=lambda r: r["capacity"]["ratio"])
        ratio = [r["capacity"]["ratio"] for r in mine]
        frac = [(r["n_recovered"] or 0) / r["n"] for r in mine]
        ax.plot(ratio, frac, "o-", color=_class_colour(g), label=group or "victims", lw=1.2, ms=6)
        for r, x, y in zip(mine, ratio, frac, strict=True):
            ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(4, 5), fontsize=_FONT - 2)
    ax.axvline(1.0, color="0.3", ls="--", lw=0.9)
    ax.text(1.06, 0.97, "p = d·n", fontsize=_FONT - 1, color="0.3", va="top", transform=ax.get_xaxis_transform())
    ax.set_xscale("log")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("p / dn (parameters ÷ input dimension × training images)", fontsize=_FONT)
    ax.set_ylabel("fraction of the training set recovered", fontsize=_FONT)
    ax.tick_params(labelsize=_FONT - 1)
    ax.grid(alpha=0.25, which="both")
    ax.legend(fontsize=_FONT - 1, loc="center right")
    if title:
        ax.set_title(
            f"{title}\nrecovered: a candidate nearer to it than to any other training or held-out image, SSIM > 0.4",
            fontsize=_FONT,
        )
    return fig


def plot_ssim_vs_output(result: EvaluationResult) -> Figure:
    """The Fig.-4 scatter: SSIM per training sample against the model's output on it, by class.

    Args:
        result: an image evaluation.

    Returns:
        The figure (not registered with pyplot).
    """
    from matplotlib.lines import Line2D

    scores = result.scores
    if not result.is_image:
        raise ConfigError("Expected an image evaluation for the SSIM scatter. Got a toy evaluation.")
    threshold = float(result.metrics.get("ssim_threshold", 0.4))
    outputs = result.outputs.numpy()
    labels = result.labels.numpy()
    fig = _figure(6.4, 4.6)
    ax = fig.add_subplot()
    handles = []
    for k in np.unique(labels):
        mask = labels == k
        colour = _class_colour(int(k))
        ax.scatter(outputs[mask], scores.ssim_aligned.numpy()[mask], s=22, color=colour, alpha=0.85, linewidths=0)
        ax.scatter(
            outputs[mask], scores.ssim_reference.numpy()[mask], s=22, facecolors="none", edgecolors=colour, alpha=0.8
        )
        name = _class_name(result.class_names, int(k))
        handles.append(Line2D([], [], ls="", marker="o", color=colour, label=f"class {name}"))
    verdict = result.verdict
    if verdict is not None and int(result.metrics.get("held_out", {}).get("count", 0)) > 0:
        hit = verdict.recovered.numpy()
        ax.scatter(outputs[hit], scores.ssim_aligned.numpy()[hit], s=70, facecolors="none", edgecolors="k", lw=1.1)
        handles.append(Line2D([], [], ls="", marker="o", markerfacecolor="none", markeredgecolor="k", ms=8,
                              label="recovered (nearest to its candidate)"))  # fmt: skip
        held = result.metrics.get("held_out_median_ssim_aligned")
        if isinstance(held, float):
            ax.axhline(held, color="#b06000", ls="-.", lw=1.0)
            handles.append(Line2D([], [], ls="-.", color="#b06000", label="held-out look-alike (median, aligned)"))
    ax.axhline(threshold, color="0.3", ls="--", lw=1)
    chance = result.metrics.get("chance_median_ssim_aligned")
    if isinstance(chance, float):
        ax.axhline(chance, color="0.5", ls=":", lw=1.2)
        handles.append(Line2D([], [], ls=":", color="0.5", label="chance level (median, aligned)"))
    handles += [
        Line2D([], [], ls="", marker="o", color="0.2", label="aligned SSIM"),
        Line2D([], [], ls="", marker="o", markerfacecolor="none", markeredgecolor="0.2", label="reference SSIM"),
        Line2D([], [], ls="--", color="0.3", label=f"threshold {threshold:g}"),
    ]
    multiclass = bool(result.metrics.get("multiclass", False))
    ax.set_xlabel("model output on the training sample, " + ("Φ_y(xᵢ)" if multiclass else "Φ(xᵢ)"), fontsize=_FONT + 1)
    ax.set_ylabel("SSIM with the matched candidate", fontsize=_FONT + 1)
    ax.set_ylim(min(-0.05, float(scores.ssim_reference.min()) - 0.05) if len(outputs) else -0.05, 1.02)
    ax.tick_params(labelsize=_FONT)
    ax.grid(alpha=0.25)
    ax.legend(handles=handles, fontsize=_FONT, loc="best", framealpha=0.9)
    ax.set_title("SSIM vs. model output per training sample", fontsize=_FONT + 1)
    return fig


def plot_toy(result: EvaluationResult, *, circles: bool = True) -> Figure:
    """The 2-D toy: decision regions and boundary, training points, margin points and candidates.

    Args:
        result: a toy evaluation (``not result.is_image``) of two-dimensional inputs.
        circles: draw a circle of radius ``toy_radius`` around every training point.

    Returns:
        The figure (not registered with pyplot).
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle

    if result.is_image or result.points is None or result.candidates is None:
        raise ConfigError("Expected a toy evaluation for the toy figure. Got an image evaluation.")
    if result.points.shape[1] != 2:
        raise ConfigError(f"Expected two-dimensional toy inputs. Got dimension {result.points.shape[1]}.")
    points = result.points.numpy()
    cands = result.candidates.numpy()
    labels = result.labels.numpy()
    on_margin = np.array([bool(row.get("on_margin", False)) for row in result.rows], dtype=bool)
    radius = float(result.metrics.get("toy_radius", 0.05))

    fig = _figure(6.2, 6.0)
    ax = fig.add_subplot()
    handles = _decision_regions(ax, result.toy_grid, multiclass=bool(result.metrics.get("multiclass", False)))
    for k in np.unique(labels):
        mask = labels == k
        colour = _class_colour(int(k))
        ax.scatter(points[mask, 0], points[mask, 1], s=28, color=colour, zorder=3)
        handles.append(
            Line2D(
                [], [], ls="", marker="o", color=colour, label=f"train, class {_class_name(result.class_names, int(k))}"
            )
        )
    if on_margin.any():
        ax.scatter(
            points[on_margin, 0],
            points[on_margin, 1],
            s=110,
            facecolors="none",
            edgecolors="k",
            linewidths=1.2,
            zorder=4,
        )
        handles.append(
            Line2D([], [], ls="", marker="o", markerfacecolor="none", markeredgecolor="k", ms=9, label="on the margin")
        )
    if circles:
        for p in points:
            ax.add_patch(Circle((p[0], p[1]), radius, fill=False, ls=":", lw=0.7, color="0.4", zorder=2))
    cand_labels = result.candidate_labels
    if cand_labels is not None:
        cl = cand_labels.numpy()
        # Binary candidates carry y = ±1; map them onto classes 0/1 for colour.
        classes = ((cl + 1) / 2).astype(int) if set(np.unique(cl).tolist()) <= {-1.0, 1.0} else cl.astype(int)
        colours = [_class_colour(int(k)) for k in classes]
    else:
        colours = ["k"] * len(cands)
    ax.scatter(cands[:, 0], cands[:, 1], marker="x", s=30, c=colours, linewidths=1.2, zorder=5)
    handles.append(Line2D([], [], ls="", marker="x", color="0.2", label="candidates"))
    ax.set_aspect("equal")
    ax.tick_params(labelsize=_FONT)
    ax.set_xlabel("x₁", fontsize=_FONT + 1)
    ax.set_ylabel("x₂", fontsize=_FONT + 1)
    m = result.metrics
    ax.set_title(
        f"{m.get('n_found', '?')} of {m.get('n_train', '?')} points with a candidate within {radius:g} "
        f"(margin: {m.get('n_found_margin', '?')} of {m.get('n_margin', '?')}, "
        f"off: {m.get('n_found_off_margin', '?')} of {m.get('n_off_margin', '?')})",
        fontsize=_FONT + 1,
    )
    ax.legend(handles=handles, fontsize=_FONT - 1, loc="upper right", framealpha=0.9)
    return fig


def _decision_regions(ax: Any, grid: tuple[Any, Any, Any] | None, *, multiclass: bool) -> list[Any]:
    """Shade the predicted class over the toy's grid and draw Φ = 0; returns legend handles."""
    from matplotlib.lines import Line2D

    if grid is None:
        return []
    xs, ys, phi = grid
    handles = []
    if multiclass:
        levels = np.arange(-0.5, max(int(phi.max()), 1) + 1.0)
        ax.contourf(xs, ys, phi, levels=levels, colors=[_class_colour(k) for k in range(len(levels) - 1)], alpha=0.15)
    else:
        ax.contourf(xs, ys, phi, levels=[-np.inf, 0.0, np.inf], colors=[_class_colour(0), _class_colour(1)], alpha=0.15)
        if phi.min() < 0 < phi.max():
            ax.contour(xs, ys, phi, levels=[0.0], colors="k", linewidths=1.2)
            handles.append(Line2D([], [], color="k", lw=1.2, label="decision boundary Φ = 0"))
    lim = float(np.abs(xs).max())
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    return handles


def plot_loss_history(history: list[dict[str, Any]]) -> Figure | None:
    """Curves of every numeric entry of a reconstruction's ``loss_history`` (None when there are none).

    Args:
        history: a list of dicts, one per logged iteration; an ``iteration``/``step`` key is the x axis.

    Returns:
        The figure, or None when ``history`` holds no numeric series.
    """
    if not history or not all(isinstance(h, dict) for h in history):
        return None
    x_key = next((k for k in ("iteration", "iter", "step", "it") if all(k in h for h in history)), None)
    keys: list[str] = []
    for h in history:
        for key, value in h.items():
            if key != x_key and key not in keys and isinstance(value, int | float) and not isinstance(value, bool):
                keys.append(key)
    if not keys:
        return None
    xs = [h[x_key] for h in history] if x_key else list(range(len(history)))
    fig = _figure(6.4, 3.6)
    ax = fig.add_subplot()
    positive = True
    for key in keys:
        ys = [float(h[key]) if isinstance(h.get(key), int | float) else math.nan for h in history]
        positive &= all(y > 0 for y in ys if math.isfinite(y))
        ax.plot(xs, ys, lw=1.2, label=key)
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel(x_key or "logged step", fontsize=_FONT + 1)
    ax.tick_params(labelsize=_FONT)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=_FONT - 1)
    ax.set_title("Reconstruction loss history", fontsize=_FONT + 1)
    return fig


def save_figures(result: EvaluationResult, out_dir: str | Path) -> dict[str, Path]:
    """Draw the figures that fit the evaluation and write them (atomically) into ``out_dir``.

    Args:
        result: what :func:`kktrecon.evaluation.evaluate_candidates` returned.
        out_dir: the directory to write into.

    Returns:
        The written files by name: ``fig_pairs.png`` and ``fig_ssim_vs_output.png`` for images,
        ``fig_toy.png`` for a two-dimensional toy.
    """
    out_dir = Path(out_dir)
    figures: dict[str, Figure] = {}
    if result.is_image:
        figures[FIG_PAIRS] = plot_pairs(result)
        figures[FIG_SCATTER] = plot_ssim_vs_output(result)
        if "attacker" in result.metrics:
            figures[FIG_ATTACKER] = plot_attacker_view(result)
    elif result.points is not None and result.points.shape[1] == 2:
        figures[FIG_TOY] = plot_toy(result)
    written = {}
    for name, fig in figures.items():
        atomic_write_bytes(out_dir / name, figure_png(fig))
        written[name] = out_dir / name
    return written
