"""First-layer unmixing: the owner's attack on a dense first layer, from the final and the initial weights.

For a first layer z = W₁x + b₁ trained by (minibatch) SGD, with or without momentum, every update is
Σᵢ δᵢxᵢᵀ, so ΔW₁ = W₁ − γW₁⁽⁰⁾ = U Xᵀ and Δb₁ = U·1 for some U (hidden × n), whatever the
initialisation and the number of steps (METHOD §6; γ is weight decay's factor on θ₀, 1 without it).
With the declared preprocessing x = (p − μ)/σ folded back,

    M = ΔW₁·diag(σ) + Δb₁ μᵀ = U Pᵀ,        Δb₁ = U·1,

so the rows of M span exactly the training images P in pixels: its rank (read from the drop of its
singular values) is the number of training images, and each image is a point of that row space. Three
facts pin the images down inside it:

1. *Independence* (the floor): a FastICA of the row space (images as sources, pixels as samples;
   Hyvärinen 1999, symmetric fixed point, log-cosh contrast), deterministic for its seed.
2. *Scale and sign from the bias*: writing M = V B on an orthonormal basis B of the row space and
   P = A B, Δb₁ = U·1 = V A⁻¹·1, so t = V⁺Δb₁ is known and every image's coefficients a satisfy
   aᵀt = 1. Each ICA component is rescaled onto that hyperplane: its scale and sign, exactly.
3. *The pixel box*: every image lies in the polytope Q = {aᵀB : aᵀt = 1} ∩ [0, 1]^d; projecting an
   estimate onto it (Dykstra's alternating projections) never moves it away from the image it estimates.
4. *Non-negativity and sparsity*: where images have many pixels at 0 (digits on a black background) and
   their supports differ, each image is a vertex of Q (its zero pixels are active constraints) while
   mixtures are not; a linear programme over Q ends at a vertex. Programmes aimed at each ICA estimate
   and at seeded random directions find them; vertices found by several programmes come first
   (the candidates' agreement), and the projected ICA estimates fill the set up to 2r.

Adam's per-coordinate scaling breaks the exact low rank but leaves much of it; the rank is then read
as the largest drop (or taken from ``rank``). Initial weights that are not this model's (another seed)
leave no drop at all, and the attack says so instead of returning noise.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kktrecon.attack.families import AttackFamily, register_attack
from kktrecon.attack.victim import Victim
from kktrecon.candidates import CandidateSet
from kktrecon.checks import check_int, check_number
from kktrecon.configs import config_to_dict
from kktrecon.devices import resolve_dtype
from kktrecon.errors import ConfigError, UnsupportedModelError
from kktrecon.files import (
    CANDIDATES_FILE,
    RECONSTRUCTION_FILE,
    atomic_write_json,
    load_state,
    package_versions,
    save_state,
)
from kktrecon.runs import RunKind, check_resumable, check_same_victim, open_run

__all__ = [
    "FirstLayer",
    "NoTrainingSignalError",
    "RowSpace",
    "UnmixConfig",
    "Unmixing",
    "fastica",
    "first_dense_layer",
    "predicted_labels",
    "row_space",
]


class NoTrainingSignalError(UnsupportedModelError):
    """The initial weights do not explain the final ones as the theory requires (no change, or no rank drop)."""


def predicted_labels(model: nn.Module, x: Tensor) -> Tensor:
    """The model's labels for candidates ``x`` (±1 from one logit, else the argmax), in ``x``'s dtype and device."""
    p = next(model.parameters())
    with torch.no_grad():
        out = model(x.to(device=p.device, dtype=p.dtype)).detach().to(x)
    return torch.where(out[:, 0] >= 0, 1.0, -1.0).to(x) if out.shape[1] == 1 else out.argmax(dim=1).to(x)


def _gradients(rows: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Each row (an image of ``shape``) as its horizontal and vertical differences, flattened."""
    x = rows.reshape(len(rows), *shape)
    if len(shape) != 3:
        return rows
    dx = (x[..., :, 1:] - x[..., :, :-1]).flatten(1)
    dy = (x[..., 1:, :] - x[..., :-1, :]).flatten(1)
    return torch.cat([dx, dy], dim=1)


