"""Every error kktrecon raises on purpose derives from :class:`KKTReconError`.

The command line catches this one base class and prints its message (no traceback); anything else
that escapes is a bug. Each class also derives from the builtin it refines (``ValueError``,
``FileNotFoundError``, …), so callers that catch builtins keep working. Messages name the argument
or file, what was expected, and what was found.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "CorruptDataError",
    "DataError",
    "DataNotFoundError",
    "KKTReconError",
    "MissingDependencyError",
    "NotEnoughSamplesError",
    "ReconstructionDivergedError",
    "RunDirectoryExistsError",
    "RunFileNotFoundError",
    "RunStateError",
    "TrainingDivergedError",
    "UnsupportedModelError",
    "VictimMismatchError",
]


class KKTReconError(Exception):
    """Base class of every error kktrecon raises deliberately; the CLI turns it into a clean exit."""


class ConfigError(KKTReconError, ValueError):
    """A configuration value or argument is out of range, of the wrong type, or unknown."""


class DataError(KKTReconError, ValueError):
    """Something about data: names, files, contents, counts."""


class DataNotFoundError(DataError, FileNotFoundError):
    """The data root or one of the expected files does not exist."""


class CorruptDataError(DataError):
    """A data file exists but is not what its format promises (truncated, wrong header, unsafe pickle)."""


class NotEnoughSamplesError(DataError):
    """A class has fewer images in the source files than the configuration asks for."""


class CheckpointError(KKTReconError, ValueError):
    """A run file (weights, checkpoint, manifest) is missing, truncated, inconsistent, or holds unusable values."""


class RunFileNotFoundError(CheckpointError, FileNotFoundError):
    """A run directory lacks a file that an earlier stage should have written."""


class UnsupportedModelError(KKTReconError, ValueError):
    """A model violates an assumption the method relies on."""


class RunDirectoryExistsError(KKTReconError, FileExistsError):
    """A run directory already holds results and overwriting was not asked for."""


class RunStateError(KKTReconError, ValueError):
    """A run cannot be resumed or extended as asked (another config, another victim, a shorter length)."""


class TrainingDivergedError(KKTReconError, FloatingPointError):
    """The victim's training loss became NaN or Inf."""


class ReconstructionDivergedError(KKTReconError, FloatingPointError):
    """The attack's loss became NaN or Inf; the last good checkpoint is kept."""


class VictimMismatchError(KKTReconError, ValueError):
    """Runs to be combined come from different victims (or input shapes)."""


class MissingDependencyError(KKTReconError, ImportError):
    """An optional dependency is not installed; the message says which extra to install."""
