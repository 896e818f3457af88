"""Tests for kktrecon.data: selection against independent reads of the files, and every bad input."""

from __future__ import annotations

import builtins
import doctest
import gzip
import hashlib
import io
import json
import os
import pickle
import shlex
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import kktrecon.data as data_module
from kktrecon.data import (
    DATASETS,
    SAMPLE_ROOT,
    Archive,
    CorruptDataError,
    DataConfig,
    DataError,
    DataNotFoundError,
    NotEnoughSamplesError,
    download,
    load_dataset,
    make_sample,
    make_toy,
    resolve_data_root,
)

MNIST_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
VEHICLES = (0, 1, 8, 9)


# --- independent readers (numpy, struct and plain pickle only; nothing from the package) -----------


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


@pytest.fixture(scope="module")
def mnist(data_root: Path) -> dict[str, np.ndarray]:
    return read_mnist(data_root)


@pytest.fixture(scope="module")
def cifar(data_root: Path) -> dict[str, np.ndarray]:
    return read_cifar(data_root)


@pytest.fixture(scope="module")
def mnist_odd_even(data_root: Path):
    return load_dataset(data_root=data_root)  # the defaults: odd/even, 250 per class, 500 per class test


def as_uint8(x: torch.Tensor, mean: torch.Tensor) -> np.ndarray:
    """Undo the preprocessing: add the mean back, ×255, round."""
    return torch.round((x.double() + mean.double()) * 255).to(torch.int64).numpy()


# --- MNIST on the real subset ---------------------------------------------------------------------


def test_mnist_odd_even_matches_independent_read(mnist_odd_even, mnist):
    ds = mnist_odd_even
    expected = first_per_class(mnist["y"] % 2, 250, 2)
    assert ds.x_train.shape == (500, 1, 28, 28) and ds.x_train.dtype == torch.float32
    assert ds.train_indices.tolist() == expected
    assert ds.y_train.dtype == torch.int64
    assert ds.y_train.tolist() == (mnist["y"][expected] % 2).tolist()
    assert torch.bincount(ds.y_train).tolist() == [250, 250]
    np.testing.assert_array_equal(as_uint8(ds.x_train, ds.mean), mnist["x"][expected][:, None])
    # File order, not grouped by class.
    assert (np.diff(expected) > 0).all() and ds.y_train[:250].sum() not in (0, 250)
    # Odd digits are class 1.
    assert ds.class_names == ("even", "odd") and ds.num_classes == 2
    assert ds.input_shape == (1, 28, 28) and ds.is_image


def test_mnist_mean_is_training_mean_and_subtracted_from_test(mnist_odd_even, mnist):
    ds = mnist_odd_even
    train = mnist["x"][ds.train_indices.numpy()].astype(np.float64) / 255
    mean = train.mean(axis=0)[None]
    np.testing.assert_allclose(ds.mean.numpy(), mean, atol=1e-7)
    assert ds.x_train.double().mean(0).abs().max() < 1e-6
    images = ds.x_train + ds.mean
    assert float(images.min()) >= -1e-6 and float(images.max()) <= 1 + 1e-6
    assert float(images.min()) == pytest.approx(0, abs=1e-6) and float(images.max()) == pytest.approx(1, abs=1e-6)
    # Test set: first 500 of each class of t10k, minus the *training* mean (not its own).
    expected_test = first_per_class(mnist["y_test"] % 2, 500, 2)
    assert ds.test_indices.tolist() == expected_test
    assert ds.y_test.tolist() == (mnist["y_test"][expected_test] % 2).tolist()
    test = mnist["x_test"][expected_test][:, None].astype(np.float64) / 255
    np.testing.assert_allclose(ds.x_test.numpy(), test - mean, atol=1e-6)
    assert ds.x_test.double().mean(0).abs().max() > 1e-3  # the training mean is not the test mean


