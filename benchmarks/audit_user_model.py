"""Audit a model the way a user brings one: trained in plain PyTorch, saved as a state dict, PNG folders.

MNIST odd/even, n = 20 (the first 10 of each class), a 784-1000-1000-1 ``nn.Sequential`` in PyTorch's
default initialisation, trained with plain full-batch SGD on the logistic loss until the training
loss is below 1e-3 (nothing from kktrecon's trainer). Its training images and 200 held-out test
images are written as ``DIR/<class>/<i>.png``; the model as ``model.pt`` plus an architecture JSON.
Then ``kktrecon audit --budget …`` (oracle-free: the attack never sees the images) and the verdict.
With ``--owner`` the initial weights (``init.pt``) and the recipe are given too (``--init-weights``,
``--recipe``): the owner's audit, with the first-layer unmixing and membership evidence. ``--optimizer``,
``--momentum``, ``--batch-size``, ``--dataset cifar10`` and ``--n-per-class`` vary the user's training.
Prints a table and writes JSON to benchmarks/results/audit_user_model.json.

    python benchmarks/audit_user_model.py --data-root ../shared/data --budget 15m [--bias first|all]
    python benchmarks/audit_user_model.py --owner --budget 1m --optimizer sgd --momentum 0.9 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _common import print_table, write_json
from kktrecon.data import load_dataset
from kktrecon.experiments.runner import control_cell


def write_folder(folder: Path, images: torch.Tensor, labels: list[int]) -> None:
    shutil.rmtree(folder, ignore_errors=True)  # a run with fewer images must not read an earlier run's extras
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        target = folder / ("even" if label == 0 else "odd")
        target.mkdir(parents=True, exist_ok=True)
        pixels = np.round(img.numpy() * 255).astype(np.uint8)
        picture = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)  # grey, or RGB for CIFAR-10
        Image.fromarray(picture).save(target / f"{i:04d}.png")


def users_model(
    x: torch.Tensor, y: torch.Tensor, bias: str, lr: float, args: argparse.Namespace
) -> tuple[torch.nn.Sequential, dict, int]:
    """PyTorch's defaults and a plain training loop; returns the model, its initial state and the steps it took."""
    torch.manual_seed(0)
    later = bias == "all"
    d = x[0].numel()
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(d, 1000), torch.nn.ReLU(), torch.nn.Linear(1000, 1000, bias=later),
        torch.nn.ReLU(), torch.nn.Linear(1000, 1, bias=later),
    )  # fmt: skip
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    if args.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=args.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=args.momentum, weight_decay=args.weight_decay)
    n = len(x)
    batch = args.batch_size or n
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(n, generator=gen)
    for step in range(1, 100_001):
        k = (step - 1) % -(-n // batch)
        if k == 0:
            order = torch.randperm(n, generator=gen)
        rows = order[k * batch : (k + 1) * batch]
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x[rows])[:, 0], y[rows].float())
        loss.backward()
        opt.step()
        with torch.no_grad():
            full = torch.nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0], y.float())
        if full.item() < 1e-3:
            return model, initial, step
    return model, initial, step


