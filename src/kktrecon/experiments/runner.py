"""Run an experiment of the catalogue: victims, attacks, verdicts, a table and the paper-style figures.

``OUT/experiment.json`` records the experiment, its scale and its cells; each cell gets
``OUT/cells/NAME/`` with its victim, one reconstruction directory per restart and an evaluation
of their pooled candidates; ``result.json`` marks a finished cell, so an interrupted experiment
resumes cell by cell (and inside a cell, each stage resumes from its own checkpoints). The results
are ``OUT/results.md`` and ``OUT/results.json`` and the figures named by the experiment.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kktrecon.attack.batched import reconstruct_batch
from kktrecon.data import SAMPLE_ROOT
from kktrecon.errors import ConfigError, RunDirectoryExistsError, RunStateError
from kktrecon.evaluation import evaluate
from kktrecon.experiments.catalog import EXPERIMENTS
from kktrecon.experiments.grid import Cell, Experiment
from kktrecon.reporting.figures import FIG_PAIRS, FIG_TOY, figure_png, plot_panels
from kktrecon.runs import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    config_to_dict,
    package_versions,
    read_json,
)
from kktrecon.training import train

__all__ = ["ExperimentResult", "experiment"]

EXPERIMENT_FILE = "experiment.json"
RESULT_FILE = "result.json"
# The embedded sample holds the first 500 training and test images of MNIST: enough for CPU-scale cells.
_SAMPLE_PER_CLASS = {"odd-even": 200, "digits": 40, "digit-value": 40}


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
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
) -> ExperimentResult:
    """Run the experiment ``name`` of the catalogue into ``out``.

    Args:
        name: a key of :data:`~kktrecon.experiments.catalog.EXPERIMENTS` (``kktrecon experiment --list``).
        out: the experiment's directory.
        scale: ``cpu`` (this 2-core machine, ≤ 45 min) or ``paper`` (the paper's exact setting; a GPU).
        data_root: where MNIST / CIFAR-10 are; CPU-scale MNIST cells fall back to the embedded sample.
        device: where victims train and attacks run.
        resume: continue an interrupted experiment in ``out`` (finished cells are kept).
        force: delete an existing experiment in ``out`` first.
        progress: show progress bars.
    """
    exp = EXPERIMENTS.get_entry(name)
    cells = exp.cells(scale)
    out = _open(Path(out), exp, scale, cells, resume=resume, force=force)
    start = time.perf_counter()
    rows = [_run_cell(out / "cells" / cell.name, cell, data_root, device, progress) for cell in cells]
    files = _write_results(out, exp, scale, rows)
    seconds = time.perf_counter() - start
    record = read_json(out / EXPERIMENT_FILE)
    atomic_write_json(out / EXPERIMENT_FILE, {**record, "seconds": seconds, "finished": True})
    return ExperimentResult(out=out, rows=rows, files=files, seconds=seconds)


def _open(out: Path, exp: Experiment, scale: str, cells: tuple[Cell, ...], *, resume: bool, force: bool) -> Path:
    if force and resume:
        raise ConfigError("Expected at most one of `force` (start over) and `resume` (continue). Got both.")
    record = {
        "format": "kktrecon.experiment/1",
        "experiment": exp.name,
        "scale": scale,
        "cells": [config_to_dict(c) for c in cells],
        "versions": package_versions(),
    }
    manifest = out / EXPERIMENT_FILE
    if manifest.exists() and force:
        shutil.rmtree(out / "cells", ignore_errors=True)
        manifest.unlink()
    elif manifest.exists() and not resume:
        raise RunDirectoryExistsError(f"{out} already holds an experiment; pass --resume to continue it or --force.")
    elif manifest.exists():
        saved = read_json(manifest)
        if (saved.get("experiment"), saved.get("scale"), saved.get("cells")) != (exp.name, scale, record["cells"]):
            raise RunStateError(
                f"Cannot resume {out}: it holds {saved.get('experiment')!r} at scale {saved.get('scale')!r} with "
                "other cells. Choose another directory, or --force."
            )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(manifest, record)
    return out


def _data_root(cell: Cell, data_root: str | Path | None) -> str | Path | None:
    data = cell.victim.data
    if data_root is not None or data.dataset != "mnist":
        return data_root
    fits = data.n_per_class <= _SAMPLE_PER_CLASS.get(data.task, 0) and data.test_per_class <= 40
    return SAMPLE_ROOT if fits else None


def _run_cell(folder: Path, cell: Cell, data_root: Any, device: Any, progress: bool) -> dict[str, Any]:
    """Train, attack (restarts as one batch), evaluate the pooled candidates; skip a finished cell."""
    if (folder / RESULT_FILE).is_file():
        return read_json(folder / RESULT_FILE)
    root = _data_root(cell, data_root)
    start = time.perf_counter()
    victim = train(cell.victim, out=folder / "victim", data_root=root, device=device, resume=True, progress=progress)
    trained = time.perf_counter()
    configs = [dataclasses.replace(cell.attack, seed=cell.attack.seed + i) for i in range(cell.restarts)]
    outs = [folder / f"attack-{i}" for i in range(cell.restarts)]
    outcome = reconstruct_batch(folder / "victim", configs, outs=outs, device=device, resume=True, progress=progress)
    attacked = time.perf_counter()
    done = [o for o, r in zip(outs, outcome.results, strict=True) if r is not None]
    if not done:
        raise RunStateError(f"Every attack of cell {cell.name!r} diverged: {outcome.errors}.")
    result = evaluate(done, data_root=root, out_dir=folder / "evaluation", device="cpu", force=True)
    m = result.metrics
    row = {
        "cell": cell.name, "group": cell.group, "label": cell.label or cell.name, "n": m["n_train"],
        "n_candidates": m["n_candidates"], "restarts": cell.restarts,
        "failed_restarts": sum(e is not None for e in outcome.errors),
        "train_error": victim.metrics["train_error"], "test_accuracy": victim.metrics.get("test_accuracy"),
        **{k: m.get(k) for k in _ROW_METRICS},
        "seconds": {"train": trained - start, "attack": attacked - trained, "evaluate": time.perf_counter() - attacked},
        "evaluation": str(folder / "evaluation"),
    }  # fmt: skip
    atomic_write_json(folder / RESULT_FILE, row)
    return row


_ROW_METRICS = (
    "n_recovered", "n_reconstructed", "n_reconstructed_reference", "median_ssim_aligned", "held_out_n_reconstructed",
    "chance_n_reconstructed", "n_found", "n_margin", "n_found_margin", "n_off_margin", "n_found_off_margin", "held_out",
)  # fmt: skip


def _write_results(out: Path, exp: Experiment, scale: str, rows: list[dict[str, Any]]) -> list[Path]:
    table = _markdown(exp, scale, rows)
    atomic_write_text(out / "results.md", table)
    atomic_write_json(
        out / "results.json", {"experiment": exp.name, "scale": scale, "finding": exp.finding, "rows": rows}
    )
    files = [out / "results.md", out / "results.json"]
    if exp.figure == "panels":
        fig = plot_panels([Path(r["evaluation"]) for r in rows], [r["label"] for r in rows], title=exp.title)
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
            [r["label"], r["n"], f"{r['n_found_margin']} of {r['n_margin']}",
             f"{r['n_found_off_margin']} of {r['n_off_margin']}", r["n_candidates"], _minutes(r)]
            for r in rows
        ]  # fmt: skip
        legend = "found: a candidate within 0.05 of the training point; on the margin: normalised margin ≤ 1.1."
    else:
        head = ["cell", "n", "recovered", "held-out look-alikes > 0.4", "aligned SSIM > 0.4", "min-max SSIM > 0.4",
                "median aligned SSIM", "test accuracy", "time"]  # fmt: skip
        body = [
            [r["label"], r["n"], r["n_recovered"], r["held_out_n_reconstructed"], r["n_reconstructed"],
             r["n_reconstructed_reference"], _fmt(r["median_ssim_aligned"]), _fmt(r["test_accuracy"]), _minutes(r)]
            for r in rows
        ]  # fmt: skip
        legend = (
            "recovered: a candidate nearer to that training image than to any other training or held-out image, with "
            "scale-aligned SSIM > 0.4. held-out look-alikes: training images whose nearest held-out test image already "
            "reaches aligned SSIM > 0.4, the baseline a raw SSIM count is read against."
        )
    lines = [f"# {exp.title} ({scale} scale)", "", exp.finding, "", "| " + " | ".join(head) + " |"]
    lines.append("|" + " --- |" * len(head))
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in body]
    return "\n".join([*lines, "", legend, ""])


def _minutes(row: dict[str, Any]) -> str:
    return f"{sum(row['seconds'].values()) / 60:.1f} min"


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{value:.3f}"
