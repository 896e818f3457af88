"""Downloads, without a network: the opener is replaced."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from kktrecon.data import (
    DATASETS,
    Archive,
    CorruptDataError,
    DataError,
    download,
    downloads,
)

# --- download (no network: the opener is replaced) ------------------------------------------------


class FakeOpener:
    def __init__(self, payload: bytes):
        self.payload, self.urls = payload, []

    def __call__(self, url, timeout=None):
        self.urls.append(url)
        return io.BytesIO(self.payload)


def test_download_refuses_bad_checksum(tmp_path, monkeypatch):
    opener = FakeOpener(b"not the MNIST archive")
    monkeypatch.setattr(downloads, "_open_url", opener)
    with pytest.raises(CorruptDataError, match="SHA-256"):
        download("mnist", tmp_path)
    assert len(opener.urls) == 2  # both mirrors tried
    assert list((tmp_path / "MNIST" / "raw").iterdir()) == []  # nothing unverified left behind
    with pytest.raises(DataError, match="generated"):
        download("toy", tmp_path)


def test_download_verifies_and_extracts_safely(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in [("cifar-10-batches-py/data_batch_1", b"ok"), ("../escape", b"x"), ("other/file", b"y")]:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    payload = buffer.getvalue()
    archive = Archive(
        "fake.tar.gz",
        ("https://example.invalid/fake.tar.gz",),
        hashlib.sha256(payload).hexdigest(),
        len(payload),
        "fake.tar.gz",
        extract=("cifar-10-batches-py/",),
    )
    spec = DATASETS["cifar10"]
    monkeypatch.setitem(DATASETS, "fake", type(spec)(**{**spec.__dict__, "name": "fake", "archives": (archive,)}))
    monkeypatch.setattr(downloads, "_open_url", FakeOpener(payload))
    folder = download("fake", tmp_path / "root")
    assert folder == tmp_path / "root" / "cifar-10-batches-py"
    assert (folder / "data_batch_1").read_bytes() == b"ok"
    assert not (tmp_path / "escape").exists() and not (tmp_path / "root" / "other").exists()
