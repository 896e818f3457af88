"""MNIST: selection against independent reads of the IDX files, every file problem, the embedded sample."""

from __future__ import annotations

import gzip
import json
import tracemalloc

import numpy as np
import pytest
import torch

from kktrecon.data import (
    SAMPLE_ROOT,
    CorruptDataError,
    DataConfig,
    DataError,
    DataNotFoundError,
    NotEnoughSamplesError,
    load_dataset,
    make_sample,
)
from tests.data.oracles import (
    MNIST_NAMES,
    as_uint8,
    first_per_class,
    raw_dir,
    read_idx,
    read_mnist,
    write_gz_idx,
    write_idx_bomb,
)

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


# --- MNIST file problems (on copies of the embedded sample) ---------------------------------------


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


def load_traced(root) -> tuple[CorruptDataError, int]:
    """The error load_dataset raises on ``root``, and the peak of memory traced while it ran."""
    tracemalloc.start()
    try:
        with pytest.raises(CorruptDataError) as info:
            load_dataset(data_root=root, n_per_class=5, test_per_class=5)
        return info.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_idx_bomb_is_refused_without_inflating(tmp_mnist, suffix):
    # A header promising 5 images, then 200 MiB of zeros: ~1 MB gzipped, sparse when plain. The old
    # reader decompressed (or read) all of it before comparing with the header.
    zeros = 200 << 20
    path = raw_dir(tmp_mnist) / f"train-images-idx3-ubyte{suffix}"
    write_idx_bomb(path, 2051, (5, 28, 28), zeros)
    assert path.stat().st_size < 2 << 20 or suffix == ""
    error, peak = load_traced(tmp_mnist)
    assert str(path) in str(error)
    assert "header promises 5 items, so expected 3936 bytes" in str(error) and "(trailing bytes)" in str(error)
    assert peak < 16 << 20, f"peak {peak / 2**20:.1f} MiB for {zeros >> 20} MiB of payload"


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_idx_header_promising_too_many_items_is_refused_before_reading(tmp_mnist, suffix):
    # IDX counts are 32-bit, so 4e9 images (3 TB) is about the most a header can promise. The old
    # reader read the whole payload first (64 MiB here) and then called the file "truncated".
    path = raw_dir(tmp_mnist) / f"train-images-idx3-ubyte{suffix}"
    write_idx_bomb(path, 2051, (4_000_000_000, 28, 28), 64 << 20)
    error, peak = load_traced(tmp_mnist)
    assert f"{path}: expected an IDX header promising at most 100000000 items. Got 4000000000" in str(error)
    assert "refused before reading the payload" in str(error)
    assert peak < 16 << 20, f"peak {peak / 2**20:.1f} MiB"


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
