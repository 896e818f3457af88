"""Batched trials: the Gram-form loss equals the reference loss, and a batch equals its trials run alone."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from kktrecon.attack import ReconstructionConfig, attack_loss, get_objective, initial_state, loop, reconstruct
from kktrecon.attack import engine as engine_module
from kktrecon.attack.batched import reconstruct_batch
from kktrecon.attack.gram_loss import GramNet, gram_attack_loss
from kktrecon.attack.terms import TERMS
from kktrecon.errors import ConfigError, UnsupportedModelError
from kktrecon.models import CNNConfig, ModelConfig, build_model, save_checkpoint, with_modified_relu


@pytest.mark.parametrize(
    ("objective", "outputs", "bias"),
    [("binary", 1, "first"), ("binary", 1, "none"), ("multiclass", 3, "first"), ("multiclass-full", 3, "none"),
     ("regression", 1, "first")],
)  # fmt: skip
def test_gram_form_equals_the_reference_loss_and_its_gradients(objective: str, outputs: int, bias: str) -> None:
    model = build_model(ModelConfig(input_shape=(1, 5, 5), hidden=(12, 9), num_outputs=outputs, bias=bias,
                                    init_scale=0.5), dtype=torch.float64)  # fmt: skip
    obj = get_objective(objective)
    configs = [ReconstructionConfig(seed=s, alpha=a, lambda_min=lm, init_scale=0.7, prior_weight=pw, tv_weight=tv)
               for s, a, lm, pw, tv in ((0, 150.0, 0.3, 1.0, 0.0), (1, 20.0, 0.1, 0.0, 0.3))]  # fmt: skip
    xs, lams, ys = [], [], []
    for c in configs:
        x, lam, y, _ = initial_state((1, 5, 5), c, 6, device=torch.device("cpu"), dtype=torch.float64,
                                     objective=obj, num_outputs=outputs)  # fmt: skip
        xs.append(x.requires_grad_(True))
        lams.append(lam.requires_grad_(True))
        ys.append(y)
    as_t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    terms = gram_attack_loss(
        GramNet.of(model), torch.stack(xs), torch.stack(lams), torch.stack(ys), obj,
        alpha=as_t([c.alpha for c in configs]), lambda_min=as_t([c.lambda_min for c in configs]),
        weights=as_t([[getattr(c, t.weight) for t in TERMS] for c in configs]), box=1.0,
    )  # fmt: skip
    grads = torch.autograd.grad(terms["total"].sum(), xs + lams)
    for k, c in enumerate(configs):
        attack_model = with_modified_relu(model, c.alpha)
        for p in attack_model.parameters():
            p.requires_grad_(True)
        ref = attack_loss(attack_model, xs[k], lams[k], ys[k], c, obj)
        for name in ("total", "kkt", "prior", "lambda", "tv"):
            torch.testing.assert_close(terms[name][k], ref[name].detach(), rtol=1e-9, atol=1e-9)
        gx, gl = torch.autograd.grad(ref["total"], [xs[k], lams[k]])
        torch.testing.assert_close(grads[k], gx, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(grads[2 + k], gl, rtol=1e-8, atol=1e-10)


def test_only_networks_whose_modules_all_have_rules_take_the_gram_form() -> None:
    assert GramNet.of(build_model(ModelConfig(input_shape=(4,), hidden=(3,)))) is not None
    seq = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1))
    assert GramNet.of(seq) is not None
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2, 1))
    assert GramNet.of(conv) is not None
    grouped = nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 1))
    assert GramNet.of(grouped) is None  # a setting the Conv2d rule does not cover
    assert GramNet.of(nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1))) is None


@pytest.fixture
def victim_dir(tmp_path):
    model = build_model(ModelConfig(input_shape=(1, 4, 4), hidden=(16, 16), init_scale=0.1), seed=2)
    save_checkpoint(tmp_path / "victim", model, {"metrics": {"n_train": 3}})
    return tmp_path / "victim"


SHARED = dict(iterations=24, checkpoint_every=8, log_every=4, dtype="float64")
TRIALS = [ReconstructionConfig(seed=0, lr=0.01, init_scale=0.1, **SHARED),
          ReconstructionConfig(seed=1, lr=0.003, init_scale=0.3, alpha=20.0, lambda_min=0.2, **SHARED)]  # fmt: skip


def test_a_batch_equals_its_trials_run_alone_by_autograd(victim_dir, tmp_path) -> None:
    outs = [tmp_path / "b0", tmp_path / "b1"]
    batch = reconstruct_batch(victim_dir, TRIALS, outs=outs, device="cpu", progress=False)
    assert batch.errors == [None, None]
    for k, config in enumerate(TRIALS):
        alone = reconstruct(victim_dir, config, out=tmp_path / f"s{k}", device="cpu", progress=False, engine="autograd")
        torch.testing.assert_close(batch.results[k].x, alone.x, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(batch.results[k].lam, alone.lam, rtol=1e-9, atol=1e-12)
        manifest = json.loads((outs[k] / "reconstruction.json").read_text())
        assert manifest["config"]["lr"] == config.lr and manifest["iterations"] == 24  # an ordinary run directory
        assert len(manifest["loss_history"]) == 6
        assert manifest["engine"] == "gram"
        assert json.loads((tmp_path / f"s{k}" / "reconstruction.json").read_text())["engine"] == "autograd"


def test_a_single_run_takes_the_gram_form_where_it_applies(victim_dir, tmp_path) -> None:
    config = TRIALS[1]
    auto = reconstruct(victim_dir, config, out=tmp_path / "auto", device="cpu", progress=False)
    batch = reconstruct_batch(victim_dir, [config], device="cpu", progress=False).results[0]
    assert torch.equal(auto.x, batch.x) and torch.equal(auto.lam, batch.lam)  # the same program, bit for bit
    assert json.loads((tmp_path / "auto" / "reconstruction.json").read_text())["engine"] == "gram"
    grouped = nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 1, bias=False))
    with pytest.raises(UnsupportedModelError, match="engine 'gram'"):
        reconstruct(grouped.double(), config, input_shape=(2, 4, 4), candidates=4, device="cpu", progress=False,
                    engine="gram")  # fmt: skip
    with pytest.raises(ConfigError, match="`engine`"):
        reconstruct(victim_dir, config, device="cpu", progress=False, engine="jax")


def test_an_interrupted_batch_resumes_bit_identically(victim_dir, tmp_path, interrupt_at) -> None:
    full = reconstruct_batch(victim_dir, TRIALS, outs=[tmp_path / "f0", tmp_path / "f1"], device="cpu", progress=False)
    restore = interrupt_at(loop, "_step", 13)
    outs = [tmp_path / "c0", tmp_path / "c1"]
    with pytest.raises(KeyboardInterrupt):
        reconstruct_batch(victim_dir, TRIALS, outs=outs, device="cpu", progress=False)
    restore()
    resumed = reconstruct_batch(victim_dir, TRIALS, outs=outs, device="cpu", progress=False, resume=True)
    for a, b in zip(full.results, resumed.results, strict=True):
        assert torch.equal(a.x, b.x) and torch.equal(a.lam, b.lam)


def test_a_diverging_trial_stops_alone(victim_dir, tmp_path) -> None:
    wild = ReconstructionConfig(seed=3, lr=1e9, init_scale=0.5, **SHARED)
    batch = reconstruct_batch(victim_dir, [TRIALS[0], wild], outs=[tmp_path / "a", tmp_path / "w"], device="cpu",
                              progress=False)  # fmt: skip
    assert batch.errors[0] is None and batch.results[0] is not None
    assert "loss became" in batch.errors[1] and batch.results[1] is None
    assert (tmp_path / "a" / "reconstruction.json").exists() and not (tmp_path / "w" / "reconstruction.json").exists()


def test_trials_of_a_batch_must_share_their_shape(victim_dir) -> None:
    with pytest.raises(ValueError, match="share `iterations`"):
        reconstruct_batch(victim_dir, [TRIALS[0], ReconstructionConfig(iterations=5)], device="cpu", progress=False)


def test_the_compiled_engine_equals_the_gram_form(victim_dir, monkeypatch) -> None:
    # aot_eager captures and replays the graph as inductor would, without a C++ build (seconds, not minutes)
    monkeypatch.setitem(engine_module.COMPILE_OPTIONS, "cpu", {"backend": "aot_eager"})
    config = dataclasses.replace(TRIALS[0], iterations=6, checkpoint_every=0, log_every=2)
    compiled = reconstruct(victim_dir, config, device="cpu", progress=False, engine="compiled")
    eager = reconstruct(victim_dir, config, device="cpu", progress=False, engine="gram")
    torch.testing.assert_close(compiled.x, eager.x, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(compiled.lam, eager.lam, rtol=1e-9, atol=1e-12)


CNN_VARIANTS = {
    "strided": dict(channels=(3, 4)),
    "max-pool": dict(channels=(3, 4), stride=1, pool="max"),
    "avg-pool, hidden, biases": dict(channels=(2,), kernel_size=2, stride=1, padding=0, pool="avg", hidden=(5,),
                                     bias="all"),
}  # fmt: skip


@pytest.mark.parametrize("variant", list(CNN_VARIANTS))
def test_cnn_trials_take_the_gram_form_and_it_equals_autograd(variant) -> None:
    config = CNNConfig(input_shape=(1, 9, 9), init_scale=0.5, **CNN_VARIANTS[variant])
    model = build_model(config, seed=0, dtype=torch.float64).eval()
    user = nn.Sequential(*model.ops())  # the same network as a user would write it
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 1, 9, 9, generator=g, dtype=torch.float64)
    lam = torch.rand(2, 6, generator=g, dtype=torch.float64)
    y = torch.tensor([[-1.0, -1, -1, 1, 1, 1]] * 2, dtype=torch.float64)
    alpha = torch.tensor([20.0, 150.0], dtype=torch.float64)
    cfgs = [ReconstructionConfig(alpha=float(a), dtype="float64") for a in alpha]
    for victim in (model, user):
        net = GramNet.of(with_modified_relu(victim, 1.0))
        assert net is not None
        batched = gram_attack_loss(
            net, x, lam, y, get_objective("binary"), alpha=alpha,
            weights=torch.ones(2, len(TERMS), dtype=torch.float64),
            lambda_min=torch.full((2,), cfgs[0].lambda_min, dtype=torch.float64), box=1.0,
        )  # fmt: skip
        for t, cfg in enumerate(cfgs):
            single = attack_loss(with_modified_relu(victim, cfg.alpha), x[t], lam[t], y[t], cfg)
            torch.testing.assert_close(batched["kkt"][t], single["kkt"])
