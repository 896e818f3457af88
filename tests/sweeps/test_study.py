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

from kktrecon.data import SAMPLE_ROOT
from kktrecon.errors import RunDirectoryExistsError, RunStateError
from kktrecon.evaluation import oracle_score
from kktrecon.sweeps import SweepConfig, sweep
from kktrecon.sweeps.config import load_sweep_config

SMALL = dict(iterations=20, batch=2, extend=0, progress=False, device="cpu")


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
    result = sweep(victim, tmp_path / "s", trials=2, objective="oracle", oracle=oracle_score(SAMPLE_ROOT), **SMALL)
    for row in result.rows:
        metrics = json.loads((Path(row["dir"]) / "metrics.json").read_text())
        assert row["value"] == metrics["n_recovered"]


_KILLED_SWEEP = """
import sys
from kktrecon.sweeps import sweep
sweep(sys.argv[1], sys.argv[2], trials=6, batch=2, iterations=400, extend=100, checkpoint_every=20, progress=False,
      device="cpu")
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
    from kktrecon.files import load_state

    cut = load_state(second)[1]["iteration"]
    result = sweep(victim, out, trials=6, batch=2, iterations=400, extend=100, checkpoint_every=20, resume=True,
                   progress=False, device="cpu")  # fmt: skip
    assert sorted(r["number"] for r in result.rows) == [0, 1, 2, 3, 4, 5]
    assert all(r["state"] == "COMPLETE" for r in result.rows)
    extended = {r["number"] for r in result.rows if r["extended"]}
    kept = [i for i in (0, 1) if i not in extended]  # the extended trial's files are rewritten by its extension
    assert [first[i].stat().st_mtime_ns for i in kept] == [stamps[i] for i in kept]  # finished trials not run again
    history = json.loads((out / "trials" / "0002" / "reconstruction.json").read_text())["loss_history"]
    assert 0 < cut < 400 and [h["iteration"] for h in history] == list(range(0, 400, 8))  # resumed, not restarted
    assert sorted(p.name for p in (out / "trials").iterdir()) == [f"000{i}" for i in range(6)]
    assert sum(r["extended"] for r in result.rows) == 1 and sorted(r["iterations"] for r in result.rows)[-1] == 500
    straight = sweep(victim, tmp_path / "straight", trials=6, batch=2, iterations=400, extend=100, checkpoint_every=20,
                     progress=False, device="cpu").rows  # fmt: skip
    assert [(r["number"], r["params"]) for r in result.rows] == [(r["number"], r["params"]) for r in straight]
    assert [r["value"] for r in result.rows] == [r["value"] for r in straight]  # bit-identical, batched or not


def test_the_released_winners_are_the_first_trials(victim, tmp_path) -> None:
    from kktrecon.attack.released import WINNERS

    rows = sweep(victim, tmp_path / "warm", trials=3, **SMALL).rows
    assert [tuple(r["params"][k] for k in ("init_scale", "lr", "lambda_min", "alpha")) for r in rows[:2]] == list(
        WINNERS["mnist"]
    )  # the victim was trained on MNIST: its data set's two winners
    assert rows[2]["params"] != rows[0]["params"] and rows[2]["params"] != rows[1]["params"]
    cold = sweep(victim, tmp_path / "cold", trials=2, warm_start=False, **SMALL).rows
    assert all(tuple(r["params"].values()) not in WINNERS["mnist"] for r in cold)
    # A swept range that excludes a winner's setting skips that winner instead of leaving the space.
    from kktrecon.sweeps import Parameter

    narrow = (Parameter("init_scale", 1e-3, 1e-2, log=True), Parameter("lr", 1e-2, 1.0, log=True))
    rows = sweep(victim, tmp_path / "narrow", trials=2, space=narrow, **SMALL).rows
    assert rows[0]["params"] == {"init_scale": 0.00174, "lr": 0.282}  # winner 2 only (winner 1: init 0.035)
    assert rows[1]["params"] not in ({"init_scale": 0.035, "lr": 0.0305},)


def test_the_best_trial_is_extended_as_if_it_had_run_longer(victim, tmp_path) -> None:
    import torch
    from safetensors.torch import load_file

    from kktrecon.attack import reconstruct
    from kktrecon.sweeps.selection import trial_score

    out = tmp_path / "sweep"
    result = sweep(victim, out, trials=3, **{**SMALL, "extend": 30})
    best = max(result.rows, key=lambda r: r["kkt_score"])
    assert [r["extended"] for r in result.rows].count(True) == 1 and best["extended"]
    assert best["iterations"] == 50 and {r["iterations"] for r in result.rows if not r["extended"]} == {20}
    manifest = json.loads((Path(best["dir"]) / "reconstruction.json").read_text())
    assert best["value"] == pytest.approx(trial_score(manifest))  # scored after its extension
    config = SweepConfig(**{k: v for k, v in SMALL.items() if k in ("iterations", "batch")}, extend=30)
    alone = reconstruct(victim, config.trial_config(best["number"], best["params"], extended=True), device="cpu",
                        progress=False)  # fmt: skip
    extended = load_file(Path(best["dir"]) / "candidates.safetensors")
    # One 50-iteration run of the ordinary engine, up to float32 rounding (the batch takes the Gram form).
    torch.testing.assert_close(extended["x"], alone.x.to(extended["x"].dtype), rtol=1e-4, atol=1e-6)
    stamp = (Path(best["dir"]) / "candidates.safetensors").stat().st_mtime_ns
    again = sweep(victim, out, trials=3, resume=True, **{**SMALL, "extend": 30})
    assert [r["iterations"] for r in again.rows] == [r["iterations"] for r in result.rows]  # extended once
    assert (Path(best["dir"]) / "candidates.safetensors").stat().st_mtime_ns == stamp


def test_the_pool_keeps_near_duplicates_after_the_distinct_candidates(victim, tmp_path) -> None:
    out = tmp_path / "sweep"
    sweep(victim, out, trials=3, **SMALL)
    from kktrecon.sweeps import pool_sweep

    loose = pool_sweep(out)  # the sweep's tau
    total = sum(json.loads((out / "trials" / f"000{i}" / "reconstruction.json").read_text())["candidates"]
                for i in range(3))  # fmt: skip
    assert len(loose.x) == total  # nothing dropped
    distinct = loose.duplicate_of < 0
    n = int(distinct.sum())
    assert bool(distinct[:n].all()) and not bool(distinct[n:].any())  # the distinct ones first
    assert bool((loose.duplicate_of[n:] < n).all())  # a near-duplicate points at a distinct one before it
    ranking = json.loads((out / "pool" / "ranking.json").read_text())["candidates"]
    assert [c["duplicate_of"] is None for c in ranking] == distinct.tolist()


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
    with pytest.raises(ValueError, match="`extend`"):
        SweepConfig(extend=-1)
    with pytest.raises(ValueError, match="`extend_top`"):
        SweepConfig(extend_top=0)
    from kktrecon.sweeps import Parameter

    with pytest.raises(ValueError, match="ReconstructionConfig has"):
        Parameter("learning_rate", 1e-3, 1e-1)


def test_duplicates_point_at_the_first_candidate_in_order_within_tau() -> None:
    import torch

    from kktrecon.sweeps.selection import duplicates

    base = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x = torch.cat([base, base[:1] + 1e-4, base[1:2] * 2.0])  # 3: near 0; 4: 1 rescaled (NCC ignores scale)
    order = torch.tensor([4, 0, 1, 2, 3])
    assert duplicates(x, order, tau=0.05).tolist() == [0, 4, 2, 0, 4]
    assert duplicates(x, order, tau=0.0).tolist() == [0, 1, 2, 3, 4]  # tau 0: every candidate distinct


def test_the_command_line_sweeps_then_extends_the_best_trial(victim, tmp_path) -> None:
    from typer.testing import CliRunner

    from kktrecon.cli import app

    out = tmp_path / "s"
    args = ["sweep", str(victim), "--out", str(out), "--trials", "3", "--iterations", "10", "--batch", "3",
            "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, [*args, "--extend", "5"], env={"COLUMNS": "200"})  # the table unwrapped
    assert result.exit_code == 0, result.output
    assert "15 (extended)" in result.output and "kkt: −stationarity residual (oracle-free)" in result.output
    rows = json.loads((out / "results.json").read_text())["trials"]
    assert sorted(r["iterations"] for r in rows) == [10, 10, 15]
    more = CliRunner().invoke(app, [*args, "--extend", "8", "--extend-top", "2", "--resume"])
    assert more.exit_code == 0, more.output  # a finished sweep extended further on resume
    rows = json.loads((out / "results.json").read_text())["trials"]
    assert sorted(r["iterations"] for r in rows) == [10, 18, 18]


def test_a_budget_stops_the_trials_but_keeps_the_extension(victim, tmp_path) -> None:
    from kktrecon.sweeps.study import _out_of_time

    config = SweepConfig(iterations=100, extend=200, extend_top=1, batch=8)
    # One more 10-second round, then the extension charged at half a round per 100 iterations: 20 s.
    assert _out_of_time(19.0, [10.0], config) and not _out_of_time(21.0, [10.0], config)
    assert not _out_of_time(0.0, [], config)  # the first round always runs
    rows = sweep(victim, tmp_path / "s", trials=20, budget_s=1e-3, **{**SMALL, "extend": 10}).rows
    assert len(rows) == 2 and [r["iterations"] for r in rows].count(30) == 1  # one round, then the extension


def test_a_named_search_space_is_swept_and_its_ranges_overridable(victim, tmp_path) -> None:
    from typer.testing import CliRunner

    from kktrecon.cli import app

    out = tmp_path / "s"
    args = ["sweep", str(victim), "--out", str(out), "--trials", "2", "--iterations", "5", "--batch", "2",
            "--extend", "0", "--device", "cpu", "--space", "cnn", "--space", "lr=0.001:0.01:log"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    space = {p.name: p for p in load_sweep_config(out).space}
    assert set(space) == {"init_scale", "lr", "lambda_min", "alpha", "tv_weight"}
    assert (space["lr"].low, space["lr"].high) == (0.001, 0.01)
    rows = json.loads((out / "results.json").read_text())["trials"]
    assert all(0.001 <= r["params"]["lr"] <= 0.01 and "tv_weight" in r["params"] for r in rows)
    unknown = CliRunner().invoke(app, [*args[:-4], "--space", "convnet", "--force"])
    assert unknown.exit_code != 0 and "['cnn', 'reference']" in unknown.output
