"""The CLI: thin, documented, JSON where scripts rely on it, clean errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import kktrecon
from kktrecon.cli import app
from kktrecon.data import SAMPLE_ROOT

runner = CliRunner()


def test_every_public_name_exists() -> None:
    for name in kktrecon.__all__:
        assert getattr(kktrecon, name) is not None
    for stage in ("train", "reconstruct", "evaluate", "report"):
        assert callable(getattr(kktrecon, stage))


@pytest.mark.parametrize("command", [c.name or c.callback.__name__ for c in app.registered_commands])
def test_every_command_has_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    callback = next(c.callback for c in app.registered_commands if (c.name or c.callback.__name__) == command)
    assert callback.__doc__ and callback.__doc__.strip().splitlines()[0] in " ".join(result.output.split())


def test_data_json_has_the_names_scripts_rely_on() -> None:
    result = runner.invoke(
        app, ["data", "--n-per-class", "10", "--test-per-class", "50", "--data-root", str(SAMPLE_ROOT), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n_train"] == 20
    assert summary["per_class"] == {"even": 10, "odd": 10}
    assert len(summary["source_indices"]) == 20


def test_errors_are_one_clean_line_not_a_traceback(tmp_path) -> None:
    result = runner.invoke(app, ["data", "--data-root", str(tmp_path)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "train-images-idx3-ubyte" in " ".join(result.output.split())
    result = runner.invoke(app, ["reconstruct", str(tmp_path), "--out", str(tmp_path / "rec")])
    assert result.exit_code == 1 and "model.safetensors" in result.output
    result = runner.invoke(app, ["data", "--dataset", "imagenet"])
    assert result.exit_code == 1 and "cifar10" in result.output


def test_train_diagnose_reconstruct_evaluate_report_end_to_end(tmp_path) -> None:
    victim, rec = tmp_path / "victim", tmp_path / "rec"
    args = ["train", "--dataset", "toy", "--task", "grid", "--hidden", "64,64", "--init-scale", "1.0", "--lr", "0.05"]
    result = runner.invoke(app, [*args, "--steps", "1500", "--out", str(victim), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads((victim / "model.json").read_text())["metrics"]["train_error"] == 0.0
    result = runner.invoke(app, [*args, "--steps", "10", "--out", str(victim)])
    assert result.exit_code == 1 and "--force" in result.output
    result = runner.invoke(app, ["diagnose", str(victim), "--json"])
    assert result.exit_code == 0, result.output
    assert 0.0 <= json.loads(result.stdout)["relative_residual"] <= 1.0
    assert json.loads(result.stdout)["extra"]["capacity"]["ratio"] > 1
    result = runner.invoke(app, ["diagnose", str(victim)])
    assert result.exit_code == 0 and "p/dn" in result.output
    result = runner.invoke(
        app,
        ["reconstruct", str(victim), "--out", str(rec), "--iterations", "30", "--candidates", "10",
         "--prior-weight", "0", "--init-scale", "0.1", "--lr", "0.01", "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["evaluate", str(rec), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_train"] == 20
    result = runner.invoke(app, ["report", str(rec)])
    assert result.exit_code == 0, result.output
    assert (rec / "report.html").is_file()


def _text(result) -> str:
    return " ".join(result.output.replace("│", " ").split())


def test_help_shows_the_defaults_of_the_config_dataclasses() -> None:
    from kktrecon.attack import ReconstructionConfig
    from kktrecon.training import TrainConfig

    train_help = _text(runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}))
    assert f"[default: ({TrainConfig().steps})]" in train_help
    assert f"[default: ({TrainConfig().data.n_per_class})]" in train_help
    assert "[default: (mlp: 1000,1000 · cnn: ())]" in train_help  # each architecture's own default
    attack_help = _text(runner.invoke(app, ["reconstruct", "--help"], env={"COLUMNS": "200"}))
    assert f"[default: ({ReconstructionConfig().lr})]" in attack_help


def test_set_reaches_every_field_by_its_dotted_name_and_refuses_unknown_ones(tmp_path) -> None:
    victim, rec = tmp_path / "cnn", tmp_path / "rec"
    args = ["train", "--model", "cnn", "--set", "model.padding=0", "--set", "model.channels=4", "--n-per-class", "2",
            "--test-per-class", "5", "--steps", "2", "--data-root", str(SAMPLE_ROOT), "--device", "cpu"]  # fmt: skip
    result = runner.invoke(app, [*args, "--out", str(victim)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((victim / "model.json").read_text())
    assert manifest["model"]["padding"] == 0 and manifest["model"]["channels"] == [4]
    assert manifest["training"]["model"]["architecture"] == "cnn"
    result = runner.invoke(app, [*args, "--set", "model.pading=1", "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "'model.pading'" in _text(result) and "'model.padding'" in _text(result)
    result = runner.invoke(app, [*args, "--set", "steps=many", "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "Expected `steps` to be an integer. Got 'many'." in _text(result)
    result = runner.invoke(app, [*args, "--set", "model.input_shape=3", "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "`model.input_shape`" in _text(result)
    assert not (tmp_path / "x").exists()
    common = ["reconstruct", str(victim), "--iterations", "2", "--candidates", "4", "--device", "cpu"]
    result = runner.invoke(app, [*common, "--set", "box=0.5", "--out", str(rec)])
    assert result.exit_code == 0, result.output
    assert json.loads((rec / "reconstruction.json").read_text())["config"]["box"] == 0.5
    result = runner.invoke(app, [*common, "--set", "boxes=0.5", "--out", str(tmp_path / "y")])
    assert result.exit_code == 1 and "'log_every'" in _text(result)


def test_a_cnn_victim_takes_its_pooling_from_the_command_line(tmp_path) -> None:
    args = ["train", "--model", "cnn", "--channels", "2", "--stride", "1", "--pool", "max", "--n-per-class", "2",
            "--test-per-class", "2", "--steps", "2", "--device", "cpu", "--data-root", str(SAMPLE_ROOT)]  # fmt: skip
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "v")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "v" / "model.json").read_text())["model"]["pool"] == "max"
    result = runner.invoke(app, ["train", "--pool", "max", "--steps", "2", "--out", str(tmp_path / "mlp")])
    assert result.exit_code != 0 and "model.pool" in result.output  # an MLP has no pooling
