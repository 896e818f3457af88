"""Data: the small, balanced training sets the attack is run against.

Haim et al. (NeurIPS 2022, §5) train binary classifiers on a few hundred images: MNIST odd/even and
CIFAR-10 vehicles/animals, taking the first ``n`` images of each class in the order of the data
set's own files, scaling pixels to [0, 1] and subtracting the per-pixel mean of the selected
training images from both training and test images. This module reproduces that selection
exactly, so that reconstructions can be compared to the images the victim really saw, and records
which images of the source files were used.

Data sets and tasks live in registries (:data:`DATASETS`; each :class:`DatasetSpec` carries its
:class:`Task` registry), never in if/elif chains on names. The readers check the files they parse
(IDX headers against payload lengths; CIFAR pickles through an unpickler that can build numpy arrays
and nothing else, because a pickle can otherwise run arbitrary code) and raise :class:`DataError`
subclasses that say which file is wrong and how.

Example:
    >>> from kktrecon.data import SAMPLE_ROOT, load_dataset
    >>> ds = load_dataset(data_root=SAMPLE_ROOT, n_per_class=10, test_per_class=100)
    >>> ds.x_train.shape, ds.num_classes, ds.class_names
    (torch.Size([20, 1, 28, 28]), 2, ('even', 'odd'))
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import os
import pickle
import shutil
import struct
import sys
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, NamedTuple

import numpy as np
import torch

from kktrecon.runs import resolve_device, resolve_dtype

__all__ = [
    "DATASETS",
    "SAMPLE_ROOT",
    "Archive",
    "CorruptDataError",
    "DataConfig",
    "DataError",
    "DataNotFoundError",
    "Dataset",
    "DatasetSpec",
    "NotEnoughSamplesError",
    "Task",
    "download",
    "load_dataset",
    "make_sample",
    "make_toy",
    "register_dataset",
    "resolve_data_root",
]

#: The embedded sample: the first 500 training and 500 test images of MNIST, as gzipped IDX files
#: under ``MNIST/raw/`` (made by :func:`make_sample`). Pass it as ``data_root`` to try the tool
#: without downloading anything.
SAMPLE_ROOT: Path = Path(__file__).resolve().parent / "_sample"

#: Environment variable naming the data root when no ``data_root`` argument is given.
DATA_ROOT_ENV = "KKTRECON_DATA"


# ---------------------------------------------------------------------------------------------------
# Errors


class DataError(ValueError):
    """Base class for everything this module raises about data: names, files, contents, counts."""


class DataNotFoundError(DataError, FileNotFoundError):
    """The data root or one of the expected files does not exist."""


class CorruptDataError(DataError):
    """A data file exists but is not what its format promises (truncated, wrong header, unsafe pickle)."""


class NotEnoughSamplesError(DataError):
    """A class has fewer images in the source files than the configuration asks for."""


# ---------------------------------------------------------------------------------------------------
# Registries


@dataclass(frozen=True)
class Task:
    """A labelling of a data set: which source label goes to which class.

    Attributes:
        name: Registry key, e.g. ``"odd-even"``.
        class_names: One name per class index.
        label_map: ``label_map[source_label]`` is the class index; empty for generated data.
        description: One line for help texts.
    """

    name: str
    class_names: tuple[str, ...]
    label_map: tuple[int, ...] = ()
    description: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class Archive:
    """An official download: where it comes from, its SHA-256 and where it goes under the data root."""

    file_name: str
    urls: tuple[str, ...]
    sha256: str
    size: int
    dest: str
    extract: tuple[str, ...] = ()  # for tarballs: the member prefix to extract (nothing else is)


class _Source(NamedTuple):
    """A data set's files as read from disk: uint8 images (N, *input_shape) and int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


class _Built(NamedTuple):
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mean: np.ndarray
    train_indices: np.ndarray
    test_indices: np.ndarray
    data_root: str | None


