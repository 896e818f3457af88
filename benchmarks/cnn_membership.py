"""Membership evidence behind convolutions: the training images' features at θ₀ lie in a dense layer's change.

Default-init CNNs 32-64 + 100 (MNIST odd/even, the law experiment's owner recipe: full-batch SGD at lr 0.05
until the loss is below 1e-3, its convolutions moving 20–28 %) and variants of their training. For each,
the score of :func:`kktrecon.attack.delta.feature_residual` (the relative residual of [φ(x; θ₀), 1]
outside the top-2n right singular subspace of [ΔW, Δb]) on the n training images against 400 held-out test
images: AUC, TPR at 1 % FPR, and the fraction of training images below every held-out one. This is what
the owner's audit reports as membership evidence for a CNN. Prints a table, writes JSON to
benchmarks/results/cnn_membership.json.

    python benchmarks/cnn_membership.py --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from _common import print_table, run_meta, write_json
from kktrecon import train
from kktrecon.attack import Victim
from kktrecon.attack.delta import feature_residual
from kktrecon.data import load_dataset
from kktrecon.evaluation import membership_metrics
from kktrecon.experiments.catalog import _LAW_OWNER, victim
from kktrecon.models import CNNConfig

BASE = victim(model=CNNConfig(channels=(32, 64), hidden=(100,), bias="all"), **_LAW_OWNER)
VARIANTS = {
    "full-batch SGD, n = 20": {},
    "full-batch SGD, n = 20, seed 1": {"seed": 1},
    "full-batch SGD, n = 50": {"data": dataclasses.replace(BASE.data, n_per_class=25)},
    "minibatch 8 + momentum 0.9, n = 20": {"batch_size": 8, "momentum": 0.9, "lr": 0.01},
    "Adam lr 1e-3, n = 20": {"optimizer": "adam", "lr": 1e-3},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--held-per-class", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cnn_membership.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name, change in VARIANTS.items():
            config = dataclasses.replace(BASE, **change)
            start = time.perf_counter()
            trained = train(config, out=Path(work) / str(len(rows)), data_root=args.data_root, device="cpu",
                            progress=False)  # fmt: skip
            v = Victim.from_run(trained.run_dir)
            held = dataclasses.replace(config.data, test_per_class=args.held_per_class)
            ds = load_dataset(held, data_root=args.data_root)  # the same training set, more test images
            members, others = feature_residual(v, ds.x_train), feature_residual(v, ds.x_test)
            m = membership_metrics(-members, -others, score="feature residual at θ₀, rank 2n")
            rows.append({"victim": name, "n": len(members), "held_out": len(others), "steps": trained.metrics["steps"],
                         "auc": m["auc"], "tpr_at_fpr_0.01": m["tpr_at_fpr_0.01"],
                         "tpr_at_zero_fpr": m["tpr_at_zero_fpr"], "train_max": float(members.max()),
                         "held_out_min": float(others.min()), "held_out_median": float(others.median()),
                         "seconds": time.perf_counter() - start})  # fmt: skip
    write_json(args.out, {"meta": run_meta(torch.device("cpu")), "rows": rows})
    print_table(
        ["CNN 32-64 + 100, default init", "n", "held-out", "steps", "AUC", "TPR at 1 % FPR", "below every held-out",
         "residual: training max", "held-out min / median"],
        [[r["victim"], r["n"], r["held_out"], r["steps"], f"{r['auc']:.4f}", r["tpr_at_fpr_0.01"],
          f"{r['tpr_at_zero_fpr']:.2f}", f"{r['train_max']:.3f}",
          f"{r['held_out_min']:.3f} / {r['held_out_median']:.3f}"] for r in rows],
    )  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
