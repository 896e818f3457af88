"""The data-set registry: what a data set is (files, shape, tasks), how it is built, and how one is chosen.

A data set is one :class:`DatasetSpec` in :data:`DATASETS`, added with :func:`register_dataset` by
the module that reads its files (``mnist.py``, ``cifar.py``, ``toy.py``). Each spec carries its
:class:`Task` registry (labellings such as odd/even), so nothing dispatches on names with if/elif.
:class:`DataConfig` (which data set, task and counts) lives here too: it is validated against the
registry, and a spec's ``build`` takes one, so both belong to this module and ``dataset.py`` imports
them without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from kktrecon.checks import is_int
from kktrecon.errors import DataError
from kktrecon.registry import Registry

__all__ = [
    "DATASETS",
    "Archive",
    "Built",
    "DataConfig",
    "DatasetSpec",
    "Source",
    "Task",
    "get_spec",
    "register_dataset",
]


@dataclass(frozen=True)
class Task:
    """A labelling of a data set: which source label goes to which class.

    Attributes:
        name: Registry key, e.g. ``"odd-even"``.
        class_names: One name per class index.
        label_map: ``label_map[source_label]`` is the class index; empty for generated data.
        description: One line for help texts.
        targets: For a regression task, the real-valued target of each class index (the victim
            regresses ``targets[class]``); empty for classification.
    """

    name: str
    class_names: tuple[str, ...]
    label_map: tuple[int, ...] = ()
    description: str = ""
    targets: tuple[float, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def objective(self) -> str:
        """The objective a victim of this task is trained and attacked with (see ``kktrecon.attack.objectives``)."""
        if self.targets:
            return "regression"
        return "binary" if self.num_classes == 2 else "multiclass"


@dataclass(frozen=True)
class Archive:
    """An official download: where it comes from, its SHA-256 and where it goes under the data root."""

    file_name: str
    urls: tuple[str, ...]
    sha256: str
    size: int
    dest: str
    extract: tuple[str, ...] = ()  # for tarballs: the member prefix to extract (nothing else is)


class Source(NamedTuple):
    """A data set's files as read from disk: uint8 images (N, *input_shape) and int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


class Built(NamedTuple):
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
    reader: Callable[[Path], Source] | None
    build: Callable[[DatasetSpec, DataConfig, str | Path | None], Built]
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
DATASETS: Registry[DatasetSpec] = Registry("dataset", DataError)


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to :data:`DATASETS`, refusing to replace an existing entry."""
    return DATASETS.register(spec.name, spec)


def get_spec(name: str) -> DatasetSpec:
    """The data set called ``name``; unknown names list the registered ones."""
    return DATASETS.get_entry(name)


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
        get_spec(self.dataset).task(self.task)
        for name in ("n_per_class", "test_per_class"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise DataError(f"Expected `{name}` to be a positive integer. Got {value!r}.")
        if not is_int(self.seed):
            raise DataError(f"Expected `seed` to be an integer. Got {self.seed!r}.")
