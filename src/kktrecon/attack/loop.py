"""One optimisation loop for the KKT attack, and the life of a trial: set up, open, resume, advance, finish.

Both engines run trials through :func:`optimise`: :func:`~kktrecon.attack.reconstruct` one trial
with the autograd form of the loss, :func:`~kktrecon.attack.batched.reconstruct_batch` K trials with
the Gram form. A :class:`Trial` is an ordinary reconstruction run: it keeps its own SGD optimisers,
RNG, history and checkpoint (candidates, λ, both optimisers' momentum, the RNG state), so a resumed
trial ends bit-identical to an uninterrupted one, batched or not.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kktrecon.attack.config import ReconstructionConfig, ReconstructionResult
from kktrecon.attack.objectives import Objective, get_objective
from kktrecon.attack.victim import Victim, VictimLike
from kktrecon.candidates import CandidateSet
from kktrecon.checks import check_int
from kktrecon.configs import config_to_dict
from kktrecon.devices import ThreadChoice, dtype_name
from kktrecon.errors import CheckpointError, ConfigError, RunStateError
from kktrecon.files import (
    ATTACK_STATE_FILE,
    CANDIDATES_FILE,
    RECONSTRUCTION_FILE,
    atomic_write_json,
    load_state,
    package_versions,
    read_json,
    save_state,
)
from kktrecon.models import warn_if_unsupported, weights_fingerprint, with_modified_relu
from kktrecon.progress import progress_bar
from kktrecon.runs import Run, RunKind, check_resumable, check_same_victim, open_run, same_length

__all__ = ["ATTACK_RUN", "Setup", "Trial", "TrialState", "initial_state", "optimise", "setup"]

#: An attack run directory: candidates + manifest when finished, the resumable state kept beside them.
ATTACK_RUN = RunKind(manifest=RECONSTRUCTION_FILE, state=ATTACK_STATE_FILE, outputs=(CANDIDATES_FILE,))
# Config fields that may change between a run and its continuation: the budget and how often it saves.
FREE_ON_RESUME = ("iterations", "checkpoint_every")


def initial_state(
    input_shape: tuple[int, ...],
    config: ReconstructionConfig,
    m: int,
    *,
    device: torch.device,
    dtype: torch.dtype,
    objective: Objective | None = None,
    num_outputs: int = 1,
) -> tuple[Tensor, Tensor, Tensor, torch.Generator]:
    """x ~ N(0,1)·init_scale, then the objective's λ (binary: U[0,1]) and labels (binary: half −1, half +1).

    Drawn from a CPU generator seeded with ``config.seed``, so a run is reproducible on any device.
    """
    objective = objective or get_objective("binary")
    gen = torch.Generator().manual_seed(config.seed)
    x = (torch.randn((m, *input_shape), generator=gen, dtype=torch.float64) * config.init_scale).to(device, dtype)
    lam = objective.init_lambda(m, num_outputs, gen).to(device, dtype)
    y = objective.candidate_labels(m, num_outputs).to(device, dtype)
    return x, lam, y, gen


@dataclass(frozen=True)
class Setup:
    """What the loop needs about the victim: its attack copy, how it is recorded, the objective, m."""

    victim: Victim
    attack_model: nn.Module
    info: dict[str, Any]
    objective: Objective
    num_outputs: int
    m: int
    device: torch.device
    dtype: torch.dtype


def setup(
    victim: VictimLike,
    config: ReconstructionConfig,
    *,
    n_train: int | None,
    input_shape: tuple[int, ...] | None,
    device: torch.device,
    dtype: torch.dtype,
) -> Setup:
    """The victim's attack copy (its ReLUs' derivative smoothed) and the candidate count m (default 2n)."""
    target = Victim.of(victim, input_shape)
    model = target.on(device, dtype)  # eval: dropout off, the attack explains the network as it computes
    warn_if_unsupported(model)
    with torch.no_grad():
        out = model(torch.zeros(1, *target.input_shape, device=device, dtype=dtype))
    objective = target.objective(config.objective, num_outputs=int(out.shape[1]))
    objective.check_outputs(out)
    # recorded as attacked: the fingerprint of the weights in the attack's dtype
    info = {**target.describe(objective.name), "fingerprint": weights_fingerprint(model)}
    n = n_train if n_train is not None else target.n_train
    if config.candidates is None and n is None:
        raise ConfigError("Expected `candidates` or `n_train`: the victim does not record its training-set size.")
    if config.candidates is None:
        check_int("n_train", n, low=1)
    m = config.candidates if config.candidates is not None else 2 * int(n)
    _check_memory(m, target.input_shape, dtype, device)
    attack_model = with_modified_relu(model, config.alpha)
    for p in attack_model.parameters():
        p.requires_grad_(True)
    return Setup(target, attack_model, info, objective, int(out.shape[1]), m, device, dtype)


def _check_memory(m: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
    """Refuse an attack whose candidates alone (x, its gradient and momentum) exceed the device's memory."""
    need = 3 * m * math.prod(shape) * torch.finfo(dtype).bits // 8
    if device.type == "cuda":
        have = torch.cuda.mem_get_info(device)[1]
    else:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else need
    if need > have:
        raise ConfigError(
            f"Expected the candidates to fit in memory: {m} candidates of shape {shape} need {need / 2**30:.1f} GiB "
            f"for x, its gradient and momentum alone; {device} has {have / 2**30:.1f} GiB. Lower --candidates."
        )


