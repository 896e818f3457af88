"""The Δθ family: a dense layer's change, explained by the features of candidate inputs (needs θ₀).

Whatever comes before it, a dense layer z = Wφ(x) + b trained by (minibatch) SGD changes by
ΔW = Σₜ Σᵢ δᵢₜ φₜ(xᵢ)ᵀ and Δb = Σₜ Σᵢ δᵢₜ: the rows of [ΔW, Δb] lie in the span of the training
inputs' features [φₜ(xᵢ), 1] along the training path. For a dense *first* layer φ is the identity and the
span is the training images themselves (the ``unmix`` family reads it exactly). Behind convolutions φ is
nonlinear and moves with training, so this family inverts it instead: m candidates x (m = n, the
training-set size the owner knows) whose features at a few points θₛ = θ₀ + s(θ_f − θ₀) of the path
(``stages``) span the top-K right singular subspace V of [ΔW, Δb], all its directions weighted alike:

    L(x) = 1 − tr(P_V P_F(x)) / K + w_tv · TV(pixels),   F(x) = [φ(x; θₛ), 1] over s and the candidates,

descended by Adam on pixels projected onto [0, 1] (the box is a constraint, TV the prior).

Why the equal weighting and the stages (a default-init CNN 32-64 + 100 at MNIST n = 20, full-batch SGD at
lr 0.05 to loss 10⁻³, conv weights moved by 20–28 %): [ΔW, Δb] is dominated by one direction (σ₂/σ₁ = 0.2),
so an energy-weighted fit is won by any 20 images; weighted alike over K = 20, the training images' features
at s = 0, ½, 1 leave 1.4 % unexplained and five sets of 20 held-out images 57–60 %. At s = ½ alone the
training set leaves 21 %, and the descent ends on look-alikes. Candidates beyond n over-explain (m = 2n:
noise), and without TV the background fills with noise; TV 0.2 over 1,000 iterations at lr 0.1 recovers
18–20 of 20 (seeds 0–2; 12 s on 2 CPU cores), against 0 for as many images the victim never saw
(benchmarks/NOTES.md, "The owner's attack on a CNN").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from kktrecon.attack.descent import Descent, descend
from kktrecon.attack.families import AttackFamily, register_attack
from kktrecon.attack.terms import total_variation
from kktrecon.attack.unmixing import FirstLayer, NoTrainingSignalError, _change, _recipe_decay, predicted_labels
from kktrecon.attack.victim import Victim
from kktrecon.candidates import CandidateSet
from kktrecon.checks import check_int, check_number, is_int
from kktrecon.devices import resolve_device, resolve_dtype
from kktrecon.errors import ConfigError, UnsupportedModelError
from kktrecon.files import CANDIDATES_FILE, RECONSTRUCTION_FILE, atomic_write_json, package_versions
from kktrecon.runs import RunKind, open_run

__all__ = [
    "Delta", "DeltaConfig", "delta", "delta_loss", "dense_layer", "feature_residual", "layer_subspace", "path_states",
]  # fmt: skip


@dataclass(frozen=True)
class DeltaConfig:
    """Hyperparameters of the Δθ family.

    Args:
        layer: the dense layer's module name (``layers.2``); None: the first ``nn.Linear`` with at least two
            outputs that follows another parametrised layer, else the first ``nn.Linear``.
        candidates: m; None: the training-set size n.
        rank: K, the dimensions of [ΔW, Δb] matched; None: m.
        stages: the points s of the path θ₀ + s(θ_f − θ₀) whose features explain the change.
        iterations: Adam steps on the candidates' pixels; lr: their step size.
        init_scale: pixels start uniform in [0, init_scale].
        tv_weight: weight of the pixels' total variation (the prior).
        decay: weight decay's factor γ on θ₀ (ΔW = W − γW⁽⁰⁾); None: from the recipe, 1 without weight decay.
        seed, dtype, checkpoint_every (0: never), log_every.
    """

    layer: str | None = None
    candidates: int | None = None
    rank: int | None = None
    stages: tuple[float, ...] = (0.0, 0.5, 1.0)
    iterations: int = 1000
    lr: float = 0.1
    init_scale: float = 0.2
    tv_weight: float = 0.2
    decay: float | None = None
    seed: int = 0
    dtype: str = "float32"
    checkpoint_every: int = 250
    log_every: int = 10

    def __post_init__(self) -> None:
        resolve_dtype(self.dtype)
        if self.candidates is not None and (not is_int(self.candidates) or self.candidates < 1):
            raise ConfigError(f"Expected `candidates` to be a positive integer. Got {self.candidates!r}.")
        if self.rank is not None:
            check_int("rank", self.rank, low=1)
        stages = tuple(self.stages)
        if not stages or any(not isinstance(s, int | float) or not 0 <= s <= 1 for s in stages):
            raise ConfigError(f"Expected `stages` to be numbers in [0, 1] (points of θ₀ → θ_f). Got {self.stages!r}.")
        object.__setattr__(self, "stages", tuple(float(s) for s in stages))
        check_number("lr", self.lr, low=0, low_open=True)
        check_number("init_scale", self.init_scale, low=0, high=1)
        check_number("tv_weight", self.tv_weight, low=0)
        if self.decay is not None:
            check_number("decay", self.decay, low=0, low_open=True)
        check_int("iterations", self.iterations, low=0)
        check_int("checkpoint_every", self.checkpoint_every, low=0)
        check_int("log_every", self.log_every, low=1)
        check_int("seed", self.seed)


def dense_layer(model: nn.Module, name: str | None = None) -> FirstLayer:
    """The dense layer whose change the family explains: ``name``, or the default of :class:`DeltaConfig`.

    Raises:
        UnsupportedModelError: no ``nn.Linear`` (of that name) in the model.
    """
    dense: list[tuple[str, nn.Linear, bool]] = []
    seen_parameters = False
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            dense.append((module_name, module, seen_parameters))
        if any(True for _ in module.parameters(recurse=False)):
            seen_parameters = True
    if name is not None:
        found = [d for d in dense if d[0] == name]
        if not found:
            raise UnsupportedModelError(
                f"Expected `layer` to name a dense layer (nn.Linear). Got {name!r}; the model's are "
                f"{[d[0] for d in dense]}."
            )
        dense = found
    if not dense:
        raise UnsupportedModelError("Expected a dense layer (nn.Linear) for the Δθ family. Got a model without one.")
    later = [d for d in dense if d[2] and d[1].out_features >= 2]
    module_name, module, _ = (later or dense)[0]
    prefix = f"{module_name}." if module_name else ""
    return FirstLayer(f"{prefix}weight", f"{prefix}bias" if module.bias is not None else None, module)


@dataclass(frozen=True)
class LayerSubspace:
    """The top-K right singular subspace of a dense layer's change [ΔW, Δb].

    Attributes:
        layer: which layer; basis: (K, f + 1 with a bias, else f) orthonormal rows V; singular_values: all of them;
        decay: γ used on θ₀.
    """

    layer: FirstLayer
    basis: Tensor
    singular_values: Tensor
    decay: float

    @property
    def rank(self) -> int:
        return int(self.basis.shape[0])

    @property
    def name(self) -> str:
        """The layer's module name (``layers.2``)."""
        return self.layer.weight.removesuffix(".weight")

    def describe(self) -> dict[str, Any]:
        s = self.singular_values
        return {"layer": self.name, "rank": self.rank, "decay": self.decay,
                "singular_values_top": (s[: self.rank + 5] / s[0]).tolist()}  # fmt: skip