def test_mnist_float64_is_exact(data_root, mnist):
    ds = load_dataset(data_root=data_root, n_per_class=30, test_per_class=10, dtype="float64")
    assert ds.x_train.dtype == torch.float64 and ds.mean.dtype == torch.float64
    idx = ds.train_indices.numpy()
    np.testing.assert_allclose((ds.x_train + ds.mean).numpy(), mnist["x"][idx][:, None] / 255, atol=1e-12, rtol=0)


def test_mnist_summary(mnist_odd_even, mnist):
    summary = mnist_odd_even.summary()
    json.dumps(summary)  # JSON-ready
    assert summary["dataset"] == "mnist" and summary["task"] == "odd-even"
    assert summary["n_train"] == 500 and summary["n_test"] == 1000
    assert summary["per_class"] == {"even": 250, "odd": 250}
    assert summary["per_class_test"] == {"even": 500, "odd": 500}
    assert summary["image_shape"] == [1, 28, 28]
    assert summary["pixel_range"] == [0.0, 1.0]
    assert summary["source_indices"] == first_per_class(mnist["y"] % 2, 250, 2)
    assert summary["test_source_indices"] == first_per_class(mnist["y_test"] % 2, 500, 2)
    assert summary["mean_norm"] > 0 and summary["data_root"] is not None


def test_mnist_known_labels(data_root, mnist):
    # The first MNIST training digits are 5, 0, 4, 1, 9; the first test digits 7, 2, 1, 0, 4.
    assert mnist["y"][:5].tolist() == [5, 0, 4, 1, 9] and mnist["y_test"][:5].tolist() == [7, 2, 1, 0, 4]
    digits = load_dataset(data_root=data_root, task="digits", n_per_class=20, test_per_class=30)
    assert digits.y_train[:5].tolist() == [5, 0, 4, 1, 9] and digits.train_indices[:5].tolist() == [0, 1, 2, 3, 4]
    assert digits.y_test[:5].tolist() == [7, 2, 1, 0, 4]
    odd_even = load_dataset(data_root=data_root, n_per_class=20, test_per_class=30)
    assert odd_even.y_train[:5].tolist() == [1, 0, 0, 1, 1]


def test_mnist_digits_ten_classes(data_root, mnist):
    ds = load_dataset(data_root=data_root, task="digits", n_per_class=20, test_per_class=30)
    expected = first_per_class(mnist["y"], 20, 10)
    assert ds.num_classes == 10 and ds.class_names == tuple("0123456789")
    assert ds.train_indices.tolist() == expected
    assert ds.y_train.tolist() == mnist["y"][expected].tolist()
    assert torch.bincount(ds.y_train).tolist() == [20] * 10
    assert ds.test_indices.tolist() == first_per_class(mnist["y_test"], 30, 10)
    np.testing.assert_array_equal(as_uint8(ds.x_train, ds.mean), mnist["x"][expected][:, None])
    with pytest.raises(DataError, match="binary"):
        _ = ds.signs


def test_signs(mnist_odd_even):
    signs = mnist_odd_even.signs
    assert signs.dtype == mnist_odd_even.x_train.dtype
    assert torch.equal(signs, 2.0 * mnist_odd_even.y_train.float() - 1)


def test_load_dataset_config_and_overrides(data_root):
    config = DataConfig(n_per_class=5, test_per_class=5)
    ds = load_dataset(config, data_root=data_root, n_per_class=7)
    assert ds.config == DataConfig(n_per_class=7, test_per_class=5) and ds.x_train.shape[0] == 14
    with pytest.raises(DataError, match=r"Unknown keys for DataConfig: \['n_train'\]"):
        load_dataset(data_root=data_root, n_train=5)
    with pytest.raises(ValueError, match="dtype"):
        load_dataset(data_root=data_root, n_per_class=5, dtype=torch.int64)


# --- CIFAR-10 on the real subset ------------------------------------------------------------------


