"""Contract tests driven by the registries (as torchmetrics' MetricTester, opacus' GradSampleHooks_test).

Every registered objective, attack family, Gram rule, architecture and data set goes through the
same checks the moment it is registered; nothing here names an entry. The last tests register toy
entries and show that the contracts pick them up.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from kktrecon.attack import ATTACKS, GRAM_RULES, OBJECTIVES, ReconstructionConfig, Victim, attack_loss, run_attack
from kktrecon.attack.families import AttackFamily, register_attack
from kktrecon.attack.gram_loss import GramNet, gram_attack_loss
from kktrecon.attack.kkt import per_sample_gram
from kktrecon.attack.terms import TERMS
from kktrecon.candidates import CandidateSet
from kktrecon.data import DATASETS
from kktrecon.errors import RunDirectoryExistsError
from kktrecon.models import with_modified_relu
from kktrecon.models.registry import ARCHITECTURES
from kktrecon.runs import RunKind, open_run

# --- objectives: the stationarity loss vanishes at a constructed KKT point ---------------------------


def check_objective(name: str) -> None:
    """For a linear victim Φ = W x with two classes, W := ∇_W S(W) (S the objective's stationarity sum,
    whose gradient then no longer depends on W) is a KKT point: the attack's KKT term is 0 there and
    grows when a candidate moves."""
    objective = OBJECTIVES[name]
    g = torch.Generator().manual_seed(0)
    k, m, d = objective.num_outputs(2), 6, 5
    x = torch.randn(m, d, generator=g, dtype=torch.float64)
    y = objective.candidate_labels(m, k).double()
    lam = objective.init_lambda(m, k, g) + 0.1
    model = nn.Sequential(nn.Linear(d, k, bias=False)).double()
    weight = torch.randn(k, d, generator=g, dtype=torch.float64)
    for _ in range(3):
        with torch.no_grad():
            model[0].weight.copy_(weight)
        (weight,) = torch.autograd.grad(objective.kkt_sum(model(x), lam, y), [model[0].weight])
    with torch.no_grad():
        model[0].weight.copy_(weight)
    config = ReconstructionConfig()
    assert float(attack_loss(model, x, lam, y, config, objective)["kkt"]) < 1e-20
    moved = x + 0.1 * torch.eye(m, d, dtype=torch.float64)
    assert float(attack_loss(model, moved, lam, y, config, objective)["kkt"]) > 1e-6


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_vanishes_at_a_constructed_kkt_point(name: str) -> None:
    check_objective(name)


def check_output_gradient(name: str) -> None:
    """output_gradient = ∂(kkt_sum)/∂out, and its λ-derivative equals the double-backward one."""
    objective = OBJECTIVES[name]
    g = torch.Generator().manual_seed(1)
    k, m = objective.num_outputs(3), 6
    out = torch.randn(m, k, generator=g, dtype=torch.float64, requires_grad=True)
    y = objective.candidate_labels(m, k).double()
    lam = (objective.init_lambda(m, k, g) + 0.1).requires_grad_(True)
    (expected,) = torch.autograd.grad(objective.kkt_sum(out, lam, y), out, create_graph=True)
    got = objective.output_gradient(out, lam, y)
    torch.testing.assert_close(got, expected)
    probe = torch.randn(m, k, generator=g, dtype=torch.float64)
    (d_expected,) = torch.autograd.grad((expected * probe).sum(), lam)
    (d_got,) = torch.autograd.grad((got * probe).sum(), lam)
    torch.testing.assert_close(d_got, d_expected)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objectives_output_gradient_equals_autograds(name: str) -> None:
    check_output_gradient(name)


# --- Gram rules: each layer type's rule equals autograd's per-sample gradients ----------------------

#: A small instance of each layer type that has a Gram rule, and the shape of one input to it.
EXAMPLES: dict[type[nn.Module], Any] = {
    nn.Linear: lambda: (nn.Linear(5, 3), (5,)),
    nn.Conv2d: lambda: (nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 7, 6)),  # odd sizes: the stride skips a row
}


def check_gram_rule(layer_type: type[nn.Module]) -> None:
    """pair(a, δ) = ⟨∇θgᵢ, ∇θgⱼ⟩ and Σ project(z, δ) = ⟨∇θgᵢ, θ⟩ for gᵢ = v·layer(aᵢ), against torch.func."""
    assert layer_type in EXAMPLES, f"give the Gram rule of {layer_type.__name__} an example in EXAMPLES"
    torch.manual_seed(0)
    layer, shape = EXAMPLES[layer_type]()
    layer = layer.double()
    rule = GRAM_RULES[layer_type]
    a = torch.randn(4, *shape, dtype=torch.float64)
    z = rule.forward(layer, a)
    v = torch.randn(z.shape[1:], dtype=torch.float64)
    params = {k: p.detach() for k, p in layer.named_parameters()}
    jac = vmap(grad(lambda p, ai: (functional_call(layer, p, (ai[None],))[0] * v).sum()), in_dims=(None, 0))(params, a)
    flat = torch.cat([jac[k].flatten(1) for k in params], dim=1)
    theta = torch.cat([p.flatten() for p in params.values()])
    delta = v.expand_as(z)
    torch.testing.assert_close(rule.pair(layer, a, delta), flat @ flat.T)
    torch.testing.assert_close(rule.pair(layer, a[None], delta[None])[0], flat @ flat.T)  # leading batch dims
    halves = torch.stack([flat[:2].sum(0), flat[2:].sum(0)]).pow(2).sum(1)  # ‖Σⱼ ∇θgⱼ‖² of two batches of two
    torch.testing.assert_close(
        rule.summed_sq(layer, a.reshape(2, 2, *shape), delta.reshape(2, 2, *z.shape[1:])), halves
    )
    torch.testing.assert_close(rule.project(layer, z, delta).flatten(1).sum(1), flat @ theta)
    torch.testing.assert_close(rule.forward(layer, a), layer(a))
    probe = a.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(layer(probe), probe, delta)
    torch.testing.assert_close(rule.backward(layer, delta, a), expected)  # the gradient handed down


@pytest.mark.parametrize("layer_type", list(GRAM_RULES), ids=lambda t: t.__name__)
def test_every_gram_rule_equals_autograd(layer_type: type[nn.Module]) -> None:
    check_gram_rule(layer_type)


# --- architectures: the Gram form of the diagnostic and of batched trials equals autograd -----------


def check_architecture(name: str) -> None:
    arch = ARCHITECTURES[name]
    config = arch.config(input_shape=(1, 6, 6))
    model = arch.build(config, torch.Generator().manual_seed(0)).double().eval()
    x = torch.randn(4, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    gram, proj, _ = per_sample_gram(model, x)
    params = {k: p.detach() for k, p in model.named_parameters()}
    jac = vmap(grad(lambda p, xi: functional_call(model, p, (xi[None],))[0, 0]), in_dims=(None, 0))(params, x)
    flat = torch.cat([jac[k].flatten(1) for k in params], dim=1)
    torch.testing.assert_close(gram, flat @ flat.T)
    torch.testing.assert_close(proj, flat @ torch.cat([p.flatten() for p in params.values()]))
    attack = with_modified_relu(model, 150.0)
    net = GramNet.of(attack)
    if net is not None:  # batched trials: the Gram form of the loss equals the autograd form
        lam, y = torch.rand(4, dtype=torch.float64), torch.tensor([-1.0, -1, 1, 1], dtype=torch.float64)
        config = ReconstructionConfig(dtype="float64")
        single = attack_loss(attack, x, lam, y, config, OBJECTIVES["binary"])
        batched = gram_attack_loss(
            net, x[None], lam[None], y[None], OBJECTIVES["binary"], alpha=torch.tensor([150.0], dtype=torch.float64),
            lambda_min=torch.tensor([config.lambda_min], dtype=torch.float64),
            weights=torch.ones(1, len(TERMS), dtype=torch.float64), box=config.box,
        )  # fmt: skip
        for key in ("kkt", "prior", "lambda"):
            torch.testing.assert_close(batched[key][0], single[key])


@pytest.mark.parametrize("in_channels", [2, 8])  # patches of 18 and 72 entries: both ways of summing
def test_a_convolutions_summed_gradient_norm_is_the_sum_of_its_pairs(in_channels: int) -> None:
    torch.manual_seed(0)
    layer = nn.Conv2d(in_channels, 3, 3, stride=2, padding=1, dilation=1).double()
    a = torch.randn(3, 4, in_channels, 7, 6, dtype=torch.float64)
    delta = torch.randn(3, 4, *layer(a[0]).shape[1:], dtype=torch.float64)
    rule = GRAM_RULES[nn.Conv2d]
    torch.testing.assert_close(rule.summed_sq(layer, a, delta), rule.pair(layer, a, delta).sum(dim=(1, 2)))


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_has_gram_forms_equal_to_autograd(name: str) -> None:
    check_architecture(name)


# --- attack families: candidates out, recorded, resumable bit-identically, refused without a flag ----


def _victim() -> Victim:
    """A tiny MLP trained a few SGD steps on two inputs, with its initial weights and recipe (the owner's families)."""
    arch = ARCHITECTURES["mlp"]
    model = arch.build(
        arch.config(input_shape=(1, 4, 4), hidden=(8,), init_scale=0.5), torch.Generator().manual_seed(0)
    )
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0], torch.tensor([0.0, 1.0])).backward()
        opt.step()
    recipe = {"optimizer": "sgd", "lr": 0.1, "steps": 5}
    return Victim.from_module(model.eval(), n_train=2, initial_state=initial, recipe=recipe)


