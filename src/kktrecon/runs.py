"""The run-directory lifecycle every command shares: new, unfinished, finished; force, resume, refuse.

Every stage writes into a directory of its own with a manifest (config, versions, seed, metrics).
A :class:`RunKind` names the files and subdirectories a kind of run owns, the file that marks it
started and the one that marks it finished; :func:`open_run` applies one set of rules to all of
them, with one message for each refusal, and ``force`` removes only what the kind owns.
"""

from __future__ import annotations

import os
import shutil
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

try:  # advisory locks on run directories (POSIX); elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from kktrecon.errors import ConfigError, RunDirectoryExistsError, RunStateError

__all__ = [
    "Run",
    "RunDirectoryExistsError",
    "RunKind",
    "RunStatus",
    "check_resumable",
    "check_same_victim",
    "open_run",
    "same_length",
]


@dataclass(frozen=True)
class RunKind:
    """The files a kind of run directory holds.

    Attributes:
        manifest: written last, atomically: its presence marks a finished run.
        state: the resumable state, rewritten at every checkpoint and kept at the end, so that a
            finished run can be extended bit-identically to an uninterrupted longer run.
        outputs: the other files the run writes (removed with the rest by ``force``).
        dirs: the subdirectories the run creates and owns (removed by ``force``; nothing else is).
        what: what the run is called in messages (``sweep``, ``audit``, …).
        exclusive: one process at a time (the directory is locked while its :class:`Run` lives); a
            sweep is not, since several workers may share its study.

    Jobs that record their config when they start (a sweep, an audit, an experiment, the demo) name
    that file as their ``state`` and the file they write last as their ``manifest``.
    """

    manifest: str
    state: str
    outputs: tuple[str, ...] = ()
    dirs: tuple[str, ...] = ()
    what: str = "run"
    exclusive: bool = True


#: How a run directory was found when it was opened.
RunStatus = Literal["new", "unfinished", "finished"]


@dataclass(frozen=True)
class Run:
    """An opened run directory: where it is, what it holds, and in which state it was found."""

    path: Path
    kind: RunKind
    status: RunStatus
    lock: Any = field(default=None, repr=False, compare=False)  # held while this object lives

    @property
    def manifest(self) -> Path:
        return self.path / self.kind.manifest

    @property
    def state(self) -> Path:
        return self.path / self.kind.state


def open_run(path: str | Path, kind: RunKind, *, force: bool = False, resume: bool = False) -> Run:
    """Open ``path`` for a run of ``kind``: the one set of force / resume rules every stage follows.

    - a new or empty directory (or one holding unrelated files) starts a new run;
    - ``force`` deletes the run's own files and folders first (only where its manifest or state
      shows that such a run is there; never the directory itself or anything else in it), so
      nothing of an earlier run can be mistaken for this one's, then starts over;
    - the directory is locked while the returned :class:`Run` lives: a second process is refused.
    - ``resume`` continues an unfinished run or opens a finished one (the caller compares configs
      and returns it, extends it, or refuses);
    - without either, a directory holding a run (finished or not) is refused.

    Raises:
        ConfigError: both ``force`` and ``resume``.
        RunDirectoryExistsError: the directory holds a run and neither flag was given.
        RunStateError: another process is running in the directory.
    """
    if force and resume:
        raise ConfigError("Expected at most one of `force` (start over) and `resume` (continue). Got both.")
    path = Path(path)
    lock = _lock(path, kind) if path.is_dir() else None
    finished = (path / kind.manifest).exists()
    unfinished = not finished and (path / kind.state).exists()
    if force and (finished or unfinished):  # only what this kind wrote, and only where it left its mark
        for name in (kind.manifest, kind.state, *kind.outputs):
            (path / name).unlink(missing_ok=True)
        for name in kind.dirs:
            if (path / name).is_dir() and not (path / name).is_symlink():
                shutil.rmtree(path / name)
    elif finished and not resume and not force:
        raise RunDirectoryExistsError(
            f"{path} already holds a finished {kind.what} ({kind.manifest} exists). Choose another directory, pass "
            "--resume to return or extend it, or --force to overwrite it."
        )
    elif unfinished and not resume and not force:
        raise RunDirectoryExistsError(
            f"{path} holds an unfinished {kind.what} ({kind.state} exists); pass --resume to continue or --force to "
            "start over."
        )
    path.mkdir(parents=True, exist_ok=True)
    status: RunStatus = "new" if force else "finished" if finished else "unfinished" if unfinished else "new"
    return Run(path=path, kind=kind, status=status, lock=lock or _lock(path, kind))


class _Lock:
    """An exclusive advisory lock on a run directory, released when the last :class:`Run` holding it is gone."""

    def __init__(self, fd: int) -> None:
        weakref.finalize(self, os.close, fd)


_HELD: weakref.WeakValueDictionary[str, _Lock] = weakref.WeakValueDictionary()


def _lock(path: Path, kind: RunKind) -> _Lock | None:
    """Lock ``path`` for this process (shared by its runs); refuse when another process holds it.

    Raises:
        RunStateError: another process is running in ``path``.
    """
    key = str(path.resolve())
    held = _HELD.get(key)
    if held is not None or fcntl is None or not kind.exclusive:
        return held
    fd = os.open(key, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunStateError(
            f"{path} is in use by another kktrecon process (a {kind.what} is running there). Wait for it to end, "
            "or choose another directory."
        ) from None
    lock = _HELD[key] = _Lock(fd)
    return lock


def check_resumable(
    saved: Mapping[str, Any], current: Mapping[str, Any], *, where: Path, free: tuple[str, ...]
) -> None:
    """Refuse to resume when a recorded config differs from the current one outside the ``free`` keys.

    Raises:
        RunStateError: the configs differ; the message lists each differing key with both values.
    """
    keys = sorted((set(saved) | set(current)) - set(free))
    differs = [k for k in keys if saved.get(k) != current.get(k)]
    if differs:
        raise RunStateError(
            f"Cannot resume {where}: its config differs in {differs} (then {[saved.get(k) for k in differs]}, "
            f"now {[current.get(k) for k in differs]}). Pass the original settings, or --force to start over."
        )


def check_same_victim(where: Path, then: Any, now: Any) -> None:
    """Refuse to resume a run made on another victim (its weights' fingerprint differs).

    Raises:
        RunStateError: the fingerprints differ.
    """
    if then != now:
        raise RunStateError(
            f"Cannot resume {where}: it was made on another victim (weights fingerprint {then} then, {now} now). "
            "Pass --force to start over for this victim."
        )


def same_length(run: Run, *, done: int, requested: int, unit: str) -> bool:
    """Whether a finished run of ``done`` steps is exactly the ``requested`` one (False: extend it).

    Raises:
        RunStateError: ``requested`` is shorter (a run is extended, never shortened), or longer
            while the final state needed to extend it is gone.
    """
    if done > requested:
        raise RunStateError(
            f"Cannot resume {run.path} at {requested} {unit}: it finished at {done}. "
            "A run can be extended, not shortened; pass --force to start over."
        )
    if done < requested and not run.state.exists():
        raise RunStateError(f"Cannot extend {run.path}: its final state ({run.kind.state}) is gone; pass --force.")
    return done == requested
