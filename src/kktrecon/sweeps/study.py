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

import contextlib
import dataclasses
import math
import os
import shutil
import socket
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kktrecon.attack.victim import Victim, VictimLike
from kktrecon.configs import config_to_dict
from kktrecon.errors import CheckpointError, ConfigError, MissingDependencyError, RunStateError
from kktrecon.files import (
    POOL_DIR,
    RECONSTRUCTION_FILE,
    atomic_write_json,
    atomic_write_text,
    package_versions,
    read_json,
)
from kktrecon.runs import check_resumable, check_same_victim, open_run
from kktrecon.sweeps.config import (
    ERROR_FILE,
    FREE_ON_RESUME,
    OFFICIAL_SPACE,
    RESULTS_FILE,
    SAMPLERS,
    STUDY_FILE,
    SWEEP_FILE,
    SWEEP_RUN,
    TRIALS_DIR,
    Parameter,
    SweepConfig,
    load_sweep_config,
)
from kktrecon.sweeps.pooling import write_pool
from kktrecon.sweeps.selection import trial_score

__all__ = [
    "OFFICIAL_SPACE",
    "SAMPLERS",
    "SWEEP_FILE",
    "OracleScore",
    "Parameter",
    "SweepConfig",
    "SweepResult",
    "load_sweep_config",
    "sweep",
]

#: The study's name in study.db (one study per sweep directory).
STUDY_NAME = "kktrecon"
#: Scores a finished trial directory against the training set (the ``oracle`` objective; research only).
OracleScore = Callable[[Path], float]


@dataclass
class SweepResult:
    """A finished (or budget-stopped) sweep: its directory and one row per trial."""

    out: Path
    rows: list[dict[str, Any]]
    seconds: float

    @property
    def best(self) -> dict[str, Any] | None:
        done = [r for r in self.rows if r["state"] == "COMPLETE"]
        return max(done, key=lambda r: -math.inf if r["value"] is None else r["value"]) if done else None


