"""Sample splitting: it splits where the curvature is negative and the loss then drops, and nowhere else."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from kktrecon.attack import ReconstructionConfig, get_objective, loop, reconstruct
from kktrecon.attack.batched import reconstruct_batch
from kktrecon.attack.kkt import stationarity_residual
from kktrecon.attack.splitting import SplitConfig, smallest_curvature, split_candidates
from kktrecon.errors import ConfigError
from kktrecon.models import ModelConfig, build_model, save_checkpoint, with_modified_relu

BINARY = get_objective("binary")


def _kkt(model: nn.Module, x: torch.Tensor, lam: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        return stationarity_residual(model, BINARY.kkt_sum(model(x), lam, y), create_graph=True)


def _value(*args: torch.Tensor | nn.Module) -> float:
    return float(_kkt(*args).detach())


@pytest.fixture(scope="module")
def two_points():
    """A smoothed 2-32-1 network at a KKT point of two same-label points (0.3, ±1): θ = ∇θS(x_a, x_b)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 32, bias=False), nn.ReLU(), nn.Linear(32, 1, bias=False)).double()
    model = with_modified_relu(net, 3.0)
    x = torch.tensor([[0.3, 1.0], [0.3, -1.0]], dtype=torch.float64)
    y = torch.ones(2, dtype=torch.float64)
    params = list(model.parameters())
    for _ in range(200):  # θ ∝ ∇θS (power iteration); then λ = 1/μ makes θ = ∇θS exactly
        grads = torch.autograd.grad(BINARY.kkt_sum(model(x), torch.ones(2, dtype=torch.float64), y), params)
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.copy_(g / norm)
    grads = torch.autograd.grad(BINARY.kkt_sum(model(x), torch.ones(2, dtype=torch.float64), y), params)
    mu = float(sum((g * p.detach()).sum() for g, p in zip(grads, params, strict=True)))
    lam = torch.full((2,), 1 / mu, dtype=x.dtype)
    assert _value(model, x, lam, y) < 1e-20
    return model, x, lam, y


def _stalled(model, lam_truth):
    """One candidate standing for both points, descended on x and λ until the gradient vanishes."""
    x = torch.tensor([[0.3, 0.0]], dtype=torch.float64, requires_grad=True)
    lam = (lam_truth[:1].clone()).requires_grad_(True)
    y = torch.ones(1, dtype=torch.float64)
    opt = torch.optim.SGD([x, lam], lr=0.02)
    for _ in range(2000):
        opt.zero_grad()
        _kkt(model, x, lam, y).backward()
        opt.step()
    assert x.grad.norm() < 1e-3  # a stationary point of the one-candidate loss …
    return x.detach(), lam.detach(), y


def test_a_stalled_candidate_splits_along_its_negative_curvature_and_the_loss_drops(two_points) -> None:
    model, _, lam_truth, _ = two_points
    x, lam, y = _stalled(model, lam_truth)
    before = _value(model, x, lam, y)
    assert before > 1e-5  # … that does not explain both points
    curvature, v = smallest_curvature(model, BINARY, x, lam, y)
    assert curvature[0] < 0
    drops = []
    for eps in (1e-2, 3e-3):  # the first order cancels: the loss falls as ε², along the estimated direction
        grown = torch.cat([x + eps * v, x - eps * v]), lam.repeat(2), y.repeat(2)  # λ/2 each, m doubled: λ stays
        drops.append((before - _value(model, *grown)) / eps**2)
    assert drops[0] > 0 and drops[1] == pytest.approx(drops[0], rel=0.05)
    out = split_candidates(model, BINARY, x, lam, y, SplitConfig(), budget=4)
    assert out.split == [0] and out.x.shape == (2, 2) and out.loss_after < 0.8 * out.loss_before
    assert _value(model, out.x, out.lam, out.y) == pytest.approx(out.loss_after)
    assert torch.allclose(out.lam, lam.repeat(2))  # each copy weighs half: λ/2 of m' = 2 is λ of m = 1


def test_no_split_where_the_curvature_is_not_negative_or_there_is_no_room(two_points) -> None:
    model, x, lam, y = two_points  # the true points: the loss is already 0
    out = split_candidates(model, BINARY, x, lam, y, SplitConfig(), budget=8)
    assert out.split == [] and torch.equal(out.x, x) and torch.equal(out.lam, lam)
    linear = nn.Sequential(nn.Linear(3, 1, bias=False)).double()  # ∇θΦ = x: no curvature at all
    xs, lams, ys = torch.randn(4, 3, dtype=torch.float64), torch.rand(4, dtype=torch.float64), torch.ones(4)
    out = split_candidates(linear, BINARY, xs, lams, ys.double(), SplitConfig(), budget=8)
    assert out.split == [] and torch.equal(out.x, xs)
    stalled = _stalled(two_points[0], two_points[2])
    assert split_candidates(two_points[0], BINARY, *stalled, SplitConfig(), budget=1).split == []  # budget full


@pytest.fixture
def victim_dir(tmp_path):
    model = build_model(ModelConfig(input_shape=(1, 3, 3), hidden=(12,), init_scale=0.3), seed=4)
    save_checkpoint(tmp_path / "victim", model, {"metrics": {"n_train": 2}})
    return tmp_path / "victim"


SPLIT = dict(iterations=24, checkpoint_every=5, log_every=4, init_scale=0.3, lr=0.01, dtype="float64",
             split=SplitConfig(every=8, max_splits=2, tol=0.0, min_gain=0.0), device="cpu", progress=False)  # fmt: skip


def test_a_run_that_splits_grows_records_it_and_resumes_bit_identically(victim_dir, tmp_path, interrupt_at) -> None:
    full = reconstruct(victim_dir, out=tmp_path / "full", **SPLIT)
    manifest = json.loads((tmp_path / "full" / "reconstruction.json").read_text())
    assert [s["iteration"] for s in manifest["splits"]] == [8, 16, 24]
    assert manifest["candidates"] == full.x.shape[0] == 4 + sum(len(s["split"]) for s in manifest["splits"]) > 4
    assert all(s["kkt_after"] <= s["kkt_before"] for s in manifest["splits"])
    for cut in (10, 17):  # after one split, after two
        restore = interrupt_at(loop, "_step", cut)
        with pytest.raises(KeyboardInterrupt):
            reconstruct(victim_dir, out=tmp_path / f"cut{cut}", **SPLIT)
        restore()
        resumed = reconstruct(victim_dir, out=tmp_path / f"cut{cut}", resume=True, **SPLIT)
        assert torch.equal(resumed.x, full.x) and torch.equal(resumed.lam, full.lam) and torch.equal(resumed.y, full.y)


def test_a_batch_refuses_splitting(victim_dir) -> None:
    config = ReconstructionConfig(iterations=2, split=SplitConfig())
    with pytest.raises(ConfigError, match="one at a time"):
        reconstruct_batch(victim_dir, [config], device="cpu", progress=False)
