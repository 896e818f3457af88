"""Paper-scale runs: n = 500 victims (MNIST odd/even, CIFAR vehicles/animals) and the attack on them.

Trains d-1000-1000-1 with the reference recipe for ``--steps`` full-batch steps, optionally runs the
KKT attack with the released hyperparameters (m = 2n), and writes a JSON of timings and metrics.
Meant for a GPU; on a 2-core CPU one MNIST step takes ≈ 21 ms (float32) and one attack iteration
with m = 1000 ≈ 170 ms.

    python benchmarks/paper_scale.py --dataset mnist --steps 100000 --iterations 20000 --out runs/paper
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from kktrecon.attack import reconstruct
from kktrecon.data import DataConfig
from kktrecon.training import TrainConfig, train
from kktrecon.victims import diagnose

TASKS = {"mnist": "odd-even", "cifar10": "vehicles-animals"}
# Released winners of the reference sweep (METHOD.md §2), first of each pair.
ATTACKS = {
    "mnist": {"init_scale": 0.035, "lr": 0.0305, "lambda_min": 0.447, "alpha": 150.0},
    "cifar10": {"init_scale": 8.9e-4, "lr": 0.555, "lambda_min": 0.498, "alpha": 19.1},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(TASKS), default="mnist")
    parser.add_argument("--n-per-class", type=int, default=250)
    parser.add_argument("--test-per-class", type=int, default=500)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--iterations", type=int, default=0, help="attack iterations (0: train only)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="runs/paper")
    args = parser.parse_args()

    out = Path(args.out) / args.dataset
    data = DataConfig(
        dataset=args.dataset,
        task=TASKS[args.dataset],
        n_per_class=args.n_per_class,
        test_per_class=args.test_per_class,
    )
    config = TrainConfig(data=data, steps=args.steps, dtype=args.dtype, eval_every=max(args.steps // 20, 1))
    victim = train(config, out=out / "victim", data_root=args.data_root, device=args.device, resume=True)
    record = {
        "dataset": args.dataset,
        "steps": args.steps,
        "dtype": args.dtype,
        "device": str(victim.model.layers[0].weight.device),
        "train": {k: v for k, v in victim.metrics.items() if k not in ("margins", "outputs")},
    }
    start = time.perf_counter()
    diag = diagnose(out / "victim", data_root=args.data_root, device=args.device)
    record["diagnose"] = {
        "relative_residual": diag.relative_residual,
        "residual_per_layer": diag.residual_per_layer,
        "n_nonzero": diag.n_nonzero,
        "seconds": time.perf_counter() - start,
    }
    if args.iterations:
        rec = reconstruct(
            out / "victim",
            out=out / "reconstruction",
            iterations=args.iterations,
            device=args.device,
            force=True,
            checkpoint_every=5_000,
            **ATTACKS[args.dataset],
        )
        record["reconstruct"] = {
            "iterations": args.iterations,
            "seconds": rec.seconds,
            "ms_per_iteration": 1000 * rec.seconds / args.iterations,
            "final": rec.history[-1] if rec.history else None,
        }
    print(json.dumps(record, indent=2))
    (out / "paper_scale.json").write_text(json.dumps(record, indent=2) + "\n")
    if torch.cuda.is_available():
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
