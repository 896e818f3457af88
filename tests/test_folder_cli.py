"""Hostile image folders through ``kktrecon audit``: exit code 1, one line naming the file, nothing written.

The loader's cases one by one are in tests/data/test_folder.py; this checks that each reaches the
user as one clean line (an empty class folder, a symbolic link, a FIFO, a name with rich markup).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from kktrecon.cli import app

ARCH = {"input_shape": [1, 4, 4], "layers": ["flatten", {"linear": [16, 8], "bias": True}, "relu",
        {"linear": [8, 1], "bias": False}]}  # fmt: skip


@pytest.fixture()
def user(tmp_path) -> Path:
    """A tiny model (weights, arch) and a valid held-out folder with classes a and b."""
    torch.manual_seed(0)
    layers = torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1, bias=False)
    model = torch.nn.Sequential(*layers)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    (tmp_path / "arch.json").write_text(json.dumps(ARCH))
    for name in ("a", "b"):
        for root in ("train", "held"):
            (tmp_path / root / name).mkdir(parents=True)
            Image.fromarray(np.full((4, 4), 7, np.uint8)).save(tmp_path / root / name / "0.png")
    return tmp_path


def _empty_class(root: Path) -> tuple[str, Path]:
    (root / "train" / "c").mkdir()
    message = "Expected at least one image (.png, .jpg, .jpeg, .bmp) in every class folder. Got none in"
    return message, root / "train" / "c"


def _linked_held_out_image(root: Path) -> tuple[str, Path]:
    (root / "train" / "a" / "1.png").symlink_to(root / "held" / "a" / "0.png")
    return f"Expected no symbolic links in {root / 'train'}. Got", root / "train" / "a" / "1.png"


def _fifo(root: Path) -> tuple[str, Path]:
    os.mkfifo(root / "train" / "b" / "1.png")
    return "Expected a regular file. Got a FIFO (named pipe) at", root / "train" / "b" / "1.png"


def _markup_name(root: Path) -> tuple[str, Path]:
    (root / "train" / "b").rename(root / "train" / "[bold]b[red]")
    (root / "train" / "[bold]b[red]" / "0.png").unlink()
    return "Expected at least one image", root / "train" / "[bold]b[red]"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs or symbolic links assumed on this platform")
@pytest.mark.parametrize("case", [_empty_class, _linked_held_out_image, _fifo, _markup_name])
def test_a_hostile_training_folder_is_one_line_and_exit_code_1(user, case) -> None:
    start, path = case(user)
    args = ["audit", "--weights", str(user / "model.pt"), "--arch", str(user / "arch.json"), "--train",
            str(user / "train"), "--held-out", str(user / "held"), "--out", str(user / "out"),
            "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith(f"error: {start}") and str(path) in lines[0], lines[0]
    assert not (user / "out").exists()