_CONTRASTS = {"pixels", "gradients"}


@dataclass(frozen=True)
class UnmixConfig:
    """How the first layer's change is unmixed into images.

    Args:
        iterations: FastICA fixed-point iterations at most.
        seed: seed of FastICA's initial rotation.
        tol: FastICA stops once every component has turned by less than this (1 − |cos|).
        rank: the row space's dimension; None reads it from the largest drop of the singular values.
        min_drop: the smallest ratio σ_r / σ_{r+1} accepted as the drop that marks the rank.
        decay: weight decay's factor γ on θ₀ (W₁ − γW₁⁽⁰⁾ is the mixture); None: 1 when the recipe has no
            weight decay, else fitted (the γ that leaves the least energy outside the top singular values).
        contrast: what FastICA sees of each row-space direction: ``pixels`` (images as sources) or ``gradients``
            (their horizontal and vertical differences: natural images are sparse there, not in pixels; the
            difference is linear, so the unmixing found there unmixes the images themselves).
        restarts: FastICA runs from this many seeds (``seed``, ``seed`` + 1, …), each adding r estimates.
        box_iterations: Dykstra iterations projecting each estimate onto row space ∩ pixel box (0: plain ICA).
        vertices: linear programmes over the polytope (each ICA estimate's direction, then anchors at seeded
            random inked pixels), as a multiple of the rank (0: none).
        anchor_weight: β of an anchor's programme, max β·p_j − Σp (the lightest image inked at pixel j).
        max_candidates: at most this many candidates, as a multiple of the rank.
        checkpoint_every: FastICA iterations between resumable checkpoints (0: never).
        log_every: unused beyond the contract; FastICA logs its convergence at each checkpoint.
        dtype: float64 (the singular values of a float32 victim's change need its precision).
    """

    iterations: int = 400
    seed: int = 0
    tol: float = 1e-9
    rank: int | None = None
    min_drop: float = 30.0
    decay: float | None = None
    contrast: str = "gradients"
    restarts: int = 1
    box_iterations: int = 300
    vertices: float = 8.0
    anchor_weight: float = 200.0
    max_candidates: float = 4.0
    checkpoint_every: int = 100
    log_every: int = 100
    dtype: str = "float64"

    def __post_init__(self) -> None:
        check_int("iterations", self.iterations, low=1)
        check_int("seed", self.seed)
        check_number("tol", self.tol, low=0)
        if self.rank is not None:
            check_int("rank", self.rank, low=1)
        check_number("min_drop", self.min_drop, low=1)
        if self.decay is not None:
            check_number("decay", self.decay, low=0, low_open=True)
        check_int("box_iterations", self.box_iterations, low=0)
        if self.contrast not in _CONTRASTS:
            raise ConfigError(f"Expected `contrast` to be one of {sorted(_CONTRASTS)}. Got {self.contrast!r}.")
        check_int("restarts", self.restarts, low=1)
        check_number("vertices", self.vertices, low=0)
        check_number("max_candidates", self.max_candidates, low=1)
        check_number("anchor_weight", self.anchor_weight, low=0)
        check_int("checkpoint_every", self.checkpoint_every, low=0)
        check_int("log_every", self.log_every, low=1)
        resolve_dtype(self.dtype)


@dataclass(frozen=True)
class FirstLayer:
    """The victim's first dense layer: its state-dict names and the module."""

    weight: str
    bias: str | None
    layer: nn.Linear


