"""A user's image folder or .npz (kktrecon.data.folder): exact pixels, and every hostile input refused in one line.

One test per case of the hardening review: 16-bit PNGs, empty class folders, symbolic links, FIFOs,
sizes and npz shapes checked from the headers before any pixel is decoded, decompression bombs.
The audit's own path through the command line is in tests/test_folder_cli.py.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from kktrecon.data import folder as folder_module
from kktrecon.data.folder import load_images
from kktrecon.errors import CorruptDataError, DataError, DataNotFoundError

RNG = np.random.default_rng(0)
GREY = RNG.integers(0, 256, size=(3, 8, 8), dtype=np.uint8)


def _write(root: Path, classes: dict[str, list[np.ndarray]]) -> Path:
    """``root/<class>/<i>.png`` for each array (uint8 → L or RGB, uint16 → I;16)."""
    for name, arrays in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, array in enumerate(arrays):
            Image.fromarray(array).save(root / name / f"{i}.png")
    return root


def _png(width: int, height: int, depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit colour)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


# --- 1. 16-bit greyscale ---------------------------------------------------------------------------------


def test_a_16_bit_png_of_an_8_bit_image_times_257_loads_equal_to_the_8_bit_one(tmp_path) -> None:
    eight = load_images(_write(tmp_path / "8", {"a": [GREY[0]], "b": [GREY[1]]}))
    wide = [(g.astype(np.uint16) * 257) for g in GREY[:2]]
    sixteen = load_images(_write(tmp_path / "16", {"a": [wide[0]], "b": [wide[1]]}))
    assert Image.open(tmp_path / "16" / "a" / "0.png").mode == "I;16"
    np.testing.assert_array_equal(sixteen.x, eight.x)
    assert sixteen.x.shape == (2, 1, 8, 8)


def test_a_16_bit_png_keeps_its_low_bits(tmp_path) -> None:
    values = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000 + 1  # not multiples of 257
    images = load_images(_write(tmp_path, {"a": [values], "b": [values]}))
    np.testing.assert_array_equal(images.x[0, 0], values / 65535.0)


def test_a_16_bit_colour_png_which_pillow_would_cut_to_8_bits_is_refused(tmp_path) -> None:
    _write(tmp_path, {"a": [GREY[0]]})
    rgb = np.full((8, 8, 3), 0x1234, ">u2")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "0.png").write_bytes(_png(8, 8, 16, 2, b"".join(b"\x00" + row.tobytes() for row in rgb)))
    with pytest.raises(DataError, match=r"Expected 8-bit colour or 8- or 16-bit greyscale images\. Got 16-bit RGB"):
        load_images(tmp_path)


# --- 2. empty class folders ------------------------------------------------------------------------------


def test_an_empty_class_folder_is_refused_not_dropped(tmp_path) -> None:
    _write(tmp_path, {"a": [GREY[0], GREY[1]]})
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("no images here")
    with pytest.raises(DataNotFoundError) as info:
        load_images(tmp_path)
    assert str(info.value) == (
        f"Expected at least one image (.png, .jpg, .jpeg, .bmp) in every class folder. Got none in {tmp_path / 'b'}."
    )


def test_names_with_rich_markup_stay_raw_in_the_message(tmp_path) -> None:
    _write(tmp_path, {"a": [GREY[0]]})
    (tmp_path / "[bold]b[red]").mkdir()  # "/" cannot be in a name, but "[" / "]" across a path can close a tag
    with pytest.raises(DataNotFoundError, match=r"Got none in .*/\[bold\]b\[red\]\.$"):
        load_images(tmp_path)


# --- 3. symbolic links -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_symbolic_link_is_refused_and_named_not_followed(tmp_path, kind: str) -> None:
    train = _write(tmp_path / "train", {"a": [GREY[0]], "b": [GREY[1]]})
    held = _write(tmp_path / "held", {"a": [GREY[2]], "b": [GREY[2]]})
    link = train / "a" / "held.png" if kind == "file" else train / "c"
    link.symlink_to(held / "a" / "0.png" if kind == "file" else held / "b")
    with pytest.raises(DataError) as info:
        load_images(train)
    target = held / "a" / "0.png" if kind == "file" else held / "b"
    assert str(info.value) == f"Expected no symbolic links in {train}. Got {link} (a link to {target})."


def test_the_opener_refuses_a_link_swapped_in_after_the_listing(tmp_path) -> None:
    _write(tmp_path, {"a": [GREY[0]]})
    (tmp_path / "link.png").symlink_to(tmp_path / "a" / "0.png")
    with pytest.raises(CorruptDataError, match="could not be read as an image"):
        folder_module._with_image(tmp_path / "link.png", folder_module._layout)


# --- 4. FIFOs and other special files --------------------------------------------------------------------


def _returns_promptly(call) -> BaseException | None:
    """Run ``call`` in a thread; fail if it blocks (as opening a FIFO for reading does)."""
    raised: list[BaseException | None] = [None]

    def target() -> None:
        try:
            call()
        except BaseException as exc:  # handed back to the test
            raised[0] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "blocked on a FIFO"
    return raised[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_named_png_is_refused_before_it_is_opened(tmp_path) -> None:
    _write(tmp_path, {"a": [GREY[0]], "b": [GREY[1]]})
    os.mkfifo(tmp_path / "b" / "pipe.png")
    error = _returns_promptly(lambda: load_images(tmp_path))
    assert isinstance(error, DataError)
    assert str(error) == f"Expected a regular file. Got a FIFO (named pipe) at {tmp_path / 'b' / 'pipe.png'}."
    error = _returns_promptly(lambda: folder_module._with_image(tmp_path / "b" / "pipe.png", folder_module._layout))
    assert isinstance(error, DataError) and "Got a FIFO" in str(error)  # the opener checks again (races)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_given_as_the_source_is_refused(tmp_path) -> None:
    pipe = tmp_path / "data.npz"
    os.mkfifo(pipe)
    error = _returns_promptly(lambda: load_images(pipe))
    assert isinstance(error, DataError)
    assert str(error) == f"Expected an image folder or an .npz file. Got a FIFO (named pipe) at {pipe}."


def test_a_folder_named_png_is_refused(tmp_path) -> None:
    _write(tmp_path, {"a": [GREY[0]], "b": [GREY[1]]})
    (tmp_path / "b" / "odd.png").mkdir()
    with pytest.raises(DataError, match=r"Expected a regular file\. Got a folder at .*odd\.png\.$"):
        load_images(tmp_path)


# --- 5. sizes from the headers, before any pixel -----------------------------------------------------------


@pytest.fixture()
def no_decoding(monkeypatch) -> None:
    """Any pixel decoded fails the test: sizes must come from the headers."""

    def load(self):
        raise AssertionError(f"pixels of {self.size} decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def test_an_image_of_another_size_than_the_model_takes_is_refused_before_decoding(tmp_path, no_decoding) -> None:
    big = np.zeros((600, 500), np.uint8)
    _write(tmp_path, {"a": [big, big], "b": [big]})
    with pytest.raises(DataError) as info:
        load_images(tmp_path, shape=(1, 8, 8))
    assert str(info.value) == (
        f"Expected images of shape (1, 8, 8) (C, H, W), what the model takes. Got (1, 600, 500) in {tmp_path}/a/0.png."
    )


def test_images_of_different_sizes_are_refused_before_decoding(tmp_path, no_decoding) -> None:
    _write(tmp_path, {"a": [GREY[0]], "b": [np.zeros((8, 9, 3), np.uint8)]})
    with pytest.raises(DataError, match=r"Expected images of one size\. Got \(3, 8, 9\) \(C, H, W\) in .*b/0\.png, "):
        load_images(tmp_path)


@pytest.mark.parametrize("side", [40, 64])  # over the warning's limit (1,000 pixels here), over the error's (2,000)
def test_a_decompression_bomb_is_one_data_error(tmp_path, monkeypatch, side: int) -> None:
    _write(tmp_path, {"a": [np.zeros((side, side), np.uint8)], "b": [GREY[0]]})
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError, match=rf"Expected images small enough to decode safely\. Got {tmp_path}/a/0\.png: "):
        load_images(tmp_path, shape=(1, side, side))


def test_a_folder_loads_exactly(tmp_path) -> None:
    rgb = RNG.integers(0, 256, size=(2, 5, 4, 3), dtype=np.uint8)
    images = load_images(_write(tmp_path, {"x": [rgb[0]], "y": [rgb[1], rgb[0]]}), shape=(3, 5, 4))
    np.testing.assert_array_equal(images.x, rgb[[0, 1, 0]].transpose(0, 3, 1, 2) / 255.0)
    assert images.y.tolist() == [0, 1, 1] and images.class_names == ("x", "y")
    assert images.files == tuple(str(tmp_path / c / f) for c, f in (("x", "0.png"), ("y", "0.png"), ("y", "1.png")))


# --- 5. npz: shapes from the .npy headers, labels before pixels ---------------------------------------------


@pytest.fixture()
def no_pixels(monkeypatch) -> None:
    """Reading 'x' fails the test: its shape must be judged from its header."""
    read = folder_module._npz_array

    def only_labels(path: Path, name: str) -> np.ndarray:
        assert name != "x", "the pixels were read"
        return read(path, name)

    monkeypatch.setattr(folder_module, "_npz_array", only_labels)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([0, 1, 0, 10**7], "Got 3 distinct labels from 0 to 10000000."),
        ([0, 2, 2, 0], "Got 2 distinct labels from 0 to 2."),
        ([-1, 0, 1, 1], "Got 3 distinct labels from -1 to 1."),
    ],
)
def test_absurd_or_missing_labels_are_refused_before_the_pixels(tmp_path, no_pixels, labels, message) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.asarray(labels))
    with pytest.raises(DataError) as info:
        load_images(tmp_path / "d.npz", shape=(1, 8, 8))
    expected = f"Expected the labels in {tmp_path / 'd.npz'} to be 0, 1, …, K-1, each with at least one image. "
    assert str(info.value) == expected + message


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (np.zeros((4, 3, 32, 32), np.uint8), [0, 1, 0, 1], r"Expected images of shape \(1, 8, 8\) .*Got \(3, 32, 32\)"),
        (np.zeros((4, 8, 8), np.uint8), [0, 1, 0], r"Expected 'y' in .* to hold 4 integer labels\. Got int64 \(3,\)\."),
        (np.zeros((4, 8, 8), np.uint8), [0.0, 1, 0, 1], r"hold 4 integer labels\. Got float64 \(4,\)\."),
        (np.zeros((4, 2, 8, 8, 1), np.uint8), [0, 1, 0, 1], r"Got uint8 \(4, 2, 8, 8, 1\)\.$"),
        (np.zeros((0, 8, 8), np.uint8), [], r"Got uint8 \(0, 8, 8\)\.$"),
        (np.zeros((4, 8, 8), np.complex64), [0, 1, 0, 1], r"integers or floats\. Got complex64"),
    ],
)
def test_npz_shapes_and_dtypes_are_judged_from_the_headers(tmp_path, no_pixels, x, y, match) -> None:
    np.savez(tmp_path / "d.npz", x=x, y=np.asarray(y))
    with pytest.raises(DataError, match=match) as info:
        load_images(tmp_path / "d.npz", shape=(1, 8, 8))
    assert len(str(info.value)) < 250 and "\n" not in str(info.value)


def _npz_with_header(path: Path, shape: tuple[int, ...], data: bytes) -> Path:
    """An npz whose x.npy header declares ``shape`` but holds ``data``."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    labels = io.BytesIO()
    np.save(labels, np.zeros(shape[0] if shape[0] < 10 else 1, np.int64))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", header.getvalue() + data)
        archive.writestr("y.npy", labels.getvalue())
    return path


