"""The audit of a user's own model: end to end from a state dict and PNG folders, and every bad input.

The victim is trained here in plain PyTorch (not with kktrecon's trainer), saved as a state dict, and
its training images written as an ImageFolder, as a user would have them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from kktrecon.auditing import audit
from kktrecon.cli import app
from kktrecon.data import SAMPLE_ROOT, load_dataset
from kktrecon.evaluation import evaluate_candidates
from kktrecon.evaluation.candidates import load_candidates

HIDDEN = 200
ARCH = {"input_shape": [1, 28, 28], "layers": ["flatten", {"linear": [784, HIDDEN], "bias": True}, "relu",
        {"linear": [HIDDEN, HIDDEN], "bias": False}, "relu", {"linear": [HIDDEN, 1], "bias": False}]}  # fmt: skip


def _write_folder(folder: Path, images: torch.Tensor, labels: list[int]) -> None:
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        target = folder / ("even" if label == 0 else "odd")
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(img[0].numpy() * 255).astype(np.uint8)).save(target / f"{i:03d}.png")


def _users_model(x: torch.Tensor, y: torch.Tensor) -> torch.nn.Sequential:
    """A user's model and training loop: nothing from kktrecon."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, HIDDEN, bias=False),
        torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 1, bias=False),
    )  # fmt: skip
    with torch.no_grad():
        model[1].weight.mul_(1e-2)
        model[1].bias.mul_(1e-2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(1500):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0], y.float()).backward()
        opt.step()
    return model