@dataclass(frozen=True)
class DatasetSpec:
    """A registered data set.

    Attributes:
        name: Registry key (``"mnist"``).
        display_name: For messages (``"MNIST"``).
        folder: The data set's folder relative to the data root (empty for generated data).
        train_files: File names of the training split, as :func:`download` leaves them.
        test_files: File names of the test split.
        input_shape: Shape of one input.
        match_downsample: Factor by which evaluation downsamples images before matching
            candidates to training images (the reference: 1 for MNIST, 2 for CIFAR-10).
        tasks: The task registry: name -> :class:`Task`.
        reader: Reads the files under ``root / folder``; None for generated data.
        build: Turns a :class:`DataConfig` (and a data root argument) into arrays.
        archives: Official downloads, with checksums.
        gz_optional: Files may be stored plain or gzipped (``name`` or ``name.gz``).
        sample_root: A data root embedded in the package holding a small sample, if any.
    """

    name: str
    display_name: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    input_shape: tuple[int, ...]
    match_downsample: int
    tasks: Mapping[str, Task]
    reader: Callable[[Path], _Source] | None
    build: Callable[[DatasetSpec, DataConfig, str | Path | None], _Built]
    archives: tuple[Archive, ...] = ()
    gz_optional: bool = False
    sample_root: Path | None = None

    @property
    def expected_files(self) -> list[str]:
        suffix = "[.gz]" if self.gz_optional else ""
        return [f"{self.folder}/{name}{suffix}" for name in (*self.train_files, *self.test_files)]

    def task(self, name: str) -> Task:
        """The task called ``name``; unknown names list the registered ones."""
        if name not in self.tasks:
            raise DataError(
                f"Expected `task` to be one of {sorted(self.tasks)} for dataset {self.name!r}. Got {name!r}."
            )
        return self.tasks[name]