def _config(family: AttackFamily, **fields: Any) -> Any:
    names = {f.name for f in dataclasses.fields(family.config_type)}
    return family.config_type(**{k: v for k, v in fields.items() if k in names})


def check_attack(name: str, tmp_path: Path) -> None:
    family = ATTACKS[name]()
    victim = _victim()
    full = _config(family, iterations=6, checkpoint_every=2, log_every=1, seed=3)
    half = dataclasses.replace(full, iterations=3)
    out = run_attack(name, victim, full, out=tmp_path / "full", progress=False)
    assert isinstance(out, CandidateSet) and len(out) > 0 and out.input_shape == victim.input_shape
    assert out.victim["fingerprint"] == victim.fingerprint and out.sources[0]["attack"] == name
    saved = CandidateSet.load(tmp_path / "full")
    assert torch.equal(saved.x, out.x.cpu()) and torch.equal(saved.lam, out.lam.cpu())
    run_attack(name, victim, half, out=tmp_path / "grown", progress=False)
    grown = run_attack(name, victim, full, out=tmp_path / "grown", resume=True, progress=False)
    assert torch.equal(grown.x, out.x) and torch.equal(grown.lam, out.lam)
    with pytest.raises(RunDirectoryExistsError, match="--resume"):
        run_attack(name, victim, full, out=tmp_path / "full", progress=False)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_family_meets_the_contract(name: str, tmp_path: Path) -> None:
    check_attack(name, tmp_path)


