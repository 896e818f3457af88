"""CIFAR-10: selection against an independent read, and pickles that are broken or hostile."""

from __future__ import annotations

import builtins
import os
import pickle
import shlex
import subprocess
import sys
import time
import tracemalloc
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
from tests.data.oracles import (
    VEHICLES,
    as_uint8,
    first_per_class,
    op_array,
    op_batch,
    op_bytes,
    op_call,
    op_dtype,
    op_global,
    op_int,
    op_list,
    op_str,
    op_tuple,
    read_cifar,
    write_cifar,
    write_cifar_py2,
)

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
        # Labels that used to be truncated (floats, bools) or flattened (2-D, nested) without a word.
        (lambda b: b.update(labels=[v + 0.5 for v in b["labels"]]), "Got the opcode BINFLOAT at byte"),
        (lambda b: b.update(labels=[v == 1 for v in b["labels"]]), "flat list of integers. Got False at index 0"),
        (lambda b: b.update(labels=[[v] for v in b["labels"]]), "flat list of integers. Got a list at index 0"),
        (lambda b: b.update(labels=np.asarray(b["labels"]) + 0.5), r"1-D integer array\. Got float64 array of shape"),
        (lambda b: b.update(labels=np.asarray(b["labels"])[:, None]), r"Got int64 array of shape \(12, 1\)"),
        (lambda b: b.update(labels=np.asarray(b["labels"])[:6]), "holds 12 images but 6 labels"),
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


def test_cifar_labels_as_integer_arrays_are_read(tmp_path):
    folder = write_cifar(tmp_path)
    expected = load_dataset(dataset="cifar10", task="classes", data_root=tmp_path, n_per_class=1, test_per_class=1)
    for name, dtype in (("data_batch_1", ">i4"), ("data_batch_2", "<u2"), ("test_batch", "u1")):
        batch = pickle.loads((folder / name).read_bytes())
        batch["labels"] = np.asarray(batch["labels"], dtype=dtype)
        (folder / name).write_bytes(pickle.dumps(batch, protocol=5 if name == "test_batch" else 2))
    ds = load_dataset(dataset="cifar10", task="classes", data_root=tmp_path, n_per_class=1, test_per_class=1)
    assert ds.y_train.tolist() == expected.y_train.tolist() and ds.y_train.dtype == torch.int64
    assert torch.equal(ds.x_train, expected.x_train) and ds.y_test.tolist() == expected.y_test.tolist()


def test_cifar_python2_batches_read_like_plain_pickle(tmp_path):
    # The official files were written by Python 2's cPickle: str keys and pixels (BINSTRING, read as
    # latin-1), numpy.core globals, dtype('u1', 0, 1), a 'filenames' list.
    write_cifar_py2(tmp_path / "py2")
    write_cifar(tmp_path / "py3")
    oracle = read_cifar(tmp_path / "py2")
    np.testing.assert_array_equal(oracle["x"], read_cifar(tmp_path / "py3")["x"])
    ds = load_dataset(dataset="cifar10", task="classes", data_root=tmp_path / "py2", n_per_class=5, test_per_class=1)
    expected = first_per_class(oracle["y"], 5, 10)
    assert ds.train_indices.tolist() == expected and ds.y_train.tolist() == oracle["y"][expected].tolist()
    np.testing.assert_array_equal(as_uint8(ds.x_train, ds.mean), oracle["x"][expected])


# --- pickles that stay within numpy's own globals but abuse them ----------------------------------

# The labels of a one-image batch as an array of dtype 'O8' whose BUILD state sets flags 0: without
# the list-pickle flag numpy's array state copies the 8 bytes "AAAAAAAA" in as raw data, and the
# object array then uses them as a PyObject pointer (0x4141414141414141).
OBJECT_DTYPE_BATCH = op_batch(
    op_array((1,), op_dtype("O8", flags=0), op_bytes(b"A" * 8)),
    op_array((1, 3072), op_dtype("u1"), op_bytes(bytes(3072))),
)
LOAD_CIFAR = (
    "import sys\n"
    "from kktrecon.data import load_dataset\n"
    "load_dataset(dataset='cifar10', task='classes', data_root=sys.argv[1], n_per_class=1, test_per_class=1)\n"
)
UNPICKLE_AND_CONVERT = (
    "import pickle, sys\n"
    "import numpy as np\n"
    "batch = pickle.loads(open(sys.argv[1], 'rb').read())\n"
    "np.asarray(batch['labels'], dtype=np.int64)\n"
)


