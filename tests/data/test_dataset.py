"""Configuration, registries and the data root."""

from __future__ import annotations

import sys

import pytest

import kktrecon.data
from kktrecon.data import (
    SAMPLE_ROOT,
    DataConfig,
    DataError,
    load_dataset,
    resolve_data_root,
)

# --- configuration, registries, data root ---------------------------------------------------------


def test_unknown_names_list_the_registry():
    with pytest.raises(DataError, match=r"Expected `dataset` to be one of \['cifar10', 'mnist', 'toy'\]. Got 'mnsit'"):
        DataConfig(dataset="mnsit")
    tasks = r"\['digit-value', 'digits', 'odd-even'\]"
    with pytest.raises(ValueError, match=rf"{tasks} for dataset 'mnist'. Got 'vehicles-animals'"):
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
    for name in kktrecon.data.__all__:
        assert hasattr(kktrecon.data, name), name
