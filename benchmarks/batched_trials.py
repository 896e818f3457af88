"""Milliseconds per trial-iteration when K attack trials advance together, against K separate runs.

A sweep's trials at the demo's size (m = 40 candidates, 784-1000-1000-1) are not GEMM-bound: one
trial spends most of an iteration on θ-sized elementwise work. ``reconstruct_batch`` computes the
stationarity term in Gram form for all K trials at once (kktrecon.attack.batched). Each row times
real runs (loss, gradients, SGD steps, logging) of the batched engine and, for comparison, the
ordinary engine run K times; the floor is six forward-GEMM passes over the K·m candidates at this
machine's measured GEMM rate.

``--arch cnn`` times a CNN victim instead (28×28 input, convolutions ``--channels`` with stride 2,
a ``--hidden`` linear layer, a first-layer bias), whose trials batch through the Conv2d Gram rule.
Separate runs use ``reconstruct``'s engine (``--engine``; ``auto`` is the Gram form, one trial at a time).

    python benchmarks/batched_trials.py [--device cpu|cuda] [--ks 1,4,8,16] [--candidates 40] [--arch cnn]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from _common import run_meta, write_json
from kktrecon.attack import ReconstructionConfig, reconstruct
from kktrecon.attack.batched import reconstruct_batch
from kktrecon.devices import resolve_device
from kktrecon.models import CNNConfig, MLPConfig, build_model

WIDTHS = (784, 1000, 1000, 1)


def gemm_rate(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device, repeats: int = 10) -> float:
    """FLOP/s of an (m×k)·(k×n) matmul, best of ``repeats``."""
    a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(repeats + 1):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * m * k * n / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _configs(k: int, m: int, iterations: int) -> list[ReconstructionConfig]:
    return [
        ReconstructionConfig(seed=i, candidates=m, iterations=iterations, checkpoint_every=0, log_every=iterations)
        for i in range(k)
    ]


def per_iteration_ms(
    model: torch.nn.Module, k: int, m: int, iterations: int, device: torch.device, engine: str = "auto"
) -> tuple[float, float]:
    """(batched, separate) wall milliseconds per trial-iteration, best of two runs each."""
    batched, separate = [], []
    for _ in range(2):
        _sync(device)
        t = time.perf_counter()
        reconstruct_batch(model, _configs(k, m, iterations), device=device, progress=False)
        _sync(device)
        batched.append((time.perf_counter() - t) / (k * iterations))
        t = time.perf_counter()
        for config in _configs(k, m, iterations):
            reconstruct(model, config, device=device, progress=False, engine=engine)
        _sync(device)
        separate.append((time.perf_counter() - t) / (k * iterations))
    return 1000 * min(batched), 1000 * min(separate)


def _positions(model: torch.nn.Module, weight: torch.Tensor) -> int:
    """Output positions of the convolution holding ``weight`` on one 28×28 input (its FLOPs per weight)."""
    sizes = {}
    hooks = [m.register_forward_hook(lambda mod, i, o: sizes.__setitem__(id(mod.weight), o.shape[-2:].numel()))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]  # fmt: skip
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28, device=weight.device))
    for h in hooks:
        h.remove()
    return sizes[id(weight)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ks", default="1,4,8,16")
    parser.add_argument("--candidates", type=int, default=40)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--arch", choices=("mlp", "cnn"), default="mlp")
    parser.add_argument("--channels", default="32,64", help="CNN: convolution widths")
    parser.add_argument("--hidden", type=int, default=100, help="CNN: width of the linear layer after them (0: none)")
    parser.add_argument("--engine", default="auto", help="engine of the separate runs (auto, gram, autograd)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.arch == "mlp":
        config = MLPConfig(input_shape=(WIDTHS[0],), hidden=WIDTHS[1:-1])
        name = "784-1000-1000-1"
    else:
        channels = tuple(int(c) for c in args.channels.split(","))
        config = CNNConfig(channels=channels, hidden=(args.hidden,) if args.hidden else ())
        name = f"CNN {channels}" + (f" + {args.hidden}" if args.hidden else "")
    model = build_model(config, device=device)
    p = sum(t.numel() for t in model.parameters())
    flops = [2 * t.numel() * (_positions(model, t) if t.dim() == 4 else 1) for t in model.parameters() if t.dim() > 1]
    forward_flops = sum(flops)
    rows = []
    for k in (int(v) for v in args.ks.split(",")):
        batched, separate = per_iteration_ms(model, k, args.candidates, args.iterations, device, args.engine)
        rate = gemm_rate(k * args.candidates, 1000, 1000, torch.float32, device)
        floor = 1000 * 6 * k * args.candidates * forward_flops / rate / k
        rows.append({"arch": name, "p": p, "K": k, "m": args.candidates, "batched_ms_per_trial_iteration": batched,
                     "separate_ms_per_trial_iteration": separate, "speedup": separate / batched,
                     "floor_ms_per_trial_iteration": floor, "gemm_gflops": rate / 1e9})  # fmt: skip
    table = Table(
        title=f"K trials at once vs K separate runs ({args.engine}), m = {args.candidates}, {name}, float32, {device}"
    )
    for col in ("K", "batched ms/trial-it", "separate ms/trial-it", "speed-up", "floor ms/trial-it", "× floor"):
        table.add_column(col, justify="right")
    for r in rows:
        batched, floor = r["batched_ms_per_trial_iteration"], r["floor_ms_per_trial_iteration"]
        table.add_row(
            str(r["K"]), f"{batched:.2f}", f"{r['separate_ms_per_trial_iteration']:.2f}", f"{r['speedup']:.2f}×",
            f"{floor:.2f}", f"{batched / floor:.1f}",
        )  # fmt: skip
    Console().print(table)
    out = Path(args.out or f"benchmarks/results/batched_trials_{args.arch}.json")
    write_json(out, {"meta": run_meta(device), "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
