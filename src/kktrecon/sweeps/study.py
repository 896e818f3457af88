"""Hyperparameter sweeps of the attack: an Optuna study in SQLite, trials as ordinary reconstruction runs.

The reference pipeline tunes the attack per victim with a ~100-run random sweep over init_scale
log-U[1e-6, 0.1], lr log-U[1e-5, 1], λ_min U[0.01, 0.5] and α U[10, 500], scored against the true
training set, an oracle no attacker has. Here the sweep's objective is oracle-free by default
(``kkt``: candidates that independent trials agree on, :mod:`kktrecon.sweeps.selection`); the
``oracle`` objective (recovered training images, :mod:`kktrecon.evaluation.verdict`) is for research
only and labelled so everywhere.

A sweep spends its budget in two phases (measured in benchmarks/sweep_vs_winners.py): short trials
explore the space, starting with the released winners (:mod:`kktrecon.attack.released`), then the
best trials by the sweep's objective are extended with the rest of the budget (a trial resumes from
its final checkpoint, bit-identically to a longer run). Short trials rank settings well but do not
finish: a good setting needs thousands of iterations to bring its candidates in.

A sweep directory holds ``sweep.json`` (config, victim, versions), ``study.db`` (Optuna's RDB
storage, so a killed sweep resumes where it stopped and several workers can share it) and
``trials/NNNN/``, one reconstruction directory per trial. Trials advance K at a time as one
program (:mod:`kktrecon.attack.batched`), locally or as Ray tasks (:mod:`kktrecon.sweeps.backends`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kktrecon.attack.engine import ReconstructionConfig
from kktrecon.checks import check_int, check_number
from kktrecon.errors import ConfigError, MissingDependencyError, RunDirectoryExistsError, RunStateError
from kktrecon.models import load_checkpoint, weights_fingerprint
from kktrecon.registry import Registry
from kktrecon.runs import (
    RECONSTRUCTION_FILE,
    atomic_write_json,
    atomic_write_text,
    config_from_dict,
    config_to_dict,
    package_versions,
    read_json,
    register_nested,
)
from kktrecon.sweeps.selection import trial_score

__all__ = [
    "OFFICIAL_SPACE",
    "SAMPLERS",
    "SWEEP_FILE",
    "Parameter",
    "SweepConfig",
    "SweepResult",
    "SweepVictim",
    "sweep",
]

SWEEP_FILE = "sweep.json"
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
        seed: seed of the sampler; trial i's candidates are seeded with ``seed + i``.
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


@dataclass
class SweepResult:
    """A finished (or budget-stopped) sweep: its directory and one row per trial."""

    out: Path
    rows: list[dict[str, Any]]
    seconds: float

    @property
    def best(self) -> dict[str, Any] | None:
        done = [r for r in self.rows if r["state"] == "COMPLETE"]
        return max(done, key=lambda r: r["value"]) if done else None


@dataclass(frozen=True)
class SweepVictim:
    """The victim of a sweep: a run directory, or a model held in memory (an audit's)."""

    path: Path | None
    model: nn.Module
    fingerprint: str
    input_shape: tuple[int, ...]
    objective: str | None
    downsample: int = 1
    dataset: str | None = None

    @classmethod
    def of(cls, victim: str | Path | nn.Module, input_shape: tuple[int, ...] | None = None) -> SweepVictim:
        if isinstance(victim, nn.Module):
            shape = input_shape or getattr(getattr(victim, "config", None), "input_shape", None)
            if shape is None:
                raise ConfigError("Expected `input_shape` for a victim model that does not carry its config. Got None.")
            # Images of 32 px or more are matched at half resolution, as the reference does for CIFAR-10.
            downsample = 2 if len(shape) == 3 and min(shape[1:]) >= 32 else 1
            return cls(None, victim, weights_fingerprint(victim), tuple(shape), None, downsample)
        model, manifest = load_checkpoint(victim)
        dataset = (manifest.get("data") or {}).get("dataset")
        return cls(Path(victim), model, weights_fingerprint(model), tuple(model.config.input_shape),
                   manifest.get("objective"), _downsample(dataset), dataset)  # fmt: skip

    @property
    def target(self) -> str | nn.Module:
        """What a backend hands to the attack: the directory when there is one, else the model."""
        return str(self.path.resolve()) if self.path is not None else self.model


def sweep(
    victim: str | Path | nn.Module,
    out: str | Path,
    config: SweepConfig | None = None,
    *,
    input_shape: tuple[int, ...] | None = None,
    data_root: str | Path | None = None,
    backend: str = "local",
    address: str | None = None,
    budget_s: float | None = None,
    pool_top: int = 8,
    device: str | torch.device = "auto",
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> SweepResult:
    """Run (or continue) a sweep of the attack on a victim; every trial is a reconstruction directory.

    Args:
        victim: a victim run directory, or a model in memory (then ``input_shape`` unless it carries
            its config, ``attack.candidates`` set, the local backend and the ``kkt`` objective).
        out: the sweep directory.
        config: the sweep; keyword ``overrides`` replace its fields (``sweep(v, d, trials=8)``).
        data_root: where the training data is, for the ``oracle`` objective only.
        backend: ``local`` (this process) or ``ray`` (trial batches as Ray tasks; ``address`` of a
            cluster, or a local Ray instance).
        budget_s: stop asking for new trials when the next batch and then the extension would not
            finish within this many seconds of wall time (trials already started are finished; the
            extension runs).
        pool_top: how many of the best trials to pool into ``SWEEP_DIR/pool`` at the end.
        device: where trials run (``auto``: CUDA when present).
        resume: continue a sweep in ``out``: trials of a killed run are resumed from their checkpoints
            and told once, never run twice; ``trials``, ``extend`` and ``extend_top`` may be raised.
        force: delete an existing sweep in ``out`` first.
        progress: show progress bars.

    Raises:
        RunDirectoryExistsError: ``out`` holds a sweep and neither ``resume`` nor ``force`` was given.
        RunStateError: resuming with another config or victim.
        MissingDependencyError: optuna (or ray, for ``backend="ray"``) is not installed.
    """
    config = dataclasses.replace(config or SweepConfig(), **overrides)
    optuna = _optuna()
    from kktrecon.sweeps.backends import get_backend

    target = SweepVictim.of(victim, input_shape)
    if target.path is None and (config.objective == "oracle" or config.attack.candidates is None):
        raise ConfigError("Expected the kkt objective and `attack.candidates` for a victim model held in memory.")
    runner = get_backend(backend, address=address, device=str(device), progress=progress)
    out = _open_sweep(target, Path(out), config, resume=resume, force=force)
    storage = optuna.storages.RDBStorage(f"sqlite:///{(out / STUDY_FILE).resolve()}")
    study = optuna.create_study(
        study_name="kktrecon", storage=storage, direction="maximize", sampler=SAMPLERS[config.sampler](config.seed),
        load_if_exists=True,
    )  # fmt: skip
    scorer = _Scorer(out, config, data_root=data_root, device=device)
    start = time.perf_counter()
    if config.warm_start and not study.get_trials(deepcopy=False):
        for params in _released(config, target)[: config.trials]:
            study.enqueue_trial(params)
    stale = _stale_trials(study, out)
    for i in range(0, len(stale), config.batch):
        _run(study, runner, scorer, config, target, out, [stale[i : i + config.batch]])
    round_seconds: list[float] = []
    while (remaining := config.trials - _counted(study)) > 0:
        if budget_s is not None and _out_of_time(budget_s - (time.perf_counter() - start), round_seconds, config):
            break  # what is left is the extension's
        batches = []
        for _ in range(runner.slots):
            size = min(config.batch, remaining - sum(len(b) for b in batches))
            if size > 0:
                batches.append([_ask(study, config, out) for _ in range(size)])
        t0 = time.perf_counter()
        _run(study, runner, scorer, config, target, out, batches)
        round_seconds.append(time.perf_counter() - t0)
    extended = _extend(study, runner, scorer, config, target, out) if config.extend else {}
    rows = scorer.finalise(study, extended)
    atomic_write_json(out / RESULTS_FILE, {"objective": config.objective, "trials": rows})
    if any(r["state"] == "COMPLETE" for r in rows):
        from kktrecon.sweeps.pooling import write_pool

        write_pool(out, target, top=pool_top)
    return SweepResult(out=out, rows=rows, seconds=time.perf_counter() - start)


def _out_of_time(left_s: float, round_seconds: list[float], config: SweepConfig) -> bool:
    """Whether one more round of trials and then the extension would overrun the time left.

    The extension is charged at half a round per ``iterations`` it adds, or more when it extends
    more than half a batch: one trial alone runs at a quarter of a round of eight (14.7 vs 8 × 7.2
    ms per iteration at m = 40, benchmarks/batched_trials.py), so the charge leaves a margin.
    """
    if not round_seconds:
        return False
    longest = max(round_seconds)
    share = min(1.0, max(config.extend_top / config.batch, 0.5))
    return longest * (1 + share * config.extend / config.iterations) > left_s


def _downsample(dataset: str | None) -> int:
    from kktrecon.data import DATASETS  # the matching resolution of the victim's data set (no data is read)

    return int(DATASETS[dataset].match_downsample) if dataset in DATASETS else 1


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as err:  # pragma: no cover - optuna is a dependency
        raise MissingDependencyError("Sweeps need optuna: pip install optuna.") from err
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _open_sweep(victim: SweepVictim, out: Path, config: SweepConfig, *, resume: bool, force: bool) -> Path:
    """Create or reopen a sweep directory, refusing a foreign sweep or one started with other settings."""
    if force and resume:
        raise ConfigError("Expected at most one of `force` (start over) and `resume` (continue). Got both.")
    record = {
        "format": "kktrecon.sweep/1",
        "victim": str(victim.path.resolve()) if victim.path is not None else None,
        "fingerprint": victim.fingerprint,
        "input_shape": list(victim.input_shape),
        "config": config_to_dict(config),
        "versions": package_versions(),
    }
    manifest = out / SWEEP_FILE
    if manifest.exists() and force:
        for name in (SWEEP_FILE, STUDY_FILE, RESULTS_FILE):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / TRIALS_DIR, ignore_errors=True)
    elif manifest.exists() and not resume:
        raise RunDirectoryExistsError(f"{out} already holds a sweep; pass --resume to continue it or --force.")
    elif manifest.exists():
        saved = read_json(manifest)
        if saved.get("fingerprint") != record["fingerprint"]:
            raise RunStateError(f"Cannot resume {out}: it sweeps another victim ({saved.get('victim')}).")
        before = {k: v for k, v in saved.get("config", {}).items() if k not in FREE_ON_RESUME}
        now = {k: v for k, v in record["config"].items() if k not in FREE_ON_RESUME}
        if before != now:
            differs = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            raise RunStateError(
                f"Cannot resume {out}: its config differs in {differs}; only {list(FREE_ON_RESUME)} may change."
            )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(manifest, record)
    return out


def load_sweep_config(out: str | Path) -> SweepConfig:
    """The config recorded in a sweep directory."""
    return config_from_dict(SweepConfig, read_json(Path(out) / SWEEP_FILE)["config"])


def _counted(study: Any) -> int:
    """Trials that count towards the total: finished ones and those some worker is running (not enqueued ones)."""
    import optuna

    return sum(t.state != optuna.trial.TrialState.WAITING for t in study.get_trials(deepcopy=False))


def _distribution(p: Parameter) -> Any:
    import optuna

    return optuna.distributions.FloatDistribution(p.low, p.high, log=p.log)


def _ask(study: Any, config: SweepConfig, out: Path) -> Any:
    trial = study.ask({p.name: _distribution(p) for p in config.space})
    trial.set_user_attr("dir", str(Path(TRIALS_DIR) / f"{trial.number:04d}"))
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    return trial


def _released(config: SweepConfig, victim: SweepVictim) -> list[dict[str, float]]:
    """The released winners as first trials: their swept parameters, where they lie in the space."""
    from kktrecon.attack.released import released_params

    space = {p.name: p for p in config.space}
    found = []
    for params in released_params(victim.dataset):
        inside = {k: v for k, v in params.items() if k in space}
        if inside and all(space[k].low <= v <= space[k].high for k, v in inside.items()):
            found.append(inside)
    return found


def _extend(
    study: Any, runner: Any, scorer: _Scorer, config: SweepConfig, victim: SweepVictim, out: Path
) -> dict[int, float | None]:
    """Extend the best ``extend_top`` trials by ``extend`` iterations; their new values (None: it diverged).

    Idempotent: a trial extended before (a resumed sweep) is returned from its files, one
    interrupted during its extension resumes from its checkpoint.
    """
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    best = sorted(done, key=lambda t: t.value, reverse=True)[: config.extend_top]
    if not best:
        return {}
    configs = [config.trial_config(t.number, t.params, extended=True) for t in best]
    dirs = [out / t.user_attrs["dir"] for t in best]
    (errors,) = runner.run(victim.target, [(configs, dirs)], resume=True, input_shape=victim.input_shape)
    values = _outcomes(scorer, dirs, errors, what=f"extension to {configs[0].iterations} iterations: ")
    return {t.number: v for t, v in zip(best, values, strict=True)}


def _stale_trials(study: Any, out: Path, grace_s: float = 900.0) -> list[Any]:
    """RUNNING trials whose worker is gone: on this host a dead pid, elsewhere no checkpoint for ``grace_s``."""
    import optuna

    here = socket.gethostname()
    stale = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.user_attrs.get("host") == here:
            if not _alive(int(t.user_attrs.get("pid", -1))):
                stale.append(t)
            continue
        folder = out / t.user_attrs.get("dir", "")
        newest = max((p.stat().st_mtime for p in folder.glob("*")), default=0.0)
        if time.time() - newest > grace_s:
            stale.append(t)
    return stale


def _alive(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid():
        return pid == os.getpid()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run(
    study: Any,
    runner: Any,
    scorer: _Scorer,
    config: SweepConfig,
    victim: SweepVictim,
    out: Path,
    batches: list[list[Any]],
) -> None:
    """Run batches of trials through the backend, score them and tell the study (once each).

    Every trial runs with ``resume``: a trial reclaimed from a killed worker continues from its
    checkpoint instead of starting again.
    """
    import optuna

    jobs = [
        ([config.trial_config(t.number, t.params) for t in b], [out / t.user_attrs["dir"] for t in b]) for b in batches
    ]
    results = runner.run(victim.target, jobs, resume=True, input_shape=victim.input_shape)
    trials = [t for b in batches for t in b]
    outs = [o for _, job_outs in jobs for o in job_outs]
    errors = [e for batch_errors in results for e in batch_errors]
    for t, value in zip(trials, _outcomes(scorer, outs, errors), strict=True):
        if value is None:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        else:
            study.tell(t.number, value, skip_if_finished=True)


def _outcomes(scorer: _Scorer, folders: list[Path], errors: list[str | None], *, what: str = "") -> list[float | None]:
    """Each run's value by the sweep's objective, or None where it failed (the reason kept in its folder)."""
    for folder, error in zip(folders, errors, strict=True):
        if error is not None:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(folder / ERROR_FILE, f"{what}{error}\n")
    scores = iter(scorer.score([f for f, e in zip(folders, errors, strict=True) if e is None]))
    return [None if e is not None else next(scores) for e in errors]


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _error(folder: Path) -> str | None:
    path = folder / ERROR_FILE
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


class _Scorer:
    """Scores finished trials by the sweep's objective: oracle-free agreement, or the oracle verdict."""

    def __init__(self, out: Path, config: SweepConfig, *, data_root: Any, device: Any) -> None:
        self.out, self.config = out, config
        self.data_root, self.device = data_root, device

    def score(self, dirs: list[Path]) -> list[float]:
        if self.config.objective == "oracle":
            return [float(self._oracle(d)) for d in dirs]
        return [trial_score(read_json(d / RECONSTRUCTION_FILE)) for d in dirs]

    def _oracle(self, rec_dir: Path) -> int:
        from kktrecon.evaluation import evaluate

        result = evaluate(rec_dir, data_root=self.data_root, device="cpu", figures=False, force=True)
        return int(result.metrics.get("n_recovered") or 0)

    def finalise(self, study: Any, extended: Mapping[int, float | None]) -> list[dict[str, Any]]:
        """One row per trial: its value by the sweep's objective (after its extension, if any) and its kkt score."""
        rows = []
        for t in study.get_trials(deepcopy=False):
            folder = (self.out / t.user_attrs.get("dir", "")).resolve()
            manifest = read_json(folder / RECONSTRUCTION_FILE) if (folder / RECONSTRUCTION_FILE).is_file() else {}
            rows.append({
                "number": t.number, "state": t.state.name, "value": _finite(extended.get(t.number, t.value)),
                "params": t.params, "dir": str(folder), "iterations": manifest.get("iterations"),
                "extended": t.number in extended, "kkt_score": _finite(trial_score(manifest) if manifest else None),
                "error": _error(folder),
            })  # fmt: skip
        return rows
