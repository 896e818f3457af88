"""Downloads of the official archives, verified by SHA-256 before anything reads them."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from kktrecon.data.registry import Archive, get_spec
from kktrecon.errors import CorruptDataError, DataError

__all__ = ["download"]

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
    spec = get_spec(dataset)
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
