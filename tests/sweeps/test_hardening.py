"""Sweeps under stress: resumed sampling, failed trials, corrupt or edited study files, bad Ray addresses."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kktrecon.cli import app
from kktrecon.errors import CheckpointError, ConfigError, RunStateError
from kktrecon.sweeps import sweep

SMALL = dict(iterations=20, batch=2, extend=0, progress=False, device="cpu")
COLD = {**SMALL, "warm_start": False}  # sampled trials only, no released winners first


@pytest.fixture(scope="module")
def finished(victim, tmp_path_factory) -> Path:
    """A finished two-trial sweep, to be copied by each test that damages one."""
    out = tmp_path_factory.mktemp("finished") / "sweep"
    sweep(victim, out, trials=2, **COLD)
    return out


def _copy(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "sweep"
    shutil.copytree(finished, out)
    return out


def _trials(rows: list[dict]) -> list[tuple]:
    return [(r["number"], r["state"], r["params"], r["value"]) for r in rows]


def test_a_grown_sweep_samples_the_trials_an_uninterrupted_one_does(victim, finished, tmp_path) -> None:
    straight = sweep(victim, tmp_path / "straight", trials=4, **COLD).rows
    grown = sweep(victim, _copy(finished, tmp_path), trials=4, resume=True, **COLD).rows  # 2 trials, then 4
    assert _trials(grown) == _trials(straight)
    assert len({tuple(sorted(r["params"].items())) for r in straight}) == 4  # no trial repeats another's settings


def test_a_sweep_whose_trials_all_fail_pools_nothing_and_says_so(victim, tmp_path, monkeypatch) -> None:
    from kktrecon.sweeps import backends

    monkeypatch.setattr(backends, "run_batch", lambda victim, configs, outs, **_: ["diverged"] * len(configs))
    out = tmp_path / "sweep"
    (out / "pool").mkdir(parents=True)  # a pool left by an earlier sweep, which `evaluate` would score
    (out / "pool" / "reconstruction.json").write_text("{}")
    args = ["sweep", str(victim), "--out", str(out), "--trials", "2", "--iterations", "5", "--batch", "2",
            "--extend", "0", "--no-warm-start", "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "no trial finished, so nothing was pooled" in result.output and "pooled candidates" not in result.output
    assert not (out / "pool").exists()
    assert [r["state"] for r in json.loads((out / "results.json").read_text())["trials"]] == ["FAIL", "FAIL"]
    (out / "pool").mkdir()  # and a resumed sweep that still has no finished trial removes it too
    assert sweep(victim, out, trials=3, resume=True, **{**COLD, "iterations": 5}).best is None
    assert not (out / "pool").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign"])
def test_a_corrupt_study_is_refused_before_anything_is_written(victim, finished, tmp_path, damage) -> None:
    out = _copy(finished, tmp_path)
    db = out / "study.db"
    if damage == "truncated":
        db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    elif damage == "garbage":
        db.write_bytes(b"not a database at all" * 100)
    else:
        db.unlink()
        with sqlite3.connect(db) as con:
            con.execute("CREATE TABLE photos (id INTEGER)")
    before = (out / "sweep.json").read_bytes(), db.read_bytes()
    with pytest.raises(CheckpointError, match=r"is not a readable Optuna study \(truncated or corrupt\?\): .*--force"):
        sweep(victim, out, trials=2, resume=True, **COLD)
    assert ((out / "sweep.json").read_bytes(), db.read_bytes()) == before  # validated first, nothing rewritten
    args = ["sweep", str(victim), "--out", str(out), "--trials", "2", "--iterations", "20", "--batch", "2",
            "--extend", "0", "--no-warm-start", "--device", "cpu", "--resume"]  # fmt: skip
    result = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    assert result.exit_code == 1 and "not a readable Optuna study" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("recorded", ["/tmp/elsewhere", "trials/../../elsewhere", "."])
def test_a_trial_recorded_outside_the_sweep_is_refused(victim, finished, tmp_path, recorded) -> None:
    out = _copy(finished, tmp_path)
    with sqlite3.connect(out / "study.db") as con:
        con.execute(
            "UPDATE trial_user_attributes SET value_json = ? WHERE key = 'dir' AND trial_id = "
            "(SELECT trial_id FROM trials WHERE number = 1)",
            (json.dumps(recorded),),
        )
    before = (out / "sweep.json").read_bytes()
    with pytest.raises(RunStateError, match=f"Trial 1 of .* records its directory as '{recorded}', outside"):
        sweep(victim, out, trials=3, resume=True, **COLD)
    assert (out / "sweep.json").read_bytes() == before and not (out / "trials" / "0002").exists()


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("127.0.0.1:1", r"Expected a Ray cluster at 127\.0\.0\.1:1\. Got no answer within 5 s\."),
        ("127.0.0.1:notaport", r"Expected `address` as HOST:PORT with a port 1–65535 .* Got '127\.0\.0\.1:notaport'"),
        ("127.0.0.1:70000", r"Expected `address` as HOST:PORT"),
        ("nohost", r"Expected `address` as HOST:PORT"),
    ],
)
def test_a_ray_address_is_checked_in_seconds(victim, tmp_path, address, message) -> None:
    pytest.importorskip("ray", reason="ray is an optional extra: pip install 'kktrecon[cluster]'")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=message):
        sweep(victim, tmp_path / "s", trials=2, backend="ray", address=address, **COLD)
    assert time.perf_counter() - start < 10 and not (tmp_path / "s").exists()  # refused before the sweep opens


def test_the_command_line_reports_a_bad_ray_address_in_one_line(victim, tmp_path) -> None:
    pytest.importorskip("ray", reason="ray is an optional extra: pip install 'kktrecon[cluster]'")
    for address in ("127.0.0.1:1", "127.0.0.1:notaport"):
        args = ["sweep", str(victim), "--out", str(tmp_path / "s"), "--backend", "ray", "--address", address]
        result = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert address in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_each_trial_is_sampled_from_the_seed_and_its_number(tmp_path, sampler) -> None:
    import optuna

    from kktrecon.sweeps import SweepConfig
    from kktrecon.sweeps.study import _ask

    config = SweepConfig(sampler=sampler, seed=3)

    def run(path: Path, stops: tuple[int, ...]) -> list[dict]:
        for total in stops:  # each stop: the study reopened with a fresh sampler, as a resumed sweep does
            study = optuna.create_study(storage=f"sqlite:///{path}", study_name="s", load_if_exists=True)
            while len(study.trials) < total:
                trial = _ask(study, config, tmp_path)
                study.tell(trial, sum(trial.params.values()))
        return [t.params for t in study.trials]

    straight = run(tmp_path / "a.db", (4,))
    assert run(tmp_path / "b.db", (1, 3, 4)) == straight
    assert len({tuple(p.values()) for p in straight}) == 4


def test_a_finished_trial_deleted_by_hand_is_named_on_resume(victim, finished, tmp_path) -> None:
    out = _copy(finished, tmp_path)
    shutil.rmtree(out / "trials" / "0000")
    before = (out / "sweep.json").read_bytes()
    args = ["sweep", str(victim), "--out", str(out), "--trials", "3", "--iterations", "20", "--batch", "2",
            "--extend", "0", "--no-warm-start", "--device", "cpu", "--resume"]  # fmt: skip
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "trial 0 finished, but" in text and "deleted by hand?" in text, text
    assert (out / "sweep.json").read_bytes() == before and "Traceback" not in result.output
