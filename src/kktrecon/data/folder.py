"""A user's own images: an image folder (one sub-folder per class) or an ``.npz`` with ``x`` and ``y``.

For the privacy audit of a model trained outside kktrecon. The folder follows torchvision's
ImageFolder convention: ``DIR/<class>/<image>.png|jpg|jpeg|bmp``, classes in sorted order (class 0
is the first name). Pixels are scaled to [0, 1] (16-bit greyscale PNGs by 1/65535, exactly).
Everything is checked before anything is used, and before any pixel is decoded (sizes come from the
image headers, an npz's shapes from its .npy headers): an empty folder or class folder, a symbolic
link (it could bring in images from elsewhere, held-out ones say), a FIFO or other special file, an
unreadable file, images of different sizes or of another size or channel count than the model
expects are refused with a message that names the file.
"""

from __future__ import annotations

import math
import os
import stat
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, TypeVar

import numpy as np

from kktrecon.errors import CorruptDataError, DataError, DataNotFoundError, KKTReconError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = ["IMAGE_SUFFIXES", "Images", "load_images"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
GREY_8 = ("1", "L", "P")
GREY_16 = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # Pillow's modes of a 16-bit greyscale PNG
T = TypeVar("T")


@dataclass(frozen=True)
class Images:
    """Images in [0, 1] with their labels.

    Attributes:
        x: float64 array (N, C, H, W) in [0, 1].
        y: int64 class indices (N,).
        class_names: one name per class index (sorted folder names, or ``0..K-1`` for an npz).
        files: where each image came from (file paths, or ``npz[i]``).
    """

    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    files: tuple[str, ...]


def load_images(
    source: str | Path, *, shape: tuple[int, ...] | None = None, class_names: tuple[str, ...] | None = None
) -> Images:
    """Read an image folder or an ``.npz`` file (see the module docstring).

    Args:
        source: the folder (``DIR/<class>/<image>``) or ``.npz`` (``x``: (N, H, W), (N, C, H, W) or
            (N, H, W, C) uint8 in 0–255 or floats in [0, 1]; ``y``: (N,) integer labels).
        shape: the (C, H, W) the model expects; images of another size or channel count are refused.
            RGB images for a one-channel model, or grey ones for a three-channel model, are refused too.
        class_names: the classes to expect (a held-out folder must have the training folder's classes).

    Raises:
        DataNotFoundError: ``source`` does not exist, holds no class folders, or a class folder holds no images.
        CorruptDataError: a file cannot be read as an image or an npz, or its header promises more than it holds.
        DataError: sizes, channels, labels or classes that do not fit; a symbolic link, a FIFO or another special
            file; an image over Pillow's decompression-bomb limit.
    """
    source = Path(source)
    if not source.exists():
        raise DataNotFoundError(f"{source} does not exist: expected an image folder or an .npz file.")
    expected = tuple(shape) if shape is not None else None
    if source.is_dir():
        return _read_folder(source, expected, class_names)
    mode = source.stat().st_mode
    if not stat.S_ISREG(mode):
        raise DataError(f"Expected an image folder or an .npz file. Got {_kind(mode)} at {source}.")
    return _read_npz(source, expected, class_names)


def _check_shape(got: tuple[int, ...], shape: tuple[int, ...] | None, where: Path) -> None:
    """Refuse images of another (C, H, W) than the model takes, before any pixel is read."""
    if shape is not None and got != shape:
        raise DataError(f"Expected images of shape {shape} (C, H, W), what the model takes. Got {got} in {where}.")


def _check_classes(source: Path, got: tuple[str, ...], expected: tuple[str, ...] | None) -> None:
    """A held-out set must have the training set's classes."""
    if expected is not None and got != tuple(expected):
        raise DataError(f"Expected the classes {list(expected)} in {source}. Got {list(got)}.")


def _kind(mode: int) -> str:
    """What a file that is not a regular one is, in words."""
    kinds = (
        (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symbolic link"),
    )  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "a special file")


def _not_regular(mode: int, path: Path) -> DataError:
    return DataError(f"Expected a regular file. Got {_kind(mode)} at {path}.")


def _read_folder(folder: Path, shape: tuple[int, ...] | None, class_names: tuple[str, ...] | None) -> Images:
    """Every file's type and header checked first (no pixel decoded), then decoded into one array."""
    listing = _list_folder(folder)
    classes = tuple(name for name, _ in listing)
    _check_classes(folder, classes, class_names)
    files = [path for _, paths in listing for path in paths]
    labels = np.asarray([i for i, (_, paths) in enumerate(listing) for _ in paths], dtype=np.int64)
    expected = shape
    for path in files:
        got = _with_image(path, _layout)
        _check_shape(got, shape, path)
        expected = expected or got
        if got != expected:
            raise DataError(f"Expected images of one size. Got {got} (C, H, W) in {path}, {expected} in {files[0]}.")
    assert expected is not None  # a class folder without images was refused
    x = np.empty((len(files), *expected))
    for i, path in enumerate(files):
        pixels = _with_image(path, _decode)
        if pixels.shape != expected:
            raise CorruptDataError(f"Expected {path} to stay {expected} (C, H, W) while read. Got {pixels.shape}.")
        x[i] = pixels
    return Images(x, labels, classes, tuple(str(path) for path in files))


def _list_folder(folder: Path) -> list[tuple[str, list[Path]]]:
    """Each class folder's name and image files, sorted; special files and empty class folders are refused."""
    classes = [p for p in _entries(folder, folder) if p.is_dir() and not p.name.startswith(".")]
    if not classes:
        raise DataNotFoundError(f"{folder} holds no class sub-folders: expected {folder}/<class>/<image>.png.")
    listing = []
    for cls in classes:
        paths = [p for p in _entries(cls, folder) if p.suffix.lower() in IMAGE_SUFFIXES]
        odd = next((p for p in paths if not stat.S_ISREG(p.lstat().st_mode)), None)
        if odd is not None:
            raise _not_regular(odd.lstat().st_mode, odd)
        if not paths:
            raise DataNotFoundError(
                f"Expected at least one image ({', '.join(IMAGE_SUFFIXES)}) in every class folder. Got none in {cls}."
            )
        listing.append((cls.name, paths))
    return listing


def _entries(folder: Path, root: Path) -> list[Path]:
    """``folder``'s entries, sorted. A symbolic link is refused, never followed: it could bring in images
    from elsewhere (a held-out image linked into the training folder)."""
    entries = sorted(folder.iterdir())
    link = next((p for p in entries if p.is_symlink()), None)
    if link is not None:
        raise DataError(f"Expected no symbolic links in {root}. Got {link} (a link to {os.readlink(link)}).")
    return entries


def _regular_file(path: Path) -> IO[bytes]:
    """``path`` opened for reading if it is a regular file: a symlink is not followed, a FIFO not waited on."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_regular(mode, path)
    return os.fdopen(fd, "rb")


def _with_image(path: Path, read: Callable[[PILImage, Path], T]) -> T:
    """``read(image, path)`` on the image at ``path``, opened lazily (``Image.open`` reads the header only).

    Pillow's decompression-bomb warning (over ~89 M pixels) is an error here, like its bomb error.
    """
    from PIL import Image

    try:
        with _regular_file(path) as file, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as img:
                return read(img, path)
    except KKTReconError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DataError(f"Expected images small enough to decode safely. Got {path}: {err}") from err
    except (OSError, SyntaxError, EOFError, ValueError) as err:
        raise CorruptDataError(f"{path} could not be read as an image: {err}") from err


def _layout(img: PILImage, path: Path) -> tuple[int, int, int]:
    """The (C, H, W) an image will have, from its header; 16-bit colour (Pillow cuts it to 8 bits) is refused."""
    if img.format == "PNG" and img.mode not in GREY_16 and img.tile and ";16" in str(img.tile[0][3]):
        raise DataError(f"Expected 8-bit colour or 8- or 16-bit greyscale images. Got 16-bit {img.mode} in {path}.")
    return (1 if img.mode in GREY_8 + GREY_16 else 3, img.height, img.width)


def _decode(img: PILImage, path: Path) -> np.ndarray:
    """(C, H, W) float64 in [0, 1]: 16-bit greyscale scaled by 1/65535, everything else by 1/255."""
    if img.mode in GREY_16:
        array, scale = np.asarray(img), 65535.0
    else:
        array, scale = np.asarray(img.convert("L") if img.mode in GREY_8 else img.convert("RGB")), 255.0
    array = array[:, :, None] if array.ndim == 2 else array
    return array.transpose(2, 0, 1).astype(np.float64) / scale


def _read_npz(path: Path, shape: tuple[int, ...] | None, class_names: tuple[str, ...] | None) -> Images:
    """The .npy headers and the labels are checked before the pixels are read: absurd arrays cost nothing."""
    (x_shape, x_dtype), (y_shape, y_dtype) = _npz_headers(path)
    nchw = _nchw(x_shape)
    numeric = np.issubdtype(x_dtype, np.integer) or np.issubdtype(x_dtype, np.floating)
    if nchw is None or nchw[0] == 0 or not numeric:
        raise DataError(
            f"Expected 'x' in {path} of shape (N, H, W), (N, C, H, W) or (N, H, W, C), integers or floats. "
            f"Got {x_dtype} {x_shape}."
        )
    _check_shape(nchw[1:], shape, path)
    n = nchw[0]
    if y_shape != (n,) or not np.issubdtype(y_dtype, np.integer):
        raise DataError(f"Expected 'y' in {path} to hold {n} integer labels. Got {y_dtype} {y_shape}.")
    y = _npz_array(path, "y")
    labels = np.unique(y)
    if int(labels[0]) != 0 or len(labels) != int(labels[-1]) + 1:
        raise DataError(
            f"Expected the labels in {path} to be 0, 1, …, K-1, each with at least one image. Got {len(labels)} "
            f"distinct labels from {labels[0]} to {labels[-1]}."
        )
    classes = tuple(str(i) for i in range(len(labels)))
    _check_classes(path, classes, class_names)
    x = _npz_array(path, "x")
    x = x[:, None] if x.ndim == 3 else x if x.shape == nchw else x.transpose(0, 3, 1, 2)
    x = x.astype(np.float64)
    if np.issubdtype(x_dtype, np.integer):
        x /= 255.0
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise DataError(
            f"Expected pixels in 0–255 (integers) or [0, 1] (floats) in {path}. Got [{x.min()}, {x.max()}]."
        )
    return Images(x, y.astype(np.int64), classes, tuple(f"{path}[{i}]" for i in range(n)))


def _nchw(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """(N, C, H, W) of an 'x' of shape (N, H, W), (N, C, H, W) or (N, H, W, C); None for any other."""
    if len(shape) == 3:
        return (shape[0], 1, *shape[1:])
    if len(shape) == 4 and shape[-1] in (1, 3) and shape[1] not in (1, 3):
        return (shape[0], shape[3], shape[1], shape[2])
    return shape if len(shape) == 4 else None


Header = tuple[tuple[int, ...], np.dtype]


def _npz_headers(path: Path) -> tuple[Header, Header]:
    """Shape and dtype of 'x' and 'y' from their .npy headers, without reading the arrays."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
            if "x" not in members or "y" not in members:
                names = sorted(members)
                more = f" and {len(names) - 5} more" if len(names) > 5 else ""
                raise DataError(f"Expected arrays 'x' and 'y' in {path}. Got {names[:5]}{more}.")
            return _npy_header(archive, members["x"], path), _npy_header(archive, members["y"], path)
    except KKTReconError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise CorruptDataError(f"{path} could not be read as an .npz file: {err}") from err


def _npy_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> Header:
    """One member's (shape, dtype); pickled objects, and a header promising more bytes than stored, are refused."""
    with archive.open(info) as file:
        version = np.lib.format.read_magic(file)
        if version not in ((1, 0), (2, 0)):
            raise CorruptDataError(f"Expected .npy format 1.0 or 2.0 for {info.filename} in {path}. Got {version}.")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(file)
        offset = file.tell()
    if dtype.hasobject:
        raise CorruptDataError(f"Expected numeric arrays in {path} (pickles are refused). Got {dtype} {info.filename}.")
    if math.prod(shape) * dtype.itemsize > info.file_size - offset:
        raise CorruptDataError(
            f"Expected {info.filename} in {path} to hold the {shape} {dtype} array its header declares. "
            f"Got {info.file_size - offset} bytes."
        )
    return tuple(shape), dtype


def _npz_array(path: Path, name: str) -> np.ndarray:
    """One array of an npz whose headers were checked (pickles refused)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return archive[name]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise CorruptDataError(f"{path} could not be read as an .npz file: {err}") from err