@pytest.fixture(scope="module")
def user(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("user")
    ds = load_dataset(data_root=SAMPLE_ROOT, n_per_class=5, test_per_class=100)
    images, held = (ds.x_train + ds.mean).clamp(0, 1), (ds.x_test + ds.mean).clamp(0, 1)
    _write_folder(root / "train", images, ds.y_train.tolist())
    _write_folder(root / "held", held, ds.y_test.tolist())
    pixels = torch.round(images * 255) / 255  # what the PNGs hold
    model = _users_model(pixels - pixels.mean(0), ds.y_train)
    torch.save(model.state_dict(), root / "model.pt")
    (root / "arch.json").write_text(json.dumps(ARCH))
    return {"root": root, "model": model}


def _held_out_recovered(out: Path, root: Path) -> int:
    """How many *held-out* images the audit's pooled candidates 'recover' (roles swapped): must be none."""
    from kktrecon.data.folder import load_images

    train, held = load_images(root / "train"), load_images(root / "held")
    mean = train.x.mean(axis=0)
    pooled = load_candidates(out / "sweep" / "pool")
    swapped = evaluate_candidates(
        pooled.x, torch.as_tensor(held.x - mean), torch.as_tensor(held.y), torch.as_tensor(mean),
        outputs=torch.ones(len(held.y)), held_out=torch.as_tensor(train.x - mean),
    )  # fmt: skip
    return int(swapped.metrics["n_recovered"])


def test_the_cli_audit_finds_training_images_and_no_held_out_one(user, tmp_path) -> None:
    root, out = user["root"], tmp_path / "audit"
    args = ["audit", "--weights", str(root / "model.pt"), "--arch", str(root / "arch.json"), "--train",
            str(root / "train"), "--held-out", str(root / "held"), "--budget", "10m", "--trials", "16",
            "--iterations", "500", "--out", str(out), "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "audit.json").read_text())["metrics"]
    assert metrics["n_recovered"] >= 1 and len(metrics["recovered_files"]) == metrics["n_recovered"]
    assert all("/train/" in f for f in metrics["recovered_files"])
    assert (metrics["trials"], metrics["iterations_per_trial"]) == (16, 500)  # fixed: independent of the machine
    assert _held_out_recovered(out, root) == 0
    # Read against the unseen control: held-out images as candidates, each left out of the pool in turn.
    control = metrics["control"]
    assert control["count"] == min(metrics["n_candidates"], 200) and "left out" in control["placement"]
    assert f"recover {control['n_recovered']} (chance" in result.output
    page = (out / "audit.html").read_text(encoding="utf-8")
    assert "training images recovered from the weights" in page and "What raises or lowers the risk" in page
    assert f"judged as candidates by the same verdict, recover {control['n_recovered']} of 10" in page
    assert 'src="data:image/png;base64,' in page and "<script" not in page


def test_the_python_api_audits_an_nn_module(user, tmp_path) -> None:
    model = user["model"]
    model.config = type("Config", (), {"input_shape": (1, 28, 28)})()  # how a module tells its input shape
    result = audit(model, train=user["root"] / "train", held_out=user["root"] / "held", out=tmp_path / "a",
                   budget_s=600, trials=16, iterations=500, device="cpu", progress=False)  # fmt: skip
    assert result.metrics["n_recovered"] >= 1 and result.report.is_file()
    assert _held_out_recovered(tmp_path / "a", user["root"]) == 0


def _bad(tmp_path: Path, user: dict, **change) -> str:
    root = user["root"]
    kwargs = {"weights": root / "model.pt", "arch": root / "arch.json", "train": root / "train",
              "held_out": root / "held", "out": tmp_path / "out", "budget_s": 5, "device": "cpu", "progress": False,
              **change}  # fmt: skip
    with pytest.raises(ValueError) as info:
        audit(**kwargs)
    assert not (tmp_path / "out").exists(), "nothing may be written on bad input"
    return str(info.value)


def test_images_of_the_wrong_size_or_channels_are_refused(user, tmp_path) -> None:
    small = tmp_path / "small" / "even"
    small.mkdir(parents=True)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(small / "a.png")
    (tmp_path / "small" / "odd").mkdir()
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "small" / "odd" / "b.png")
    assert "Expected images of shape (1, 28, 28)" in _bad(tmp_path, user, train=tmp_path / "small")
    rgb = tmp_path / "rgb"
    for name in ("even", "odd"):
        (rgb / name).mkdir(parents=True)
        Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(rgb / name / "c.png")
    assert "Got (3, 28, 28)" in _bad(tmp_path, user, train=rgb)


def test_a_state_dict_that_does_not_fit_names_the_first_mismatching_tensor(user, tmp_path) -> None:
    arch = json.loads(json.dumps(ARCH))
    arch["layers"][3] = {"linear": [HIDDEN, 64], "bias": False}
    arch["layers"][5] = {"linear": [64, 1], "bias": False}
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    assert "'3.weight'" in _bad(tmp_path, user, arch=tmp_path / "arch.json")


def test_an_architecture_the_attack_cannot_handle_names_the_layer(user, tmp_path) -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    model.config = type("Config", (), {"input_shape": (1, 28, 28)})()
    message = _bad(tmp_path, user, weights=None, arch=None, model=model)
    assert "layer '2'" in message and "Tanh" in message


def test_an_empty_folder_and_an_unreadable_file_are_refused(user, tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    assert "no class sub-folders" in _bad(tmp_path, user, train=tmp_path / "empty")
    broken = tmp_path / "broken"
    for name in ("even", "odd"):
        (broken / name).mkdir(parents=True)
        (broken / name / "x.png").write_bytes(b"not a png")
    assert "could not be read as an image" in _bad(tmp_path, user, train=broken)


def test_an_output_folder_inside_an_input_is_refused(user, tmp_path) -> None:
    root = user["root"]
    assert "outside the image folder" in _bad(tmp_path, user, out=root / "train" / "audit")
    assert not (root / "train" / "audit").exists()
    import shutil

    inside = shutil.copytree(root / "train", tmp_path / "proj" / "sweep" / "train")  # where the audit would own
    assert "outside what the audit writes" in _bad(tmp_path, user, train=inside, out=tmp_path / "proj")
    assert sorted(p.name for p in (tmp_path / "proj").iterdir()) == ["sweep"]


def test_force_in_a_project_folder_removes_only_the_audits_own_files(user, tmp_path) -> None:
    import shutil

    project = tmp_path / "project"
    project.mkdir()
    for name in ("model.pt", "arch.json", "train", "held"):
        copy = shutil.copytree if (user["root"] / name).is_dir() else shutil.copy
        copy(user["root"] / name, project / name)
    (project / "notes.txt").write_text("mine")
    (tmp_path / "parent.txt").write_text("mine too")
    args = ["audit", "--weights", str(project / "model.pt"), "--arch", str(project / "arch.json"), "--train",
            str(project / "train"), "--held-out", str(project / "held"), "--trials", "2", "--iterations", "20",
            "--out", str(project), "--device", "cpu"]  # fmt: skip
    for extra in ([], ["--force"]):  # a first audit, then one over it
        result = CliRunner().invoke(app, [*args, *extra])
        assert result.exit_code == 0, result.output
    kept = {"model.pt", "arch.json", "train", "held", "notes.txt"}
    assert kept <= {p.name for p in project.iterdir()} and (tmp_path / "parent.txt").exists()
    assert len(list((project / "train").rglob("*.png"))) == 10 and (project / "audit.json").is_file()
    before = (project / "audit.json").read_bytes()
    changed = [("200" if a == "20" else a) for a in args]  # --iterations 200
    result = CliRunner().invoke(app, [*changed, "--resume"])
    assert result.exit_code == 1 and "differs in ['iterations']" in " ".join(result.output.split())
    assert (project / "audit.json").read_bytes() == before  # refused before anything was rewritten


def test_a_budget_too_short_for_one_round_is_said_up_front(user, tmp_path, monkeypatch, capsys) -> None:
    from kktrecon import auditing

    monkeypatch.setattr(auditing, "_batch_iteration_seconds", lambda *a, **k: 10.0)  # a slow machine, or many images
    root = user["root"]
    inputs = {"weights": root / "model.pt", "arch": root / "arch.json", "train": root / "train"}
    inputs["held_out"] = root / "held"
    result = audit(**inputs, out=tmp_path / "out", budget_s=60, trials=2, iterations=20, device="cpu", progress=False)
    err = " ".join(capsys.readouterr().err.split())
    assert "the budget cannot hold one round of 8 trials on 10 images" in err and "about 6.7 min" in err
    assert result.metrics["budget_short_by_s"] == pytest.approx(400 - 60, abs=5)
