"""CIFAR-10 (Krizhevsky 2009) as the official python pickle batches under ``cifar-10-batches-py/``.

A pickle can run arbitrary code when loaded, and even numpy's own unpickling helpers can be steered
into building object arrays from attacker bytes (a dtype whose state hides that it holds pointers).
So these batches are never given to :mod:`pickle`: :func:`pickletools.genops` parses the opcodes
(executing nothing) and a small stack machine here builds only dicts, lists, tuples, numbers,
strings and numpy arrays of plain numbers, checking every argument before numpy sees it.
"""

from __future__ import annotations

import math
import pickletools
from pathlib import Path
from typing import Any

import numpy as np

from kktrecon.data.files import build_from_files, check_files
from kktrecon.data.registry import DATASETS, Archive, DatasetSpec, Source, Task, register_dataset
from kktrecon.errors import CorruptDataError

__all__ = ["read_cifar_batch"]


class _Refused(Exception):
    """The pickle asks for something a CIFAR-10 batch never needs; nothing of it was run."""

    where = ""  # " at byte N": the refused opcode, set by _load


class _ForbiddenGlobal(_Refused):
    """A global outside the allowed few, or an allowed one called with refused arguments."""


class _Malformed(Exception):
    """The opcodes do not form a pickle (stack underflow, unknown memo key, no STOP)."""

    where = ""  # " at byte N": the opcode that failed, set by _load


class _Global:
    """One of the few globals a batch may name; a token, never the function itself."""

    def __init__(self, name: str) -> None:
        self.name = name


_NDARRAY, _DTYPE = _Global("numpy.ndarray"), _Global("numpy.dtype")
_RECONSTRUCT, _FROMBUFFER = _Global("numpy._core.multiarray._reconstruct"), _Global("numpy._core.numeric._frombuffer")
_ENCODE = _Global("_codecs.encode")
_GLOBALS: dict[tuple[str, str], _Global] = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DTYPE,
    ("_codecs", "encode"): _ENCODE,  # protocol-2 pickles written by Python 3 store bytes as encode(text, "latin1")
    **{(f"{package}.multiarray", "_reconstruct"): _RECONSTRUCT for package in ("numpy.core", "numpy._core")},
    **{(f"{package}.numeric", "_frombuffer"): _FROMBUFFER for package in ("numpy.core", "numpy._core")},  # protocol 5
}
# Plain numbers only: no object 'O', void 'V', strings, datetimes or structured dtypes.
_DTYPE_CODES = frozenset({"b1", "f2", "f4", "f8", *(f"{k}{n}" for k in "iu" for n in (1, 2, 4, 8))})
_MAX_NDIM = 32


class _DtypeSpec:
    """``numpy.dtype(code, 0, 1)`` with a checked code; BUILD may set its byte order once."""

    def __init__(self, code: str) -> None:
        self.code, self.byteorder, self.built = code, "=", False

    def resolve(self) -> np.dtype:
        return np.dtype(self.byteorder + self.code)


