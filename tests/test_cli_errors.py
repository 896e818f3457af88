"""Bad input through the command line: a one-line error, exit code 1, no traceback, nothing written.

One test per case of the hardening review (resume and overwrite rules, allocation before
validation, raw tracebacks); the data-file cases (hostile CIFAR pickles, IDX bombs) live in
tests/data. Each case failed on v0.1 (a traceback, a silent wrong result or an overwrite).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from kktrecon.cli import app
from kktrecon.data import DataConfig
from kktrecon.models import MLPConfig
from kktrecon.training import TrainConfig, train

runner = CliRunner()
TOY = {"--dataset": "toy", "--task": "grid", "--hidden": "16,16", "--init-scale": "1.0", "--lr": "0.05"}


def _train_args(out: Path, **flags: str) -> list[str]:
    """``kktrecon train`` of a tiny toy victim into ``out``; ``flags`` (``lr="0.1"``) replace or add options."""
    options = {**TOY, "--steps": "50", "--device": "cpu", **{f"--{k.replace('_', '-')}": v for k, v in flags.items()}}
    return ["train", "--out", str(out), *[item for pair in options.items() for item in pair]]


def _clean_failure(args: list[str]) -> str:
    result = runner.invoke(app, args)
    text = " ".join(result.output.split())
    assert result.exit_code == 1, text
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return text


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.fixture(scope="module")
def victim(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("v") / "victim"
    config = TrainConfig(
        data=DataConfig(dataset="toy", task="grid", n_per_class=10),
        model=MLPConfig(hidden=(16, 16), init_scale=1.0),
        lr=0.05,
    )
    train(config, out=path, steps=200, device="cpu", progress=False)
    return path


def _copy_victim(victim: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in ("model.json", "model.safetensors"):
        (dest / name).write_bytes((victim / name).read_bytes())
    return dest


def _edit_manifest(path: Path, edit) -> None:
    manifest = json.loads((path / "model.json").read_text())
    edit(manifest)
    (path / "model.json").write_text(json.dumps(manifest))


# --- resume and overwrite rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"lr": "0.07"}, "lr"),
        ({"seed": "3"}, "seed"),
        ({"n_per_class": "5"}, "data"),
        ({"hidden": "8"}, "model.hidden"),
    ],
)
def test_train_resume_with_another_recipe_is_refused(tmp_path, change, field) -> None:
    out = tmp_path / "v"
    assert runner.invoke(app, _train_args(out)).exit_code == 0
    assert f"differs in ['{field}']" in _clean_failure([*_train_args(out, **change), "--resume"])


def test_reconstruct_resume_on_another_victim_is_refused(victim, tmp_path) -> None:
    other = _copy_victim(victim, tmp_path / "other")
    weights = load_file(str(other / "model.safetensors"))
    weights["layers.1.weight"] = weights["layers.1.weight"] * 2
    save_file(weights, str(other / "model.safetensors"))
    rec = tmp_path / "rec"
    common = ["--out", str(rec), "--iterations", "4", "--candidates", "4", "--device", "cpu"]
    assert runner.invoke(app, ["reconstruct", str(victim), *common]).exit_code == 0
    assert "another victim" in _clean_failure(["reconstruct", str(other), *common, "--resume"])


def test_report_never_overwrites_a_manifest_and_evaluate_never_silently_replaces(victim, tmp_path) -> None:
    rec = tmp_path / "rec"
    common = ["--out", str(rec), "--iterations", "4", "--candidates", "4", "--device", "cpu"]
    assert runner.invoke(app, ["reconstruct", str(victim), *common]).exit_code == 0
    assert runner.invoke(app, ["evaluate", str(rec)]).exit_code == 0
    before = (rec / "metrics.json").read_bytes()
    assert "--force" in _clean_failure(["evaluate", str(rec)])
    assert (rec / "metrics.json").read_bytes() == before
    assert runner.invoke(app, ["evaluate", str(rec), "--force"]).exit_code == 0
    manifest = (victim / "model.json").read_bytes()
    assert ".html" in _clean_failure(["report", str(rec), "--out", str(victim / "model.json")])
    assert ".html" in _clean_failure(["report", str(rec), "--out", str(victim / "model.json"), "--force"])
    assert (victim / "model.json").read_bytes() == manifest
    assert runner.invoke(app, ["report", str(rec)]).exit_code == 0
    assert "--force" in _clean_failure(["report", str(rec)])
    assert runner.invoke(app, ["report", str(rec), "--force"]).exit_code == 0


# --- allocation before validation ----------------------------------------------------------------------


def _peak_rss_mb(code: str) -> tuple[int, float, str]:
    """Run ``code`` in a fresh interpreter; its return code, peak resident memory (MB) and stderr."""
    wrapper = f"import resource, sys\ntry:\n{''.join('    ' + line + chr(10) for line in code.splitlines())}"
    wrapper += "finally:\n    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, file=sys.stderr)\n"
    proc = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=120)
    return proc.returncode, float(proc.stderr.strip().splitlines()[-1]), proc.stderr


@pytest.mark.parametrize("hidden", [[20000, 20000], [10**9, 20], [1e9, 20], [16.5, 16]])
def test_an_architecture_that_does_not_fit_its_weights_is_refused_before_allocating(victim, tmp_path, hidden) -> None:
    bad = _copy_victim(victim, tmp_path / "bad")
    _edit_manifest(bad, lambda m: m["model"].update(hidden=hidden))
    code = (
        "from kktrecon.models import load_checkpoint\n"
        "from kktrecon.errors import CheckpointError\n"
        "try:\n"
        f"    load_checkpoint({str(bad)!r})\n"
        "except CheckpointError as err:\n"
        "    print(err)\n"
        "    sys.exit(3)\n"
    )
    rc, peak, stderr = _peak_rss_mb(code)
    assert rc == 3, stderr
    assert peak < 1000, f"{peak:.0f} MB used before the shape check"  # [20000, 20000] float32 alone is 1.6 GB
    assert "Traceback" not in _clean_failure(["reconstruct", str(bad), "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()


def test_a_huge_recorded_training_set_is_refused_before_allocating(victim, tmp_path) -> None:
    bad = _copy_victim(victim, tmp_path / "bad")
    _edit_manifest(bad, lambda m: m["metrics"].update(n_train=10**12))
    assert "fit in memory" in _clean_failure(["reconstruct", str(bad), "--out", str(tmp_path / "r"), "--device", "cpu"])
    _edit_manifest(bad, lambda m: m["metrics"].update(n_train=1e9))
    assert "n_train" in _clean_failure(["reconstruct", str(bad), "--out", str(tmp_path / "r"), "--device", "cpu"])
    assert not (tmp_path / "r").exists()


# --- raw tracebacks --------------------------------------------------------------------------------------


def test_a_manifest_without_data_is_a_clean_error(victim, tmp_path) -> None:
    bad = _copy_victim(victim, tmp_path / "bad")
    _edit_manifest(bad, lambda m: m.pop("data"))
    assert "'data'" in _clean_failure(["diagnose", str(bad)])


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool])
def test_non_floating_weights_are_refused(victim, tmp_path, dtype) -> None:
    bad = _copy_victim(victim, tmp_path / "bad")
    weights = {k: v.to(dtype) for k, v in load_file(str(bad / "model.safetensors")).items()}
    save_file(weights, str(bad / "model.safetensors"))
    assert "floating-point" in _clean_failure(["diagnose", str(bad)])
    assert "floating-point" in _clean_failure(["reconstruct", str(bad), "--out", str(tmp_path / "r")])


def test_an_all_zero_model_is_not_called_a_kkt_point(victim, tmp_path) -> None:
    bad = _copy_victim(victim, tmp_path / "bad")
    weights = {k: torch.zeros_like(v) for k, v in load_file(str(bad / "model.safetensors")).items()}
    save_file(weights, str(bad / "model.safetensors"))
    assert "zero" in _clean_failure(["diagnose", str(bad)])


@pytest.mark.parametrize("stage", ["train", "reconstruct"])
def test_a_truncated_resume_checkpoint_is_a_clean_error(victim, tmp_path, stage) -> None:
    out = tmp_path / "run"
    out.mkdir()
    if stage == "train":
        (out / "train_state.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
        args = [*_train_args(out), "--resume"]
    else:
        (out / "checkpoint.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
        args = ["reconstruct", str(victim), "--out", str(out), "--candidates", "4", "--device", "cpu", "--resume"]
    assert "truncated or corrupt" in _clean_failure(args)


@pytest.mark.parametrize("device", ["nonsense", "meta", "mps", "cuda:7"])
def test_unknown_or_missing_devices_are_refused(victim, tmp_path, device) -> None:
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an MPS device")
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has eight GPUs")
    assert "device" in _clean_failure(["reconstruct", str(victim), "--out", str(tmp_path / "r"), "--device", device])
    assert "device" in _clean_failure(_train_args(tmp_path / "t", device=device))
    assert _tree(tmp_path) == []


@pytest.mark.parametrize(
    ("command", "flag", "value", "name"),
    [
        ("train", "--lr", "inf", "lr"),
        ("train", "--hidden", "0", "hidden"),
        ("train", "--hidden", "16,-3", "hidden"),
        ("train", "--init-scale", "nan", "init_scale"),
        ("reconstruct", "--lr", "inf", "lr"),
        ("reconstruct", "--init-scale", "inf", "init_scale"),
        ("reconstruct", "--momentum", "5", "momentum"),
        ("reconstruct", "--alpha", "-1", "alpha"),
    ],
)
def test_out_of_range_settings_fail_before_anything_is_written(victim, tmp_path, command, flag, value, name) -> None:
    out = tmp_path / "out"
    if command == "train":
        args = _train_args(out, **{flag.removeprefix("--").replace("-", "_"): value})
    else:
        args = ["reconstruct", str(victim), "--out", str(out), "--device", "cpu", flag, value]
    assert f"`{name}`" in _clean_failure(args)
    assert not out.exists()
    assert [p.name for p in victim.iterdir() if p.suffix == ".tmp"] == []


def test_names_holding_rich_markup_print_as_they_are(tmp_path) -> None:
    odd = tmp_path / "runs[/]x[bold]"  # "runs[" / "]x[bold]": the "/" of "[/]" is a separator
    odd.mkdir(parents=True)
    text = _clean_failure(["reconstruct", str(odd), "--out", str(tmp_path / "rec")])
    assert "runs[/]x[bold]" in text and "is not a victim run directory" in text


def test_evaluating_a_sweep_that_pooled_nothing_says_why(tmp_path) -> None:
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "sweep.json").write_text("{}")  # started; no trial finished, so no pool/
    text = _clean_failure(["evaluate", str(sweep_dir)])
    assert "a sweep without pooled candidates: no trial of it finished" in text


@pytest.mark.parametrize(
    ("text", "says"),
    [("[" * 100_000 + "]" * 100_000, "nested too deeply"), ('{"input_shape": [' + "9" * 5000 + "]}", "does not read")],
    ids=["deep", "digits"],
)
def test_a_hostile_arch_spec_is_one_line(tmp_path, text, says) -> None:
    (tmp_path / "arch.json").write_text(text)
    (tmp_path / "train").mkdir()
    torch.save({"1.weight": torch.zeros(1, 4)}, tmp_path / "w.pt")
    text = _clean_failure(
        ["audit", "--weights", str(tmp_path / "w.pt"), "--arch", str(tmp_path / "arch.json"), "--train",
         str(tmp_path / "train"), "--out", str(tmp_path / "out")]
    )  # fmt: skip
    assert says in text and not (tmp_path / "out").exists()


def test_two_reconstructions_into_one_directory_at_once_are_refused(victim, tmp_path) -> None:
    out = tmp_path / "rec"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from kktrecon.attack.loop import ATTACK_RUN; "
         "from kktrecon.runs import open_run; r = open_run(sys.argv[1], ATTACK_RUN); print('held', flush=True); "
         "time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        text = _clean_failure(["reconstruct", str(victim), "--out", str(out), "--iterations", "5"])
        assert "in use by another kktrecon process" in text and _tree(out) == []
    finally:
        holder.kill()
        holder.wait()


def test_ctrl_c_says_how_to_resume_and_claims_no_checkpoint(tmp_path, monkeypatch) -> None:
    import kktrecon.training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(kktrecon.training, "train", interrupted)
    result = runner.invoke(app, _train_args(tmp_path / "v"))
    text = " ".join(result.output.split())
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert "--resume" in text and "one that keeps none starts over" in text and "Checkpoints are kept" not in text
