"""The owner's audit: initial weights, recipe, preprocessing and a factory as inputs; every bad one refused.

The user's model is trained here in plain PyTorch from its default initialisation by minibatch SGD with
momentum (the regime the KKT attack cannot read, METHOD §6); its initial weights are kept as users can.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from kktrecon.auditing import audit
from kktrecon.cli import app
from kktrecon.data import SAMPLE_ROOT, load_dataset

HIDDEN = 64
ARCH = {"input_shape": [1, 28, 28], "layers": ["flatten", {"linear": [784, HIDDEN], "bias": True}, "relu",
        {"linear": [HIDDEN, HIDDEN], "bias": True}, "relu", {"linear": [HIDDEN, 1], "bias": True}]}  # fmt: skip
FACTORY = f"""
import torch
def make_model():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, {HIDDEN}), torch.nn.ReLU(),
                               torch.nn.Linear({HIDDEN}, {HIDDEN}), torch.nn.ReLU(), torch.nn.Linear({HIDDEN}, 1))
def not_a_model():
    return 3
"""
NORMALIZE = (0.1307, 0.3081)
QUICK = {"trials": 1, "iterations": 5, "batch": 1, "budget_s": 120, "progress": False, "device": "cpu"}


def _write_folder(folder: Path, images: torch.Tensor, labels: list[int]) -> None:
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        target = folder / ("even" if label == 0 else "odd")
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(img[0].numpy() * 255).astype(np.uint8)).save(target / f"{i:03d}.png")


def _users_model(x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> tuple[torch.nn.Sequential, dict]:
    """Default init, minibatch SGD with momentum on Normalize()d inputs; the model and its initial state."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, HIDDEN),
        torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 1),
    )  # fmt: skip
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for step in range(200):
        rows = torch.arange(step * 4, step * 4 + 4) % len(x)
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(x[rows])[:, 0], y[rows].float()).backward()
        opt.step()
    return model, initial


@pytest.fixture(scope="module")
def owner(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("owner")
    ds = load_dataset(data_root=SAMPLE_ROOT, n_per_class=5, test_per_class=50)
    images, held = (ds.x_train + ds.mean).clamp(0, 1), (ds.x_test + ds.mean).clamp(0, 1)
    _write_folder(root / "train", images, ds.y_train.tolist())
    _write_folder(root / "held", held, ds.y_test.tolist())
    pixels = torch.round(images * 255) / 255  # what the PNGs hold
    model, initial = _users_model((pixels - NORMALIZE[0]) / NORMALIZE[1], ds.y_train)
    torch.save(model.state_dict(), root / "model.pt")
    save_file(initial, str(root / "init.safetensors"))
    torch.save(_users_model(pixels, ds.y_train, seed=1)[1], root / "other-seed.pt")
    (root / "arch.json").write_text(json.dumps(ARCH))
    (root / "recipe.json").write_text(json.dumps({"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "batch_size": 4}))
    (root / "user_arch.py").write_text(FACTORY)
    return root


def _run(root: Path, out: Path, **kwargs):
    args = {"weights": root / "model.pt", "arch": root / "arch.json", "train": root / "train",
            "held_out": root / "held", "init_weights": root / "init.safetensors", "normalize": NORMALIZE,
            "recipe": root / "recipe.json", **QUICK}  # fmt: skip
    return audit(out=out, **{**args, **kwargs})


def test_owners_audit_unmixes_every_image_and_separates_members(owner: Path, tmp_path: Path) -> None:
    result = _run(owner, tmp_path / "a")
    families = {f["family"]: f for f in result.metrics["families"]}
    assert families["unmix"]["ran"] and families["unmix"]["rank"] == 10
    assert families["unmix"]["n_recovered"] >= 7 and len(result.recovered) >= 7  # of 10 (measured: 8)
    assert families["kkt"]["ran"] and not families["simulate"]["ran"]
    assert "unmixed exactly" in families["simulate"]["why_not"]  # a dense first layer needs no simulation
    member = result.metrics["membership"]
    assert member["auc"] == 1.0 and member["tpr_at_fpr_0.01"] == 1.0 and member["tpr_at_zero_fpr"] == 1.0
    saved = json.loads((tmp_path / "a" / "audit.json").read_text())["metrics"]
    assert saved["membership"]["auc"] == 1.0
    page = (tmp_path / "a" / "audit.html").read_text()
    assert "Membership evidence" in page and "Attack families" in page
    from kktrecon.errors import RunStateError

    with pytest.raises(RunStateError, match="another recipe"):  # a resumed audit reads the same θ₀ and recipe
        _run(owner, tmp_path / "a", resume=True, recipe={"optimizer": "sgd", "lr": 0.5})


def test_the_architecture_may_be_the_users_factory(owner: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(owner)
    result = _run(owner, tmp_path / "f", arch="user_arch:make_model")
    assert {f["family"]: f for f in result.metrics["families"]}["unmix"]["n_recovered"] >= 7
    sys.modules.pop("user_arch", None)


def test_without_initial_weights_the_audit_says_what_they_would_add(owner: Path, tmp_path: Path) -> None:
    result = _run(owner, tmp_path / "k", init_weights=None, recipe=None)
    families = {f["family"]: f for f in result.metrics["families"]}
    assert not families["unmix"]["ran"] and "--init-weights" in families["unmix"]["why_not"]
    assert "membership" not in result.metrics
    assert "needs the initial weights" in (tmp_path / "k" / "audit.html").read_text()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"init_weights": "model.pt"}, "did not change"),
        ({"init_weights": "other-seed.pt"}, "no rank drop"),
        ({"init_weights": "arch.json"}, "arch.json"),
        ({"recipe": {"optimiser": "sgd"}}, r"unknown \['optimiser'\]"),
        ({"recipe": {"lr": "fast"}}, "`lr` to be a non-negative number"),
        ({"normalize": (0.5, 0.5, 0.5, 0.2, 0.2, 0.2)}, "one mean and one std per channel"),
        ({"normalize": (0.5, 0.5, 0.2)}, "two numbers per channel"),
        ({"arch": "no_such_module_xyz:make_model"}, "Could not import 'no_such_module_xyz'"),
        ({"arch": "user_arch:not_a_model"}, "to return an nn.Module. Got int"),
        ({"arch": "user_arch:missing"}, "to be a function"),
    ],
)
def test_bad_owner_inputs_are_one_clear_error_and_write_nothing(
    owner: Path, tmp_path: Path, monkeypatch, change: dict, message: str
) -> None:
    monkeypatch.chdir(owner)
    change = {k: owner / v if k == "init_weights" else v for k, v in change.items()}
    with pytest.raises(Exception, match=message) as info:
        _run(owner, tmp_path / "bad", **change)
    from kktrecon.errors import KKTReconError

    assert isinstance(info.value, KKTReconError)
    assert not (tmp_path / "bad").exists()
    sys.modules.pop("user_arch", None)


def test_initial_weights_of_the_wrong_shape_are_named(owner: Path, tmp_path: Path) -> None:
    bad = {k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) for k, v in torch.load(owner / "model.pt").items()}
    torch.save(bad, tmp_path / "wrong.pt")
    with pytest.raises(Exception, match=r"'1.weight' has shape \(65, 784\), expected \(64, 784\)"):
        _run(owner, tmp_path / "bad", init_weights=tmp_path / "wrong.pt")
    assert not (tmp_path / "bad").exists()