def layer_subspace(victim: Victim, config: DeltaConfig, rank: int) -> LayerSubspace:
    """[ΔW, Δb] of the chosen layer (float64) and its top-``rank`` right singular vectors.

    Raises:
        ConfigError: the initial weights lack the layer or do not fit it.
        NoTrainingSignalError: the layer did not change.
    """
    layer = dense_layer(victim.model, config.layer)
    w, b, w0, b0 = _change(victim, layer, torch.float64)
    gamma = config.decay if config.decay is not None else _recipe_decay(victim.recipe, victim.steps_trained)
    gamma = 1.0 if gamma is None else gamma
    change = w - gamma * w0 if b is None else torch.cat([w - gamma * w0, (b - gamma * b0)[:, None]], dim=1)
    if not bool(change.abs().max() > 0):
        raise NoTrainingSignalError(
            f"The layer {layer.weight.removesuffix('.weight')!r} did not change from the initial weights: there is no "
            "training signal to read (were the weights saved before training?)."
        )
    _, s, vh = torch.linalg.svd(change, full_matrices=False)
    return LayerSubspace(layer, vh[: min(rank, len(s))], s, float(gamma))


class _Features(Exception):
    """Raised by a forward hook to end a forward pass at the layer whose input is wanted."""

    def __init__(self, value: Tensor) -> None:
        self.value = value