class _PendingArray:
    """``_reconstruct(ndarray, (0,), b"b")``: an array whose shape, dtype and bytes BUILD must supply."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None


def _describe(value: Any) -> str:
    """A short description of an attacker-made value that never walks or hashes a nested structure."""
    if isinstance(value, _Global):
        return value.name
    if value is None or type(value) in (bool, int, float):
        text = repr(value)
        return text if len(text) <= 40 else text[:40] + "…"
    if type(value) in (str, bytes, bytearray):
        return repr(value[:40]) + ("…" if len(value) > 40 else "")
    kind = {_DtypeSpec: "numpy.dtype", _PendingArray: "numpy.ndarray"}.get(type(value), type(value).__name__)
    return f"a {kind}"


def _is_flag(value: Any, expected: bool) -> bool:
    return type(value) in (bool, int) and value == expected


def _shape(value: Any) -> tuple[int, ...]:
    if type(value) is not tuple or len(value) > _MAX_NDIM or not all(type(d) is int and 0 <= d < 2**63 for d in value):
        raise _Refused(f"an array shape {_describe(value)} (expected a tuple of at most {_MAX_NDIM} sizes)")
    return value


def _array_from_bytes(raw: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    """numpy's array from raw bytes, built only after the byte count matches shape × item size."""
    if not isinstance(dtype, _DtypeSpec):
        raise _Refused(f"an ndarray whose dtype is {_describe(dtype)}")
    if type(raw) is list:
        raise _Refused("an ndarray whose data is a list (an object array)")
    if type(raw) is str:  # Python 2 pickles hold the bytes as a string, decoded as latin-1
        raw = raw.encode("latin-1")
    if type(raw) not in (bytes, bytearray):
        raise _Refused(f"an ndarray whose data is {_describe(raw)} (expected bytes)")
    shape, resolved = _shape(shape), dtype.resolve()
    expected = math.prod(shape) * resolved.itemsize
    if len(raw) != expected:
        raise _Refused(f"an ndarray of shape {shape} and dtype {resolved} with {len(raw)} bytes (expected {expected})")
    try:
        return np.frombuffer(raw, dtype=resolved).reshape(shape, order=order).copy()
    except ValueError:  # an empty array whose other sizes multiply past what numpy can index
        raise _Refused(f"an ndarray of shape {shape}, larger than numpy can hold") from None


def _dtype(args: tuple) -> _DtypeSpec:
    plain = len(args) == 3 and type(args[0]) is str and args[0] in _DTYPE_CODES
    if plain and _is_flag(args[1], False) and _is_flag(args[2], True):
        return _DtypeSpec(args[0])
    what = _describe(args[0]) if len(args) == 3 else f"{len(args)} arguments"
    raise _ForbiddenGlobal(f"numpy.dtype with {what}: only bool, int, uint and float dtypes are allowed")


def _latin1_encode(args: tuple) -> bytes:
    if len(args) != 2 or type(args[0]) is not str or type(args[1]) is not str or args[1] not in ("latin1", "latin-1"):
        encoding = _describe(args[1]) if len(args) == 2 else f"{len(args)} arguments"
        raise _ForbiddenGlobal(f"_codecs.encode with encoding {encoding}")
    try:
        return args[0].encode("latin-1")
    except UnicodeEncodeError:
        raise _Refused("_codecs.encode of text outside latin-1") from None


def _reconstruct(args: tuple) -> _PendingArray:
    empty = len(args) == 3 and args[0] is _NDARRAY and type(args[1]) is tuple and args[1] == (0,)
    if not empty or type(args[1][0]) is not int or type(args[2]) not in (bytes, str) or args[2] not in (b"b", "b"):
        raise _ForbiddenGlobal("numpy _reconstruct with arguments other than (numpy.ndarray, (0,), b'b')")
    return _PendingArray()


def _frombuffer(args: tuple) -> np.ndarray:
    if len(args) != 4 or type(args[3]) is not str or args[3] not in ("C", "F"):
        raise _ForbiddenGlobal("numpy _frombuffer with arguments other than (bytes, dtype, shape, 'C' or 'F')")
    return _array_from_bytes(args[0], args[1], args[2], args[3])


def _global(module: Any, name: Any) -> _Global:
    """GLOBAL / STACK_GLOBAL: a token for one of the allowed names; nothing is imported."""
    if type(module) is str and type(name) is str:
        if (module, name) in _GLOBALS:
            return _GLOBALS[(module, name)]
        raise _ForbiddenGlobal(f"{module[:80]}.{name[:80]}")
    raise _ForbiddenGlobal(f"a global named by {_describe(module)} and {_describe(name)}")


def _call(func: Any, args: Any) -> Any:
    """REDUCE: each allowed global with its arguments checked; numpy itself is never called on them."""
    if not isinstance(func, _Global):
        raise _Refused(f"a call of {_describe(func)}")
    if type(args) is not tuple:
        raise _Refused(f"a call of {func.name} with {_describe(args)} as its arguments")
    if func is _DTYPE:
        return _dtype(args)
    if func is _ENCODE:
        return _latin1_encode(args)
    if func is _RECONSTRUCT:
        return _reconstruct(args)
    if func is _FROMBUFFER:
        return _frombuffer(args)
    raise _ForbiddenGlobal("numpy.ndarray called directly, which makes an array without its data")