def sweep(
    victim: VictimLike,
    out: str | Path,
    config: SweepConfig | None = None,
    *,
    input_shape: tuple[int, ...] | None = None,
    backend: str = "local",
    address: str | None = None,
    budget_s: float | None = None,
    pool_top: int = 8,
    oracle: OracleScore | None = None,
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
        oracle: the ``oracle`` objective's score of a trial directory, e.g. the verdict's n_recovered
            (:func:`kktrecon.evaluation.oracle_score`); required by that objective. The sweep itself
            never reads training data.
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
        RunStateError: resuming with another config or victim, or a trial recorded outside ``out``.
        CheckpointError: ``study.db`` is not a readable Optuna study (then nothing in ``out`` is written).
        MissingDependencyError: optuna (or ray, for ``backend="ray"``) is not installed.
    """
    config = dataclasses.replace(config or SweepConfig(), **overrides)
    _optuna()
    from kktrecon.sweeps.backends import get_backend

    if config.objective == "oracle" and oracle is None:
        raise ConfigError(
            "Expected `oracle` for the oracle objective: a score of a trial directory against the training set, "
            "such as kktrecon.evaluation.oracle_score(data_root). Got None."
        )
    target = Victim.of(victim, input_shape)
    if target.run_dir is None and (config.objective == "oracle" or config.attack.candidates is None):
        raise ConfigError("Expected the kkt objective and `attack.candidates` for a victim model held in memory.")
    runner = get_backend(backend, address=address, device=str(device), progress=progress)
    run = {"backend": backend, "address": address, "budget_s": budget_s, "pool_top": pool_top, "device": str(device)}
    out, study = _open_sweep(target, Path(out), config, run=run, resume=resume, force=force)
    scorer = _Scorer(out, config, oracle=oracle)
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
    _remove_pool(out)  # an earlier run's pool must not outlive it: `evaluate SWEEP` would score it
    atomic_write_json(out / RESULTS_FILE, {"objective": config.objective, "trials": rows})
    if any(r["state"] == "COMPLETE" for r in rows):
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


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as err:  # pragma: no cover - optuna is a dependency
        raise MissingDependencyError("Sweeps need optuna: pip install optuna.") from err
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _open_sweep(
    victim: Victim, out: Path, config: SweepConfig, *, run: dict[str, Any], resume: bool, force: bool
) -> tuple[Path, Any]:
    """Create or reopen a sweep directory (the shared lifecycle) and its study, refusing foreign ones or other settings.

    Everything is checked (victim, config, study, trial directories) before ``sweep.json`` is written,
    so that a refused sweep leaves its directory as it was. ``run`` (backend, budget, pool size,
    device) is recorded as this invocation's; a resume may change it.
    """
    record = {
        "format": "kktrecon.sweep/1",
        "victim": str(victim.run_dir) if victim.run_dir is not None else None,
        "fingerprint": victim.fingerprint,
        "input_shape": list(victim.input_shape),
        "config": config_to_dict(config),
        "run": run,
        "versions": package_versions(),
    }
    opened = open_run(out, SWEEP_RUN, force=force, resume=resume)
    if opened.status != "new":
        saved = read_json(opened.path / SWEEP_FILE)
        check_same_victim(out, saved.get("fingerprint"), record["fingerprint"])
        check_resumable(saved.get("config", {}), record["config"], where=out, free=FREE_ON_RESUME)
    study = _load_study(opened.path / STUDY_FILE, config)
    for t in study.get_trials(deepcopy=False):
        _check_finished_trial(opened.path, t, _trial_dir(opened.path, t))
    atomic_write_json(opened.path / SWEEP_FILE, record)
    return opened.path, study


def _load_study(path: Path, config: SweepConfig) -> Any:
    """The sweep's study in ``path`` (created when new), or one CheckpointError line when it is unreadable."""
    import sqlalchemy.exc

    optuna = _optuna()
    _check_study_file(path)
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{path.resolve()}")
        names = optuna.get_all_study_names(storage)
        if names and STUDY_NAME not in names:
            raise CheckpointError(_unreadable(path, f"it holds the studies {names}, not a sweep's {STUDY_NAME!r}"))
        return optuna.create_study(
            study_name=STUDY_NAME, storage=storage, direction="maximize", sampler=SAMPLERS[config.sampler](config.seed),
            load_if_exists=True,
        )  # fmt: skip
    except (sqlalchemy.exc.SQLAlchemyError, RuntimeError) as err:  # RuntimeError: another Optuna schema
        raise CheckpointError(_unreadable(path, getattr(err, "orig", None) or err)) from err


def _check_study_file(path: Path) -> None:
    """Refuse a study file SQLite cannot read, or one holding other tables, before Optuna writes its own into it."""
    if not path.exists():
        return
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            tables = sorted(row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
            (check,) = db.execute("PRAGMA quick_check").fetchone()
    except sqlite3.DatabaseError as err:
        raise CheckpointError(_unreadable(path, err)) from err
    if check != "ok":
        raise CheckpointError(_unreadable(path, check))
    if tables and "studies" not in tables:
        raise CheckpointError(_unreadable(path, f"it holds the tables {tables}, not Optuna's"))


def _unreadable(path: Path, why: object) -> str:
    lines = str(why).strip().splitlines() or ["(no detail)"]
    return f"{path} is not a readable Optuna study (truncated or corrupt?): {lines[0]}; pass --force to start over."


def _trial_dir(out: Path, trial: Any) -> Path:
    """A trial's directory as the study records it, refused unless it lies inside the sweep directory.

    study.db is a file anyone can edit or copy from another machine: an absolute path or ``..`` in it
    must not send a trial's checkpoints outside the sweep.
    """
    recorded = str(trial.user_attrs.get("dir", Path(TRIALS_DIR) / f"{trial.number:04d}"))
    folder, root = out / recorded, out.resolve()
    inside = folder.resolve()
    if Path(recorded).is_absolute() or inside == root or not inside.is_relative_to(root):
        raise RunStateError(
            f"Trial {trial.number} of {out} records its directory as {recorded!r}, outside the sweep directory: "
            f"expected a path inside it such as {TRIALS_DIR}/{trial.number:04d}. Pass --force to start over."
        )
    return folder


def _check_finished_trial(out: Path, trial: Any, folder: Path) -> None:
    """Refuse to resume a sweep whose finished trial has lost its files (a directory deleted by hand)."""
    import optuna

    if trial.state == optuna.trial.TrialState.COMPLETE and not (folder / RECONSTRUCTION_FILE).is_file():
        raise RunStateError(
            f"Cannot resume {out}: trial {trial.number} finished, but {folder} no longer holds it (deleted by hand?). "
            "Restore that folder, or pass --force to start the sweep over."
        )


def _remove_pool(out: Path) -> None:
    pool = out / POOL_DIR
    if pool.is_symlink() or pool.is_file():
        pool.unlink()
    elif pool.is_dir():
        shutil.rmtree(pool)


def _counted(study: Any) -> int:
    """Trials that count towards the total: finished ones and those some worker is running (not enqueued ones)."""
    import optuna

    return sum(t.state != optuna.trial.TrialState.WAITING for t in study.get_trials(deepcopy=False))


def _trial_seed(seed: int, number: int) -> int:
    """The sampler's seed for trial ``number``: distinct per (sweep seed, trial), whatever ran before."""
    return int(np.random.SeedSequence((seed, number)).generate_state(1)[0])


def _ask(study: Any, config: SweepConfig, out: Path) -> Any:
    """A new trial with its parameters sampled by a sampler seeded for its number.

    One sampler for the whole sweep would be re-created from its seed by a resumed (or grown) sweep
    and repeat the first trials' parameters; seeded per trial, trial i gets the same parameters
    however many runs the sweep took to reach it. The sampler is re-seated after ``ask`` (the
    parameters are drawn on ``suggest``) so that the seed follows the number the storage gave.
    """
    trial = study.ask()
    study.sampler = SAMPLERS[config.sampler](_trial_seed(config.seed, trial.number))
    for p in config.space:
        trial.suggest_float(p.name, p.low, p.high, log=p.log)
    trial.set_user_attr("dir", str(Path(TRIALS_DIR) / f"{trial.number:04d}"))
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    return trial


def _released(config: SweepConfig, victim: Victim) -> list[dict[str, float]]:
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
    study: Any, runner: Any, scorer: _Scorer, config: SweepConfig, victim: Victim, out: Path
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
    dirs = [_trial_dir(out, t) for t in best]
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
        folder = _trial_dir(out, t)
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
    victim: Victim,
    out: Path,
    batches: list[list[Any]],
) -> None:
    """Run batches of trials through the backend, score them and tell the study (once each).

    Every trial runs with ``resume``: a trial reclaimed from a killed worker continues from its
    checkpoint instead of starting again.
    """
    import optuna

    jobs = [([config.trial_config(t.number, t.params) for t in b], [_trial_dir(out, t) for t in b]) for b in batches]
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

    def __init__(self, out: Path, config: SweepConfig, *, oracle: OracleScore | None) -> None:
        self.out, self.config, self.oracle = out, config, oracle

    def score(self, dirs: list[Path]) -> list[float]:
        if self.config.objective == "oracle":
            assert self.oracle is not None
            return [float(self.oracle(d)) for d in dirs]
        return [trial_score(read_json(d / RECONSTRUCTION_FILE)) for d in dirs]

    def finalise(self, study: Any, extended: Mapping[int, float | None]) -> list[dict[str, Any]]:
        """One row per trial: its value by the sweep's objective (after its extension, if any) and its kkt score."""
        rows = []
        for t in study.get_trials(deepcopy=False):
            folder = _trial_dir(self.out, t).resolve()
            manifest = read_json(folder / RECONSTRUCTION_FILE) if (folder / RECONSTRUCTION_FILE).is_file() else {}
            rows.append({
                "number": t.number, "state": t.state.name, "value": _finite(extended.get(t.number, t.value)),
                "params": t.params, "dir": str(folder), "iterations": manifest.get("iterations"),
                "extended": t.number in extended, "kkt_score": _finite(trial_score(manifest) if manifest else None),
                "error": _error(folder),
            })  # fmt: skip
        return rows