def _features(model: nn.Module, layer: nn.Module, state: dict[str, Tensor], x: Tensor) -> Tensor:
    """The input of ``layer`` (flattened) when ``model`` runs on ``x`` with parameters ``state``."""

    def stop(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        raise _Features(inputs[0])

    handle = layer.register_forward_pre_hook(stop)
    try:
        functional_call(model, state, (x,))
    except _Features as found:
        return found.value.flatten(1)
    finally:
        handle.remove()
    raise UnsupportedModelError("The dense layer was never reached in the forward pass.")  # pragma: no cover


def path_states(model: nn.Module, victim: Victim, stages: tuple[float, ...]) -> list[dict[str, Tensor]]:
    """The parameters θ₀ + s(θ_f − θ₀) for each s, on ``model``'s device and dtype (θ_f where θ₀ lacks a tensor)."""
    assert victim.initial_state is not None
    final = {k: v.detach() for k, v in model.state_dict().items()}
    init = victim.initial_state
    start = {k: init[k].to(v) if k in init else v for k, v in final.items()}
    return [{k: start[k] + s * (final[k] - start[k]) for k in final} for s in stages]


def feature_residual(victim: Victim, x: Tensor, *, rank: int | None = None, layer: str | None = None) -> Tensor:
    """Each input's relative distance ‖f − Π f‖ / ‖f‖ outside the top-``rank`` right singular subspace of a
    dense layer's change, f = [φ(x; θ₀), 1] its features at the initial weights: membership evidence.

    A training image's features at θ₀ are what the first steps wrote into [ΔW, Δb]; another image's lie
    outside. ``rank`` None: 2n (the change also holds the features' drift along the path). Measured on
    default-init CNNs 32-64 + 100 (MNIST, 400 held-out images; benchmarks/NOTES.md): full-batch and minibatch
    SGD, n = 20 and 50, every training image below every held-out one (AUC 1.000); Adam AUC 0.96.
    """
    if rank is None:
        if victim.n_train is None:
            raise ConfigError("Expected `rank`: the victim does not record its training-set size.")
        rank = 2 * victim.n_train
    space = layer_subspace(victim, DeltaConfig(layer=layer), rank)
    model = victim.on(x.device, torch.float64)
    (start,) = path_states(model, victim, (0.0,))
    target, basis = model.get_submodule(space.name), space.basis.to(x.device, torch.float64)
    out = []
    for chunk in x.to(torch.float64).split(256):  # a held-out set of any size in bounded memory
        with torch.no_grad():
            f = _features(model, target, start, chunk)
        if space.layer.bias is not None:
            f = torch.cat([f, torch.ones_like(f[:, :1])], dim=1)
        out.append((f - (f @ basis.T) @ basis).norm(dim=1) / f.norm(dim=1).clamp_min(1e-300))
    return torch.cat(out)


def delta_loss(
    model: nn.Module, space: LayerSubspace, states: list[dict[str, Tensor]], pixels: Tensor, victim: Victim,
    config: DeltaConfig,
) -> dict[str, Tensor]:  # fmt: skip
    """The loss (``total``) and its parts: the share of V the candidates' features leave unexplained
    (``unexplained``, 0 to 1) and the pixels' mean total variation (``tv``)."""
    x = victim.preprocessing.to_inputs(pixels)
    layer = model.get_submodule(space.name)  # ``model`` may be a copy of the victim's (:meth:`Victim.on`)
    rows = []
    for state in states:
        f = _features(model, layer, state, x)
        rows.append(f if space.layer.bias is None else torch.cat([f, torch.ones_like(f[:, :1])], dim=1))
    f = torch.cat(rows)
    gram = f @ f.T
    gram = gram + 1e-6 * gram.diagonal().mean().clamp_min(1e-30) * torch.eye(len(gram), dtype=f.dtype, device=f.device)
    a = space.basis.to(f) @ f.T  # (K, S·m)
    unexplained = 1 - (a * torch.linalg.solve(gram, a.T).T).sum() / space.rank
    tv = total_variation(pixels, 1).mean()
    return {"total": unexplained + config.tv_weight * tv, "unexplained": unexplained.detach(), "tv": tv.detach()}


@register_attack
class Delta(AttackFamily):
    """Owner's attack: candidates whose features along θ₀ → θ_f span a dense layer's change [ΔW, Δb]."""

    name = "delta"
    config_type = DeltaConfig
    needs = ("initial_state",)
    description = "a dense layer's change explained by the candidates' features along θ₀ → θ_f (any layers before it)"
    kind = RunKind(manifest=RECONSTRUCTION_FILE, state="delta.state", outputs=(CANDIDATES_FILE,), what="Δθ run")

    def run(
        self,
        victim: Victim,
        config: Any,
        *,
        out: str | Path | None,
        device: str | torch.device = "cpu",
        resume: bool = False,
        force: bool = False,
        progress: bool = True,
    ) -> CandidateSet:
        dev, dtype = resolve_device(device), resolve_dtype(config.dtype)
        m = config.candidates if config.candidates is not None else victim.n_train
        if m is None:
            raise ConfigError("Expected `candidates`: the victim does not record its training-set size.")
        space = layer_subspace(victim, config, config.rank or m)
        model = victim.on(dev, dtype)
        run = open_run(out, self.kind, force=force, resume=resume) if out is not None else None
        states = path_states(model, victim, config.stages)
        gen = torch.Generator().manual_seed(config.seed)
        p0 = torch.rand((m, *victim.input_shape), generator=gen, dtype=torch.float64) * config.init_scale
        state = Descent.start({"pixels": (p0.to(dev, dtype), config.lr)}, config)
        pixels = state.params["pixels"]
        if run is not None and run.status != "new" and state.restore(run, victim, config.iterations):
            return CandidateSet.load(run.path)
        descend(state, lambda: delta_loss(model, space, states, pixels, victim, config),
                iterations=config.iterations, checkpoint_every=config.checkpoint_every, run=run, victim=victim,
                what="Δθ", progress=progress, after_step=lambda: pixels.clamp_(0.0, 1.0),
                postfix=lambda p: f"unexplained {p['unexplained']:.4f} · tv {p['tv']:.3g}")  # fmt: skip
        x = victim.preprocessing.to_inputs(pixels.detach()).clone()
        labels = predicted_labels(model, x)
        source = {"attack": self.name, "iteration": state.done, "layer": space.name, "rank": space.rank}
        candidates = CandidateSet.of(x, torch.ones(m, device=dev, dtype=dtype), labels, victim=victim.describe(),
                                     **source)  # fmt: skip
        if run is not None:
            candidates.save(run.path)
            final_point = state.history[-1] if state.history else {}
            atomic_write_json(run.path / self.kind.manifest, {
                "format": "kktrecon.delta/1", "attack": self.name, "config": state.record,
                "victim": victim.describe(), "subspace": space.describe(), "iterations": state.done,
                "device": str(dev), "seconds": state.seconds(),
                "final": final_point, "loss_history": state.history, "versions": package_versions(),
            })  # fmt: skip
        return candidates


def delta(victim: Victim, config: DeltaConfig | None = None, **overrides: Any) -> CandidateSet:
    """The Δθ family's candidates in memory (no run directory)."""
    config = dataclasses.replace(config or DeltaConfig(), **overrides)
    return Delta().run(victim, config, out=None, progress=False)