def _set_dtype_state(spec: _DtypeSpec, state: Any) -> None:
    """BUILD on a dtype: only a byte order; names, fields, subarrays and flags would change what it is."""
    plain = type(state) is tuple and (
        (len(state) == 8 and type(state[0]) is int and state[0] == 3)
        or (len(state) == 9 and type(state[0]) is int and state[0] == 4 and state[8] is None)
    )
    if not plain or type(state[1]) is not str or state[1] not in ("<", ">", "=", "|"):
        raise _Refused(f"a numpy.dtype state {_describe(state)} (expected version 3 with a byte order)")
    if state[2] is not None or state[3] is not None or state[4] is not None:
        raise _Refused("a numpy.dtype state with a subarray, names or fields (only plain number dtypes)")
    if not all(type(v) is int for v in state[5:7]) or type(state[7]) is not int or state[7] != 0:
        raise _Refused(f"a numpy.dtype state with flags {_describe(state[7])} (expected 0: plain numbers)")
    spec.byteorder, spec.built = "=" if state[1] == "|" else state[1], True


def _fill_array(pending: _PendingArray, state: Any) -> None:
    """BUILD on ``_reconstruct``'s empty array: (version 1, shape, dtype, is_fortran, raw bytes)."""
    if type(state) is not tuple or len(state) != 5 or type(state[0]) is not int or state[0] != 1:
        raise _Refused(f"a numpy.ndarray state {_describe(state)} (expected (1, shape, dtype, is_fortran, bytes))")
    if not (_is_flag(state[3], False) or _is_flag(state[3], True)):
        raise _Refused(f"a numpy.ndarray state with is_fortran {_describe(state[3])}")
    pending.array = _array_from_bytes(state[4], state[2], state[1], "F" if state[3] else "C")


def _build(obj: Any, state: Any) -> None:
    if isinstance(obj, _DtypeSpec) and not obj.built:
        _set_dtype_state(obj, state)
    elif isinstance(obj, _PendingArray) and obj.array is None:
        _fill_array(obj, state)
    else:
        raise _Refused(f"BUILD on {_describe(obj)}")


