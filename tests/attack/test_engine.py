"""The attack: loss at a true KKT point, resume bit-identity, divergence handling, outputs."""

from __future__ import annotations

import json

import pytest
import torch

from kktrecon.attack import ReconstructionConfig, ReconstructionDivergedError, attack_loss, loop, reconstruct
from kktrecon.attack import engine as rec
from kktrecon.attack.terms import total_variation
from kktrecon.candidates import CandidateSet
from kktrecon.devices import THREADS_ENV
from kktrecon.errors import RunStateError
from kktrecon.files import load_state
from kktrecon.models import ModelConfig, build_model, save_checkpoint


def _linear_kkt_victim():
    """A linear victim θ = Σ λᵢ yᵢ xᵢ: a true KKT point of its data (stationarity holds exactly)."""
    torch.manual_seed(0)
    x = torch.rand(4, 1, 3, 3, dtype=torch.float64) * 2 - 1
    y = torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64)
    lam = torch.tensor([0.8, 0.3, 0.5, 1.2], dtype=torch.float64)
    model = build_model(ModelConfig(input_shape=(1, 3, 3), hidden=(), bias="none"), dtype=torch.float64)
    with torch.no_grad():
        model.layers[0].weight.copy_(((lam * y) @ x.reshape(4, -1))[None])
    return model, x, y, lam


def test_loss_vanishes_at_the_true_data_and_grows_when_a_sample_moves() -> None:
    model, x, y, lam = _linear_kkt_victim()
    for p in model.parameters():
        p.requires_grad_(True)
    cfg = ReconstructionConfig(lambda_min=0.0)
    m = x.shape[0]
    at_truth = attack_loss(model, x, lam * m, y, cfg)  # the loss averages over m candidates
    assert float(at_truth["kkt"]) < 1e-20
    assert float(at_truth["total"]) < 1e-20
    moved = x.clone()
    moved[0] += 0.1
    assert float(attack_loss(model, moved, lam * m, y, cfg)["kkt"]) > 1e-4
    # a wrong sign or a wrong scale of the stationarity term is caught
    assert float(attack_loss(model, x, lam * m, -y, cfg)["kkt"]) > 1.0
    assert float(attack_loss(model, x, lam, y, cfg)["kkt"]) > 0.1


def test_prior_and_lambda_hinge() -> None:
    model, x, y, _ = _linear_kkt_victim()
    cfg = ReconstructionConfig(lambda_min=0.5)
    terms = attack_loss(model, x * 0 + 1.5, torch.tensor([0.2, 0.5, 1.0, 0.0], dtype=torch.float64), y, cfg)
    assert float(terms["prior"]) == pytest.approx(x.numel() * 0.25)
    assert float(terms["lambda"]) == pytest.approx(0.3**2 + 0.5**2)


def test_total_variation_prior_is_zero_on_flat_images_and_counts_edges() -> None:
    model, _, y, lam = _linear_kkt_victim()
    cfg = ReconstructionConfig(tv_weight=2.0)
    flat = torch.full((4, 1, 3, 3), 0.3, dtype=torch.float64)
    assert float(attack_loss(model, flat, lam, y, cfg)["tv"]) == 0.0
    edge = flat.clone()
    edge[0, 0, :, 2] = 1.3  # one column steps by 1: 3 of the 6 horizontal differences in one image
    terms = attack_loss(model, edge, lam, y, cfg)
    assert float(terms["tv"]) == pytest.approx(0.5)
    base = attack_loss(model, edge, lam, y, ReconstructionConfig())
    assert float(terms["total"] - base["total"]) == pytest.approx(2.0 * 0.5)
    assert float(total_variation(torch.ones(5, 2), 1).abs().sum()) == 0.0  # not images: no prior


def test_initial_state_is_seeded_and_labels_are_half_and_half() -> None:
    cfg = ReconstructionConfig(init_scale=0.01, seed=5)
    x, lam, y, _ = rec.initial_state((1, 4, 4), cfg, 6, device=torch.device("cpu"), dtype=torch.float32)
    x2, lam2, _, _ = rec.initial_state((1, 4, 4), cfg, 6, device=torch.device("cpu"), dtype=torch.float32)
    assert torch.equal(x, x2) and torch.equal(lam, lam2)
    assert y.tolist() == [-1, -1, -1, 1, 1, 1]
    assert lam.min() >= 0 and lam.max() <= 1
    assert x.std().item() == pytest.approx(0.01, rel=0.5)


@pytest.fixture
def victim_dir(tmp_path):
    model = build_model(ModelConfig(input_shape=(1, 4, 4), hidden=(16, 16), init_scale=0.1), seed=2)
    save_checkpoint(tmp_path / "victim", model, {"metrics": {"n_train": 3}})
    return tmp_path / "victim"


SMALL = dict(iterations=20, checkpoint_every=5, init_scale=0.1, lr=0.01, progress=False, device="cpu")