@dataclass
class TrialState:
    """Everything the loop advances: candidates, multipliers, optimisers, RNG, where it stands."""

    x: Tensor
    lam: Tensor
    y: Tensor
    gen: torch.Generator
    opt_x: torch.optim.Optimizer
    opt_l: torch.optim.Optimizer
    iteration: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    elapsed: float = 0.0
    threads: int | None = None  # CPU threads it runs with now (devices.ThreadChoice; the last bits depend on it)
    splits: list[dict[str, Any]] = field(default_factory=list)  # sample-splitting steps taken (attack.splitting)

    @classmethod
    def start(cls, config: ReconstructionConfig, s: Setup) -> TrialState:
        x, lam, y, gen = initial_state(
            s.victim.input_shape, config, s.m, device=s.device, dtype=s.dtype, objective=s.objective,
            num_outputs=s.num_outputs,
        )  # fmt: skip
        x.requires_grad_(True)
        lam.requires_grad_(True)
        opt_x = torch.optim.SGD([x], lr=config.lr, momentum=config.momentum)
        opt_l = torch.optim.SGD([lam], lr=config.lambda_lr, momentum=config.momentum)
        return cls(x, lam, y, gen, opt_x, opt_l)

    def replace(self, x: Tensor, lam: Tensor, y: Tensor, momentum: dict[str, Tensor]) -> None:
        """New candidates (another m, after a split): fresh leaves and optimisers, momentum where given."""
        self.x, self.lam, self.y = x.detach().clone().requires_grad_(True), lam.detach().clone().requires_grad_(True), y
        gx, gl = self.opt_x.param_groups[0], self.opt_l.param_groups[0]
        self.opt_x = torch.optim.SGD([self.x], lr=gx["lr"], momentum=gx["momentum"])
        self.opt_l = torch.optim.SGD([self.lam], lr=gl["lr"], momentum=gl["momentum"])
        for key, opt, p in self._buffers():
            if key in momentum:
                opt.state[p]["momentum_buffer"] = momentum[key].to(device=p.device, dtype=p.dtype)

    def _buffers(self) -> tuple[tuple[str, torch.optim.Optimizer, Tensor], ...]:
        return (("momentum_x", self.opt_x, self.x), ("momentum_lam", self.opt_l, self.lam))

    def momentum(self) -> dict[str, Tensor]:
        """Both optimisers' momentum buffers (``momentum_x``, ``momentum_lam``), where they exist yet."""
        buffers = {key: opt.state.get(p, {}).get("momentum_buffer") for key, opt, p in self._buffers()}
        return {key: buf for key, buf in buffers.items() if buf is not None}

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        tensors = {"x": self.x, "lam": self.lam, "y": self.y, "rng": self.gen.get_state()}
        tensors.update(self.momentum())
        state = {"iteration": self.iteration, "history": self.history, "seconds": self.elapsed, "threads": self.threads,
                 "splits": self.splits}  # fmt: skip
        save_state(path, tensors, {**state, **meta})

    def restore(self, path: Path, meta: dict[str, Any], config: ReconstructionConfig) -> None:
        """Load ``path`` after checking it was made with ``config`` on the same victim (``meta``)."""
        tensors, saved = load_state(path)
        if not {"x", "lam", "rng"} <= set(tensors) or not {"iteration", "history", "seconds"} <= set(saved):
            raise CheckpointError(f"{path} is not an attack checkpoint; pass --force to start over.")
        check_resumable(saved.get("config", {}), meta["config"], where=path.parent, free=FREE_ON_RESUME)
        check_same_victim(path.parent, saved.get("victim"), meta["victim"])
        if saved["iteration"] > config.iterations:
            raise RunStateError(
                f"Cannot resume {path.parent} at {config.iterations} iterations: it has already run "
                f"{saved['iteration']}. Ask for at least that many, or pass --force to start over."
            )
        grown = config.split is not None and "y" in tensors  # splitting changes m: the checkpoint's shapes rule
        if tensors["x"].shape != self.x.shape and not grown:
            raise RunStateError(
                f"Cannot resume {path}: it holds {tuple(tensors['x'].shape)} candidates, "
                f"expected {tuple(self.x.shape)}."
            )
        if grown:
            y = tensors["y"].to(device=self.y.device, dtype=self.y.dtype)
            self.replace(tensors["x"].to(self.x), tensors["lam"].to(self.lam), y, tensors)
        else:
            with torch.no_grad():
                self.x.copy_(tensors["x"])
                self.lam.copy_(tensors["lam"])
            for key, opt, p in self._buffers():
                if key in tensors:
                    opt.state[p]["momentum_buffer"] = tensors[key].to(device=p.device, dtype=p.dtype)
        self.gen.set_state(tensors["rng"])
        self.iteration, self.history, self.elapsed = saved["iteration"], saved["history"], saved["seconds"]
        self.threads = saved.get("threads")
        self.splits = saved.get("splits", [])