#: The data set registry. Add entries with :func:`register_dataset`.
DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to :data:`DATASETS`, refusing to replace an existing entry."""
    if spec.name in DATASETS:
        raise DataError(f"A dataset called {spec.name!r} is already registered.")
    DATASETS[spec.name] = spec
    return spec


def _get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"Expected `dataset` to be one of {sorted(DATASETS)}. Got {name!r}.")
    return DATASETS[name]


# ---------------------------------------------------------------------------------------------------
# Configuration and result


@dataclass(frozen=True)
class DataConfig:
    """Which data the victim is trained on.

    Attributes:
        dataset: A key of :data:`DATASETS`: ``"mnist"``, ``"cifar10"`` or ``"toy"``.
        task: A key of that data set's task registry. MNIST: ``"odd-even"`` (label % 2) or
            ``"digits"``; CIFAR-10: ``"vehicles-animals"`` or ``"classes"``; toy: the layout,
            ``"spiral"`` or ``"grid"``.
        n_per_class: Training images per class: the first ones of each class in file order.
        test_per_class: Test images per class, likewise from the test file (unused by the toy).
        seed: Only for the toy generator (spiral labels); real data selection is deterministic.
    """

    dataset: str = "mnist"
    task: str = "odd-even"
    n_per_class: int = 250
    test_per_class: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("dataset", "task"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise DataError(f"Expected `{name}` to be a string. Got {value!r}.")
        _get_spec(self.dataset).task(self.task)
        for name in ("n_per_class", "test_per_class"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise DataError(f"Expected `{name}` to be a positive integer. Got {value!r}.")
        if not _is_int(self.seed):
            raise DataError(f"Expected `seed` to be an integer. Got {self.seed!r}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass
class Dataset:
    """A selected, mean-subtracted training set and its test set.

    Attributes:
        config: The configuration that produced it.
        x_train: (n, *input_shape) inputs with the training mean subtracted.
        y_train: (n,) int64 class indices (binary tasks: 0/1).
        x_test: Test inputs, minus the *training* mean.
        y_test: Test class indices.
        mean: (*input_shape) per-pixel mean of the selected training images in [0, 1] units (zeros for
            the toy); add it back to see images.
        train_indices: (n,) int64 positions of the training images in the source training files
            (concatenated batches for CIFAR-10), increasing.
        test_indices: Likewise for the test file.
        num_classes: Number of classes of the task.
        class_names: One name per class index.
        data_root: The root the files were read from (None for generated data).
    """

    config: DataConfig
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: torch.Tensor
    train_indices: torch.Tensor
    test_indices: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...]
    data_root: str | None = field(default=None)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def is_image(self) -> bool:
        """True for (C, H, W) inputs, False for vectors such as the 2-D toy."""
        return len(self.input_shape) == 3

    @property
    def signs(self) -> torch.Tensor:
        """Binary labels as -1/+1 (class 0 -> -1, class 1 -> +1) in ``x_train``'s dtype: the y of the KKT terms."""
        if self.num_classes != 2:
            raise DataError(
                f"Expected a binary task for `signs`. Got task {self.config.task!r} with {self.num_classes} classes."
            )
        return (2 * self.y_train - 1).to(self.x_train.dtype)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description for manifests: counts, shapes, source indices, pixel range."""
        images = self.x_train + self.mean
        return {
            "dataset": self.config.dataset,
            "task": self.config.task,
            "n_train": int(self.x_train.shape[0]),
            "n_test": int(self.x_test.shape[0]),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "per_class": _class_counts(self.y_train, self.class_names),
            "per_class_test": _class_counts(self.y_test, self.class_names),
            "image_shape": list(self.input_shape),
            "pixel_range": [round(float(images.min()), 6), round(float(images.max()), 6)],
            "source_indices": [int(i) for i in self.train_indices.tolist()],
            "test_source_indices": [int(i) for i in self.test_indices.tolist()],
            "data_root": self.data_root,
            "mean_norm": float(self.mean.double().norm()),
        }


def _class_counts(y: torch.Tensor, class_names: tuple[str, ...]) -> dict[str, int]:
    counts = torch.bincount(y.cpu(), minlength=len(class_names)).tolist()
    return {name: int(count) for name, count in zip(class_names, counts, strict=True)}


# ---------------------------------------------------------------------------------------------------
# Entry points


def load_dataset(
    config: DataConfig | None = None,
    *,
    data_root: str | Path | None = None,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    **overrides: Any,
) -> Dataset:
    """Select, scale and mean-subtract the data set a victim is trained on.

    Args:
        config: What to load; defaults to ``DataConfig()`` (MNIST odd/even, 250 per class).
        data_root: Folder holding ``MNIST/raw/`` or ``cifar-10-batches-py/``; see
            :func:`resolve_data_root` for the default. Ignored by the toy. :data:`SAMPLE_ROOT` holds a
            small MNIST sample.
        dtype: Floating dtype of the inputs and the mean (``float32``/``float64``, or their names).
        device: Where all returned tensors live (``"auto"`` picks CUDA when present).
        **overrides: :class:`DataConfig` fields replacing those of ``config``.

    Returns:
        The :class:`Dataset`. Training samples are in source-file order, not grouped by class.

    Raises:
        DataError: An unknown name or a bad count (a ``ValueError``).
        DataNotFoundError: The data root or a file is missing.
        CorruptDataError: A file is truncated, has a wrong header or an unsafe pickle.
        NotEnoughSamplesError: A class has fewer images than requested.

    Example:
        >>> ds = load_dataset(dataset="toy", task="grid", n_per_class=10)
        >>> ds.x_train.shape, ds.signs.tolist()[:4]
        (torch.Size([20, 2]), [-1.0, 1.0, -1.0, 1.0])
    """
    fields = {f.name for f in dataclasses.fields(DataConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise DataError(f"Unknown keys for DataConfig: {unknown}. Expected a subset of {sorted(fields)}.")
    if config is None:
        config = DataConfig(**overrides)
    elif not isinstance(config, DataConfig):
        raise DataError(f"Expected `config` to be a DataConfig or None. Got {type(config).__name__}.")
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    dtype = resolve_dtype(dtype)
    device = resolve_device(device)
    spec = _get_spec(config.dataset)
    built = spec.build(spec, config, data_root)
    task = spec.task(config.task)

    def tensor(array: np.ndarray, floating: bool) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(array))
        return t.to(device=device, dtype=dtype if floating else torch.int64)

    return Dataset(
        config=config,
        x_train=tensor(built.x_train, True),
        y_train=tensor(built.y_train, False),
        x_test=tensor(built.x_test, True),
        y_test=tensor(built.y_test, False),
        mean=tensor(built.mean, True),
        train_indices=tensor(built.train_indices, False),
        test_indices=tensor(built.test_indices, False),
        num_classes=task.num_classes,
        class_names=task.class_names,
        data_root=built.data_root,
    )


def resolve_data_root(data_root: str | Path | None = None) -> Path:
    """Where data files are read from: the argument, else ``$KKTRECON_DATA``, else a per-user cache.

    The cache is ``$XDG_CACHE_HOME/kktrecon`` (default ``~/.cache/kktrecon``) on Linux,
    ``~/Library/Caches/kktrecon`` on macOS and ``%LOCALAPPDATA%/kktrecon/Cache`` on Windows. The
    folder is not created and need not exist.
    """
    if data_root is not None and str(data_root) != "":
        return Path(data_root).expanduser()
    env = os.environ.get(DATA_ROOT_ENV, "")
    if env:
        return Path(env).expanduser()
    return _user_cache_dir()


def _user_cache_dir() -> Path:
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        base = Path(local) if local else Path.home() / "AppData" / "Local"
        return base / "kktrecon" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "kktrecon"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "kktrecon"


# ---------------------------------------------------------------------------------------------------
# Selection shared by the file-backed data sets


def _select(labels: np.ndarray, per_class: int, task: Task, *, argument: str, what: str) -> np.ndarray:
    """First ``per_class`` positions of each class, merged back into file order."""
    chosen = []
    for index, name in enumerate(task.class_names):
        positions = np.flatnonzero(labels == index)
        if len(positions) < per_class:
            raise NotEnoughSamplesError(
                f"Expected at least `{argument}`={per_class} images of class {name!r} in {what}, "
                f"but it holds only {len(positions)}. Lower `{argument}` or point the data root at a "
                "larger copy of the data set."
            )
        chosen.append(positions[:per_class])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _build_from_files(spec: DatasetSpec, config: DataConfig, data_root: str | Path | None) -> _Built:
    assert spec.reader is not None
    root = resolve_data_root(data_root)
    source = spec.reader(root)
    task = spec.task(config.task)
    label_map = np.asarray(task.label_map, dtype=np.int64)
    where = f"{spec.display_name} under {root / spec.folder}"
    train_idx = _select(
        label_map[source.y_train], config.n_per_class, task, argument="n_per_class", what=f"the training set of {where}"
    )
    test_idx = _select(
        label_map[source.y_test],
        config.test_per_class,
        task,
        argument="test_per_class",
        what=f"the test set of {where}",
    )
    # Pixels to [0, 1] first, then the per-pixel mean of the *selected* training images, subtracted
    # from train and test alike (the reference's preprocessing; float64 so float32 results are the
    # correctly rounded values).
    x_train = source.x_train[train_idx].astype(np.float64) / 255.0
    x_test = source.x_test[test_idx].astype(np.float64) / 255.0
    mean = x_train.mean(axis=0)
    return _Built(
        x_train=x_train - mean,
        y_train=label_map[source.y_train[train_idx]],
        x_test=x_test - mean,
        y_test=label_map[source.y_test[test_idx]],
        mean=mean,
        train_indices=train_idx,
        test_indices=test_idx,
        data_root=str(root),
    )


def _check_files(spec: DatasetSpec, root: Path) -> dict[str, Path]:
    """Map each expected file name to its path (plain preferred over ``.gz``); missing ones raise."""
    folder = root / spec.folder
    hint = (
        "Pass --data-root (or data_root=...) or set KKTRECON_DATA to the folder that holds "
        f"{spec.folder}/, fetch the official files with kktrecon.data.download({spec.name!r}, root)"
    )
    if spec.sample_root is not None:
        hint += f", or try the small sample embedded in the package (data_root={spec.sample_root})"
    expected = ", ".join(spec.expected_files)
    if not root.is_dir():
        raise DataNotFoundError(f"Data root {root} does not exist. Expected it to hold {expected}. {hint}.")
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name in (*spec.train_files, *spec.test_files):
        candidates = [folder / name, folder / f"{name}.gz"] if spec.gz_optional else [folder / name]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            missing.append(name + ("[.gz]" if spec.gz_optional else ""))
        else:
            found[name] = path
    if missing:
        raise DataNotFoundError(
            f"{spec.display_name} files missing in {folder}: {', '.join(missing)}. "
            f"Expected under {root}: {expected}. {hint}."
        )
    return found


# ---------------------------------------------------------------------------------------------------
# MNIST: IDX files

_IDX_IMAGES = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_IDX_LABELS = 2049  # 0x00000801: unsigned bytes, 1 dimension
_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _read_maybe_gz(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise CorruptDataError(f"{path} is not a complete gzip file (truncated or corrupt?): {err}") from err


def _read_idx(path: Path, magic: int, item_shape: tuple[int, ...]) -> np.ndarray:
    """Parse an IDX file of unsigned bytes, taking the item count from the header and checking the rest."""
    data = _read_maybe_gz(path)
    ndim = 1 + len(item_shape)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CorruptDataError(
            f"{path} is too short for an IDX header: expected at least {header} bytes, got {len(data)}."
        )
    (got_magic,) = struct.unpack(">I", data[:4])
    if got_magic != magic:
        raise CorruptDataError(f"{path}: expected IDX magic number {magic}. Got {got_magic}.")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if tuple(dims[1:]) != item_shape:
        raise CorruptDataError(f"{path}: expected items of shape {item_shape}. Got {tuple(dims[1:])}.")
    expected = header + math.prod(dims)
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "trailing bytes"
        raise CorruptDataError(
            f"{path}: the header promises {dims[0]} items, so expected {expected} bytes"
            f"{' (uncompressed)' if path.suffix == '.gz' else ''}; got {len(data)} ({problem})."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _read_mnist_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x = _read_idx(images, _IDX_IMAGES, (28, 28))
    y = _read_idx(labels, _IDX_LABELS, ())
    if len(x) != len(y):
        raise CorruptDataError(f"{images} holds {len(x)} images but {labels} holds {len(y)} labels.")
    if len(y) and int(y.max()) > 9:
        raise CorruptDataError(f"{labels}: expected digit labels 0-9. Got {int(y.max())}.")
    return x[:, None], y.astype(np.int64)


def _read_mnist(root: Path) -> _Source:
    files = _check_files(DATASETS["mnist"], root)
    x_train, y_train = _read_mnist_pair(files[_MNIST_FILES[0]], files[_MNIST_FILES[1]])
    x_test, y_test = _read_mnist_pair(files[_MNIST_FILES[2]], files[_MNIST_FILES[3]])
    return _Source(x_train, y_train, x_test, y_test)


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    # mtime=0 keeps the gzip bytes reproducible.
    path.write_bytes(gzip.compress(header + np.ascontiguousarray(array, np.uint8).tobytes(), 9, mtime=0))


def make_sample(source_root: str | Path, out_root: str | Path, n_train: int = 500, n_test: int = 500) -> Path:
    """Write the first ``n_train``/``n_test`` MNIST images of ``source_root`` as gzipped IDX files.

    This is how :data:`SAMPLE_ROOT` was made (``make_sample("/path/to/data", SAMPLE_ROOT)``); the
    output is byte-for-byte reproducible.

    Returns:
        The folder the four files were written to (``out_root/MNIST/raw``).
    """
    source = _read_mnist(Path(source_root))
    for name, count, have in (("n_train", n_train, len(source.x_train)), ("n_test", n_test, len(source.x_test))):
        if not _is_int(count) or not 0 < count <= have:
            raise NotEnoughSamplesError(
                f"Expected `{name}` between 1 and {have} (the images available). Got {count!r}."
            )
    folder = Path(out_root) / "MNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    arrays = (
        source.x_train[:n_train, 0],
        source.y_train[:n_train],
        source.x_test[:n_test, 0],
        source.y_test[:n_test],
    )
    for name, array in zip(_MNIST_FILES, arrays, strict=True):
        _write_idx(folder / f"{name}.gz", array, _IDX_IMAGES if array.ndim == 3 else _IDX_LABELS)
    return folder


# ---------------------------------------------------------------------------------------------------
# CIFAR-10: python pickles, read without letting them run code


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


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
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


def _read_cifar10(root: Path) -> _Source:
    spec = DATASETS["cifar10"]
    files = _check_files(spec, root)
    train = [_read_cifar_batch(files[name]) for name in spec.train_files]
    x_test, y_test = _read_cifar_batch(files[spec.test_files[0]])
    return _Source(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), x_test, y_test)


# ---------------------------------------------------------------------------------------------------
# Toy 2-D data


def _spiral(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # The reference's simple_2d spiral: 12 turns, radius from 0.5 to 1, random balanced labels.
    angle = np.linspace(0, 12 * 2 * np.pi, n)
    radius = np.linspace(0.5, 1.0, n)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    y = np.zeros(n, dtype=np.int64)
    y[n // 2 :] = 1
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return x, y[perm]


def _grid(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # rows x cols = n with rows the largest divisor <= sqrt(n); n is even, so one side is even and
    # the checkerboard is exactly balanced.
    rows = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    cols = n // rows
    i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    xs = np.linspace(-1.0, 1.0, cols) if cols > 1 else np.zeros(1)
    ys = np.linspace(-1.0, 1.0, rows) if rows > 1 else np.zeros(1)
    x = np.stack([xs[j.ravel()], ys[i.ravel()]], axis=1)
    return x, ((i + j) % 2).ravel().astype(np.int64)


_TOY_LAYOUTS: dict[str, Callable[[int, int], tuple[np.ndarray, np.ndarray]]] = {"spiral": _spiral, "grid": _grid}


def make_toy(layout: str, n: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``n`` labelled points in [-1, 1]² for quick, visual experiments.

    Args:
        layout: ``"spiral"`` (the reference's 12-turn spiral, radius 0.5 to 1, labels a seeded random
            balanced assignment) or ``"grid"`` (a near-square grid over [-1, 1]² with checkerboard
            labels; deterministic, ``seed`` unused).
        n: Number of points; even, so that the two labels are balanced.
        seed: Seed of the spiral's label assignment.

    Returns:
        ``(x, y)``: float64 points of shape (n, 2) and int64 labels 0/1, n/2 of each.

    Example:
        >>> x, y = make_toy("grid", 20)
        >>> x.shape, int(y.sum())
        (torch.Size([20, 2]), 10)
    """
    if layout not in _TOY_LAYOUTS:
        raise DataError(f"Expected `layout` to be one of {sorted(_TOY_LAYOUTS)}. Got {layout!r}.")
    if not _is_int(n) or n < 2 or n % 2:
        raise DataError(f"Expected `n` to be a positive even integer (balanced labels). Got {n!r}.")
    if not _is_int(seed):
        raise DataError(f"Expected `seed` to be an integer. Got {seed!r}.")
    x, y = _TOY_LAYOUTS[layout](int(n), int(seed))
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)), torch.from_numpy(y)