def arch_json(bias: str, shape: list[int]) -> dict:
    later = bias == "all"
    d = shape[0] * shape[1] * shape[2]
    return {"input_shape": shape, "layers": [
        "flatten", {"linear": [d, 1000], "bias": True}, "relu", {"linear": [1000, 1000], "bias": later}, "relu",
        {"linear": [1000, 1], "bias": later}]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--budget", default="15m")
    parser.add_argument("--bias", choices=("first", "all"), default="all")
    parser.add_argument("--lr", type=float, default=None, help="default: 0.05 (SGD), 0.01 (momentum), 1e-3 (Adam)")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    parser.add_argument("--momentum", type=float, default=0.0)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--dataset", choices=("mnist", "cifar10"), default="mnist")
    parser.add_argument("--n-per-class", type=int, default=10)
    parser.add_argument("--held-per-class", type=int, default=100)
    parser.add_argument("--owner", action="store_true", help="give the audit the initial weights and the recipe")
    parser.add_argument("--work", type=Path, default=Path(__file__).parent / "results" / "audit_user_model")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "audit_user_model.json")
    args = parser.parse_args()

    if args.lr is None:
        args.lr = 1e-3 if args.optimizer == "adam" else (0.01 if args.momentum else 0.05)
    tag = f"{args.dataset}-n{2 * args.n_per_class}-{args.optimizer}-m{args.momentum}-b{args.batch_size}"
    tag += f"-wd{args.weight_decay}"
    root = args.work / f"bias-{args.bias}" / tag
    task = "odd-even" if args.dataset == "mnist" else "vehicles-animals"
    ds = load_dataset(
        dataset=args.dataset, task=task, data_root=args.data_root, n_per_class=args.n_per_class,
        test_per_class=args.held_per_class,
    )  # fmt: skip
    images, held = (ds.x_train + ds.mean).clamp(0, 1), (ds.x_test + ds.mean).clamp(0, 1)
    write_folder(root / "train", images, ds.y_train.tolist())
    write_folder(root / "held", held, ds.y_test.tolist())
    pixels = torch.round(images * 255) / 255
    start = time.perf_counter()
    model, initial, steps = users_model(pixels - pixels.mean(0), ds.y_train, args.bias, args.lr, args)
    train_s = time.perf_counter() - start
    torch.save(model.state_dict(), root / "model.pt")
    torch.save(initial, root / "init.pt")
    recipe = {"optimizer": args.optimizer, "lr": args.lr, "momentum": args.momentum, "steps": steps,
              "weight_decay": args.weight_decay, "batch_size": args.batch_size}  # fmt: skip
    (root / "recipe.json").write_text(json.dumps(recipe))
    (root / "arch.json").write_text(json.dumps(arch_json(args.bias, list(images.shape[1:]))))
    cmd = [sys.executable, "-m", "kktrecon", "audit", "--weights", str(root / "model.pt"), "--arch",
           str(root / "arch.json"), "--train", str(root / "train"), "--held-out", str(root / "held"),
           "--budget", args.budget, "--out", str(root / "audit"), "--device", "cpu", "--force"]  # fmt: skip
    if args.owner:
        cmd += ["--init-weights", str(root / "init.pt"), "--recipe", str(root / "recipe.json")]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    audit_s = time.perf_counter() - start
    metrics = json.loads((root / "audit" / "audit.json").read_text())["metrics"]
    families = {f["family"]: f.get("n_recovered") for f in metrics.get("families", []) if f["ran"]}
    member = metrics.get("membership") or {}
    row = {
        "model": f"{tag}, {images[0].numel()}-1000-1000-1, biases: {args.bias}, PyTorch default init, lr {args.lr}"
        + (", owner's audit" if args.owner else ""),
        "n": metrics["n_train"],
        "held_out": metrics.get("held_out", {}).get("count"),
        "train_steps": steps,
        "train_seconds": round(train_s, 1),
        "budget": args.budget,
        "audit_seconds": round(audit_s, 1),
        "n_recovered": metrics["n_recovered"],
        "control": metrics.get("control"),
        "held_out_n_reconstructed": metrics.get("held_out_n_reconstructed"),
        "n_reconstructed": metrics.get("n_reconstructed"),
        "median_ssim_aligned": metrics.get("median_ssim_aligned"),
        "per_family": families,
        "membership_auc": member.get("auc"),
        "membership_tpr_at_1pct": member.get("tpr_at_fpr_0.01"),
        "membership_tpr_at_zero_fpr": member.get("tpr_at_zero_fpr"),
    }
    rows = json.loads(args.out.read_text())["rows"] if args.out.is_file() else []
    rows = [r for r in rows if r["model"] != row["model"]] + [row]
    write_json(args.out, {"rows": rows})
    print_table(
        ["model", "n", "held-out", "train", "audit", "recovered", "unseen control", "held-out look-alikes > 0.4"],
        [[r["model"], r["n"], r["held_out"], f"{r['train_steps']} steps, {r['train_seconds']} s",
          f"{r['budget']}: {r['audit_seconds'] / 60:.1f} min", f"{r['n_recovered']} of {r['n']}",
          control_cell(r), r["held_out_n_reconstructed"]] for r in rows],
    )  # fmt: skip


if __name__ == "__main__":
    main()
