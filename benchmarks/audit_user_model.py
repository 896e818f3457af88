"""Audit a model the way a user brings one: trained in plain PyTorch, saved as a state dict, PNG folders.

MNIST odd/even, n = 20 (the first 10 of each class), a 784-1000-1000-1 ``nn.Sequential`` in PyTorch's
default initialisation, trained with plain full-batch SGD on the logistic loss until the training
loss is below 1e-3 (nothing from kktrecon's trainer). Its training images and 200 held-out test
images are written as ``DIR/<class>/<i>.png``; the model as ``model.pt`` plus an architecture JSON.
Then ``kktrecon audit --budget …`` (oracle-free: the attack never sees the images) and the verdict.
Prints a table and writes JSON to benchmarks/results/audit_user_model.json.

    python benchmarks/audit_user_model.py --data-root ../shared/data --budget 15m [--bias first|all]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _common import print_table, write_json
from kktrecon.data import load_dataset


def write_folder(folder: Path, images: torch.Tensor, labels: list[int]) -> None:
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        target = folder / ("even" if label == 0 else "odd")
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(img[0].numpy() * 255).astype(np.uint8)).save(target / f"{i:04d}.png")


def users_model(x: torch.Tensor, y: torch.Tensor, bias: str, lr: float) -> tuple[torch.nn.Sequential, int]:
    """PyTorch's defaults and a plain SGD loop; returns the model and the steps it took."""
    torch.manual_seed(0)
    later = bias == "all"
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, 1000), torch.nn.ReLU(), torch.nn.Linear(1000, 1000, bias=later),
        torch.nn.ReLU(), torch.nn.Linear(1000, 1, bias=later),
    )  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for step in range(1, 100_001):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0], y.float())
        loss.backward()
        opt.step()
        if loss.item() < 1e-3:
            return model, step
    return model, step


def arch_json(bias: str) -> dict:
    later = bias == "all"
    return {"input_shape": [1, 28, 28], "layers": [
        "flatten", {"linear": [784, 1000], "bias": True}, "relu", {"linear": [1000, 1000], "bias": later}, "relu",
        {"linear": [1000, 1], "bias": later}]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--budget", default="15m")
    parser.add_argument("--bias", choices=("first", "all"), default="all")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--work", type=Path, default=Path(__file__).parent / "results" / "audit_user_model")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "audit_user_model.json")
    args = parser.parse_args()

    root = args.work / f"bias-{args.bias}"
    ds = load_dataset(data_root=args.data_root, n_per_class=10, test_per_class=100)
    images, held = (ds.x_train + ds.mean).clamp(0, 1), (ds.x_test + ds.mean).clamp(0, 1)
    write_folder(root / "train", images, ds.y_train.tolist())
    write_folder(root / "held", held, ds.y_test.tolist())
    pixels = torch.round(images * 255) / 255
    start = time.perf_counter()
    model, steps = users_model(pixels - pixels.mean(0), ds.y_train, args.bias, args.lr)
    train_s = time.perf_counter() - start
    torch.save(model.state_dict(), root / "model.pt")
    (root / "arch.json").write_text(json.dumps(arch_json(args.bias)))
    cmd = [sys.executable, "-m", "kktrecon", "audit", "--weights", str(root / "model.pt"), "--arch",
           str(root / "arch.json"), "--train", str(root / "train"), "--held-out", str(root / "held"),
           "--budget", args.budget, "--out", str(root / "audit"), "--device", "cpu", "--force"]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    audit_s = time.perf_counter() - start
    metrics = json.loads((root / "audit" / "audit.json").read_text())["metrics"]
    row = {
        "model": f"784-1000-1000-1, biases: {args.bias}, PyTorch default init, SGD lr {args.lr}",
        "n": metrics["n_train"],
        "held_out": metrics.get("held_out", {}).get("count"),
        "train_steps": steps,
        "train_seconds": round(train_s, 1),
        "budget": args.budget,
        "audit_seconds": round(audit_s, 1),
        "n_recovered": metrics["n_recovered"],
        "held_out_n_reconstructed": metrics.get("held_out_n_reconstructed"),
        "n_reconstructed": metrics.get("n_reconstructed"),
        "median_ssim_aligned": metrics.get("median_ssim_aligned"),
    }
    rows = json.loads(args.out.read_text())["rows"] if args.out.is_file() else []
    rows = [r for r in rows if r["model"] != row["model"]] + [row]
    write_json(args.out, {"rows": rows})
    print_table(
        ["model", "n", "held-out", "train", "audit", "recovered", "held-out look-alikes > 0.4"],
        [[r["model"], r["n"], r["held_out"], f"{r['train_steps']} steps, {r['train_seconds']} s",
          f"{r['budget']}: {r['audit_seconds'] / 60:.1f} min", f"{r['n_recovered']} of {r['n']}",
          r["held_out_n_reconstructed"]] for r in rows],
    )  # fmt: skip


if __name__ == "__main__":
    main()
