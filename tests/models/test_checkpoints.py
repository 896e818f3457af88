"""Checkpoints: round trip, and every damaged file refused."""

from __future__ import annotations

import json

import pytest
import torch

from kktrecon.models import (
    CheckpointError,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from tests.models.helpers import SMALL


def _saved(tmp_path, dtype=torch.float64):
    model = build_model(SMALL, seed=1, dtype=dtype)
    save_checkpoint(tmp_path, model, {"metrics": {"n_train": 4}})
    return model


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path) -> None:
    model = _saved(tmp_path)
    loaded, manifest = load_checkpoint(tmp_path)
    assert loaded.layers[0].weight.dtype == torch.float64
    assert manifest["metrics"] == {"n_train": 4}
    x = torch.randn(7, 1, 4, 4, dtype=torch.float64)
    assert torch.equal(loaded(x), model(x))


def test_truncated_checkpoint_is_refused(tmp_path) -> None:
    _saved(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path)


def test_checkpoint_not_matching_its_json_is_refused(tmp_path) -> None:
    _saved(tmp_path)
    manifest = json.loads((tmp_path / "model.json").read_text())
    manifest["model"]["hidden"] = [12, 10]
    (tmp_path / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="does not match the architecture"):
        load_checkpoint(tmp_path)


def test_checkpoint_with_nan_is_refused(tmp_path) -> None:
    model = build_model(SMALL)
    with torch.no_grad():
        model.layers[1].weight[0, 0] = float("nan")
    save_checkpoint(tmp_path, model, {})
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        load_checkpoint(tmp_path)


def test_missing_checkpoint_names_the_expected_files(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"model\.safetensors and model\.json"):
        load_checkpoint(tmp_path)