def first_dense_layer(model: nn.Module) -> FirstLayer:
    """The first layer with parameters, when it is an ``nn.Linear`` (only flattening before it).

    Raises:
        UnsupportedModelError: the first layer with parameters is not dense (a convolution mixes patches,
            not images: the Δθ and simulation families are the route there).
    """
    for name, module in model.named_modules():
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        if not isinstance(module, nn.Linear):
            raise UnsupportedModelError(
                f"Expected a dense first layer (nn.Linear) for first-layer unmixing. Got {type(module).__name__} "
                f"at {name!r}; its change mixes patches, not images."
            )
        prefix = f"{name}." if name else ""
        return FirstLayer(f"{prefix}weight", f"{prefix}bias" if module.bias is not None else None, module)
    raise UnsupportedModelError("Expected a model with parameters for first-layer unmixing. Got none.")


@dataclass(frozen=True)
class RowSpace:
    """The row space of the first layer's change, in pixels.

    Attributes:
        basis: (r, d) orthonormal rows B spanning it.
        t: (r,) the bias constraint: every training image's coefficients a (p = aᵀB) satisfy aᵀt = 1;
            None without a first-layer bias.
        singular_values: all singular values of M (descending).
        rank: r.
        drop: σ_r / σ_{r+1}, the drop that marks the rank.
        decay: the factor γ used on θ₀.
        offset: (d,) what the row space misses of every image when there is no bias (the preprocessing's mean).
    """

    basis: Tensor
    t: Tensor | None
    singular_values: Tensor
    rank: int
    drop: float
    decay: float
    offset: Tensor

    def residual(self, pixels: Tensor) -> Tensor:
        """Each image's relative distance ‖p − Π p‖ / ‖p‖ outside the row space (0: inside it)."""
        p = pixels.reshape(len(pixels), -1).to(self.basis) - self.offset
        inside = (p @ self.basis.T) @ self.basis
        return (p - inside).norm(dim=1) / p.norm(dim=1).clamp_min(1e-300)

    def describe(self) -> dict[str, Any]:
        top = self.singular_values[: self.rank + 5].tolist()
        return {"rank": self.rank, "drop": self.drop, "decay": self.decay, "singular_values_top": top}