def test_outputs_and_default_candidate_count(victim_dir, tmp_path) -> None:
    result = reconstruct(victim_dir, out=tmp_path / "rec", **SMALL)
    assert result.x.shape == (6, 1, 4, 4)  # m = 2n with n from the victim's manifest
    manifest = json.loads((tmp_path / "rec" / "reconstruction.json").read_text())
    assert manifest["config"]["iterations"] == 20 and manifest["candidates"] == 6
    assert manifest["victim"]["run_dir"].endswith("victim")
    assert len(manifest["loss_history"]) == 1 and "ms_per_iteration" in manifest["timings"]
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "rec" / "candidates.safetensors"))
    assert set(tensors) == {"x", "lam", "y", "source"}
    candidates = CandidateSet.load(tmp_path / "rec")
    assert torch.equal(candidates.x, tensors["x"]) and candidates.sources[0]["attack"] == "kkt"
    assert candidates.victim["fingerprint"] == manifest["victim"]["fingerprint"]
    with pytest.raises(FileExistsError, match="--force"):
        reconstruct(victim_dir, out=tmp_path / "rec", **SMALL)


@pytest.mark.parametrize("engine", ["gram", "autograd"])
def test_interrupted_then_resumed_run_is_bit_identical(victim_dir, tmp_path, interrupt_at, engine) -> None:
    small = {**SMALL, "engine": engine}
    full = reconstruct(victim_dir, out=tmp_path / "full", **small)
    restore = interrupt_at(loop, "_step", 13)
    with pytest.raises(KeyboardInterrupt):
        reconstruct(victim_dir, out=tmp_path / "cut", **small)
    restore()
    assert (tmp_path / "cut" / "checkpoint.safetensors").exists()
    assert not (tmp_path / "cut" / "reconstruction.json").exists()
    with pytest.raises(FileExistsError, match="--resume"):
        reconstruct(victim_dir, out=tmp_path / "cut", **small)
    resumed = reconstruct(victim_dir, out=tmp_path / "cut", resume=True, **small)
    assert torch.equal(resumed.x, full.x)
    assert torch.equal(resumed.lam, full.lam)
    assert resumed.history == [
        {**h, "seconds": r["seconds"]} for h, r in zip(full.history, resumed.history, strict=True)
    ]


def test_resume_refuses_a_changed_config(victim_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(loop, "_write_result", lambda *a, **k: None)  # leave only the checkpoint behind
    reconstruct(victim_dir, out=tmp_path / "r", **SMALL)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="differs in \\['lr'\\]"):
        reconstruct(victim_dir, out=tmp_path / "r", resume=True, **{**SMALL, "lr": 0.02})


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(victim_dir, tmp_path, monkeypatch) -> None:
    calls = {"n": 0}
    real = rec.attack_loss

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        terms = real(*args, **kwargs)
        if calls["n"] == 8:
            terms["total"] = terms["total"] * float("nan")
        return terms

    monkeypatch.setattr(rec, "attack_loss", poisoned)
    with pytest.raises(ReconstructionDivergedError, match="at iteration 7; last good checkpoint: iteration 5"):
        reconstruct(victim_dir, out=tmp_path / "nan", engine="autograd", **SMALL)
    tensors, meta = load_state(tmp_path / "nan" / "checkpoint.safetensors")
    assert meta["iteration"] == 5 and torch.isfinite(tensors["x"]).all()


def test_a_diverging_step_size_is_caught(victim_dir, tmp_path) -> None:
    with pytest.raises(ReconstructionDivergedError, match="Lower --lr"):
        reconstruct(victim_dir, out=tmp_path / "big", **{**SMALL, "lr": 1e30, "iterations": 50})


def test_config_validation_messages() -> None:
    with pytest.raises(ValueError, match="even number"):
        ReconstructionConfig(candidates=7)
    with pytest.raises(ValueError, match="Expected `dtype` to be one of"):
        ReconstructionConfig(dtype="float16")


def test_non_homogeneous_victims_warn_and_unsupported_layers_fail(tmp_path) -> None:
    model = build_model(ModelConfig(input_shape=(1, 4, 4), hidden=(8, 8), bias="all"))
    with pytest.warns(UserWarning, match="not homogeneous"):
        reconstruct(model, candidates=4, iterations=2, progress=False, device="cpu")
    tanh = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    from kktrecon.models import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="Tanh"):
        reconstruct(tanh, candidates=4, iterations=2, progress=False, device="cpu", input_shape=(1, 4, 4))


def test_a_finished_attack_extends_bit_identically_and_never_shrinks(victim_dir, tmp_path) -> None:
    full = reconstruct(victim_dir, out=tmp_path / "full", **{**SMALL, "iterations": 30})
    reconstruct(victim_dir, out=tmp_path / "r", **SMALL)
    again = reconstruct(victim_dir, out=tmp_path / "r", resume=True, **SMALL)
    assert json.loads((tmp_path / "r" / "reconstruction.json").read_text())["iterations"] == 20
    longer = reconstruct(victim_dir, out=tmp_path / "r", resume=True, **{**SMALL, "iterations": 30})
    assert not torch.equal(again.x, longer.x)
    assert torch.equal(longer.x, full.x) and torch.equal(longer.lam, full.lam)
    manifest = json.loads((tmp_path / "r" / "reconstruction.json").read_text())
    assert manifest["iterations"] == 30 and manifest["config"]["iterations"] == 30
    with pytest.raises(RunStateError, match="extended, not shortened"):
        reconstruct(victim_dir, out=tmp_path / "r", resume=True, **{**SMALL, "iterations": 10})


