"""Independent readers and writers of the standard files (numpy, struct, gzip and pickle; nothing from the package)."""

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


def write_idx_bomb(path: Path, magic: int, dims: tuple[int, ...], zeros: int) -> None:
    """An IDX header followed by ``zeros`` zero bytes, cheap to make and to store.

    A ``.gz`` path is compressed 1 MiB at a time (200 MiB of zeros become ~1 MB); a plain file is
    extended with ``truncate``, so it is sparse on disk.
    """
    header = struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims)
    if path.suffix == ".gz":
        chunk = bytes(1 << 20)
        with gzip.open(path, "wb", compresslevel=1) as fh:
            fh.write(header)
            for _ in range(zeros >> 20):
                fh.write(chunk)
            fh.write(bytes(zeros % (1 << 20)))
    else:
        with path.open("wb") as fh:
            fh.write(header)
            fh.truncate(len(header) + zeros)


# --- pickles written opcode by opcode (pickletools names), so tests control every argument --------

FALSE, TRUE, NONE = b"\x89", b"\x88", b"N"  # NEWFALSE, NEWTRUE, NONE


def op_str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def op_bytes(raw: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(raw)) + raw  # BINBYTES


def op_py2str(raw: bytes) -> bytes:
    """A Python 2 ``str``, as the official batches hold keys and pixel data."""
    return b"U" + bytes([len(raw)]) + raw if len(raw) < 256 else b"T" + struct.pack("<I", len(raw)) + raw


def op_int(n: int) -> bytes:
    return b"K" + bytes([n]) if 0 <= n < 256 else b"J" + struct.pack("<i", n)  # BININT1 / BININT


def op_tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"  # MARK … TUPLE


def op_list(*items: bytes) -> bytes:
    return b"](" + b"".join(items) + b"e"  # EMPTY_LIST MARK … APPENDS


def op_global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()  # GLOBAL


def op_call(func: bytes, *args: bytes) -> bytes:
    return func + op_tuple(*args) + b"R"  # REDUCE


def op_dtype(code: str, flags: int = 0, names: bytes = NONE, fields: bytes = NONE, py2: bool = False) -> bytes:
    """``numpy.dtype(code, False, True)``, then BUILD ``(3, '|', None, names, fields, -1, -1, flags)``: numpy's way."""
    text = (lambda s: op_py2str(s.encode())) if py2 else op_str
    args = (text(code), op_int(0), op_int(1)) if py2 else (op_str(code), FALSE, TRUE)
    state = op_tuple(op_int(3), text("|"), NONE, names, fields, op_int(-1), op_int(-1), op_int(flags))
    return op_call(op_global("numpy", "dtype"), *args) + state + b"b"


def op_array(shape: tuple[int, ...], dtype: bytes, raw: bytes, module: str = "numpy._core.multiarray") -> bytes:
    """``_reconstruct(ndarray, (0,), b'b')`` and BUILD ``(1, shape, dtype, False, raw)``: numpy's array pickle."""
    b = op_py2str(b"b") if module == "numpy.core.multiarray" else op_bytes(b"b")
    empty = op_call(op_global(module, "_reconstruct"), op_global("numpy", "ndarray"), op_tuple(op_int(0)), b)
    return empty + op_tuple(op_int(1), op_tuple(*map(op_int, shape)), dtype, FALSE, raw) + b"b"


def op_batch(labels: bytes, data: bytes) -> bytes:
    """``{'labels': …, 'data': …}`` at protocol 2."""
    return b"\x80\x02}(" + op_str("labels") + labels + op_str("data") + data + b"u."


def write_cifar_py2(root: Path, n: int = 12) -> Path:
    """The batches of :func:`write_cifar`, written the way Python 2's cPickle wrote the official files."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in CIFAR_BATCHES:
        labels = [int(v) for v in np.arange(n) % 10]
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        array = op_array(
            data.shape, op_dtype("u1", py2=True), op_py2str(data.tobytes()), module="numpy.core.multiarray"
        )
        names = op_list(*(op_py2str(f"image_{i}.png".encode()) for i in range(n)))
        (folder / name).write_bytes(
            b"\x80\x02}q\x01("
            + op_py2str(b"batch_label")
            + op_py2str(f"tiny {name}".encode())
            + op_py2str(b"labels")
            + op_list(*map(op_int, labels))
            + b"q\x02"
            + op_py2str(b"data")
            + array
            + op_py2str(b"filenames")
            + names
            + b"u."
        )
    return folder