def _pixels_map(victim: Victim, d: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(σ, μ) per input coordinate, flattened: inputs = (pixels − μ) / σ."""
    pre = victim.preprocessing
    shape = victim.input_shape
    mean = torch.zeros(shape, dtype=dtype) if pre.mean is None else pre.mean.to(dtype).expand(shape)
    std = torch.ones(shape, dtype=dtype) if pre.std is None else pre.std.to(dtype).expand(shape)
    return std.reshape(d), mean.reshape(d)


def _change(victim: Victim, layer: FirstLayer, dtype: torch.dtype) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """W, b, W⁽⁰⁾, b⁽⁰⁾ of the first layer in ``dtype`` on the CPU."""
    assert victim.initial_state is not None
    state = victim.model.state_dict()
    init = victim.initial_state
    for key in (layer.weight, layer.bias):
        if key is not None and (key not in init or tuple(init[key].shape) != tuple(state[key].shape)):
            got = tuple(init[key].shape) if key in init else "missing"
            raise ConfigError(
                f"Expected the initial weights to hold {key!r} of shape {tuple(state[key].shape)}. Got {got}."
            )
    w, w0 = state[layer.weight].detach().cpu().to(dtype), init[layer.weight].detach().cpu().to(dtype)
    if layer.bias is None:
        return w, None, w0, torch.zeros(0, dtype=dtype)
    return w, state[layer.bias].detach().cpu().to(dtype), w0, init[layer.bias].detach().cpu().to(dtype)


def _mixture(w: Tensor, b: Tensor | None, w0: Tensor, b0: Tensor, gamma: float, std: Tensor, mean: Tensor) -> Tensor:
    dw = (w - gamma * w0) * std
    if b is None:
        return dw
    return dw + (b - gamma * b0)[:, None] * mean[None, :]


def _fit_decay(w: Tensor, b: Tensor | None, w0: Tensor, b0: Tensor, std: Tensor, mean: Tensor, k: int) -> float:
    """The γ in (0, 1] that leaves the least energy of M outside its top ``k`` singular values (golden section)."""

    def tail(gamma: float) -> float:
        s = torch.linalg.svdvals(_mixture(w, b, w0, b0, gamma, std, mean))
        return float(s[k:].pow(2).sum() / s.pow(2).sum().clamp_min(1e-300))

    lo, hi = 0.0, 1.0
    ratio = (math.sqrt(5) - 1) / 2
    a, c = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fc = tail(a), tail(c)
    for _ in range(30):
        if fa < fc:
            hi, c, fc = c, a, fa
            a = hi - ratio * (hi - lo)
            fa = tail(a)
        else:
            lo, a, fa = a, c, fc
            c = lo + ratio * (hi - lo)
            fc = tail(c)
    # Rounded, and 1 unless clearly worse: a fit at float round-off must not depend on how LAPACK summed.
    best = round((lo + hi) / 2, 8)
    return 1.0 if tail(1.0) <= tail(best) * (1 + 1e-6) + 1e-24 else best


def _recipe_decay(recipe: Mapping[str, Any] | None, steps: int | None) -> float | None:
    """Weight decay's factor on θ₀ from the recipe: 1 without weight decay; for SGD at a constant step size (with
    or without momentum, any batch size) the heavy-ball recurrence of θ₀'s share over ``steps``; else None (fit it).

    torch's SGD: b ← μb + (g + λw), w ← w − ηb. θ₀'s share c (w = c·θ₀ + a mixture) follows the same
    recurrence with g = 0, since the gradients only ever add to the mixture.
    """
    if recipe is None:
        return None
    wd = float(recipe.get("weight_decay", 0.0) or 0.0)
    if not wd:
        return 1.0
    if recipe.get("optimizer", "sgd") != "sgd" or recipe.get("schedule", "constant") != "constant" or steps is None:
        return None
    lr, mom = float(recipe["lr"]), float(recipe.get("momentum", 0.0) or 0.0)
    c, b = 1.0, 0.0
    for _ in range(int(steps)):
        b = mom * b + wd * c
        c -= lr * b
    return c


def row_space(victim: Victim, config: UnmixConfig | None = None) -> RowSpace:
    """The row space of the victim's first-layer change in pixels, its rank read from the singular values.

    Raises:
        ConfigError: the victim carries no initial weights, or ones that do not fit the first layer.
        UnsupportedModelError: the first layer is not dense.
        NoTrainingSignalError: the initial weights equal the final ones, or the singular values show no drop
            (initial weights of another initialisation, or a training the theory does not cover).
    """
    config = config or UnmixConfig()
    if victim.initial_state is None:
        raise ConfigError("Expected the victim's initial weights for first-layer unmixing. Got none (--init-weights).")
    dtype = resolve_dtype(config.dtype)
    layer = first_dense_layer(victim.model)
    w, b, w0, b0 = _change(victim, layer, dtype)
    h, d = w.shape
    if torch.equal(w, w0) and (b is None or torch.equal(b, b0)):
        raise NoTrainingSignalError(
            "The initial weights equal the final ones: the first layer did not change, so there is no training "
            "signal to read (were the weights saved before training?)."
        )
    std, mean = _pixels_map(victim, d, dtype)
    gamma = config.decay if config.decay is not None else _recipe_decay(victim.recipe, victim.steps_trained)
    if gamma is None:
        k = config.rank or victim.n_train or max(1, min(h, d) // 4)
        gamma = _fit_decay(w, b, w0, b0, std, mean, min(k, min(h, d) - 1))
    m = _mixture(w, b, w0, b0, gamma, std, mean)
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    # The rank is the *first* drop of at least ``min_drop``: inputs that are 0 in every training image (an MNIST
    # border) leave exactly zero columns, whose singular values (~1e-20 relative) make a later, larger drop than
    # the mixture's own. A drop must leave a tail of at least a quarter of the dimensions to drop into.
    limit = max(1, (min(h, d) * 3) // 4)
    ratios = s[:limit] / s[1 : limit + 1].clamp_min(torch.finfo(dtype).tiny)
    if config.rank is not None:
        rank = min(config.rank, min(h, d))
    else:
        drops = torch.nonzero(ratios >= config.min_drop).flatten()
        if len(drops) == 0:
            raise NoTrainingSignalError(
                f"The first layer's change shows no rank drop (largest σ_r/σ_r+1 = {float(ratios.max()):.3g} "
                f"< {config.min_drop:g}): it is not a mixture of a few inputs. Were these the initial weights of "
                "this model (same seed)? Give --rank to unmix anyway."
            )
        rank = int(drops[0]) + 1
    drop = float(s[rank - 1] / s[rank].clamp_min(torch.finfo(dtype).tiny)) if rank < len(s) else math.inf
    basis = vh[:rank]
    t = None
    if b is not None:
        # M = V B with V = U_r S_r, so the least-squares t = V⁺Δb₁ is S_r⁻¹ U_rᵀ Δb₁ (lstsq is not reproducible
        # bit for bit on MKL: it depends on memory alignment).
        t = (u[:, :rank].T @ (b - gamma * b0)) / s[:rank]
    offset = torch.zeros(d, dtype=dtype) if b is not None else mean  # without a bias: p − μ is in the span
    return RowSpace(basis, t, s, rank, drop, float(gamma), offset)


def _whiten(signals: Tensor) -> tuple[Tensor, Tensor]:
    """(whitening matrix K, centred and whitened signals K(X − mean)) for rows as signals."""
    centred = signals - signals.mean(dim=1, keepdim=True)
    cov = centred @ centred.T / centred.shape[1]
    evals, evecs = torch.linalg.eigh(cov)
    k = evecs / evals.clamp_min(torch.finfo(cov.dtype).eps * float(evals.max())).sqrt()
    return k.T, k.T @ centred


def _decorrelate(w: Tensor) -> Tensor:
    """(W Wᵀ)^(-1/2) W: the symmetric orthogonalisation of FastICA."""
    evals, evecs = torch.linalg.eigh(w @ w.T)
    return evecs @ torch.diag(evals.clamp_min(1e-300).rsqrt()) @ evecs.T @ w


def fastica(z: Tensor, w: Tensor, iterations: int, *, tol: float = 1e-9) -> tuple[Tensor, int, float]:
    """Symmetric FastICA with the log-cosh contrast on whitened signals ``z`` (r, N), from rotation ``w`` (r, r).

    Returns:
        The unmixing rotation, the iterations run (fewer once converged), the last change (1 − min |cos|).
    """
    change = math.inf
    done = 0
    while done < iterations and change >= tol:
        g = torch.tanh(w @ z)
        new = _decorrelate(g @ z.T / z.shape[1] - torch.diag((1 - g * g).mean(dim=1)) @ w)
        change = float((1 - (new * w).sum(dim=1).abs()).max())
        w = new
        done += 1
    return w, done, change


def _rescale(sources: Tensor, space: RowSpace) -> Tensor:
    """Each source (a row in pixels) with its scale and sign: onto aᵀt = 1 with the bias, else by the box."""
    if space.t is not None:
        coefficients = sources @ space.basis.T
        scale = coefficients @ space.t
        return sources / torch.where(scale.abs() > 1e-300, scale, torch.ones_like(scale))[:, None]
    # Without a bias: p = c·s + μ; the sign makes the mass of p − μ positive, the scale puts its top at 1.
    sign = torch.where(sources.sum(dim=1) >= 0, 1.0, -1.0).to(sources)
    s = sources * sign[:, None]
    top = torch.quantile(s + space.offset, 0.995, dim=1, keepdim=True)
    return s / (top - space.offset.max()).abs().clamp_min(1e-12)


def _project(x: Tensor, space: RowSpace, iterations: int) -> Tensor:
    """Dykstra's projection of each row onto {images of the row space (on aᵀt = 1)} ∩ [0, 1]^d."""
    if iterations == 0:
        return x
    b = space.basis
    offset = space.offset

    def affine(y: Tensor) -> Tensor:
        a = (y - offset) @ b.T
        if space.t is not None:  # onto the hyperplane aᵀt = 1 in coefficients
            a = a - ((a @ space.t - 1) / space.t.pow(2).sum())[:, None] * space.t[None, :]
        return a @ b + offset

    p = torch.zeros_like(x)
    q = torch.zeros_like(x)
    y = x
    for _ in range(iterations):
        u = affine(y + p)
        p = y + p - u
        y = (u + q).clamp(0.0, 1.0)
        q = u + q - y
    return affine(y)


