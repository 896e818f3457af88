"""Adam on a few named tensors, checkpointed and resumed exactly: the loop of the owner's gradient families.

The simulation (candidates and the learned step size) and the Δθ family (candidate pixels) both minimise a
loss of a handful of tensors with Adam, record a thinned history, save their state every few iterations and
resume it bit for bit. :class:`Descent` holds that state and :func:`descend` runs the loop with a progress bar.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from kktrecon.attack.victim import Victim
from kktrecon.configs import config_to_dict
from kktrecon.errors import ConfigError
from kktrecon.files import load_state, save_state
from kktrecon.progress import progress_bar
from kktrecon.runs import Run, check_resumable, check_same_victim, same_length

__all__ = ["Descent", "descend"]


@dataclass
class Descent:
    """Named tensors moved by one Adam (a step size each), the iterations done and the history; saved exactly.

    The checkpoint holds every tensor under its name and Adam's moments as ``exp_avg_{i}``/``exp_avg_sq_{i}``
    in the order of ``params``.
    """

    params: dict[str, Tensor]
    opt: torch.optim.Adam
    log_every: int
    record: dict[str, Any]
    done: int = 0
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    before: float = 0.0  # seconds run before this process resumed it
    started: float = dataclasses.field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, params: Mapping[str, tuple[Tensor, float]], config: Any) -> Descent:
        """Adam over ``params`` (name: (initial tensor, step size)); ``config`` is recorded and gives ``log_every``."""
        tensors = {name: t.requires_grad_(True) for name, (t, _) in params.items()}
        opt = torch.optim.Adam([{"params": [tensors[name]], "lr": lr} for name, (_, lr) in params.items()])
        return cls(tensors, opt, config.log_every, config_to_dict(config))

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.started

    def step(self, terms: dict[str, Tensor]) -> None:
        """One Adam step on ``terms["total"]``; every ``log_every``-th iteration goes into the history."""
        self.opt.zero_grad()
        terms["total"].backward()
        self.opt.step()
        if self.done % self.log_every == 0:
            point = {k: float(v.detach()) for k, v in terms.items()}
            self.history.append({"iteration": self.done, **point, "seconds": self.seconds()})
        self.done += 1

    def save(self, run: Run | None, victim: Victim) -> None:
        if run is None:
            return
        tensors = dict(self.params)
        steps = []
        for i, p in enumerate(self.params.values()):
            state = self.opt.state.get(p, {})
            if state:
                tensors[f"exp_avg_{i}"], tensors[f"exp_avg_sq_{i}"] = state["exp_avg"], state["exp_avg_sq"]
                steps.append(float(state["step"]))
        meta = {"done": self.done, "history": self.history, "seconds": self.seconds(), "config": self.record,
                "victim": victim.describe(), "adam_steps": steps}  # fmt: skip
        save_state(run.state, tensors, meta)

    def restore(self, run: Run, victim: Victim, iterations: int) -> bool:
        """Load the run's state after checking it; True when it is finished as asked (nothing left to run)."""
        tensors, meta = load_state(run.state)
        check_resumable(meta.get("config", {}), self.record, where=run.path, free=("iterations", "checkpoint_every"))
        check_same_victim(run.path, meta.get("victim", {}).get("fingerprint"), victim.fingerprint)
        if run.status == "finished" and same_length(run, done=meta["done"], requested=iterations, unit="iterations"):
            return True
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(tensors[name])
        state = self.opt.state_dict()
        for i, count in enumerate(meta["adam_steps"]):
            state["state"][i] = {
                "step": torch.tensor(count),
                "exp_avg": tensors[f"exp_avg_{i}"].clone(),
                "exp_avg_sq": tensors[f"exp_avg_sq_{i}"].clone(),
            }
        self.opt.load_state_dict(state)
        self.done, self.history, self.before = int(meta["done"]), meta["history"], float(meta["seconds"])
        self.started = time.perf_counter()
        return False


def descend(
    state: Descent,
    loss: Callable[[], dict[str, Tensor]],
    *,
    iterations: int,
    checkpoint_every: int,
    run: Run | None,
    victim: Victim,
    what: str,
    postfix: Callable[[dict[str, float]], str],
    after_step: Callable[[], None] | None = None,
    progress: bool = True,
) -> None:
    """Step ``state`` on ``loss()`` until ``iterations``, checkpointing into ``run``; a non-finite loss stops
    the run with the last checkpoint kept."""
    with progress_bar(what, total=iterations, enabled=progress, completed=state.done) as bar:
        while state.done < iterations:
            terms = loss()
            if not torch.isfinite(terms["total"]):
                raise ConfigError(
                    f"{what}: the loss diverged at iteration {state.done} ({float(terms['total'])}); the last "
                    "checkpoint is kept. Lower the step size (`lr`)."
                )
            state.step(terms)
            if after_step is not None:
                with torch.no_grad():
                    after_step()
            if state.history and state.history[-1]["iteration"] == state.done - 1:
                bar.update(postfix=postfix(state.history[-1]))
            bar.advance(1)
            if checkpoint_every and state.done % checkpoint_every == 0:
                state.save(run, victim)
    state.save(run, victim)
