"""Where the demo's time goes: train / attack / evaluate, ms per attack iteration against the GEMM floor.

Runs ``kktrecon.demo`` from scratch at each seed, alone and (``--loads busy``) beside one competing
CPU-bound process (a busy Python loop, the kind of neighbour a shared CI machine has), and reads
the phases from the demo's record: the estimate it printed, the measured total, train, attack and
evaluate+report, the attack's ms/iteration, the CPU threads the attack chose
(:class:`kktrecon.devices.ThreadChoice`) and the verdict's count. The floor is the attack's six
forward-GEMM passes over the m candidates at the GEMM rate measured here for the same shapes.

    python benchmarks/demo_phases.py [--seeds 0,1,2] [--loads alone,busy] [--out benchmarks/results/demo_phases.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import print_table, run_meta, write_json
from kktrecon.demo import DemoConfig, demo


def gemm_floor_ms(widths: list[int], m: int) -> float:
    """Six forward passes of m candidates through ``widths`` at the float32 GEMM rate measured here."""
    best = 0.0
    for a, b in itertools.pairwise(widths):
        x, w = torch.randn(m, a), torch.randn(a, b)
        x @ w
        t = math.inf
        for _ in range(20):
            start = time.perf_counter()
            x @ w
            t = min(t, time.perf_counter() - start)
        best += t
    return 6 * 1000 * best


def one_demo(seed: int, out: Path) -> dict:
    result = demo(out, seed=seed, progress=False)
    record = json.loads((out / "demo.json").read_text())
    manifest = json.loads((out / "reconstruction" / "reconstruction.json").read_text())
    return {
        "seed": seed,
        "estimate_s": record.get("estimate_s"),
        "total_s": result.total_s,
        **{f"{k}_s": v for k, v in result.seconds.items()},
        "ms_per_iteration": manifest["timings"]["ms_per_iteration"],
        "threads": manifest.get("threads"),
        "engine": manifest.get("engine"),
        "n_recovered": result.metrics.get("n_recovered"),
    }


def _row(r: dict, floor: float, n: int) -> list:
    estimate = f"{r['estimate_s'] / 60:.1f} min" if r["estimate_s"] else "-"
    times = [f"{r['total_s'] / 60:.1f} min", f"{r['train_s']:.0f} s", f"{r['reconstruct_s']:.0f} s",
             f"{r['evaluate_and_report_s']:.0f} s"]  # fmt: skip
    speed = [f"{r['ms_per_iteration']:.1f}", f"{r['ms_per_iteration'] / floor:.1f}"]
    return [r["load"], r["seed"], estimate, *times, *speed, r["threads"], f"{r['n_recovered']} / {n}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--loads", default="alone", help="alone, busy (beside one busy CPU-bound process) or both")
    parser.add_argument("--out", default="benchmarks/results/demo_phases.json")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    config = DemoConfig.for_mnist()
    m = 2 * 2 * config.victim.data.n_per_class
    floor = gemm_floor_ms([784, *config.victim.model.hidden, 1], m)
    rows = []
    for load in args.loads.split(","):
        if load not in ("alone", "busy"):
            parser.error(f"--loads: expected alone and/or busy, got {load!r}")
        neighbour = None
        if load == "busy":
            neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            for seed in seeds:
                with tempfile.TemporaryDirectory() as tmp:
                    rows.append({"load": load, **one_demo(seed, Path(tmp) / "demo")})
                print(rows[-1], flush=True)
        finally:
            if neighbour is not None:
                neighbour.kill()
    meta = run_meta(torch.device("cpu"))
    write_json(Path(args.out), {"meta": meta, "gemm_floor_ms": floor, "rows": rows})
    head = ["load", "seed", "estimate", "total", "train", "attack", "evaluate", "ms/it", "× floor", "threads",
            "recovered"]  # fmt: skip
    body = [_row(r, floor, m // 2) for r in rows]
    print(f"GEMM floor at m = {m}: {floor:.2f} ms/iteration ({meta['threads']} threads)")
    print_table(head, body)


if __name__ == "__main__":
    main()
