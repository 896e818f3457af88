"""Evaluation results and evaluated directories for the reporting tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kktrecon.evaluation import evaluate_candidates
from kktrecon.pipelines import write_evaluation


def _image_result(n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(n, 1, 10, 10, generator=g, dtype=torch.float64)
    mean = imgs.mean(0)
    train = imgs - mean
    cands = torch.cat([0.3 * train[: n // 2], 0.2 * torch.randn(n, 1, 10, 10, generator=g, dtype=torch.float64)])
    labels = torch.arange(n) % 2
    outputs = (2.0 * labels - 1.0) * torch.linspace(1.0, 2.0, n, dtype=torch.float64)
    return evaluate_candidates(cands, train, labels, mean, outputs=outputs, class_names=("odd", "even"))


def _evaluated_dir(tmp_path: Path, *, hostile: str = "plain") -> Path:
    """An evaluation directory with a victim and a reconstruction manifest next to it."""
    victim = tmp_path / "victim"
    victim.mkdir()
    model_json = {
        "data": {"dataset": "mnist", "task": hostile},
        "model": {"widths": [1000, 1000], "bias": "first"},
        "train_mean": [0.1] * 100,
        "metrics": {"train_error": 0.0},
    }
    (victim / "model.json").write_text(json.dumps(model_json))
    rec = tmp_path / "rec"
    rec.mkdir()
    history = [{"iteration": i, "loss": 1.0 / (i + 1), "kkt": 2.0 / (i + 1)} for i in range(5)]
    manifest = {
        "victim": {"run_dir": str(victim)},
        "config": {"lr": 0.03, "note": hostile},
        "timings": {"total_s": 1.5},
        "loss_history": history,
        "iterations": 5,
    }
    (rec / "reconstruction.json").write_text(json.dumps(manifest))
    result = _image_result()
    result.metrics.update({"rec_dirs": [str(rec)], "victim_run_dir": str(victim)})
    write_evaluation(result, rec)
    return rec
