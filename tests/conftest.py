"""Shared fixtures: the real data subsets next to the repository, and small writable MNIST copies."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from kktrecon.data import SAMPLE_ROOT
from kktrecon.devices import THREADS_ENV

# Long loops would otherwise time both thread counts and take the faster (kktrecon.devices.pick_threads):
# the tests pin torch's default so that their results and call counts never depend on the machine's load.
os.environ.setdefault(THREADS_ENV, str(torch.get_num_threads()))

#: In CI the repository is cloned next to ``shared/``: <clone>/../shared/data.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real MNIST and CIFAR-10 subsets (see shared/data/README.md); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def tmp_mnist(tmp_path: Path) -> Path:
    """A writable data root holding a copy of the embedded MNIST sample (500 train, 500 test images).

    Tests corrupt or delete files in ``tmp_mnist / "MNIST" / "raw"`` without touching the package.
    """
    shutil.copytree(SAMPLE_ROOT / "MNIST", tmp_path / "MNIST")
    return tmp_path


@pytest.fixture
def interrupt_at(monkeypatch: pytest.MonkeyPatch):
    """``interrupt_at(module, name, call)`` makes ``module.name`` raise KeyboardInterrupt on its ``call``-th
    call (a Ctrl-C at a chosen point) and returns a function that puts the original back."""

    def install(module: object, name: str, call: int):
        real = getattr(module, name)
        calls = {"n": 0}

        def interrupting(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == call:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, interrupting)
        return lambda: monkeypatch.setattr(module, name, real)

    return install
