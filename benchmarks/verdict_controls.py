"""Controls for the verdict: what counts as *recovered* when the candidates are known images.

For MNIST odd/even and CIFAR-10 vehicles/animals (real data under --data-root), the training set of
n images per task and a held-out pool from the test split (as many as the training set, at least
200), the candidates are:

- the held-out images of the pool themselves (never seen by any victim): should give 0 recovered;
- the training images themselves: should give n recovered;
- the training images degraded: Gaussian pixel noise σ ∈ {0.02 … 0.3} and Gaussian blur
  σ ∈ {0.5 … 3} px, clipped to [0, 1]: how much degradation the SSIM threshold tolerates.

Each row also gives the counts without the pool (aligned SSIM > 0.4 alone), to show what the pool
removes. Prints a markdown table and writes JSON to benchmarks/results/verdict_controls.json.

    python benchmarks/verdict_controls.py --data-root ../shared/data [--n-per-class 10]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import kornia.filters
import torch

from kktrecon.data import DATASETS, load_dataset
from kktrecon.evaluation import evaluate_candidates
from kktrecon.evaluation.pipeline import held_out_pool

TASKS = (("mnist", "odd-even"), ("cifar10", "vehicles-animals"))
NOISE = (0.02, 0.05, 0.1, 0.2, 0.3)
BLUR = (0.5, 1.0, 2.0, 3.0)


def degrade(x: torch.Tensor, mean: torch.Tensor, kind: str, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """A mean-subtracted image set, degraded in pixel space ([0, 1]) and mean-subtracted again."""
    pixels = x + mean
    if kind == "noise":
        pixels = pixels + sigma * torch.randn(pixels.shape, generator=gen, dtype=pixels.dtype)
    elif kind == "blur":
        size = 2 * math.ceil(3 * sigma) + 1
        pixels = kornia.filters.gaussian_blur2d(pixels, (size, size), (sigma, sigma), border_type="reflect")
    return pixels.clamp(0.0, 1.0) - mean


def counts(cands: torch.Tensor, ds, held_out: torch.Tensor, source: str, downsample: int) -> dict[str, int]:
    outputs = torch.zeros(len(ds.x_train), 1, dtype=torch.float64)
    with_pool = evaluate_candidates(
        cands, ds.x_train, ds.y_train, ds.mean, outputs=outputs, downsample=downsample,
        held_out=held_out, held_out_source=source,
    )  # fmt: skip
    return {
        "n_recovered": with_pool.metrics["n_recovered"],
        "n_reconstructed": with_pool.metrics["n_reconstructed"],
        "median_ssim_aligned": round(with_pool.metrics["median_ssim_aligned"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--n-per-class", type=int, default=10)
    results = Path(__file__).resolve().parent / "results"
    parser.add_argument("--out", type=Path, default=results / "verdict_controls.json")
    args = parser.parse_args()
    rows = []
    for dataset, task in TASKS:
        start = time.perf_counter()
        n = 2 * args.n_per_class
        test_per_class = max(args.n_per_class, 100)
        ds = load_dataset(dataset=dataset, task=task, n_per_class=args.n_per_class, test_per_class=test_per_class,
                          data_root=args.data_root, dtype=torch.float64)  # fmt: skip
        held_out, source = held_out_pool(ds, None)
        downsample = DATASETS[dataset].match_downsample
        gen = torch.Generator().manual_seed(0)
        cases = [("held-out images as candidates", held_out), ("training images as candidates", ds.x_train)]
        cases += [(f"training + noise σ={s:g}", degrade(ds.x_train, ds.mean, "noise", s, gen)) for s in NOISE]
        cases += [(f"training blurred σ={s:g} px", degrade(ds.x_train, ds.mean, "blur", s, gen)) for s in BLUR]
        for name, cands in cases:
            row = {"data": f"{dataset} {task}", "n": n, "held_out": len(held_out), "candidates": name}
            row.update(counts(cands, ds, held_out, source, downsample))
            rows.append(row)
        print(f"{dataset}: {time.perf_counter() - start:.1f}s")
    header = "| data | n | held-out | candidates | n_recovered | aligned SSIM > 0.4 (no pool) | median aligned SSIM |"
    print(header + "\n| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['data']} | {r['n']} | {r['held_out']} | {r['candidates']} | {r['n_recovered']} | "
              f"{r['n_reconstructed']} | {r['median_ssim_aligned']} |")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