def _build_toy(spec: DatasetSpec, config: DataConfig, data_root: str | Path | None) -> _Built:
    n = 2 * config.n_per_class
    x, y = make_toy(config.task, n, seed=config.seed)
    return _Built(
        x_train=x.numpy(),
        y_train=y.numpy(),
        x_test=np.zeros((0, 2)),
        y_test=np.zeros(0, dtype=np.int64),
        mean=np.zeros(2),
        train_indices=np.arange(n, dtype=np.int64),
        test_indices=np.zeros(0, dtype=np.int64),
        data_root=None,
    )


# ---------------------------------------------------------------------------------------------------
# The registry entries

_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# SHA-256 of the official archives (as checked by TensorFlow Datasets, torchvision mirrors and
# Keras): a download that does not match is deleted, never read.
_MNIST_ARCHIVES = tuple(
    Archive(f"{name}.gz", tuple(m + f"{name}.gz" for m in _MNIST_MIRRORS), sha, size, f"MNIST/raw/{name}.gz")
    for name, sha, size in (
        ("train-images-idx3-ubyte", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422),
        ("train-labels-idx1-ubyte", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881),
        ("t10k-images-idx3-ubyte", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877),
        ("t10k-labels-idx1-ubyte", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542),
    )
)
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
_BINARY = ("-1", "+1")