def test_resume_refuses_a_checkpoint_of_another_victim(victim_dir, tmp_path, interrupt_at) -> None:
    other = build_model(ModelConfig(input_shape=(1, 4, 4), hidden=(16, 16), init_scale=0.1), seed=3)
    save_checkpoint(tmp_path / "other", other, {"metrics": {"n_train": 3}})
    restore = interrupt_at(loop, "_step", 8)
    with pytest.raises(KeyboardInterrupt):
        reconstruct(victim_dir, out=tmp_path / "r", **SMALL)
    restore()
    with pytest.raises(RunStateError, match="another victim"):
        reconstruct(tmp_path / "other", out=tmp_path / "r", resume=True, **SMALL)
    reconstruct(victim_dir, out=tmp_path / "done", **SMALL)
    with pytest.raises(RunStateError, match="another victim"):
        reconstruct(tmp_path / "other", out=tmp_path / "done", resume=True, **SMALL)


def test_resume_refuses_a_checkpoint_past_the_requested_length(victim_dir, tmp_path, interrupt_at) -> None:
    restore = interrupt_at(loop, "_step", 18)
    with pytest.raises(KeyboardInterrupt):
        reconstruct(victim_dir, out=tmp_path / "r", **SMALL)  # checkpoint at 15
    restore()
    with pytest.raises(RunStateError, match="already run 15"):
        reconstruct(victim_dir, out=tmp_path / "r", resume=True, **{**SMALL, "iterations": 10})
    assert not (tmp_path / "r" / "reconstruction.json").exists()


def test_force_deletes_the_old_attack_before_starting(victim_dir, tmp_path, interrupt_at) -> None:
    reconstruct(victim_dir, out=tmp_path / "r", **{**SMALL, "seed": 5})
    restore = interrupt_at(loop, "_step", 8)
    with pytest.raises(KeyboardInterrupt):
        reconstruct(victim_dir, out=tmp_path / "r", force=True, **{**SMALL, "seed": 77})
    restore()
    assert not (tmp_path / "r" / "reconstruction.json").exists()
    assert not (tmp_path / "r" / "candidates.safetensors").exists()
    resumed = reconstruct(victim_dir, out=tmp_path / "r", resume=True, **{**SMALL, "seed": 77})
    fresh = reconstruct(victim_dir, **{**SMALL, "seed": 77})
    assert torch.equal(resumed.x, fresh.x)
    assert json.loads((tmp_path / "r" / "reconstruction.json").read_text())["config"]["seed"] == 77


def test_a_plain_sequential_cnn_built_in_python_is_attacked_through_the_api(tmp_path) -> None:
    from kktrecon.data import SAMPLE_ROOT, load_dataset

    ds = load_dataset(data_root=SAMPLE_ROOT, n_per_class=5, test_per_class=5)
    torch.manual_seed(0)
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, stride=2, padding=1, bias=False),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 7 * 7, 1, bias=False),
    )
    opt = torch.optim.SGD(cnn.parameters(), lr=0.05)
    for _ in range(100):  # a user's own training loop, not kktrecon's
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(cnn(ds.x_train)[:, 0], ds.y_train.float()).backward()
        opt.step()
    before = [p.detach().clone() for p in cnn.parameters()]
    result = reconstruct(cnn, out=tmp_path / "rec", input_shape=(1, 28, 28), candidates=10, iterations=30,
                         init_scale=0.1, lr=0.01, log_every=10, progress=False, device="cpu")  # fmt: skip
    assert result.x.shape == (10, 1, 28, 28) and torch.isfinite(result.x).all()
    assert result.history[-1]["kkt"] < result.history[0]["kkt"]
    assert all(
        torch.equal(p, q) for p, q in zip(before, cnn.parameters(), strict=True)
    )  # the user's model is untouched
    manifest = json.loads((tmp_path / "rec" / "reconstruction.json").read_text())
    assert manifest["objective"] == "binary" and manifest["victim"]["input_shape"] == [1, 28, 28]


def test_a_resumed_run_keeps_the_thread_count_it_started_with(victim_dir, tmp_path, interrupt_at, monkeypatch) -> None:
    monkeypatch.setenv(THREADS_ENV, "1")
    restore = interrupt_at(loop, "_step", 7)
    with pytest.raises(KeyboardInterrupt):
        reconstruct(victim_dir, out=tmp_path / "r", **SMALL)
    restore()
    assert load_state(tmp_path / "r" / "checkpoint.safetensors")[1]["threads"] == 1
    monkeypatch.delenv(THREADS_ENV)  # now it would probe; the recorded count wins (the bits depend on it)
    reconstruct(victim_dir, out=tmp_path / "r", resume=True, **SMALL)
    assert json.loads((tmp_path / "r" / "reconstruction.json").read_text())["threads"] == 1