@dataclass
class Trial:
    """One trial: its config, state, directory and meta; its result once finished, or why it stopped."""

    config: ReconstructionConfig
    state: TrialState
    checkpoint: Path | None
    out: Path | None
    meta: dict[str, Any]
    result: ReconstructionResult | None = None
    error: str | None = None
    diverged: tuple[float, int] | None = None  # the non-finite loss and its iteration
    last_good: int | None = None  # the iteration of the last checkpoint written or found
    run: Run | None = None  # its directory, locked while the trial lives
    engine: str = "autograd"  # the form of the loss it ran with (kktrecon.attack.engine.ENGINES)

    @classmethod
    def open(
        cls, config: ReconstructionConfig, out: str | Path | None, s: Setup, *, resume: bool, force: bool
    ) -> Trial:
        """Open the trial's run directory (the shared lifecycle); a finished run as asked is loaded."""
        run = open_run(out, ATTACK_RUN, force=force, resume=resume) if out is not None else None
        state = TrialState.start(config, s)
        meta = {"config": config_to_dict(config), "victim": s.info["fingerprint"]}
        trial = cls(config, state, run.state if run else None, run.path if run else None, meta, run=run)
        if run is not None and run.status == "finished" and _finished_as_asked(run, config, meta):
            trial.result = load_result(run.path, s.device, s.dtype)
        elif run is not None and run.status != "new":
            state.restore(run.state, meta, config)
        if trial.checkpoint is not None and trial.checkpoint.exists():
            trial.last_good = state.iteration
        return trial

    def save(self) -> None:
        if self.checkpoint is not None:
            self.state.save(self.checkpoint, self.meta)
            self.last_good = self.state.iteration

    def finish(self, s: Setup) -> None:
        """Keep the final state (so that the trial can be extended) and write its candidates and manifest."""
        st = self.state
        self.save()
        candidates = CandidateSet.of(
            st.x.detach(), st.lam.detach(), st.y, victim=s.info, attack="kkt", seed=self.config.seed,
            iteration=st.iteration, dir=str(self.out) if self.out is not None else None,
        )  # fmt: skip
        self.result = ReconstructionResult(
            st.x.detach(), st.lam.detach(), st.y, st.history, self.out, st.elapsed, candidates
        )
        if self.out is not None:
            _write_result(self.out, self.result, self.config, s, engine=self.engine, threads=st.threads,
                          splits=st.splits)  # fmt: skip


def _finished_as_asked(run: Run, config: ReconstructionConfig, meta: dict[str, Any]) -> bool:
    """Whether the finished run in ``run`` ran exactly ``config`` (else it is to be extended)."""
    manifest = read_json(run.manifest)
    check_resumable(manifest.get("config", {}), meta["config"], where=run.path, free=FREE_ON_RESUME)
    check_same_victim(run.path, manifest.get("victim", {}).get("fingerprint"), meta["victim"])
    return same_length(run, done=int(manifest.get("iterations", -1)), requested=config.iterations, unit="iterations")


#: The loss of the live trials: their terms, each of shape (K,), with the weighted ``total``.
LossFn = Callable[[list[Trial]], dict[str, Tensor]]


#: Called after each iteration with a trial and the number of iterations it has done (e.g. a split step).
AfterStep = Callable[[Trial, int], None]