def _vertices(space: RowSpace, objectives: Tensor) -> Tensor:
    """For each objective c (rows, in pixels), the vertex of the polytope Q that maximises ⟨c, p⟩ (HiGHS)."""
    from scipy.optimize import linprog

    b = space.basis.cpu().numpy()
    offset = space.offset.cpu().numpy()
    r, d = b.shape
    a_ub = np.vstack([-b.T, b.T])
    a_eq, b_eq = (space.t.cpu().numpy()[None], [1.0]) if space.t is not None else (None, None)
    found = []
    slack = 1e-8  # the images meet the box only to the training's float precision: widen it until feasible
    for c in objectives.cpu().numpy():
        while slack <= 0.1:
            b_ub = np.concatenate([offset + slack, 1.0 + slack - offset])  # −ε ≤ aᵀB + offset ≤ 1 + ε
            res = linprog(
                -(b @ c), A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=[(None, None)] * r, method="highs"
            )
            if res.status != 2:  # 2: infeasible
                break
            slack *= 10
        if res.status == 0:
            found.append(np.clip(res.x @ b + offset, 0.0, 1.0))
    return torch.as_tensor(np.array(found), dtype=space.basis.dtype).reshape(len(found), d)


def _agreeing(rows: Tensor, *, same: float = 0.995) -> tuple[Tensor, Tensor]:
    """The distinct rows (cosine ≤ ``same`` to every earlier one) and how many rows agreed with each."""
    if len(rows) == 0:
        return rows, torch.zeros(0, dtype=torch.int64)
    unit = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-300)
    cos = unit @ unit.T
    keep: list[int] = []
    for i in range(len(rows)):
        if all(float(cos[i, j]) <= same for j in keep):
            keep.append(i)
    counts = (cos[keep] > same).sum(dim=1)
    return rows[keep], counts


