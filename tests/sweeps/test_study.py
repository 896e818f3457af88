"""Sweeps: trials as reconstruction directories, pooling, the oracle objective, kill -9 and resume, Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kktrecon.data import SAMPLE_ROOT, DataConfig
from kktrecon.errors import RunDirectoryExistsError, RunStateError
from kktrecon.sweeps import SweepConfig, sweep
from kktrecon.training import TrainConfig, train

SMALL = dict(iterations=20, batch=2, progress=False, device="cpu")


@pytest.fixture(scope="module")
def victim(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("v") / "victim"
    config = TrainConfig(data=DataConfig(n_per_class=3, test_per_class=10), hidden=(32, 32), lr=0.05, steps=200)
    train(config, out=path, data_root=SAMPLE_ROOT, device="cpu", progress=False)
    return path


def test_trials_are_reconstruction_directories_and_the_best_are_pooled(victim, tmp_path) -> None:
    out = tmp_path / "sweep"
    result = sweep(victim, out, trials=4, **SMALL)
    assert [r["state"] for r in result.rows] == ["COMPLETE"] * 4
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0000", "0001", "0002", "0003"]
    for row in result.rows:
        manifest = json.loads((Path(row["dir"]) / "reconstruction.json").read_text())
        assert manifest["config"]["lr"] == pytest.approx(row["params"]["lr"])  # the sampled settings, recorded
        assert manifest["config"]["seed"] == row["number"]
    assert (out / "study.db").is_file() and (out / "pool" / "ranking.json").is_file()
    from kktrecon import evaluate

    metrics = evaluate(out, data_root=SAMPLE_ROOT).metrics  # a sweep directory stands for its pool
    assert metrics["n_candidates"] == json.loads((out / "pool" / "reconstruction.json").read_text())["candidates"]
    assert 0.0 <= metrics["attacker"]["precision_at_10"] <= 1.0
    from typer.testing import CliRunner

    from kktrecon.cli import app

    cli = CliRunner().invoke(app, ["evaluate", str(out), "--data-root", str(SAMPLE_ROOT), "--force"])
    assert cli.exit_code == 0, cli.output  # the command line takes the sweep directory too
    with pytest.raises(RunDirectoryExistsError, match="--resume"):
        sweep(victim, out, trials=4, **SMALL)
    with pytest.raises(RunStateError, match="differs in \\['iterations'\\]"):
        sweep(victim, out, trials=4, resume=True, **{**SMALL, "iterations": 30})
    more = sweep(victim, out, trials=6, resume=True, **SMALL)  # only the count may grow
    assert len(more.rows) == 6


def test_the_oracle_objective_counts_recovered_images(victim, tmp_path) -> None:
    result = sweep(victim, tmp_path / "s", trials=2, objective="oracle", data_root=SAMPLE_ROOT, **SMALL)
    for row in result.rows:
        metrics = json.loads((Path(row["dir"]) / "metrics.json").read_text())
        assert row["value"] == metrics["n_recovered"]


_KILLED_SWEEP = """
import sys
from kktrecon.sweeps import sweep
sweep(sys.argv[1], sys.argv[2], trials=6, batch=2, iterations=400, checkpoint_every=20, progress=False, device="cpu")
"""


def test_a_killed_sweep_resumes_without_losing_or_repeating_a_trial(victim, tmp_path) -> None:
    out = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_SWEEP, str(victim), str(out)])
    second = out / "trials" / "0002" / "checkpoint.safetensors"
    deadline = time.time() + 300
    while not second.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert second.exists(), "the first batch did not finish in time"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = [(out / "trials" / f"000{i}" / "reconstruction.json") for i in (0, 1)]
    stamps = [p.stat().st_mtime_ns for p in first]
    from kktrecon.runs import load_state

    cut = load_state(second)[1]["iteration"]
    result = sweep(victim, out, trials=6, batch=2, iterations=400, checkpoint_every=20, resume=True, progress=False,
                   device="cpu")  # fmt: skip
    assert sorted(r["number"] for r in result.rows) == [0, 1, 2, 3, 4, 5]
    assert all(r["state"] == "COMPLETE" for r in result.rows)
    assert [p.stat().st_mtime_ns for p in first] == stamps  # finished trials were not run again
    history = json.loads((out / "trials" / "0002" / "reconstruction.json").read_text())["loss_history"]
    assert 0 < cut < 400 and [h["iteration"] for h in history] == list(range(0, 400, 8))  # resumed, not restarted
    assert sorted(p.name for p in (out / "trials").iterdir()) == [f"000{i}" for i in range(6)]


def test_the_ray_backend_runs_trials_as_tasks_on_a_local_instance(victim, tmp_path) -> None:
    ray = pytest.importorskip("ray", reason="ray is an optional extra: pip install 'kktrecon[cluster]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = sweep(victim, tmp_path / "s", trials=2, backend="ray", **{**SMALL, "batch": 1})
    finally:
        ray.shutdown()
    assert [r["state"] for r in result.rows] == ["COMPLETE", "COMPLETE"]
    assert all((Path(r["dir"]) / "candidates.safetensors").is_file() for r in result.rows)


def test_sweep_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="`sampler`"):
        SweepConfig(sampler="grid")
    with pytest.raises(ValueError, match="`objective`"):
        SweepConfig(objective="accuracy")
    from kktrecon.sweeps import Parameter

    with pytest.raises(ValueError, match="ReconstructionConfig has"):
        Parameter("learning_rate", 1e-3, 1e-1)
