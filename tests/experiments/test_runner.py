"""Experiments: a declared grid runs end to end, resumes cell by cell, and writes its table and figures."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from kktrecon.attack import ReconstructionConfig
from kktrecon.cli import app
from kktrecon.data import DataConfig
from kktrecon.errors import ConfigError, RunDirectoryExistsError
from kktrecon.experiments import EXPERIMENTS, Cell, Experiment, experiment
from kktrecon.experiments import runner as runner_module
from kktrecon.models import MLPConfig
from kktrecon.training import TrainConfig

_VICTIM = TrainConfig(
    data=DataConfig(n_per_class=3, test_per_class=10), model=MLPConfig(hidden=(32, 32)), lr=0.05, steps=150
)
_VICTIM_B = dataclasses.replace(_VICTIM, seed=1)
_ATTACK = ReconstructionConfig(iterations=30, init_scale=0.01, lr=0.05, checkpoint_every=10, log_every=10)
TINY = Experiment(
    name="tiny",
    title="A tiny grid",
    finding="It runs.",
    figure="panels",
    cpu=(
        Cell("a", _VICTIM, _ATTACK, restarts=2, label="A"),
        Cell("b", _VICTIM_B, _ATTACK, readouts=3, margin_band=(0.5, 2.0), label="B"),
    ),
    paper=(),
)


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(EXPERIMENTS, "tiny", TINY)
    return "tiny"


def test_an_experiment_runs_its_cells_and_writes_a_table_and_panels(tiny, tmp_path) -> None:
    result = experiment(tiny, tmp_path / "e", device="cpu", progress=False)
    assert [r["cell"] for r in result.rows] == ["a", "b"]
    assert result.rows[0]["restarts"] == 2 and result.rows[1]["readouts"] == 3
    table = (tmp_path / "e" / "results.md").read_text()
    assert "| A | 6 |" in table and "recovered" in table
    assert (tmp_path / "e" / "tiny.png").stat().st_size > 1000
    assert json.loads((tmp_path / "e" / "results.json").read_text())["finding"] == "It runs."
    pool = json.loads((tmp_path / "e" / "cells" / "b" / "pool" / "reconstruction.json").read_text())
    assert len(pool["sources"]) == 3  # three read-outs of one run, pooled
    with pytest.raises(RunDirectoryExistsError, match="--resume"):
        experiment(tiny, tmp_path / "e", device="cpu", progress=False)


def test_an_interrupted_experiment_resumes_cell_by_cell(tiny, tmp_path, interrupt_at) -> None:
    restore = interrupt_at(runner_module, "evaluate", 2)  # Ctrl-C while the second cell is evaluated
    with pytest.raises(KeyboardInterrupt):
        experiment(tiny, tmp_path / "e", device="cpu", progress=False)
    restore()
    first = (tmp_path / "e" / "cells" / "a" / "result.json").stat().st_mtime_ns
    assert not (tmp_path / "e" / "cells" / "b" / "result.json").exists()
    result = experiment(tiny, tmp_path / "e", device="cpu", progress=False, resume=True)
    assert len(result.rows) == 2
    assert (tmp_path / "e" / "cells" / "a" / "result.json").stat().st_mtime_ns == first  # not run again


def test_every_experiment_of_the_catalogue_is_declared_at_both_scales() -> None:
    names = set(EXPERIMENTS)
    assert {"toy", "fig3-mnist", "fig3-cifar", "fig4-n", "fig4-arch", "weight-decay", "multiclass"} <= names
    for exp in EXPERIMENTS.values():
        assert exp.cpu and exp.paper and exp.finding


def test_the_list_names_each_experiment_with_a_time(tiny) -> None:
    result = CliRunner().invoke(app, ["experiment", "--list"])
    assert result.exit_code == 0, result.output
    assert "fig4-n" in result.output and "weight-decay" in result.output and "~" in result.output


def test_an_owner_family_cell_runs_once_and_a_cell_filter_runs_only_its_cells(monkeypatch, tmp_path) -> None:
    from kktrecon.attack.unmixing import UnmixConfig

    owner = dataclasses.replace(_VICTIM, init="pytorch", steps=60)
    exp = dataclasses.replace(
        TINY, cpu=(*TINY.cpu, Cell("u", owner, UnmixConfig(), label="U", family="unmix")), figure="law"
    )
    monkeypatch.setitem(EXPERIMENTS, "tiny", exp)
    result = experiment("tiny", tmp_path / "e", device="cpu", progress=False, cells=["u"])
    (row,) = result.rows
    assert row["cell"] == "u" and row["n"] == 6 and row["n_recovered"] >= 5  # unmixing reads (almost) every image
    assert json.loads((tmp_path / "e" / "cells" / "u" / "attack-0" / "reconstruction.json").read_text())[
        "format"
    ].startswith("kktrecon.unmix")
    with pytest.raises(ConfigError, match="cell names"):
        experiment("tiny", tmp_path / "f", device="cpu", progress=False, cells=["nope"])
    with pytest.raises(ConfigError, match="UnmixConfig"):
        Cell("bad", owner, _ATTACK, family="unmix")
    with pytest.raises(ConfigError, match="one run"):
        Cell("bad", owner, UnmixConfig(), restarts=2, family="unmix")
