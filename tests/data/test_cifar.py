"""CIFAR-10: selection against an independent read, and pickles that are broken or hostile."""

from __future__ import annotations

import builtins
import os
import pickle
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from kktrecon.data import (
    DATASETS,
    CorruptDataError,
    DataNotFoundError,
    NotEnoughSamplesError,
    load_dataset,
)
from tests.data.oracles import VEHICLES, as_uint8, first_per_class, read_cifar, write_cifar

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


# --- CIFAR-10 file problems (tiny batches written here) -------------------------------------------


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
