"""The loaded :class:`Dataset` and :func:`load_dataset` (its :class:`DataConfig` lives in ``registry.py``).

Haim et al. (NeurIPS 2022, §5) train on the first ``n`` images of each class in the order of the
data set's own files, pixels scaled to [0, 1], minus the per-pixel mean of the selected training
images (subtracted from train and test alike). :func:`load_dataset` reproduces that selection for
any registered data set and records which source images were used.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kktrecon.checks import is_int
from kktrecon.data.registry import DataConfig, get_spec
from kktrecon.devices import resolve_device, resolve_dtype
from kktrecon.errors import DataError

__all__ = ["DATA_ROOT_ENV", "SAMPLE_ROOT", "DataConfig", "Dataset", "is_int", "load_dataset", "resolve_data_root"]

#: The embedded sample: the first 500 training and 500 test images of MNIST, as gzipped IDX files
#: under ``MNIST/raw/`` (made by :func:`kktrecon.data.mnist.make_sample`). Pass it as ``data_root``
#: to try the tool without downloading anything.
SAMPLE_ROOT: Path = Path(__file__).resolve().parent / "sample"

#: Environment variable naming the data root when no ``data_root`` argument is given.
DATA_ROOT_ENV = "KKTRECON_DATA"


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
        objective: The objective victims of this task are trained with (``binary``, ``multiclass``,
            ``regression``; see ``kktrecon.attack.objectives``).
        targets: Regression tasks only: the target value of each class index.
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
    objective: str = "binary"
    targets: tuple[float, ...] = ()

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
    spec = get_spec(config.dataset)
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
        objective=task.objective,
        targets=task.targets,
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