def test_cifar_vehicles_animals_matches_independent_read(data_root, cifar):
    assert len(cifar["x"]) == 5085
    ds = load_dataset(dataset="cifar10", task="vehicles-animals", data_root=data_root, test_per_class=200)
    classes = np.isin(cifar["y"], VEHICLES, invert=True).astype(np.int64)
    expected = first_per_class(classes, 250, 2)
    assert ds.x_train.shape == (500, 3, 32, 32) and ds.input_shape == (3, 32, 32)
    assert ds.train_indices.tolist() == expected
    assert ds.y_train.tolist() == classes[expected].tolist()
    assert torch.bincount(ds.y_train).tolist() == [250, 250]
    np.testing.assert_array_equal(as_uint8(ds.x_train, ds.mean), cifar["x"][expected])
    assert ds.x_train.double().mean(0).abs().max() < 1e-6
    test_classes = np.isin(cifar["y_test"], VEHICLES, invert=True).astype(np.int64)
    expected_test = first_per_class(test_classes, 200, 2)
    assert ds.test_indices.tolist() == expected_test
    mean = cifar["x"][expected].astype(np.float64).mean(0) / 255
    np.testing.assert_allclose(ds.x_test.numpy(), cifar["x_test"][expected_test] / 255 - mean, atol=1e-6)
    summary = ds.summary()
    assert summary["per_class"] == {"vehicles": 250, "animals": 250} and summary["pixel_range"] == [0.0, 1.0]
    # The first CIFAR-10 training images are frog, truck, truck, deer, automobile.
    assert cifar["y"][:5].tolist() == [6, 9, 9, 4, 1]
    assert ds.train_indices[:5].tolist() == [0, 1, 2, 3, 4] and ds.y_train[:5].tolist() == [1, 0, 0, 1, 0]
    assert DATASETS["cifar10"].match_downsample == 2 and DATASETS["mnist"].match_downsample == 1


def test_cifar_ten_classes(data_root, cifar):
    ds = load_dataset(dataset="cifar10", task="classes", data_root=data_root, n_per_class=30, test_per_class=20)
    expected = first_per_class(cifar["y"], 30, 10)
    assert ds.num_classes == 10 and ds.class_names[6] == "frog" and ds.class_names[9] == "truck"
    assert ds.train_indices.tolist() == expected
    assert ds.y_train.tolist() == cifar["y"][expected].tolist()
    assert ds.y_train[:3].tolist() == [6, 9, 9]
    assert ds.test_indices.tolist() == first_per_class(cifar["y_test"], 20, 10)
    assert ds.y_test[:3].tolist() == [3, 8, 8]  # cat, ship, ship
    np.testing.assert_array_equal(as_uint8(ds.x_test, ds.mean), cifar["x_test"][ds.test_indices.numpy()])


def test_cifar_not_enough_samples_says_how_many(data_root, cifar):
    vehicles = int(np.isin(cifar["y"], VEHICLES).sum())
    with pytest.raises(NotEnoughSamplesError, match=rf"class 'vehicles'.*only {vehicles}\b"):
        load_dataset(dataset="cifar10", task="vehicles-animals", data_root=data_root, n_per_class=3000)
    test_vehicles = int(np.isin(cifar["y_test"], VEHICLES).sum())
    with pytest.raises(NotEnoughSamplesError, match=rf"test_per_class.*only {test_vehicles}\b"):
        load_dataset(dataset="cifar10", task="vehicles-animals", data_root=data_root)  # 500 > ~400


# --- MNIST file problems (on copies of the embedded sample) ---------------------------------------


def raw_dir(root: Path) -> Path:
    return root / "MNIST" / "raw"


def write_gz_idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes) -> None:
    header = struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims)
    path.write_bytes(gzip.compress(header + payload))


def test_missing_root_lists_expected_files(tmp_path):
    missing = tmp_path / "no-such-root"
    with pytest.raises(DataNotFoundError) as info:
        load_dataset(data_root=missing, n_per_class=5)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(missing) in message and "--data-root" in message and "KKTRECON_DATA" in message
    for name in MNIST_NAMES:
        assert name in message


