"""Run an experiment of the catalogue: victims, attacks, verdicts, a table and the paper-style figures.

``OUT/experiment.json`` records the experiment, its scale and its cells; each cell gets
``OUT/cells/NAME/`` with its victim, one reconstruction directory per restart and an evaluation
of their pooled candidates; ``result.json`` marks a finished cell, so an interrupted experiment
resumes cell by cell (and inside a cell, each stage resumes from its own checkpoints). The results
are ``OUT/results.md`` and ``OUT/results.json`` and the figures named by the experiment.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kktrecon.attack.batched import reconstruct_batch
from kktrecon.attack.capacity import capacity
from kktrecon.attack.objectives import get_objective
from kktrecon.candidates import CandidateSet
from kktrecon.checks import check_int
from kktrecon.configs import config_to_dict
from kktrecon.data import SAMPLE_ROOT
from kktrecon.errors import ConfigError, RunStateError
from kktrecon.experiments.catalog import EXPERIMENTS
from kktrecon.experiments.grid import Cell, Experiment
from kktrecon.files import (
    CANDIDATES_FILE,
    RECONSTRUCTION_FILE,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    package_versions,
    read_json,
)
from kktrecon.models import load_checkpoint
from kktrecon.pipelines import evaluate
from kktrecon.reporting.figures import FIG_PAIRS, FIG_TOY, figure_png, plot_law, plot_panels
from kktrecon.runs import Run, RunKind, open_run
from kktrecon.sweeps.selection import on_the_margin
from kktrecon.training import train

__all__ = ["ExperimentResult", "control_cell", "experiment"]

EXPERIMENT_FILE = "experiment.json"
#: An experiment directory: its cells' record when it starts, its results when it ends, its cells.
EXPERIMENT_RUN = RunKind(
    manifest="results.json", state=EXPERIMENT_FILE, outputs=("results.md",), dirs=("cells",), what="experiment"
)
RESULT_FILE = "result.json"
# The embedded sample holds the first 500 training and test images of MNIST: enough for CPU-scale cells.
_SAMPLE_PER_CLASS = {"odd-even": (200, 200), "digits": (35, 35), "digit-value": (35, 35)}  # (train, test)


@dataclass
class ExperimentResult:
    """A finished experiment: where it is, one row per cell, the files written, the time it took."""

    out: Path
    rows: list[dict[str, Any]]
    files: list[Path]
    seconds: float


def experiment(
    name: str,
    out: str | Path,
    *,
    scale: str = "cpu",
    data_root: str | Path | None = None,
    device: str | torch.device = "auto",
    seed: int = 0,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    cells: Sequence[str] | None = None,
) -> ExperimentResult:
    """Run the experiment ``name`` of the catalogue into ``out``.

    Args:
        name: a key of :data:`~kktrecon.experiments.catalog.EXPERIMENTS` (``kktrecon experiment --list``).
        out: the experiment's directory.
        scale: ``cpu`` (this 2-core machine, ≤ 45 min) or ``paper`` (the paper's exact setting; a GPU).
        data_root: where MNIST / CIFAR-10 are; CPU-scale MNIST cells fall back to the embedded sample.
        device: where victims train and attacks run.
        seed: added to every cell's victim seed (and, × 1000, to its attack seed): another draw of the
            same experiment.
        resume: continue an interrupted experiment in ``out`` (finished cells are kept).
        force: delete an existing experiment in ``out`` first.
        progress: show progress bars.
        cells: run only the cells of these names (their table and figures alone); None: all.
    """
    exp = EXPERIMENTS.get_entry(name)
    check_int("seed", seed, low=0)
    chosen = tuple(
        dataclasses.replace(
            c,
            victim=dataclasses.replace(c.victim, seed=c.victim.seed + seed),
            attack=dataclasses.replace(c.attack, seed=c.attack.seed + 1000 * seed),
        )
        for c in exp.cells(scale)
        if cells is None or c.name in cells
    )
    unknown = sorted(set(cells or ()) - {c.name for c in exp.cells(scale)})
    if unknown or not chosen:
        names = [c.name for c in exp.cells(scale)]
        raise ConfigError(f"Expected cell names of {name!r} at {scale} scale among {names}. Got {sorted(cells or ())}.")
    run = _open(Path(out), exp, scale, chosen, resume=resume, force=force)  # locked until the experiment returns
    out = run.path
    rows = [_run_cell(out / "cells" / cell.name, cell, data_root, device, progress) for cell in chosen]
    files = _write_results(out, exp, scale, rows)
    # The cells' own times: a resumed experiment counts each cell once, not the resuming call's wall time.
    seconds = sum(sum(r["seconds"].values()) for r in rows)
    record = read_json(out / EXPERIMENT_FILE)
    atomic_write_json(out / EXPERIMENT_FILE, {**record, "seconds": seconds, "finished": True})
    return ExperimentResult(out=out, rows=rows, files=files, seconds=seconds)


def _open(out: Path, exp: Experiment, scale: str, cells: tuple[Cell, ...], *, resume: bool, force: bool) -> Run:
    """Create or reopen an experiment directory (the shared lifecycle), refusing other cells on resume."""
    record = {
        "format": "kktrecon.experiment/1",
        "experiment": exp.name,
        "scale": scale,
        "cells": [config_to_dict(c) for c in cells],
        "versions": package_versions(),
    }
    run = open_run(out, EXPERIMENT_RUN, force=force, resume=resume)
    if run.status != "new":
        saved = read_json(run.path / EXPERIMENT_FILE)
        if (saved.get("experiment"), saved.get("scale"), saved.get("cells")) != (exp.name, scale, record["cells"]):
            raise RunStateError(
                f"Cannot resume {out}: it holds {saved.get('experiment')!r} at scale {saved.get('scale')!r} with "
                "other cells. Choose another directory, or --force."
            )
    atomic_write_json(run.path / EXPERIMENT_FILE, record)
    return run


def _data_root(cell: Cell, data_root: str | Path | None) -> str | Path | None:
    data = cell.victim.data
    if data_root is not None or data.dataset != "mnist":
        return data_root
    train_cap, test_cap = _SAMPLE_PER_CLASS.get(data.task, (0, 0))
    fits = data.n_per_class <= train_cap and data.test_per_class <= test_cap
    return SAMPLE_ROOT if fits else None


def _run_cell(folder: Path, cell: Cell, data_root: Any, device: Any, progress: bool) -> dict[str, Any]:
    """Train, attack (restarts as one batch), evaluate the pooled candidates; skip a finished cell."""
    if (folder / RESULT_FILE).is_file():
        return read_json(folder / RESULT_FILE)
    root = _data_root(cell, data_root)
    start = time.perf_counter()
    victim = train(cell.victim, out=folder / "victim", data_root=root, device=device, resume=True, progress=progress)
    trained = time.perf_counter()
    outs, errors = _attack(folder, cell, device, progress)
    attacked = time.perf_counter()
    done = [o for o, e in zip(outs, errors, strict=True) if e is None]
    if not done:
        raise RunStateError(f"Every attack of cell {cell.name!r} diverged: {errors}.")
    judged = _pool(folder, cell, done) if cell.readouts > 1 or cell.margin_band else done
    result = evaluate(judged, data_root=root, out_dir=folder / "evaluation", device="cpu", force=True)
    m = result.metrics
    row = {
        "cell": cell.name,
        "group": cell.group,
        "label": cell.label or cell.name,
        "n": m["n_train"],
        "n_candidates": m["n_candidates"],
        "restarts": cell.restarts,
        "readouts": cell.readouts,
        "failed_restarts": sum(e is not None for e in errors),
        "train_error": victim.metrics["train_error"],
        "test_accuracy": victim.metrics.get("test_accuracy"),
        "capacity": capacity(victim.model, tuple(victim.model.config.input_shape), m["n_train"]).to_dict(),
        **{k: m.get(k) for k in _ROW_METRICS},
        "seconds": {"train": trained - start, "attack": attacked - trained, "evaluate": time.perf_counter() - attacked},
        "evaluation": str(folder / "evaluation"),
    }
    atomic_write_json(folder / RESULT_FILE, row)
    return row


def _attack(folder: Path, cell: Cell, device: Any, progress: bool) -> tuple[list[Path], list[str | None]]:
    """The cell's restarts as one batch, extended in ``readouts`` steps; each step's candidates kept. Another
    family than ``kkt`` runs once, through the attack registry."""
    outs = [folder / f"attack-{i}" for i in range(cell.restarts)]
    if cell.family != "kkt":
        from kktrecon.attack import run_attack

        done = (outs[0] / RECONSTRUCTION_FILE).exists() or any(outs[0].glob("*.state"))
        run_attack(cell.family, folder / "victim", cell.attack, out=outs[0], device=device, resume=done,
                   progress=progress)  # fmt: skip
        return outs, [None]
    errors: list[str | None] = [None] * cell.restarts
    for k in range(1, cell.readouts + 1):
        stop = cell.attack.iterations * k // cell.readouts
        if cell.readouts > 1 and any(_read_out(o) >= stop for o in outs):
            continue  # the batch passed this read-out before an interruption
        configs = [
            dataclasses.replace(cell.attack, seed=cell.attack.seed + i, iterations=stop) for i in range(cell.restarts)
        ]
        outcome = reconstruct_batch(
            folder / "victim", configs, outs=outs, device=device, resume=True, progress=progress
        )
        errors = [e or old for e, old in zip(outcome.errors, errors, strict=True)]
        if cell.readouts > 1:
            for out, result in zip(outs, outcome.results, strict=True):
                if result is not None:
                    atomic_write_bytes(out / f"readout-{stop:06d}.safetensors", (out / CANDIDATES_FILE).read_bytes())
    return outs, errors


def _read_out(out: Path) -> int:
    """The iteration of the latest read-out kept in ``out`` (0: none)."""
    return max((int(f.stem.split("-")[1]) for f in out.glob("readout-*.safetensors")), default=0)


def _pool(folder: Path, cell: Cell, outs: list[Path]) -> Path:
    """All read-outs of all restarts in one candidate set (``folder/pool``), filtered by the margin band."""
    files = sorted(f for out in outs for f in out.glob("readout-*.safetensors")) or [o / CANDIDATES_FILE for o in outs]
    pooled = CandidateSet.concatenate([CandidateSet.load(f) for f in files])
    manifest = read_json(outs[0] / RECONSTRUCTION_FILE)
    if cell.margin_band is not None:
        model, _ = load_checkpoint(folder / "victim", dtype=torch.float64)
        objective = get_objective(manifest["objective"])
        pooled = pooled.take(on_the_margin(model.eval(), objective, pooled.x.double(), pooled.y, cell.margin_band))
    pool = folder / "pool"
    pooled.save(pool)
    atomic_write_json(
        pool / RECONSTRUCTION_FILE,
        {
            "format": "kktrecon.pool/1",
            "victim": manifest["victim"],
            "objective": manifest["objective"],
            "candidates": len(pooled),
            "sources": [str(f) for f in files],
            "margin_band": cell.margin_band,
            "loss_history": [],
        },
    )
    return pool


_ROW_METRICS = (
    "n_recovered",
    "n_reconstructed",
    "n_reconstructed_reference",
    "median_ssim_aligned",
    "held_out_n_reconstructed",
    "chance_n_reconstructed",
    "control",
    "n_found",
    "n_margin",
    "n_found_margin",
    "n_off_margin",
    "n_found_off_margin",
    "held_out",
)


def _write_results(out: Path, exp: Experiment, scale: str, rows: list[dict[str, Any]]) -> list[Path]:
    table = _markdown(exp, scale, rows)
    atomic_write_text(out / "results.md", table)
    atomic_write_json(
        out / "results.json", {"experiment": exp.name, "scale": scale, "finding": exp.finding, "rows": rows}
    )
    files = [out / "results.md", out / "results.json"]
    if exp.figure in ("panels", "law"):
        if exp.figure == "panels":
            fig = plot_panels([Path(r["evaluation"]) for r in rows], [r["label"] for r in rows], title=exp.title)
        else:
            fig = plot_law(rows, title=exp.title)
        atomic_write_bytes(out / f"{exp.name}.png", figure_png(fig))
        files.append(out / f"{exp.name}.png")
    else:
        source = FIG_TOY if exp.figure == "toy" else FIG_PAIRS
        for r in rows:
            target = out / f"{exp.name}-{r['cell']}.png"
            atomic_write_bytes(target, (Path(r["evaluation"]) / source).read_bytes())
            files.append(target)
    return files


def _markdown(exp: Experiment, scale: str, rows: list[dict[str, Any]]) -> str:
    if exp.figure == "toy":
        head = ["cell", "n", "margin points found", "off-margin points found", "candidates", "time"]
        body = [
            [
                r["label"],
                r["n"],
                f"{r['n_found_margin']} of {r['n_margin']}",
                f"{r['n_found_off_margin']} of {r['n_off_margin']}",
                r["n_candidates"],
                _minutes(r),
            ]
            for r in rows
        ]
        legend = "found: a candidate within 0.05 of the training point; on the margin: normalised margin ≤ 1.1."
    else:
        head = [
            "cell",
            "n",
            "recovered",
            "unseen control",
            "held-out look-alikes > 0.4",
            "aligned SSIM > 0.4",
            "min-max SSIM > 0.4",
            "median aligned SSIM",
            "test accuracy",
            "time",
        ]
        body = [
            [
                r["label"],
                r["n"],
                r["n_recovered"],
                control_cell(r),
                r["held_out_n_reconstructed"],
                r["n_reconstructed"],
                r["n_reconstructed_reference"],
                _fmt(r["median_ssim_aligned"]),
                _fmt(r["test_accuracy"]),
                _minutes(r),
            ]
            for r in rows
        ]
        legend = (
            "recovered: a candidate nearer to that training image than to any other training or held-out image, with "
            "scale-aligned SSIM > 0.4. unseen control: what the same verdict gives as many images the victim never saw "
            "(outside the held-out pool) as there were candidates, chance at this many candidates; a count at or "
            "below it is not a result. held-out look-alikes: training images whose nearest held-out test image already "
            "reaches aligned SSIM > 0.4, the baseline a raw SSIM count is read against."
        )
    if exp.figure == "law":  # the axis the law is read on
        head.insert(2, "p/dn")
        for row, r in zip(body, rows, strict=True):
            row.insert(2, f"{r['capacity']['ratio']:.3g}")
    lines = [f"# {exp.title} ({scale} scale)", "", exp.finding, "", "| " + " | ".join(head) + " |"]
    lines.append("|" + " --- |" * len(head))
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in body]
    return "\n".join([*lines, "", legend, ""])


def control_cell(row: dict[str, Any]) -> str:
    """A result row's unseen control as a table cell: its count and how many images it judged."""
    control = row.get("control")
    return "—" if not control else f"{control['n_recovered']} ({control['count']} images)"


def _minutes(row: dict[str, Any]) -> str:
    return f"{sum(row['seconds'].values()) / 60:.1f} min"


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{value:.3f}"
