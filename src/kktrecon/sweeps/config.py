"""What a sweep is: its config, its search space, its samplers and the files of a sweep directory.

Kept apart from :mod:`kktrecon.sweeps.study` (which runs sweeps) so that pooling and the backends read
a sweep's config without importing the study that runs it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kktrecon.attack.config import ReconstructionConfig
from kktrecon.checks import check_int, check_number
from kktrecon.configs import config_from_dict, register_nested
from kktrecon.errors import ConfigError
from kktrecon.files import POOL_DIR, SWEEP_FILE, read_json
from kktrecon.registry import Registry
from kktrecon.runs import RunKind

__all__ = [
    "CNN_SPACE",
    "OFFICIAL_SPACE",
    "SAMPLERS",
    "SPACES",
    "SWEEP_FILE",
    "SWEEP_RUN",
    "Parameter",
    "SweepConfig",
    "load_sweep_config",
]

STUDY_FILE = "study.db"
TRIALS_DIR = "trials"
RESULTS_FILE = "results.json"
ERROR_FILE = "error.txt"  # why a trial failed (its loss diverged)
#: What a resumed sweep may change: more trials, a longer or wider extension (a run grows, never shrinks).
FREE_ON_RESUME = ("trials", "extend", "extend_top")


@dataclass(frozen=True)
class Parameter:
    """One swept hyperparameter of :class:`~kktrecon.attack.ReconstructionConfig`: a range and a scale."""

    name: str
    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        if self.name not in {f.name for f in dataclasses.fields(ReconstructionConfig)}:
            raise ConfigError(f"Expected a swept `name` that ReconstructionConfig has. Got {self.name!r}.")
        check_number(f"{self.name}.low", self.low, low=0 if self.log else None, low_open=self.log)
        check_number(f"{self.name}.high", self.high, low=self.low, low_open=True)


#: The reference sweep's space (nivha/dataset_reconstruction).
OFFICIAL_SPACE: tuple[Parameter, ...] = (
    Parameter("init_scale", 1e-6, 0.1, log=True),
    Parameter("lr", 1e-5, 1.0, log=True),
    Parameter("lambda_min", 0.01, 0.5),
    Parameter("alpha", 10.0, 500.0),
)
#: For CNN victims: the reference space and the total-variation weight (a convolution's candidates are
#: read through patches, so smoothness is a stronger part of what selects images; measured in
#: benchmarks/NOTES.md, "CNN victims").
CNN_SPACE: tuple[Parameter, ...] = (*OFFICIAL_SPACE, Parameter("tv_weight", 1e-3, 0.3, log=True))
#: Named search spaces (``kktrecon sweep --space NAME``).
SPACES: Registry[tuple[Parameter, ...]] = Registry("search space", ConfigError)
SPACES.register("reference", OFFICIAL_SPACE)
SPACES.register("cnn", CNN_SPACE)


def _random(seed: int) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _tpe(seed: int) -> Any:
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=8)


#: Samplers by name: random (the reference) or TPE (Optuna's Bayesian default).
SAMPLERS: Registry[Callable[[int], Any]] = Registry("sampler", ConfigError)
SAMPLERS.register("random", _random)
SAMPLERS.register("tpe", _tpe)
#: What a trial is scored by: oracle-free candidates' agreement, or recovered images (research only).
SWEEP_OBJECTIVES = ("kkt", "oracle")


@dataclass(frozen=True)
class SweepConfig:
    """A sweep: how many trials, how long each, how many at a time, how they are chosen and scored.

    Args:
        trials: the total number of trials (a resumed sweep may raise it).
        iterations: attack iterations per trial.
        batch: trials that advance together as one program (K).
        sampler: ``random`` (the reference) or ``tpe``.
        objective: ``kkt`` (oracle-free, the default) or ``oracle`` (n_recovered against the
            training set: research only).
        seed: seed of the sampler (trial i's parameters are drawn from (seed, i), so a resumed sweep
            draws what an uninterrupted one would); trial i's candidates are seeded with ``seed + i``.
        space: the swept parameters (default: the reference's space).
        attack: the other attack settings, shared by all trials (candidates, dtype, objective, …).
        tau: NCC distance under which two candidates of different trials agree (``kkt`` objective).
        checkpoint_every: iterations between a trial's checkpoints.
        extend: iterations added to each of the ``extend_top`` best trials once all trials are done
            (0: none). The default sweep spends 8 × 750 + 6,000 = 12,000 trial-iterations, three
            4,000-iteration runs.
        extend_top: how many of the best trials are extended.
        warm_start: the released winners of the victim's data set (all of them for an unknown one)
            are the first trials.
    """

    trials: int = 8
    iterations: int = 750
    batch: int = 8
    sampler: str = "random"
    objective: str = "kkt"
    seed: int = 0
    space: tuple[Parameter, ...] = OFFICIAL_SPACE
    attack: ReconstructionConfig = field(default_factory=ReconstructionConfig)
    tau: float = 0.4
    checkpoint_every: int = 1000
    extend: int = 6000
    extend_top: int = 1
    warm_start: bool = True

    def __post_init__(self) -> None:
        check_int("trials", self.trials, low=1)
        check_int("iterations", self.iterations, low=1)
        check_int("batch", self.batch, low=1)
        check_int("seed", self.seed, low=0)
        check_int("checkpoint_every", self.checkpoint_every, low=0)
        check_int("extend", self.extend, low=0)
        check_int("extend_top", self.extend_top, low=1)
        check_number("tau", self.tau, low=0, low_open=True)
        SAMPLERS.get_entry(self.sampler)
        if self.objective not in SWEEP_OBJECTIVES:
            raise ConfigError(f"Expected `objective` to be one of {list(SWEEP_OBJECTIVES)}. Got {self.objective!r}.")
        names = [p.name for p in self.space]
        if len(set(names)) != len(names):
            raise ConfigError(f"Expected each swept parameter once. Got {names}.")

    def trial_config(self, number: int, params: Mapping[str, float], *, extended: bool = False) -> ReconstructionConfig:
        """The attack config of trial ``number`` with the sampled ``params`` (``extended``: after its extension)."""
        log_every = max(1, self.iterations // 50)  # the same before and after an extension (a resume keeps it)
        return dataclasses.replace(
            self.attack, iterations=self.iterations + (self.extend if extended else 0), seed=self.seed + number,
            checkpoint_every=self.checkpoint_every, log_every=log_every, **params,
        )  # fmt: skip


register_nested("SweepConfig", "attack", ReconstructionConfig)
register_nested("SweepConfig", "space", Parameter)


#: A sweep directory: its config when it starts, its results when it ends, its study, trials and pool.
SWEEP_RUN = RunKind(
    manifest=RESULTS_FILE, state=SWEEP_FILE, outputs=(STUDY_FILE,), dirs=(TRIALS_DIR, POOL_DIR), what="sweep",
    exclusive=False,  # several workers may share a sweep's study; each trial directory is locked by its trial
)  # fmt: skip


def load_sweep_config(out: str | Path) -> SweepConfig:
    """The config recorded in a sweep directory."""
    return config_from_dict(SweepConfig, read_json(Path(out) / SWEEP_FILE)["config"])