def optimise(
    trials: list[Trial], loss: LossFn, iterations: int, *, label: str, progress: bool, after: AfterStep | None = None
) -> None:
    """Advance trials that stand at the same iteration to ``iterations`` together.

    Each trial checkpoints every ``checkpoint_every`` iterations of its config (after ``after`` has run
    for that iteration, so that a checkpoint holds what follows it); a trial whose loss becomes NaN/Inf
    stops (``diverged``, ``error``; its last checkpoint is kept) and the others carry on.
    """
    live = list(trials)
    threads = _threads(live, loss)
    start = time.perf_counter() - max(t.state.elapsed for t in trials)
    first = trials[0].state.iteration
    postfix = len(trials) == 1
    with threads, progress_bar(label, total=iterations, enabled=progress, completed=first) as bar:
        for iteration in range(first, iterations):
            live = _step(live, loss, iteration, start, bar if postfix else None)
            if not live:
                return
            bar.advance(1)
            threads.tick()
            for t in live:
                if after is not None:
                    after(t, iteration + 1)
                every = t.config.checkpoint_every
                if every and (iteration + 1) % every == 0:
                    t.state.elapsed, t.state.threads = time.perf_counter() - start, threads.current
                    t.save()
    for t in live:
        t.state.elapsed, t.state.threads = time.perf_counter() - start, threads.current


def _threads(trials: list[Trial], loss: LossFn) -> ThreadChoice:
    """The CPU threads of a run (devices.ThreadChoice): a resumed run starts with those it had."""
    recorded = {t.state.threads for t in trials} - {None}
    states = [t.state for t in trials]  # read at each call: a split step replaces a state's tensors
    choice = ThreadChoice(
        lambda: torch.autograd.grad(loss(trials)["total"].sum(), [s.x for s in states] + [s.lam for s in states]),
        states[0].x.device,
        start=recorded.pop() if len(recorded) == 1 else None,
    )
    return choice


def _step(live: list[Trial], loss: LossFn, iteration: int, start: float, bar: Any) -> list[Trial]:
    """One iteration of the live trials; returns those still live."""
    terms = loss(live)
    finite = torch.isfinite(terms["total"])
    ok = finite.tolist()
    for t, good, value in zip(live, ok, terms["total"].detach().tolist(), strict=True):
        if not good:
            t.diverged = (value, iteration)
            t.error = f"loss became {value} at iteration {iteration}; last good checkpoint kept"
    if not any(ok):
        return []
    states = [t.state for t in live]
    grads = torch.autograd.grad(terms["total"][finite].sum(), [s.x for s in states] + [s.lam for s in states])
    for j, (t, s) in enumerate(zip(live, states, strict=True)):
        if not ok[j]:
            continue
        s.x.grad, s.lam.grad = grads[j], grads[len(states) + j]
        s.opt_x.step()
        s.opt_l.step()
        if iteration % t.config.log_every == 0:
            point = {"iteration": iteration, **{k: float(v[j].detach()) for k, v in terms.items()}}
            point["seconds"] = time.perf_counter() - start
            s.history.append(point)
            if bar is not None:
                bar.update(postfix=f"kkt {point['kkt']:.4g} · prior {point['prior']:.3g} · λ {point['lambda']:.3g}")
        s.iteration = iteration + 1
    return [t for t, good in zip(live, ok, strict=True) if good]


def _write_result(
    out_dir: Path, result: ReconstructionResult, config: ReconstructionConfig, s: Setup, *, engine: str,
    threads: int | None, splits: list[dict[str, Any]],
) -> None:  # fmt: skip
    assert result.candidates is not None
    result.candidates.save(out_dir)
    last = result.history[-1] if result.history else {}
    atomic_write_json(
        out_dir / RECONSTRUCTION_FILE,
        {
            "format": "kktrecon.reconstruction/1",
            "attack": "kkt",
            "objective": s.info["objective"],
            "victim": s.info,
            "config": config_to_dict(config),
            "candidates": int(result.x.shape[0]),  # 2n by default; more after sample splitting
            "iterations": config.iterations,
            "device": str(s.device),
            "dtype": dtype_name(result.x.dtype),
            "engine": engine,
            "threads": threads,
            "versions": package_versions(),
            "timings": {
                "total_s": result.seconds,
                "ms_per_iteration": 1000 * result.seconds / max(config.iterations, 1),
            },
            "final_loss": last,
            "splits": splits,
            "loss_history": result.history,
        },
    )


def load_result(out_dir: Path, device: torch.device, dtype: torch.dtype) -> ReconstructionResult:
    """A finished reconstruction directory's result, its candidates on ``device`` in ``dtype``."""
    manifest = read_json(out_dir / RECONSTRUCTION_FILE)
    candidates = CandidateSet.load(out_dir).to(device, dtype)
    return ReconstructionResult(
        candidates.x, candidates.lam, candidates.y, manifest.get("loss_history", []), out_dir,
        float(manifest.get("timings", {}).get("total_s", 0.0)), candidates,
    )  # fmt: skip
