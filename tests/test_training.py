"""Training: zero training error, checkpoints that reload identically, determinism, resume, refusals."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from kktrecon.configs import config_to_dict
from kktrecon.data import SAMPLE_ROOT, DataConfig
from kktrecon.errors import RunStateError
from kktrecon.files import load_state, save_state
from kktrecon.models import CNNConfig, MLPConfig, load_checkpoint
from kktrecon.runs import RunDirectoryExistsError
from kktrecon.training import TrainConfig, load_train_config, train, train_config_from_dict
from kktrecon.victims import diagnose

TOY = TrainConfig(
    data=DataConfig(dataset="toy", task="grid", n_per_class=10),
    model=MLPConfig(hidden=(64, 64), init_scale=1.0),
    lr=0.05,
    steps=1500,
    eval_every=100,
    checkpoint_every=500,
)
MNIST_SMALL = TrainConfig(
    data=DataConfig(n_per_class=10, test_per_class=100), model=MLPConfig(hidden=(100, 100)), steps=2000, eval_every=500
)


def test_mnist_victim_reaches_zero_training_error_and_separates_with_margin() -> None:
    result = train(MNIST_SMALL, data_root=SAMPLE_ROOT, device="cpu", progress=False)
    m = result.metrics
    assert m["train_error"] == 0.0
    assert m["min_margin"] > 0
    assert m["test_accuracy"] > 0.6  # odd/even from 20 digits: well above chance
    assert result.history[0]["loss"] == pytest.approx(0.693, abs=0.01)  # tiny first layer: Φ ≈ 0 at init
    assert result.history[-1]["loss"] < result.history[0]["loss"] / 10


def test_run_directory_reloads_identically_and_records_metrics(tmp_path) -> None:
    result = train(TOY, out=tmp_path / "v", device="cpu", progress=False)
    assert result.metrics["train_error"] == 0.0
    model, manifest = load_checkpoint(tmp_path / "v")
    x = torch.rand(9, 2) * 2 - 1
    assert torch.equal(model(x), result.model(x))
    for key in ("train_error", "test_accuracy", "train_loss", "margins", "outputs"):
        assert key in manifest["metrics"]
    assert manifest["data"]["dataset"] == "toy" and manifest["training"]["steps"] == TOY.steps
    assert {"torch", "kktrecon"} <= set(manifest["versions"])
    assert (
        tmp_path / "v" / "train_state.safetensors"
    ).exists()  # the final state, kept so that the run can be extended
    with pytest.raises(RunDirectoryExistsError, match="--force"):
        train(TOY, out=tmp_path / "v", device="cpu", progress=False)
    train(TOY, out=tmp_path / "v", device="cpu", progress=False, force=True, steps=10)
    assert json.loads((tmp_path / "v" / "model.json").read_text())["metrics"]["steps"] == 10


def test_same_seed_gives_the_same_parameters() -> None:
    a = train(TOY, device="cpu", progress=False, steps=50)
    b = train(TOY, device="cpu", progress=False, steps=50)
    c = train(TOY, device="cpu", progress=False, steps=50, seed=1)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not torch.equal(a.model.layers[0].weight, c.model.layers[0].weight)


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, interrupt_at) -> None:
    full = train(TOY, device="cpu", progress=False, steps=1200)
    from kktrecon import training

    restore = interrupt_at(training, "_loss_and_error", 700)
    with pytest.raises(KeyboardInterrupt):
        train(TOY, out=tmp_path / "v", device="cpu", progress=False, steps=1200)
    restore()
    with pytest.raises(FileExistsError, match="--resume"):
        train(TOY, out=tmp_path / "v", device="cpu", progress=False, steps=1200)
    resumed = train(TOY, out=tmp_path / "v", device="cpu", progress=False, steps=1200, resume=True)
    for p, q in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_longer_training_moves_the_victim_towards_a_kkt_point() -> None:
    short = train(TOY, device="cpu", progress=False, steps=200, dtype="float64")
    long = train(TOY, device="cpu", progress=False, steps=3000, dtype="float64")
    x, signs = short_data()
    r_short = diagnose(short.model, x=x, signs=signs).relative_residual
    r_long = diagnose(long.model, x=x, signs=signs).relative_residual
    assert r_long < r_short


def short_data():
    from kktrecon.data import load_dataset

    d = load_dataset(TOY.data, dtype=torch.float64)
    return d.x_train, d.signs


def test_loss_scaled_schedule_is_faster_to_the_same_margin_regime() -> None:
    const = train(TOY, device="cpu", progress=False, steps=300)
    fast = train(TOY, device="cpu", progress=False, steps=300, schedule="loss-scaled", max_lr_factor=50)
    assert fast.metrics["train_loss"] < const.metrics["train_loss"]


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="Expected `schedule` to be one of \\['constant', 'loss-scaled'\\]"):
        TrainConfig(schedule="cosine")
    with pytest.raises(ValueError, match="Expected `dtype`"):
        TrainConfig(dtype="half")
    with pytest.raises(ValueError, match=r"the architecture's go in `model`.*Got \['hidden'\]"):
        train(TOY, hidden=(8,), progress=False)
    with pytest.raises(ValueError, match="Expected `data` loaded with"):
        from kktrecon.data import load_dataset

        train(TOY, data=load_dataset(MNIST_SMALL.data, data_root=SAMPLE_ROOT), progress=False)


def _same_weights(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_a_finished_run_extends_bit_identically_and_never_shrinks(tmp_path) -> None:
    full = train(TOY, out=tmp_path / "full", device="cpu", progress=False, steps=800)
    train(TOY, out=tmp_path / "v", device="cpu", progress=False, steps=500)
    same = train(TOY, out=tmp_path / "v", device="cpu", progress=False, steps=500, resume=True)
    assert same.metrics["steps"] == 500  # the finished run, returned as it is
    longer = train(TOY, out=tmp_path / "v", device="cpu", progress=False, steps=800, resume=True)
    assert _same_weights(longer.model, full.model)
    assert longer.history == full.history
    manifest = json.loads((tmp_path / "v" / "model.json").read_text())
    assert manifest["training"]["steps"] == 800 and manifest["metrics"]["steps"] == 800
    with pytest.raises(RunStateError, match="extended, not shortened"):
        train(TOY, out=tmp_path / "v", device="cpu", progress=False, steps=300, resume=True)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"lr": 0.07}, "lr"),
        ({"seed": 3}, "seed"),
        ({"model": MLPConfig(hidden=(32, 32), init_scale=1.0)}, "model.hidden"),
        ({"data": DataConfig(dataset="toy", task="spiral", n_per_class=10)}, "data"),
    ],
)
def test_resume_refuses_another_recipe(tmp_path, interrupt_at, change, field) -> None:
    from kktrecon import training

    restore = interrupt_at(training, "_loss_and_error", 600)
    with pytest.raises(KeyboardInterrupt):
        train(TOY, out=tmp_path / "v", device="cpu", progress=False, steps=1200)
    restore()
    changed = dataclasses.replace(TOY, **change)
    with pytest.raises(RunStateError, match=rf"differs in \['{field}'\]"):
        train(changed, out=tmp_path / "v", device="cpu", progress=False, steps=1200, resume=True)
    finished = train(TOY, out=tmp_path / "w", device="cpu", progress=False, steps=100)
    assert finished.metrics["steps"] == 100
    with pytest.raises(RunStateError, match=rf"differs in \['{field}'\]"):
        train(changed, out=tmp_path / "w", device="cpu", progress=False, steps=100, resume=True)


def test_force_deletes_the_old_run_before_starting(tmp_path, interrupt_at) -> None:
    from kktrecon import training

    train(TOY, out=tmp_path / "v", device="cpu", progress=False, steps=100, seed=5)
    restore = interrupt_at(training, "_loss_and_error", 50)
    with pytest.raises(KeyboardInterrupt):
        train(TOY, out=tmp_path / "v", device="cpu", progress=False, steps=100, seed=7, force=True)
    restore()
    assert not (tmp_path / "v" / "model.json").exists()  # the seed-5 result is gone, not waiting to be returned
    resumed = train(TOY, out=tmp_path / "v", device="cpu", progress=False, steps=100, seed=7, resume=True)
    fresh = train(TOY, device="cpu", progress=False, steps=100, seed=7)
    assert _same_weights(resumed.model, fresh.model)
    assert json.loads((tmp_path / "v" / "model.json").read_text())["seed"] == 7


# --- the nested recipe, and the flat records of victims trained before -----------------------------------

# A victim's "training" record as TrainConfig wrote it before `model` held the architecture's config.
FLAT_TOY_RECORD = {
    "data": {"dataset": "toy", "task": "grid", "n_per_class": 10, "test_per_class": 500, "seed": 0},
    "model": "mlp",
    "hidden": [64, 64],
    "channels": [16, 32],
    "kernel_size": 3,
    "stride": 2,
    "bias": "first",
    "init_scale": 1.0,
    "hidden_init_scale": None,
    "lr": 0.05,
    "weight_decay": 0.0,
    "steps": 100,
    "loss_threshold": None,
    "schedule": "constant",
    "max_lr_factor": 1000.0,
    "dtype": "float32",
    "seed": 0,
    "eval_every": 100,
    "checkpoint_every": 500,
}


def test_the_recipe_round_trips_with_the_architecture_named_beside_its_fields() -> None:
    config = TrainConfig(model=CNNConfig(channels=(4,), padding=0, hidden=(8,)), lr=0.05)
    record = config_to_dict(config)
    assert record["model"]["architecture"] == "cnn" and record["model"]["padding"] == 0
    assert train_config_from_dict(record) == config
    assert train_config_from_dict(config_to_dict(TrainConfig())) == TrainConfig()
    with pytest.raises(ValueError, match=r"Expected `TrainConfig\.model` to name its kind under 'architecture'"):
        train_config_from_dict({"model": {"hidden": [8]}})
    with pytest.raises(ValueError, match="Expected `model` to be the config of a registered architecture"):
        TrainConfig(model="cnn")


def test_flat_records_of_older_victims_load_into_the_nested_recipe() -> None:
    config = train_config_from_dict(FLAT_TOY_RECORD, decided={"input_shape": [2], "num_outputs": 1})
    assert config == dataclasses.replace(
        TOY, steps=100, model=MLPConfig(input_shape=(2,), hidden=(64, 64), init_scale=1.0)
    )
    cnn = train_config_from_dict({**FLAT_TOY_RECORD, "model": "cnn", "hidden": [1000, 1000], "channels": [4]})
    assert cnn.model == CNNConfig(channels=(4,), hidden=(1000, 1000), init_scale=1.0)  # padding: the CNN's default then
    with pytest.raises(ValueError, match="resnet"):
        train_config_from_dict({**FLAT_TOY_RECORD, "model": "resnet"})


def _as_before(run_dir) -> None:
    """Rewrite a victim's manifest and training state as the code before the nested recipe wrote them."""
    manifest = json.loads((run_dir / "model.json").read_text())
    (run_dir / "model.json").write_text(json.dumps({**manifest, "training": FLAT_TOY_RECORD}))
    tensors, meta = load_state(run_dir / "train_state.safetensors")
    save_state(run_dir / "train_state.safetensors", tensors, {**meta, "config": FLAT_TOY_RECORD})