def test_missing_file_is_named(tmp_mnist):
    (raw_dir(tmp_mnist) / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError, match=r"missing in .*: t10k-labels-idx1-ubyte\[\.gz\]\. Expected") as info:
        load_dataset(data_root=tmp_mnist, n_per_class=5, test_per_class=5)
    assert "train-images-idx3-ubyte[.gz]" in str(info.value)  # the full list of expected names


def test_truncated_gz(tmp_mnist):
    path = raw_dir(tmp_mnist) / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20000])
    with pytest.raises(CorruptDataError, match=rf"{path}.*gzip"):
        load_dataset(data_root=tmp_mnist, n_per_class=5, test_per_class=5)


def test_truncated_raw_file(tmp_mnist):
    gz = raw_dir(tmp_mnist) / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(gz.read_bytes())
    gz.unlink()
    plain = raw_dir(tmp_mnist) / "train-images-idx3-ubyte"
    plain.write_bytes(raw[:-1000])
    with pytest.raises(CorruptDataError, match=rf"{plain}: .*expected 392016 bytes; got 391016 \(truncated\)"):
        load_dataset(data_root=tmp_mnist, n_per_class=5, test_per_class=5)


def test_uncompressed_files_read_like_gz(tmp_mnist):
    reference = load_dataset(data_root=tmp_mnist, n_per_class=10, test_per_class=10)
    for name in MNIST_NAMES:
        gz = raw_dir(tmp_mnist) / f"{name}.gz"
        (raw_dir(tmp_mnist) / name).write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    plain = load_dataset(data_root=tmp_mnist, n_per_class=10, test_per_class=10)
    assert torch.equal(plain.x_train, reference.x_train) and torch.equal(plain.test_indices, reference.test_indices)


@pytest.mark.parametrize(("delta", "problem"), [(1, "truncated"), (-1, "trailing bytes")])
def test_header_count_disagrees_with_payload(tmp_mnist, delta, problem):
    path = raw_dir(tmp_mnist) / "t10k-images-idx3-ubyte.gz"
    images = read_idx(path)
    write_gz_idx(path, 2051, (len(images) + delta, 28, 28), images.tobytes())
    with pytest.raises(CorruptDataError, match=rf"header promises {500 + delta} items.*\({problem}\)"):
        load_dataset(data_root=tmp_mnist, n_per_class=5, test_per_class=5)


def test_image_and_label_counts_disagree(tmp_mnist):
    path = raw_dir(tmp_mnist) / "train-labels-idx1-ubyte.gz"
    labels = read_idx(path)
    write_gz_idx(path, 2049, (499,), labels[:499].tobytes())
    with pytest.raises(CorruptDataError, match=r"holds 500 images but .* holds 499 labels"):
        load_dataset(data_root=tmp_mnist, n_per_class=5, test_per_class=5)


def test_wrong_magic_number(tmp_mnist):
    path = raw_dir(tmp_mnist) / "train-labels-idx1-ubyte.gz"
    write_gz_idx(path, 2051, (500,), read_idx(path).tobytes())
    with pytest.raises(CorruptDataError, match=r"expected IDX magic number 2049\. Got 2051"):
        load_dataset(data_root=tmp_mnist, n_per_class=5, test_per_class=5)


def test_too_few_of_a_class_says_how_many(tmp_mnist):
    labels = read_idx(raw_dir(tmp_mnist) / "train-labels-idx1-ubyte.gz")
    counts = np.bincount(labels, minlength=10)
    short = int(np.flatnonzero(counts < 60)[0])
    with pytest.raises(
        NotEnoughSamplesError, match=rf"n_per_class`=60 images of class '{short}'.*only {counts[short]}\b"
    ):
        load_dataset(data_root=tmp_mnist, task="digits", n_per_class=60, test_per_class=5)