_PUSH_ARG = frozenset(
    {
        *("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1"),
        *("UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"),
        *("STRING", "BINSTRING", "SHORT_BINSTRING"),  # Python 2 strings: genops decodes them as latin-1
        *("BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"),
    }
)
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_TUPLE_SIZES = {"EMPTY_TUPLE": 0, "TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}


class _Machine:
    """The stack, mark stack and memo of a pickle, run one opcode at a time on checked values."""

    def __init__(self, size: int) -> None:
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        # Bytes that calls may create: a legitimate batch makes each array (and at most one bytes
        # copy of it) once, but the memo lets a small file name one big string in many calls.
        self.budget = 4 * size + (1 << 20)

    def charge(self, made: Any) -> None:
        if isinstance(made, _PendingArray):
            made = made.array
        self.budget -= made.nbytes if isinstance(made, np.ndarray) else len(made) if type(made) is bytes else 0
        if self.budget < 0:
            raise _Refused("arrays and strings over 4 times the size of the file (one big string used many times?)")

    def pop(self, count: int = 1) -> list[Any]:
        if len(self.stack) < count:
            raise _Malformed("stack underflow")
        items = self.stack[len(self.stack) - count :]
        del self.stack[len(self.stack) - count :]
        return items

    def pop_mark(self) -> list[Any]:
        if not self.metastack:
            raise _Malformed("no MARK to pop to")
        items, self.stack = self.stack, self.metastack.pop()
        return items

    def peek(self) -> Any:
        if not self.stack:
            raise _Malformed("stack underflow")
        return self.stack[-1]

    def top(self, kind: type) -> Any:
        if type(self.peek()) is not kind:
            raise _Refused(f"adding items to {_describe(self.stack[-1])} (expected a {kind.__name__})")
        return self.stack[-1]

    def set_items(self, items: list[Any]) -> None:
        target = self.top(dict)
        if len(items) % 2:
            raise _Malformed("a dict item without a value")
        for key, value in zip(items[::2], items[1::2], strict=True):
            if type(key) not in (str, bytes):  # only strings are hashed: a nested tuple key could take forever
                raise _Refused(f"a dict key {_describe(key)} (expected a string)")
            target[key] = value

    def step(self, name: str, arg: Any) -> None:
        """Apply one opcode; anything not listed here is refused before it does anything."""
        if name in _PUSH_ARG:
            self.stack.append(arg)
        elif name in _CONSTANTS:
            self.stack.append(_CONSTANTS[name])
        elif name in _TUPLE_SIZES:
            self.stack.append(tuple(self.pop(_TUPLE_SIZES[name])))
        elif name in ("PROTO", "FRAME"):  # genops reads framed opcodes like any others
            if name == "PROTO" and not 0 <= arg <= 5:
                raise _Refused(f"pickle protocol {arg}")
        elif name == "MARK":
            self.metastack.append(self.stack)
            self.stack = []
        elif name in ("EMPTY_DICT", "EMPTY_LIST"):
            self.stack.append({} if name == "EMPTY_DICT" else [])
        elif name == "TUPLE":
            items = self.pop_mark()  # before naming self.stack: popping the mark replaces it
            self.stack.append(tuple(items))
        elif name in ("SETITEM", "SETITEMS"):
            self.set_items(self.pop(2) if name == "SETITEM" else self.pop_mark())
        elif name in ("APPEND", "APPENDS"):
            items = self.pop() if name == "APPEND" else self.pop_mark()
            self.top(list).extend(items)
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            self.memo[len(self.memo) if name == "MEMOIZE" else arg] = self.peek()
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if arg not in self.memo:
                raise _Malformed(f"memo key {arg} was never stored")
            self.stack.append(self.memo[arg])
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            module, attr = arg.split(" ", 1) if name == "GLOBAL" else self.pop(2)
            self.stack.append(_global(module, attr))
        elif name == "REDUCE":
            func, args = self.pop(2)
            self.stack.append(_call(func, args))
            self.charge(self.stack[-1])
        elif name == "BUILD":
            (state,) = self.pop()
            _build(self.peek(), state)
            self.charge(self.stack[-1])
        else:
            raise _Refused(f"the opcode {name}")


def _load(data: bytes) -> Any:
    """Run the opcodes of ``data``; raises with the byte position of the opcode that was refused."""
    machine = _Machine(len(data))
    position = 0
    try:
        for opcode, arg, pos in pickletools.genops(data):
            position = pos
            if opcode.name == "STOP":
                return machine.peek()
            machine.step(opcode.name, arg)
    except (_Refused, _Malformed) as err:
        err.where = f" at byte {position}"
        raise
    raise _Malformed("no STOP opcode")  # genops raises before this; kept for the type checker


def _finish_arrays(obj: Any) -> Any:
    """Swap the arrays that BUILD filled in for their placeholders among a batch's values."""
    if type(obj) is not dict:
        return obj
    for key, value in obj.items():
        if isinstance(value, _PendingArray):
            if value.array is None:
                raise _Refused(f"an ndarray without its data (no BUILD) under the key {_describe(key)}")
            obj[key] = value.array
    return obj


def _unpickle(path: Path) -> Any:
    try:
        return _finish_arrays(_load(path.read_bytes()))
    except _ForbiddenGlobal as err:
        raise CorruptDataError(
            f"{path} tried to load a forbidden global ({err}){err.where}; only numpy arrays may be "
            "built from a data pickle, so it was refused without running anything. Is this really a CIFAR-10 batch?"
        ) from None
    except _Refused as err:
        raise CorruptDataError(
            f"{path}: expected a CIFAR-10 batch pickle (dicts, lists, numbers, strings and numpy arrays of "
            f"numbers). Got {err}{err.where}; it was refused without running anything."
        ) from None
    except _Malformed as err:
        raise CorruptDataError(f"{path} is not a readable pickle (truncated or corrupt?): {err}{err.where}.") from None
    except ValueError as err:  # genops: truncated data, an unknown opcode, a malformed argument
        raise CorruptDataError(f"{path} is not a readable pickle (truncated or corrupt?): {err}") from None


def _check_labels(path: Path, labels: Any, count: int) -> np.ndarray:
    """A flat list of ints or a 1-D integer array, checked element by element before numpy sees it.

    Types come first: a nested list (which may hold one big list many times through the memo) is
    refused at its first element, so it never gets flattened or allocated.
    """
    if type(labels) is np.ndarray:
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise CorruptDataError(
                f"{path}: expected 'labels' to be a list of integers or a 1-D integer array. "
                f"Got {labels.dtype} array of shape {labels.shape}."
            )
    elif type(labels) is list:
        bad = next((i for i, value in enumerate(labels) if type(value) is not int), None)
        if bad is not None:
            raise CorruptDataError(
                f"{path}: expected 'labels' to be a flat list of integers. Got {_describe(labels[bad])} at index {bad}."
            )
    else:
        raise CorruptDataError(f"{path}: expected 'labels' to be a list of integers. Got {_describe(labels)}.")
    if len(labels) != count:
        raise CorruptDataError(f"{path} holds {count} images but {len(labels)} labels.")
    if len(labels):
        low, high = (int(labels.min()), int(labels.max())) if type(labels) is np.ndarray else (min(labels), max(labels))
        if low < 0 or high > 9:
            raise CorruptDataError(f"{path}: expected labels 0-9. Got values in [{low}, {high}].")
    return np.asarray(labels, dtype=np.int64)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one batch file, every value checked."""
    obj = _unpickle(path)
    if not isinstance(obj, dict):
        raise CorruptDataError(f"{path}: expected a dict with 'data' and 'labels'. Got {_describe(obj)}.")
    batch = {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    if "data" not in batch or "labels" not in batch:
        raise CorruptDataError(f"{path}: expected keys 'data' and 'labels'. Got {sorted(batch)}.")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else _describe(data)
        raise CorruptDataError(f"{path}: expected 'data' to be a uint8 array of shape (N, 3072). Got {got}.")
    labels = _check_labels(path, batch["labels"], len(data))
    # Rows are channel-major: 1024 red, 1024 green, 1024 blue values, each row by row.
    return data.reshape(-1, 3, 32, 32), labels


def _read_cifar10(root: Path) -> Source:
    spec = DATASETS["cifar10"]
    files = check_files(spec, root)
    train = [read_cifar_batch(files[name]) for name in spec.train_files]
    x_test, y_test = read_cifar_batch(files[spec.test_files[0]])
    return Source(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), x_test, y_test)


_CIFAR_ARCHIVES = (
    Archive(
        "cifar-10-python.tar.gz",
        ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
        "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
        170498071,
        "cifar-10-python.tar.gz",
        extract=("cifar-10-batches-py/",),
    ),
)
_CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

register_dataset(
    DatasetSpec(
        name="cifar10",
        display_name="CIFAR-10",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        input_shape=(3, 32, 32),
        match_downsample=2,
        tasks={
            "vehicles-animals": Task(
                "vehicles-animals",
                ("vehicles", "animals"),
                tuple(0 if c in (0, 1, 8, 9) else 1 for c in range(10)),
                "airplane, automobile, ship, truck = 0; animals = 1",
            ),
            "classes": Task("classes", _CIFAR_CLASSES, tuple(range(10)), "the ten classes"),
        },
        reader=_read_cifar10,
        build=build_from_files,
        archives=_CIFAR_ARCHIVES,
    )
)
