"""Independent readers of the standard files (numpy, struct and plain pickle only; nothing from the package)."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

MNIST_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
VEHICLES = (0, 1, 8, 9)


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    magic, n = struct.unpack(">II", raw[:8])
    if magic == 2051:
        return np.frombuffer(raw, np.uint8, offset=16).reshape(n, 28, 28)
    assert magic == 2049
    return np.frombuffer(raw, np.uint8, offset=8)


def read_mnist(root: Path) -> dict[str, np.ndarray]:
    folder = root / "MNIST" / "raw"
    x, y, xt, yt = (read_idx(folder / f"{name}.gz") for name in MNIST_NAMES)
    return {"x": x, "y": y.astype(np.int64), "x_test": xt, "y_test": yt.astype(np.int64)}


def read_cifar(root: Path) -> dict[str, np.ndarray]:
    batches = []
    for name in CIFAR_BATCHES:
        with (root / "cifar-10-batches-py" / name).open("rb") as fh:
            batch = pickle.load(fh, encoding="latin1")  # trusted test data: plain pickle is the oracle
        batch = {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}
        batches.append((batch["data"].reshape(-1, 3, 32, 32), np.asarray(batch["labels"], dtype=np.int64)))
    return {
        "x": np.concatenate([b[0] for b in batches[:5]]),
        "y": np.concatenate([b[1] for b in batches[:5]]),
        "x_test": batches[5][0],
        "y_test": batches[5][1],
    }


def first_per_class(classes: np.ndarray, k: int, num_classes: int) -> list[int]:
    """The reference's loop: walk the file in order, keep an image while its class still needs one."""
    counts = [0] * num_classes
    kept = []
    for i, c in enumerate(classes.tolist()):
        if counts[c] < k:
            counts[c] += 1
            kept.append(i)
    assert counts == [k] * num_classes
    return kept


def as_uint8(x: torch.Tensor, mean: torch.Tensor) -> np.ndarray:
    """Undo the preprocessing: add the mean back, ×255, round."""
    return torch.round((x.double() + mean.double()) * 255).to(torch.int64).numpy()


def raw_dir(root: Path) -> Path:
    return root / "MNIST" / "raw"


def write_gz_idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes) -> None:
    header = struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims)
    path.write_bytes(gzip.compress(header + payload))


def write_cifar(root: Path, n: int = 12, protocol: int = 2) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in CIFAR_BATCHES:
        batch = {
            "batch_label": f"tiny {name}".encode(),
            "labels": [int(v) for v in np.arange(n) % 10],
            "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    return folder