def test_a_victim_trained_before_the_nested_recipe_loads_resumes_and_extends(tmp_path) -> None:
    old = train(TOY, out=tmp_path / "v", device="cpu", progress=False, steps=100)
    _as_before(tmp_path / "v")
    model, manifest = load_checkpoint(tmp_path / "v")
    assert _same_weights(model, old.model)
    assert load_train_config(manifest) == dataclasses.replace(
        TOY, steps=100, model=MLPConfig(input_shape=(2,), hidden=(64, 64), init_scale=1.0)
    )
    same = train(TOY, out=tmp_path / "v", device="cpu", progress=False, steps=100, resume=True)
    assert same.metrics["steps"] == 100 and _same_weights(same.model, old.model)
    wider = dataclasses.replace(TOY, model=MLPConfig(hidden=(32, 32), init_scale=1.0))
    with pytest.raises(RunStateError, match=r"differs in \['model.hidden'\]"):
        train(wider, out=tmp_path / "v", device="cpu", progress=False, steps=150, resume=True)
    longer = train(TOY, out=tmp_path / "v", device="cpu", progress=False, steps=150, resume=True)
    assert _same_weights(longer.model, train(TOY, device="cpu", progress=False, steps=150).model)
    assert json.loads((tmp_path / "v" / "model.json").read_text())["training"]["model"]["architecture"] == "mlp"