# --- CIFAR-10 file problems (tiny batches written here) -------------------------------------------


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


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_tiny_cifar_round_trip(tmp_path, protocol):
    write_cifar(tmp_path, protocol=protocol)
    oracle = read_cifar(tmp_path)
    ds = load_dataset(dataset="cifar10", task="classes", data_root=tmp_path, n_per_class=5, test_per_class=1)
    expected = first_per_class(oracle["y"], 5, 10)
    assert ds.train_indices.tolist() == expected
    np.testing.assert_array_equal(as_uint8(ds.x_train, ds.mean), oracle["x"][expected])


def test_cifar_missing_batches_are_listed(tmp_path):
    folder = write_cifar(tmp_path)
    (folder / "data_batch_5").unlink()
    (folder / "test_batch").unlink()
    with pytest.raises(DataNotFoundError, match=r"missing in .*: data_batch_5, test_batch\. Expected") as info:
        load_dataset(dataset="cifar10", task="classes", data_root=tmp_path, n_per_class=1, test_per_class=1)
    assert "cifar-10-batches-py/data_batch_1" in str(info.value) and "KKTRECON_DATA" in str(info.value)


class Payload:
    """Pickles as a call of ``func(arg)``: what a malicious data file would do."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


def evil_payloads(marker: Path) -> dict[str, object]:
    create = f"open({str(marker)!r}, 'w').close()"
    payloads: dict[str, object] = {"eval": Payload(builtins.eval, create), "exec": Payload(builtins.exec, create)}
    if os.name == "posix":
        payloads["os.system"] = Payload(os.system, f"touch {shlex.quote(str(marker))}")
    return payloads


@pytest.mark.parametrize("kind", ["eval", "exec", "os.system"])
@pytest.mark.parametrize("where", ["data", "labels"])
def test_cifar_pickle_that_runs_code_is_refused(tmp_path, kind, where):
    marker = tmp_path / "pwned"
    payloads = evil_payloads(marker)
    if kind not in payloads:
        pytest.skip("os.system payload written for POSIX shells")
    folder = write_cifar(tmp_path / "root")
    batch = {"batch_label": b"evil", "labels": list(range(10)), "data": np.zeros((10, 3072), np.uint8)}
    batch[where] = payloads[kind] if where == "data" else [0, 1, payloads[kind]]
    evil = pickle.dumps(batch, protocol=2)
    (folder / "data_batch_3").write_bytes(evil)
    with pytest.raises(
        CorruptDataError,
        match=r"data_batch_3 tried to load a forbidden global \((builtins|__builtin__|posix)\.(eval|exec|system)\)",
    ):
        load_dataset(dataset="cifar10", task="classes", data_root=tmp_path / "root", n_per_class=1, test_per_class=1)
    assert not marker.exists(), "the payload ran"
    # The payload is live: an ordinary unpickler does run it (so the check above can fail).
    pickle.loads(evil)
    assert marker.exists()


def test_cifar_pickle_codecs_only_latin1(tmp_path):
    folder = write_cifar(tmp_path)
    # _codecs.encode('abc', 'rot13'): allowed module, refused arguments.
    evil = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R."
    (folder / "test_batch").write_bytes(evil)
    with pytest.raises(CorruptDataError, match=r"test_batch tried to load a forbidden global.*rot13"):
        load_dataset(dataset="cifar10", task="classes", data_root=tmp_path, n_per_class=1, test_per_class=1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.update(data=b["data"].astype(np.float32)), r"uint8 array of shape \(N, 3072\). Got float32"),
        (lambda b: b.update(data=b["data"][:, :100]), r"\(N, 3072\). Got uint8 array of shape \(12, 100\)"),
        (lambda b: b.update(labels=b["labels"][:-1]), "holds 12 images but 11 labels"),
        (lambda b: b.update(labels=[*b["labels"][:-1], 10]), "expected labels 0-9"),
        (lambda b: b.pop("labels"), "expected keys 'data' and 'labels'"),
    ],
)
def test_cifar_bad_batch_contents(tmp_path, change, message):
    folder = write_cifar(tmp_path)
    batch = pickle.loads((folder / "data_batch_2").read_bytes())
    change(batch)
    (folder / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(CorruptDataError, match=rf"data_batch_2.*{message}"):
        load_dataset(dataset="cifar10", task="classes", data_root=tmp_path, n_per_class=1, test_per_class=1)


def test_cifar_truncated_or_non_dict_pickle(tmp_path):
    folder = write_cifar(tmp_path)
    path = folder / "data_batch_1"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CorruptDataError, match=rf"{path} is not a readable pickle"):
        load_dataset(dataset="cifar10", task="classes", data_root=tmp_path, n_per_class=1, test_per_class=1)
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(CorruptDataError, match="expected a dict"):
        load_dataset(dataset="cifar10", task="classes", data_root=tmp_path, n_per_class=1, test_per_class=1)


# --- the embedded sample --------------------------------------------------------------------------


def test_embedded_sample_loads_without_external_data():
    ds = load_dataset(data_root=SAMPLE_ROOT, n_per_class=10, test_per_class=100)
    assert ds.x_train.shape == (20, 1, 28, 28) and ds.x_test.shape == (200, 1, 28, 28)
    assert torch.bincount(ds.y_test).tolist() == [100, 100]
    assert ds.y_train[:5].tolist() == [1, 0, 0, 1, 1]  # 5, 0, 4, 1, 9
    files = sorted((SAMPLE_ROOT / "MNIST" / "raw").iterdir())
    assert [f.name for f in files] == sorted(f"{name}.gz" for name in MNIST_NAMES)
    assert sum(f.stat().st_size for f in files) < 300_000
    sample = read_mnist(SAMPLE_ROOT)
    assert [len(v) for v in sample.values()] == [500, 500, 500, 500]


def test_embedded_sample_is_the_first_500_images(data_root, mnist, tmp_path):
    sample = read_mnist(SAMPLE_ROOT)
    for key in ("x", "y", "x_test", "y_test"):
        np.testing.assert_array_equal(sample[key], mnist[key][:500])
    # make_sample reproduces the committed files byte for byte.
    folder = make_sample(data_root, tmp_path)
    for name in MNIST_NAMES:
        assert (folder / f"{name}.gz").read_bytes() == (SAMPLE_ROOT / "MNIST" / "raw" / f"{name}.gz").read_bytes()


# --- toy data -------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["spiral", "grid"])
def test_toy_shapes_balance_range_determinism(layout):
    x, y = make_toy(layout, 40, seed=3)
    assert x.shape == (40, 2) and y.shape == (40,) and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [20, 20]
    assert float(x.abs().max()) <= 1.0
    x2, y2 = make_toy(layout, 40, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_toy_spiral_follows_reference_and_seed():
    x, y = make_toy("spiral", 20, seed=0)
    angle, radius = np.linspace(0, 24 * np.pi, 20), np.linspace(0.5, 1, 20)
    np.testing.assert_allclose(x.numpy(), np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1))
    assert not all(torch.equal(y, make_toy("spiral", 20, seed=s)[1]) for s in range(1, 5))


def test_toy_grid_is_checkerboard():
    x, y = make_toy("grid", 20)
    assert sorted(set(x[:, 0].tolist())) == pytest.approx([-1, -0.5, 0, 0.5, 1])  # 5 columns
    assert len(set(x[:, 1].tolist())) == 4  # 4 rows
    for a in range(20):
        for b in range(20):
            if float((x[a] - x[b]).abs().sum()) == pytest.approx(0.5):  # horizontal neighbours
                assert y[a] != y[b]


def test_toy_dataset():
    ds = load_dataset(dataset="toy", task="spiral", n_per_class=10, seed=1, dtype=torch.float64)
    assert ds.x_train.shape == (20, 2) and ds.input_shape == (2,) and not ds.is_image
    assert ds.x_test.shape == (0, 2) and ds.y_test.shape == (0,)
    assert torch.equal(ds.mean, torch.zeros(2, dtype=torch.float64))
    assert ds.train_indices.tolist() == list(range(20)) and ds.data_root is None
    assert ds.class_names == ("-1", "+1") and sorted(ds.signs.unique().tolist()) == [-1.0, 1.0]
    assert torch.equal(ds.x_train, make_toy("spiral", 20, seed=1)[0])
    json.dumps(ds.summary())


def test_toy_bad_arguments():
    with pytest.raises(DataError, match=r"Expected `layout` to be one of \['grid', 'spiral'\]. Got 'ring'"):
        make_toy("ring", 10)
    with pytest.raises(DataError, match=r"positive even integer.*Got 7"):
        make_toy("grid", 7)


# --- configuration, registries, data root ---------------------------------------------------------


def test_unknown_names_list_the_registry():
    with pytest.raises(DataError, match=r"Expected `dataset` to be one of \['cifar10', 'mnist', 'toy'\]. Got 'mnsit'"):
        DataConfig(dataset="mnsit")
    with pytest.raises(ValueError, match=r"\['digits', 'odd-even'\] for dataset 'mnist'. Got 'vehicles-animals'"):
        DataConfig(task="vehicles-animals")
    with pytest.raises(DataError, match=r"\['grid', 'spiral'\] for dataset 'toy'. Got 'odd-even'"):
        load_dataset(dataset="toy")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_per_class": 0}, "Expected `n_per_class` to be a positive integer. Got 0."),
        ({"n_per_class": 2.5}, "Expected `n_per_class` to be a positive integer. Got 2.5."),
        ({"test_per_class": -1}, "Expected `test_per_class` to be a positive integer. Got -1."),
        ({"n_per_class": True}, "Expected `n_per_class` to be a positive integer. Got True."),
        ({"seed": "0"}, "Expected `seed` to be an integer. Got '0'."),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(DataError, match=message.replace(".", r"\.")):
        DataConfig(**kwargs)


def test_resolve_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("KKTRECON_DATA", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_root() == tmp_path / "env"
    monkeypatch.delenv("KKTRECON_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert resolve_data_root() == tmp_path / "xdg" / "kktrecon"
        monkeypatch.delenv("XDG_CACHE_HOME")
        assert resolve_data_root() == tmp_path / "home" / ".cache" / "kktrecon"
    else:
        assert resolve_data_root().name in ("kktrecon", "Cache")


def test_default_root_comes_from_env(monkeypatch):
    monkeypatch.setenv("KKTRECON_DATA", str(SAMPLE_ROOT))
    assert load_dataset(n_per_class=3, test_per_class=3).data_root == str(SAMPLE_ROOT)


def test_public_names_exist():
    for name in data_module.__all__:
        assert hasattr(data_module, name), name


def test_docstring_examples():
    assert doctest.testmod(data_module).failed == 0


# --- download (no network: the opener is replaced) ------------------------------------------------


class FakeOpener:
    def __init__(self, payload: bytes):
        self.payload, self.urls = payload, []

    def __call__(self, url, timeout=None):
        self.urls.append(url)
        return io.BytesIO(self.payload)


def test_download_refuses_bad_checksum(tmp_path, monkeypatch):
    opener = FakeOpener(b"not the MNIST archive")
    monkeypatch.setattr(data_module, "_open_url", opener)
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
    monkeypatch.setattr(data_module, "_open_url", FakeOpener(payload))
    folder = download("fake", tmp_path / "root")
    assert folder == tmp_path / "root" / "cifar-10-batches-py"
    assert (folder / "data_batch_1").read_bytes() == b"ok"
    assert not (tmp_path / "escape").exists() and not (tmp_path / "root" / "other").exists()
