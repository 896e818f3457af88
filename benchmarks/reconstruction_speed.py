"""Milliseconds per reconstruction iteration against this machine's GEMM floor.

One iteration of the attack needs a forward pass, the inner gradient ∇θΦ (with create_graph) and
the outer backward through it: about six forward-GEMM passes over the candidates. The floor is six
times the FLOPs of one forward pass at the measured GEMM rate for the dtype.

    python benchmarks/reconstruction_speed.py [--device cpu|cuda] [--out benchmarks/results/reconstruction_speed.json]
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from _common import run_meta, write_json
from kktrecon.attack import ReconstructionConfig, attack_loss, initial_state
from kktrecon.devices import resolve_device
from kktrecon.models import MLPConfig, build_model, with_modified_relu


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_rate(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device, repeats: int = 10) -> float:
    """FLOP/s of an (m×k)·(k×n) matmul, best of ``repeats``."""
    a = torch.randn(m, k, dtype=dtype, device=device)
    b = torch.randn(k, n, dtype=dtype, device=device)
    a @ b
    _sync(device)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * m * k * n / best


def iteration_ms(
    widths: list[int], m: int, dtype: torch.dtype, device: torch.device, warmup: int = 2, repeats: int = 5
) -> float:
    """Median wall time of one attack iteration (loss, gradients for x and λ, two SGD steps)."""
    config = MLPConfig(input_shape=(widths[0],), hidden=tuple(widths[1:-1]))
    model = with_modified_relu(build_model(config, device=device, dtype=dtype), 150.0)
    cfg = ReconstructionConfig()
    x, lam, y, _ = initial_state(config.input_shape, cfg, m, device=device, dtype=dtype)
    x.requires_grad_(True)
    lam.requires_grad_(True)
    opt = torch.optim.SGD([x, lam], lr=1e-3, momentum=0.9)
    times = []
    for i in range(warmup + repeats):
        _sync(device)
        t = time.perf_counter()
        total = attack_loss(model, x, lam, y, cfg)["total"]
        x.grad, lam.grad = torch.autograd.grad(total, [x, lam])
        opt.step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return 1000 * sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--candidates", default="200,1000")
    parser.add_argument("--out", default="benchmarks/results/reconstruction_speed.json")
    args = parser.parse_args()
    device = resolve_device(args.device)
    widths = [784, 1000, 1000, 1]
    forward_flops = 2 * sum(a * b for a, b in itertools.pairwise(widths))
    rows = []
    for dtype in (torch.float32, torch.float64):
        for m in (int(v) for v in args.candidates.split(",")):
            rate = gemm_rate(m, 1000, 1000, dtype, device)
            floor_ms = 1000 * 6 * m * forward_flops / rate
            ms = iteration_ms(widths, m, dtype, device)
            rows.append(
                {
                    "dtype": str(dtype).removeprefix("torch."),
                    "candidates": m,
                    "ms_per_iteration": ms,
                    "gemm_gflops": rate / 1e9,
                    "floor_ms": floor_ms,
                    "ratio_to_floor": ms / floor_ms,
                }
            )
    table = Table(title=f"reconstruction speed, 784-1000-1000-1, {device}")
    for col in ("dtype", "m", "ms/iter", "GEMM GFLOP/s", "floor ms", "× floor"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["dtype"],
            str(r["candidates"]),
            f"{r['ms_per_iteration']:.1f}",
            f"{r['gemm_gflops']:.0f}",
            f"{r['floor_ms']:.1f}",
            f"{r['ratio_to_floor']:.2f}",
        )
    Console().print(table)
    out = Path(args.out)
    write_json(out, {"meta": run_meta(device), "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
