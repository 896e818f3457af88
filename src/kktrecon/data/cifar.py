"""CIFAR-10 (Krizhevsky 2009) as the official python pickle batches under ``cifar-10-batches-py/``.

A pickle can run arbitrary code when loaded; these batches are read by an unpickler that can build
dicts, lists, numbers, strings and numpy arrays, and refuses every other global before loading it.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from kktrecon.data.files import build_from_files, check_files
from kktrecon.data.registry import DATASETS, Archive, DatasetSpec, Source, Task, register_dataset
from kktrecon.errors import CorruptDataError

__all__ = ["read_cifar_batch"]


class _ForbiddenGlobalError(pickle.UnpicklingError):
    pass


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(text, "latin1"); that is
    # the only use allowed, so no codec machinery beyond latin-1 is reachable.
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise _ForbiddenGlobalError(f"_codecs.encode with encoding {encoding!r}")
    return obj.encode("latin-1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
        from numpy.core.numeric import _frombuffer  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = _reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = _frombuffer  # protocol-5 arrays
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


_SAFE_GLOBALS = _numpy_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds dicts, lists, numbers, strings and numpy arrays; any other global is refused unloaded."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise _ForbiddenGlobalError(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise _ForbiddenGlobalError(f"persistent id {pid!r}")


def _unpickle(path: Path) -> Any:
    with path.open("rb") as fh:
        try:
            # latin1 decodes the Python 2 strings of the official files (numpy's advice for arrays).
            return _RestrictedUnpickler(fh, encoding="latin1").load()
        except _ForbiddenGlobalError as err:
            raise CorruptDataError(
                f"{path} tried to load a forbidden global ({err}); only numpy arrays may be built from a "
                "data pickle, so it was refused without running anything. Is this really a CIFAR-10 batch?"
            ) from None
        except Exception as err:  # any other failure to decode means a damaged file
            raise CorruptDataError(
                f"{path} is not a readable pickle (truncated or corrupt?): {type(err).__name__}: {err}"
            ) from err


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    obj = _unpickle(path)
    if not isinstance(obj, dict):
        raise CorruptDataError(f"{path}: expected a dict with 'data' and 'labels'. Got {type(obj).__name__}.")
    batch = {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    if "data" not in batch or "labels" not in batch:
        raise CorruptDataError(f"{path}: expected keys 'data' and 'labels'. Got {sorted(map(str, batch))}.")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CorruptDataError(f"{path}: expected 'data' to be a uint8 array of shape (N, 3072). Got {got}.")
    try:
        labels = np.asarray(batch["labels"], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise CorruptDataError(f"{path}: expected 'labels' to be a list of integers: {err}") from err
    if len(labels) != len(data):
        raise CorruptDataError(f"{path} holds {len(data)} images but {len(labels)} labels.")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise CorruptDataError(f"{path}: expected labels 0-9. Got values in [{labels.min()}, {labels.max()}].")
    # Rows are channel-major: 1024 red, 1024 green, 1024 blue values, each row by row.
    return data.reshape(-1, 3, 32, 32), labels


def _read_cifar10(root: Path) -> Source:
    spec = DATASETS["cifar10"]
    files = check_files(spec, root)
    train = [read_cifar_batch(files[name]) for name in spec.train_files]
    x_test, y_test = read_cifar_batch(files[spec.test_files[0]])
    return Source(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), x_test, y_test)


_CIFAR_ARCHIVES = (
    Archive(
        "cifar-10-python.tar.gz",
        ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
        "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
        170498071,
        "cifar-10-python.tar.gz",
        extract=("cifar-10-batches-py/",),
    ),
)
_CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

register_dataset(
    DatasetSpec(
        name="cifar10",
        display_name="CIFAR-10",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        input_shape=(3, 32, 32),
        match_downsample=2,
        tasks={
            "vehicles-animals": Task(
                "vehicles-animals",
                ("vehicles", "animals"),
                tuple(0 if c in (0, 1, 8, 9) else 1 for c in range(10)),
                "airplane, automobile, ship, truck = 0; animals = 1",
            ),
            "classes": Task("classes", _CIFAR_CLASSES, tuple(range(10)), "the ten classes"),
        },
        reader=_read_cifar10,
        build=build_from_files,
        archives=_CIFAR_ARCHIVES,
    )
)