register_dataset(
    DatasetSpec(
        name="mnist",
        display_name="MNIST",
        folder="MNIST/raw",
        train_files=_MNIST_FILES[:2],
        test_files=_MNIST_FILES[2:],
        input_shape=(1, 28, 28),
        match_downsample=1,
        tasks={
            "odd-even": Task("odd-even", ("even", "odd"), tuple(d % 2 for d in range(10)), "label % 2: odd = 1"),
            "digits": Task("digits", tuple(str(d) for d in range(10)), tuple(range(10)), "the ten digits"),
        },
        reader=_read_mnist,
        build=_build_from_files,
        archives=_MNIST_ARCHIVES,
        gz_optional=True,
        sample_root=SAMPLE_ROOT,
    )
)
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
        build=_build_from_files,
        archives=_CIFAR_ARCHIVES,
    )
)
register_dataset(
    DatasetSpec(
        name="toy",
        display_name="toy 2-D",
        folder="",
        train_files=(),
        test_files=(),
        input_shape=(2,),
        match_downsample=1,
        tasks={
            "spiral": Task("spiral", _BINARY, description="12-turn spiral, random balanced labels"),
            "grid": Task("grid", _BINARY, description="near-square grid, checkerboard labels"),
        },
        reader=None,
        build=_build_toy,
    )
)


