"""How well does the oracle-free sweep objective predict what the oracle counts? (≥ 30 trials per victim)

For each victim, a random sweep (``--trials`` trials of ``--iterations``) with the ``kkt`` objective;
afterwards every trial is scored by the oracle (n_recovered against training ∪ held-out). Reports the
Spearman correlation between the trials' kkt score (the negated final stationarity residual) and the
oracle count, and the precision of the attacker's pooled ranking (top 10, top 20 candidates of the
``--top`` best trials by kkt score, deduplicated) against the oracle. Writes JSON to
benchmarks/results/selection_quality.json.

    python benchmarks/selection_quality.py --data-root ../shared/data [--victims mnist20,cifar20] [--trials 32]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from scipy.stats import spearmanr

from _common import print_table, write_json
from kktrecon.pipelines import evaluate
from kktrecon.sweeps import sweep
from kktrecon.training import train
from sweep_vs_winners import VICTIMS, oracle_per_trial


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--victims", default="mnist20,cifar20")
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--top", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "results" / "selection")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "selection_quality.json"
    )
    args = parser.parse_args()
    rows = []
    for name in args.victims.split(","):
        _, config = VICTIMS[name]
        folder = args.work / name
        train(config, out=folder / "victim", data_root=args.data_root, device="cpu", resume=True, progress=False)
        start = time.perf_counter()
        # Random trials of equal length only (no released winners, no extension): the selection measured alone.
        result = sweep(folder / "victim", folder / "sweep", trials=args.trials, iterations=args.iterations,
                       batch=args.batch, pool_top=args.top, extend=0, warm_start=False, device="cpu",
                       resume=(folder / "sweep" / "sweep.json").exists(), progress=False)  # fmt: skip
        seconds = time.perf_counter() - start
        kkt, oracle = oracle_per_trial(result.rows, args.data_root)
        pooled = evaluate(folder / "sweep", data_root=args.data_root, force=True).metrics
        rows.append({
            "victim": name, "trials": len(oracle), "iterations": args.iterations, "sweep_seconds": seconds,
            "spearman_kkt_vs_oracle": spearmanr(kkt, oracle).statistic, "best_trial_oracle": max(oracle),
            "median_trial_oracle": sorted(oracle)[len(oracle) // 2], "pooled_top": args.top,
            "pooled_n_recovered": pooled["n_recovered"], "precision_at_10": pooled["attacker"]["precision_at_10"],
            "precision_at_20": pooled["attacker"]["precision_at_20"], "trial_kkt": kkt, "trial_oracle": oracle,
        })  # fmt: skip
        print({k: v for k, v in rows[-1].items() if not k.startswith("trial_")}, flush=True)
        write_json(args.out, {"rows": rows})
    print_table(
        ["victim", "trials", "Spearman(kkt, oracle)", "best trial", "pooled top-k recovered", "precision@10", "@20"],
        [[r["victim"], f"{r['trials']} × {r['iterations']} it", f"{r['spearman_kkt_vs_oracle']:+.2f}",
          r["best_trial_oracle"], r["pooled_n_recovered"], f"{r['precision_at_10']:.2f}",
          f"{r['precision_at_20']:.2f}"] for r in rows],
    )  # fmt: skip


if __name__ == "__main__":
    main()