@register_attack
class Unmixing(AttackFamily):
    """Owner's attack: the first layer's change ΔW₁ is a mixture of the training images; unmix it."""

    name = "unmix"
    config_type = UnmixConfig
    needs = ("initial_state",)
    description = "ICA of the first dense layer's change W₁ − W₁⁽⁰⁾ (bias-fixed scale, pixel box); needs θ₀"
    # Its manifest is a reconstruction's (``reconstruction.json``): ``kktrecon evaluate`` reads the directory as any.
    kind = RunKind(manifest=RECONSTRUCTION_FILE, state="unmix.state", outputs=(CANDIDATES_FILE,), what="unmixing")

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
        start = time.perf_counter()
        run = open_run(out, self.kind, force=force, resume=resume) if out is not None else None
        space = row_space(victim, config)
        dtype = resolve_dtype(config.dtype)
        r = space.rank
        signals = _gradients(space.basis, victim.input_shape) if config.contrast == "gradients" else space.basis
        whitening, z = _whiten(signals)
        gen = torch.Generator().manual_seed(config.seed)
        w = _decorrelate(torch.randn(r, r, generator=gen, dtype=dtype))
        done = 0
        record = config_to_dict(config)
        if run is not None and run.status != "new":
            tensors, meta = load_state(run.state)
            check_resumable(meta.get("config", {}), record, where=run.path, free=("iterations", "checkpoint_every"))
            check_same_victim(run.path, meta.get("victim", {}).get("fingerprint"), victim.fingerprint)
            if meta.get("done", 0) > config.iterations:
                raise ConfigError(
                    f"Cannot resume {run.path} at {config.iterations} iterations: it has run {meta['done']}."
                )
            w, done = tensors["w"].to(dtype), int(meta["done"])
        converged = done > 0 and self._converged(run)
        change = math.nan
        step = config.checkpoint_every or config.iterations
        while done < config.iterations and not converged:
            chunk = min(step, config.iterations - done)
            w, ran, change = fastica(z, w, chunk, tol=config.tol)
            done += ran
            converged = change < config.tol
            if run is not None:
                meta = {"done": done, "converged": converged, "config": record, "victim": victim.describe()}
                save_state(run.state, {"w": w}, meta)
        sources = [w @ whitening @ space.basis]  # the unmixing applied to the uncentred row space (not its contrast)
        for extra in range(1, config.restarts):  # further seeds, run to the same length (not checkpointed)
            g = torch.Generator().manual_seed(config.seed + extra)
            more, _, _ = fastica(z, _decorrelate(torch.randn(r, r, generator=g, dtype=dtype)), done, tol=config.tol)
            sources.append(more @ whitening @ space.basis)
        estimates = _project(_rescale(torch.cat(sources), space), space, config.box_iterations)
        pixels = self._pool(estimates, space, config)
        r = len(pixels)
        x = victim.preprocessing.to_inputs(pixels.reshape(r, *victim.input_shape))
        y = predicted_labels(victim.model, x).cpu().to(dtype)
        lam = torch.ones(r, dtype=dtype)
        source = {"attack": self.name, "iteration": done, "rank": space.rank, "decay": space.decay, "drop": space.drop}
        candidates = CandidateSet.of(x.to(dtype), lam, y, victim=victim.describe(), **source)
        if run is not None:
            candidates.save(run.path)
            manifest = {
                "format": "kktrecon.unmix/1",
                "config": record,
                "victim": victim.describe(),
                "row_space": space.describe(),
                "iterations_run": done,
                "converged": converged,
                "seconds": time.perf_counter() - start,
                "versions": package_versions(),
            }
            atomic_write_json(run.path / self.kind.manifest, manifest)
        return candidates

    @staticmethod
    def _pool(estimates: Tensor, space: RowSpace, config: UnmixConfig) -> Tensor:
        """Vertices of Q (most agreed first), then the ICA estimates no vertex repeats, ``max_candidates``·r at most."""
        r = space.rank
        count = round(config.vertices * r)
        if count == 0:
            return estimates
        gen = torch.Generator().manual_seed(config.seed)
        # Anchors: a pixel j where the row space has ink, weighted β against the image's mass Σp. The lightest
        # image inked at j maximises β·p_j − Σp; a mixture that subtracts an image only gains mass.
        d = estimates.shape[1]
        ink = torch.nonzero(space.basis.norm(dim=0) > 1e-8 * float(space.basis.norm(dim=0).max())).flatten()
        picks = ink[torch.randint(len(ink), (max(0, count - r),), generator=gen)]
        anchors = -torch.ones(len(picks), d, dtype=estimates.dtype)
        anchors[torch.arange(len(picks)), picks] += config.anchor_weight
        directions = estimates - estimates.mean(dim=1, keepdim=True)
        vertices = _vertices(space, torch.cat([directions, anchors])[:count])
        distinct, counts = _agreeing(vertices)
        order = torch.argsort(counts, descending=True, stable=True)
        pooled, _ = _agreeing(torch.cat([distinct[order], estimates]))
        return pooled[: int(config.max_candidates * r)]

    @staticmethod
    def _converged(run: Any) -> bool:
        if run is None or not run.state.exists():
            return False
        return bool(load_state(run.state)[1].get("converged", False))


def unmix(victim: Victim, config: UnmixConfig | None = None, **overrides: Any) -> CandidateSet:
    """The unmixing's candidates in memory (no run directory)."""
    config = dataclasses.replace(config or UnmixConfig(), **overrides)
    return Unmixing().run(victim, config, out=None)
