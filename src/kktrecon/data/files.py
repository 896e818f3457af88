"""Selection and file checks shared by the data sets read from files (MNIST, CIFAR-10)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kktrecon.data.dataset import DataConfig, resolve_data_root
from kktrecon.data.registry import Built, DatasetSpec, Task
from kktrecon.errors import DataNotFoundError, NotEnoughSamplesError

__all__ = ["build_from_files", "check_files", "select_first"]


def select_first(labels: np.ndarray, per_class: int, task: Task, *, argument: str, what: str) -> np.ndarray:
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


def build_from_files(spec: DatasetSpec, config: DataConfig, data_root: str | Path | None) -> Built:
    assert spec.reader is not None
    root = resolve_data_root(data_root)
    source = spec.reader(root)
    task = spec.task(config.task)
    label_map = np.asarray(task.label_map, dtype=np.int64)
    where = f"{spec.display_name} under {root / spec.folder}"
    train_idx = select_first(
        label_map[source.y_train], config.n_per_class, task, argument="n_per_class", what=f"the training set of {where}"
    )
    test_idx = select_first(
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
    return Built(
        x_train=x_train - mean,
        y_train=label_map[source.y_train[train_idx]],
        x_test=x_test - mean,
        y_test=label_map[source.y_test[test_idx]],
        mean=mean,
        train_indices=train_idx,
        test_indices=test_idx,
        data_root=str(root),
    )


def check_files(spec: DatasetSpec, root: Path) -> dict[str, Path]:
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