# ---------------------------------------------------------------------------------------------------
# Downloads

_open_url = urllib.request.urlopen  # a module attribute, so tests can replace it without a network


def download(dataset: str, root: str | Path) -> Path:
    """Fetch a data set's official archives into ``root``, verifying each by SHA-256 before use.

    Files already present with the right checksum are kept. A download whose checksum does not
    match is deleted and the next mirror tried. CIFAR-10's tarball is unpacked (only its
    ``cifar-10-batches-py/`` members, refusing links and paths that leave ``root``).

    Returns:
        The data set's folder under ``root`` (``root/MNIST/raw`` or ``root/cifar-10-batches-py``).

    Raises:
        DataError: Unknown or generated data set, or no mirror could be reached.
        CorruptDataError: Every mirror served bytes with the wrong checksum.
    """
    spec = _get_spec(dataset)
    if not spec.archives:
        raise DataError(f"Dataset {dataset!r} is generated, not downloaded; there is nothing to fetch.")
    root = Path(root).expanduser()
    for archive in spec.archives:
        dest = root / archive.dest
        if not (dest.is_file() and _sha256_file(dest) == archive.sha256):
            _fetch(archive, dest)
        for prefix in archive.extract:
            _extract_tar(dest, root, prefix)
    return root / spec.folder


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(archive: Archive, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for url in archive.urls:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, _open_url(url, timeout=60) as response:
                _copy_hashing(response, out, digest)
            if digest.hexdigest() != archive.sha256:
                failures.append(f"{url}: SHA-256 {digest.hexdigest()} != expected {archive.sha256}")
                continue
            os.replace(tmp, dest)
            return
        except OSError as err:  # URLError, timeouts, disk errors
            failures.append(f"{url}: {err}")
        finally:
            tmp.unlink(missing_ok=True)
    detail = "; ".join(failures)
    if all("SHA-256" in f for f in failures):
        raise CorruptDataError(f"Downloaded {archive.file_name} does not match its SHA-256 and was deleted: {detail}")
    raise DataError(f"Could not download {archive.file_name}: {detail}")


def _copy_hashing(src: BinaryIO, dst: BinaryIO, digest: Any) -> None:
    for chunk in iter(lambda: src.read(1 << 20), b""):
        digest.update(chunk)
        dst.write(chunk)


def _extract_tar(archive: Path, root: Path, prefix: str) -> None:
    root_resolved = root.resolve()
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            name = PurePosixPath(member.name)
            if not member.name.startswith(prefix) or name.is_absolute() or ".." in name.parts:
                continue
            target = (root / Path(*name.parts)).resolve()
            if root_resolved not in target.parents:
                continue
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                assert src is not None
                with src, target.open("wb") as out:
                    shutil.copyfileobj(src, out)