# --- data sets: the matching resolution the victim infers is the one the data set declares ----------


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_dataset_declares_the_matching_resolution_the_victim_infers(name: str) -> None:
    spec = DATASETS[name]
    victim = Victim(model=nn.Identity(), input_shape=spec.input_shape, fingerprint="")
    assert victim.downsample == spec.match_downsample


# --- a toy entry is picked up without naming it ---------------------------------------------------


@dataclass(frozen=True)
class NoiseConfig:
    iterations: int = 4
    seed: int = 0
    checkpoint_every: int = 1


class NoiseAttack(AttackFamily):
    """Candidates drawn at random: no attack at all, but one that keeps the family's contract."""

    name = "test-noise"
    config_type = NoiseConfig
    kind = RunKind(manifest="noise.json", state="noise.state", outputs=("candidates.safetensors",), what="noise run")

    def run(self, victim: Victim, config: Any, *, out: Any, resume: bool, force: bool, **_: Any) -> CandidateSet:
        if out is not None:
            open_run(out, self.kind, force=force, resume=resume)
        g = torch.Generator().manual_seed(config.seed)
        x = torch.randn(4, *victim.input_shape, generator=g)
        candidates = CandidateSet.of(x, torch.ones(4), torch.ones(4), victim=victim.describe(), attack=self.name)
        if out is not None:
            candidates.save(out)
            (Path(out) / "noise.json").write_text("{}")
        return candidates


def test_a_registered_toy_family_is_checked_like_the_others(tmp_path: Path) -> None:
    register_attack(NoiseAttack)
    try:
        assert "test-noise" in ATTACKS  # what the parametrised contract iterates over
        check_attack("test-noise", tmp_path)
    finally:
        del ATTACKS["test-noise"]


def test_a_gram_rule_without_an_example_fails_its_contract() -> None:
    class Scale(nn.Module):
        pass

    GRAM_RULES[Scale] = GRAM_RULES[nn.Linear]
    try:
        with pytest.raises(AssertionError, match="example"):
            check_gram_rule(Scale)
    finally:
        del GRAM_RULES[Scale]