def test_a_header_that_promises_more_than_the_member_holds_is_refused(tmp_path, no_pixels) -> None:
    path = _npz_with_header(tmp_path / "d.npz", (10**9, 1, 8, 8), bytes(64))
    with pytest.raises(CorruptDataError, match=r"to hold the \(1000000000, 1, 8, 8\) uint8 array its header declares"):
        load_images(path, shape=(1, 8, 8))


def test_pickled_objects_and_non_zip_files_are_refused(tmp_path) -> None:
    np.savez(tmp_path / "o.npz", x=np.asarray([None, 1], dtype=object), y=np.asarray([0, 1]))
    with pytest.raises(CorruptDataError, match=r"pickles are refused\)\. Got object x\.npy\."):
        load_images(tmp_path / "o.npz")
    (tmp_path / "n.npz").write_bytes(b"not a zip" * 10)
    with pytest.raises(CorruptDataError, match=r"could not be read as an \.npz file: File is not a zip file"):
        load_images(tmp_path / "n.npz")
    np.savez(tmp_path / "m.npz", **{f"a{i}": np.zeros(1) for i in range(9)})
    with pytest.raises(DataError, match=r"Got \['a0', 'a1', 'a2', 'a3', 'a4'\] and 4 more\.$"):
        load_images(tmp_path / "m.npz")


@pytest.mark.parametrize("layout", ["NHW", "NCHW", "NHWC"])
def test_an_npz_loads_exactly_in_each_layout(tmp_path, layout: str) -> None:
    pixels = RNG.integers(0, 256, size=(4, 1, 8, 8), dtype=np.uint8)
    x = {"NHW": pixels[:, 0], "NCHW": pixels, "NHWC": pixels.transpose(0, 2, 3, 1)}[layout]
    np.savez(tmp_path / "d.npz", x=x, y=np.asarray([0, 1, 1, 0]))
    images = load_images(tmp_path / "d.npz", shape=(1, 8, 8), class_names=("0", "1"))
    np.testing.assert_array_equal(images.x, pixels / 255.0)
    assert images.y.tolist() == [0, 1, 1, 0] and images.files[3] == f"{tmp_path / 'd.npz'}[3]"
    floats = load_images(tmp_path / "d.npz", shape=(1, 8, 8)).x
    np.savez(tmp_path / "f.npz", x=floats, y=np.asarray([0, 1, 1, 0]))
    np.testing.assert_array_equal(load_images(tmp_path / "f.npz").x, floats)