def test_cifar_object_dtype_pickle_is_refused_not_a_crash(tmp_path):
    folder = write_cifar(tmp_path)
    path = folder / "data_batch_1"
    path.write_bytes(OBJECT_DTYPE_BATCH)
    assert len(OBJECT_DTYPE_BATCH) < 3500
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))}
    # Run in a child: before this reader, the restricted pickle.Unpickler (which allowed exactly
    # numpy.dtype, numpy.ndarray and _reconstruct) loaded this file and the label conversion killed
    # the process with SIGSEGV (rc 139 in a shell, -11 here).
    result = subprocess.run(
        [sys.executable, "-c", LOAD_CIFAR, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"CorruptDataError: {path} tried to load a forbidden global (numpy.dtype with 'O8'" in result.stderr
    # The payload is live: numpy's own unpickling of it, then the same conversion, does crash.
    live = subprocess.run([sys.executable, "-c", UNPICKLE_AND_CONVERT, str(path)], capture_output=True, timeout=120)
    assert live.returncode < 0, (live.returncode, live.stderr[-2000:])


DATA_12 = op_array((12, 3072), op_dtype("u1"), op_bytes(bytes(12 * 3072)))
LABELS_12 = op_list(*(op_int(i % 10) for i in range(12)))
EMPTY_ARRAY = op_call(
    op_global("numpy._core.multiarray", "_reconstruct"),
    op_global("numpy", "ndarray"),
    op_tuple(op_int(0)),
    op_bytes(b"b"),
)


@pytest.mark.parametrize(
    ("labels", "data", "message"),
    [
        # dtype BUILD states that would turn a plain dtype into something else (object, structured).
        (
            op_array((12,), op_dtype("u8", flags=0x3F), op_bytes(b"A" * 96)),
            DATA_12,
            r"Got a numpy\.dtype state with flags 63 \(expected 0",
        ),
        (
            op_array((12,), op_dtype("u1", names=op_tuple(op_str("a")), fields=b"}"), op_bytes(b"A" * 12)),
            DATA_12,
            "Got a numpy.dtype state with a subarray, names or fields",
        ),
        (op_array((12,), op_dtype("V8"), op_bytes(b"A" * 96)), DATA_12, r"forbidden global \(numpy\.dtype with 'V8'"),
        # numpy.ndarray(shape, dtype) called directly: an array of uninitialised memory (accepted before).
        (
            LABELS_12,
            op_call(op_global("numpy", "ndarray"), op_tuple(op_int(12), op_int(3072)), op_dtype("u1")),
            r"forbidden global \(numpy\.ndarray called directly",
        ),
        (LABELS_12, EMPTY_ARRAY, r"Got an ndarray without its data \(no BUILD\) under the key 'data'"),
        (
            LABELS_12,
            op_array((12, 3072), op_dtype("u1"), op_bytes(bytes(100))),
            r"shape \(12, 3072\) and dtype uint8 with 100 bytes \(expected 36864\)",
        ),
        (LABELS_12, op_array((12, 3072), op_dtype("u1"), op_list(op_int(0))), r"data is a list \(an object array\)"),
    ],
    ids=["dtype-flags", "dtype-fields", "void-dtype", "ndarray-called", "no-build", "byte-count", "list-data"],
)
def test_cifar_numpy_globals_cannot_build_unsafe_arrays(tmp_path, labels, data, message):
    folder = write_cifar(tmp_path)
    (folder / "data_batch_4").write_bytes(op_batch(labels, data))
    with pytest.raises(CorruptDataError, match=rf"data_batch_4.*{message}"):
        load_dataset(dataset="cifar10", task="classes", data_root=tmp_path, n_per_class=1, test_per_class=1)


def test_cifar_nested_labels_are_refused_before_allocating(tmp_path):
    # "Billion laughs": a 12-entry label list whose entries are one memoised list of 1,000 lists,
    # each the same memoised list of 1,000 zeros: a 6 KB file that names 12 million labels. The
    # old reader flattened it with np.asarray (96 MB, then "holds 12 images but 12000000 labels");
    # each further level of nesting multiplies that by 1,000.
    zeros = op_list(*[op_int(0)] * 1000) + b"q\x01"  # BINPUT 1
    thousand = b"](" + zeros + b"h\x01" * 999 + b"e" + b"q\x02"  # BINGET 1
    labels = b"](" + thousand + b"h\x02" * 11 + b"e"
    folder = write_cifar(tmp_path)
    (folder / "data_batch_5").write_bytes(op_batch(labels, DATA_12))
    assert (folder / "data_batch_5").stat().st_size < 50_000
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(CorruptDataError, match=r"data_batch_5: .*flat list of integers\. Got a list at index 0"):
            load_dataset(dataset="cifar10", task="classes", data_root=tmp_path, n_per_class=1, test_per_class=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 20
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB"


def test_cifar_memo_cannot_multiply_one_big_string(tmp_path):
    # One 1 MiB string, memoised, then encoded 200 times through BINGET: 200 MiB from a 1 MB file.
    # The old reader built all of it (and then ignored 'filenames').
    def encode(text: bytes) -> bytes:
        return op_call(op_global("_codecs", "encode"), text, op_str("latin1"))

    copies = b"](" + encode(op_str("A" * (1 << 20)) + b"q\x07") + encode(b"h\x07") * 199 + b"e"
    batch = op_batch(LABELS_12, DATA_12)[:-2] + op_str("filenames") + copies + b"u."
    folder = write_cifar(tmp_path)
    (folder / "test_batch").write_bytes(batch)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptDataError, match=r"test_batch: .*over 4 times the size of the file"):
            load_dataset(dataset="cifar10", task="classes", data_root=tmp_path, n_per_class=1, test_per_class=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"peak {peak / 2**20:.1f} MiB"