def test_cli_refuses_a_bad_normalize_in_one_line_and_writes_nothing(owner: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [
        "audit", "--weights", str(owner / "model.pt"), "--arch", str(owner / "arch.json"), "--train",
        str(owner / "train"), "--init-weights", str(owner / "model.pt"), "--out", str(tmp_path / "c"),
        "--normalize", "0.1,0.2,0.3,0.4",
    ])  # fmt: skip
    assert result.exit_code == 1 and "one mean and one std per channel" in result.output
    assert not (tmp_path / "c").exists()
    result = CliRunner().invoke(app, [
        "audit", "--weights", str(owner / "model.pt"), "--arch", str(owner / "arch.json"), "--train",
        str(owner / "train"), "--init-weights", str(owner / "model.pt"), "--out", str(tmp_path / "c"),
    ])  # fmt: skip
    assert result.exit_code == 1 and "no training signal" in result.output and not (tmp_path / "c").exists()


CONV = {"stride": 2, "padding": 1, "bias": True}
CNN_ARCH = {"input_shape": [1, 28, 28], "layers": [
    {"conv2d": [1, 16, 3], **CONV}, "relu", {"conv2d": [16, 32, 3], **CONV}, "relu", "flatten",
    {"linear": [1568, 32], "bias": True}, "relu", {"linear": [32, 1], "bias": True}]}  # fmt: skip


def test_a_cnns_owner_audit_reads_the_dense_layer_behind_the_convolution(owner: Path, tmp_path: Path) -> None:
    """Default init, full-batch SGD to loss < 1e-3: the convolution moves, and the Δθ family still reads the images."""
    from kktrecon.models.spec import build_sequential

    ds = load_dataset(data_root=SAMPLE_ROOT, n_per_class=5, test_per_class=50)
    pixels = torch.round((ds.x_train + ds.mean).clamp(0, 1) * 255) / 255
    torch.manual_seed(0)
    model, _ = build_sequential(CNN_ARCH)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = pixels - pixels.mean(0), ds.y_train.float()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    steps = 0
    while steps < 3000:
        steps += 1
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0], y)
        loss.backward()
        opt.step()
        if float(loss.detach()) < 1e-3:
            break
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "cnn.safetensors"))
    save_file(initial, str(tmp_path / "cnn-init.safetensors"))
    (tmp_path / "cnn.json").write_text(json.dumps(CNN_ARCH))
    recipe = {"optimizer": "sgd", "lr": 0.05, "steps": steps}
    result = _run(owner, tmp_path / "a", weights=tmp_path / "cnn.safetensors", arch=tmp_path / "cnn.json",
                  init_weights=tmp_path / "cnn-init.safetensors", recipe=recipe, normalize=None)  # fmt: skip
    families = {f["family"]: f for f in result.metrics["families"]}
    assert families["delta"]["ran"] and families["delta"]["candidates"] == 10
    assert families["delta"]["n_recovered"] >= 7  # of 10 (measured: 10), against held-out images none of which count
    assert not families["unmix"]["ran"] and "Conv2d" in families["unmix"]["why_not"]
    assert not families["simulate"]["ran"] and "delta family" in families["simulate"]["why_not"]
    assert (tmp_path / "a" / "delta" / "candidates.safetensors").is_file()
    # Membership behind convolutions: the training images' features at θ₀ lie in the dense layer's change.
    member = result.metrics["membership"]
    assert "features at θ₀" in member["score"] and member["n_non_members"] == 100
    assert member["auc"] > 0.95, member  # measured: 1.000, every training image above every held-out one
