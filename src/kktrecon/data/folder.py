"""A user's own images: an image folder (one sub-folder per class) or an ``.npz`` with ``x`` and ``y``.

For the privacy audit of a model trained outside kktrecon. The folder follows torchvision's
ImageFolder convention: ``DIR/<class>/<image>.png|jpg|jpeg|bmp``, classes in sorted order (class 0
is the first name). Pixels are scaled to [0, 1]. Everything is checked before anything is used:
an empty folder, an unreadable file, images of different sizes or of another size or channel count
than the model expects are refused with a message that names the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kktrecon.errors import CorruptDataError, DataError, DataNotFoundError

__all__ = ["IMAGE_SUFFIXES", "Images", "load_images"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


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
        DataNotFoundError: ``source`` does not exist, or holds no images.
        CorruptDataError: a file cannot be read as an image.
        DataError: sizes, channels, labels or classes that do not fit.
    """
    source = Path(source)
    if not source.exists():
        raise DataNotFoundError(f"{source} does not exist: expected an image folder or an .npz file.")
    images = _read_npz(source) if source.is_file() else _read_folder(source)
    if shape is not None and tuple(images.x.shape[1:]) != tuple(shape):
        raise DataError(
            f"Expected images of shape {tuple(shape)} (C, H, W), what the model takes. Got {tuple(images.x.shape[1:])} "
            f"in {source} (first image: {images.files[0]})."
        )
    if class_names is not None and images.class_names != tuple(class_names):
        raise DataError(f"Expected the classes {list(class_names)} in {source}. Got {list(images.class_names)}.")
    return images


def _read_folder(folder: Path) -> Images:
    from PIL import Image, UnidentifiedImageError

    classes = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not classes:
        raise DataNotFoundError(f"{folder} holds no class sub-folders: expected {folder}/<class>/<image>.png.")
    arrays, labels, files = [], [], []
    for index, name in enumerate(classes):
        paths = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for path in paths:
            try:
                with Image.open(path) as img:
                    img.load()
                    arrays.append(
                        _pixels(
                            np.asarray(img.convert("L") if img.mode in ("1", "L", "P", "I;16") else img.convert("RGB"))
                        )
                    )
            except (OSError, UnidentifiedImageError, ValueError) as err:
                raise CorruptDataError(f"{path} could not be read as an image: {err}") from err
            labels.append(index)
            files.append(str(path))
    if not arrays:
        raise DataNotFoundError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}) in its class sub-folders.")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        first = arrays[0].shape
        odd = next(f for a, f in zip(arrays, files, strict=True) if a.shape != first)
        raise DataError(f"Expected images of one size. Got {sorted(shapes)}; {odd} differs from {files[0]} {first}.")
    return Images(np.stack(arrays), np.asarray(labels, dtype=np.int64), classes, tuple(files))


def _pixels(array: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) uint8 → (C, H, W) float64 in [0, 1]."""
    array = array[:, :, None] if array.ndim == 2 else array
    return array.transpose(2, 0, 1).astype(np.float64) / 255.0


def _read_npz(path: Path) -> Images:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive or "y" not in archive:
                raise DataError(f"Expected arrays 'x' and 'y' in {path}. Got {sorted(archive.files)}.")
            x, y = archive["x"], archive["y"]
    except (OSError, ValueError) as err:
        raise CorruptDataError(f"{path} could not be read as an .npz file (pickled arrays are refused): {err}") from err
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or len(x) == 0:
        raise DataError(f"Expected 'x' in {path} of shape (N, H, W), (N, C, H, W) or (N, H, W, C). Got {x.shape}.")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise DataError(
            f"Expected 'y' in {path} to hold {len(x)} non-negative integer labels. Got {y.dtype} {y.shape}."
        )
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float64) / 255.0
    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise DataError(
            f"Expected pixels in 0–255 (integers) or [0, 1] (floats) in {path}. Got [{x.min()}, {x.max()}]."
        )
    k = int(y.max()) + 1
    return Images(x, y.astype(np.int64), tuple(str(i) for i in range(k)), tuple(f"{path}[{i}]" for i in range(len(x))))
