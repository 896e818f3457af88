"""MNIST (LeCun, Cortes & Burges) as gzipped or plain IDX files under ``MNIST/raw/``.

The reader takes the item count from each IDX header and checks the payload against it, so the
shared subsets (17,435 training images) and the embedded sample read like the full files.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from kktrecon.data.dataset import SAMPLE_ROOT, is_int
from kktrecon.data.files import build_from_files, check_files
from kktrecon.data.registry import DATASETS, Archive, DatasetSpec, Source, Task, register_dataset
from kktrecon.errors import CorruptDataError, NotEnoughSamplesError

__all__ = ["make_sample", "read_idx"]

_IDX_IMAGES = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_IDX_LABELS = 2049  # 0x00000801: unsigned bytes, 1 dimension
_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


#: More items than any real IDX file holds (MNIST has 70,000): a header asking for more is refused
#: before anything is read, so a few header bytes cannot request terabytes.
_MAX_ITEMS = 10**8
_CHUNK = 1 << 20


def _open_idx(path: Path) -> io.BufferedIOBase:
    # gzip.open streams: nothing is inflated until it is read.
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def _read_upto(path: Path, fh: io.BufferedIOBase, limit: int) -> bytearray:
    """Up to ``limit`` bytes in chunks, so memory follows what the file really holds, not what it claims."""
    buffer = bytearray()
    try:
        while len(buffer) < limit:
            chunk = fh.read(min(_CHUNK, limit - len(buffer)))
            if not chunk:
                break
            buffer += chunk
    except (OSError, EOFError, zlib.error) as err:
        if path.suffix != ".gz":
            raise
        raise CorruptDataError(f"{path} is not a complete gzip file (truncated or corrupt?): {err}") from err
    return buffer


def _check_header(path: Path, header: bytes, magic: int, item_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The dimensions of a complete IDX header with the right magic number, item shape and a sane count."""
    ndim = 1 + len(item_shape)
    if len(header) < 4 + 4 * ndim:
        raise CorruptDataError(
            f"{path} is too short for an IDX header: expected at least {4 + 4 * ndim} bytes, got {len(header)}."
        )
    (got_magic,) = struct.unpack(">I", header[:4])
    if got_magic != magic:
        raise CorruptDataError(f"{path}: expected IDX magic number {magic}. Got {got_magic}.")
    dims = struct.unpack(f">{ndim}I", header[4:])
    if tuple(dims[1:]) != item_shape:
        raise CorruptDataError(f"{path}: expected items of shape {item_shape}. Got {tuple(dims[1:])}.")
    if dims[0] > _MAX_ITEMS:
        raise CorruptDataError(
            f"{path}: expected an IDX header promising at most {_MAX_ITEMS} items. Got {dims[0]}; "
            "refused before reading the payload."
        )
    return dims


def _size_mismatch(path: Path, dims: tuple[int, ...], expected: int, got: int | None) -> CorruptDataError:
    """The error for a payload that disagrees with its header; ``got=None``: more than expected, size unknown."""
    problem = "trailing bytes" if got is None or got > expected else "truncated"
    return CorruptDataError(
        f"{path}: the header promises {dims[0]} items, so expected {expected} bytes"
        f"{' (uncompressed)' if path.suffix == '.gz' else ''}; got {'more' if got is None else got} ({problem})."
    )


def read_idx(path: Path, magic: int, item_shape: tuple[int, ...]) -> np.ndarray:
    """Parse an IDX file of unsigned bytes, taking the item count from the header and checking the rest.

    The header is read and checked first; then at most one byte more than it promises is read (a
    plain file's size is compared before reading), so a gzip bomb or a lying header is refused
    without inflating or allocating what it claims.
    """
    header_size = 4 + 4 * (1 + len(item_shape))
    with _open_idx(path) as fh:
        dims = _check_header(path, bytes(_read_upto(path, fh, header_size)), magic, item_shape)
        expected = header_size + math.prod(dims)
        if path.suffix != ".gz" and (size := os.fstat(fh.fileno()).st_size) != expected:
            raise _size_mismatch(path, dims, expected, size)
        payload = _read_upto(path, fh, expected - header_size + 1)
    got = header_size + len(payload)
    if got != expected:
        raise _size_mismatch(path, dims, expected, None if got > expected and path.suffix == ".gz" else got)
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def _read_mnist_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(images, _IDX_IMAGES, (28, 28))
    y = read_idx(labels, _IDX_LABELS, ())
    if len(x) != len(y):
        raise CorruptDataError(f"{images} holds {len(x)} images but {labels} holds {len(y)} labels.")
    if len(y) and int(y.max()) > 9:
        raise CorruptDataError(f"{labels}: expected digit labels 0-9. Got {int(y.max())}.")
    return x[:, None], y.astype(np.int64)


def _read_mnist(root: Path) -> Source:
    files = check_files(DATASETS["mnist"], root)
    x_train, y_train = _read_mnist_pair(files[_MNIST_FILES[0]], files[_MNIST_FILES[1]])
    x_test, y_test = _read_mnist_pair(files[_MNIST_FILES[2]], files[_MNIST_FILES[3]])
    return Source(x_train, y_train, x_test, y_test)


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
        if not is_int(count) or not 0 < count <= have:
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
            "digit-value": Task(
                "digit-value",
                tuple(str(d) for d in range(10)),
                tuple(range(10)),
                "regression: the digit's value, scaled to [-1, 1] as (d - 4.5) / 4.5",
                targets=tuple((d - 4.5) / 4.5 for d in range(10)),
            ),
        },
        reader=_read_mnist,
        build=build_from_files,
        archives=_MNIST_ARCHIVES,
        gz_optional=True,
        sample_root=SAMPLE_ROOT,
    )
)
