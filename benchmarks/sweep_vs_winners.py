"""Does a sweep find settings for a victim nobody tuned the attack for? Against the released winners.

For each victim (MNIST odd/even n = 50; CIFAR-10 vehicles/animals n = 20; MNIST odd/even n = 20 with
biases in all layers; all 784/3072-1000-1000-1, the reference recipe, 10⁴ steps), at the same total
budget of trial-iterations (three default runs of ``--default-iterations``):

- each released winner of the victim's data set, run alone for the whole budget;
- a random sweep with the oracle-free ``kkt`` objective (``--trials`` trials sharing the budget,
  ``--batch`` at a time), its best trials pooled.

Every method is scored by n_recovered (the verdict against training ∪ held-out). The sweep's trials
are also scored by the oracle afterwards, for the selection-quality numbers (Spearman correlation of
the kkt score with n_recovered; precision@10/20 of the pooled ranking). Prints a markdown table and
writes JSON to benchmarks/results/sweep_vs_winners.json.

    python benchmarks/sweep_vs_winners.py --data-root ../shared/data [--victims mnist50,cifar20,mnist20-all]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from scipy.stats import spearmanr

from _common import print_table, write_json
from kktrecon.attack import ReconstructionConfig, reconstruct
from kktrecon.evaluation import evaluate
from kktrecon.experiments.catalog import victim as recipe
from kktrecon.experiments.catalog import winner
from kktrecon.runs import read_json
from kktrecon.sweeps import sweep
from kktrecon.training import train

VICTIMS = {
    "mnist50": ("mnist", recipe(per_class=25)),
    "cifar20": ("cifar10", recipe("cifar10", "vehicles-animals")),
    "mnist20-all": ("mnist", recipe(bias="all")),
    "mnist20": ("mnist", recipe()),
}


def oracle_per_trial(rows: list[dict], data_root: Path) -> tuple[list[float], list[int]]:
    """The kkt score and the oracle's n_recovered of every completed trial of a sweep."""
    kkt, oracle = [], []
    for r in rows:
        if r["state"] == "COMPLETE":
            metrics = evaluate(r["dir"], data_root=data_root, figures=False, force=True).metrics
            oracle.append(metrics["n_recovered"])
            kkt.append(r["kkt_score"])
    return kkt, oracle


def explore_then_extend(folder: Path, name: str, budget: int, args: argparse.Namespace) -> dict:
    """Half the budget on short trials, the other half extending the kkt-best one (oracle-free choice)."""
    start = time.perf_counter()
    short = budget // (2 * args.trials)
    result = sweep(folder / "victim", folder / "explore", trials=args.trials, iterations=short, batch=args.batch,
                   device="cpu", force=True, progress=False)  # fmt: skip
    best = max((r for r in result.rows if r["state"] == "COMPLETE"), key=lambda r: r["kkt_score"])
    config = read_json(Path(best["dir"]) / "reconstruction.json")["config"]
    extended = ReconstructionConfig(**{**config, "iterations": short + budget - args.trials * short})
    reconstruct(folder / "victim", extended, out=best["dir"], device="cpu", resume=True, progress=False)
    m = evaluate(best["dir"], data_root=args.data_root, figures=False, force=True).metrics
    return {"victim": name, "method": f"explore ({args.trials} × {short} it) then extend the kkt-best trial",
            "n_recovered": m["n_recovered"], "n": m["n_train"], "trial_iterations": budget,
            "seconds": time.perf_counter() - start, "best_trial": best["number"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--victims", default="mnist50,cifar20,mnist20-all")
    parser.add_argument("--default-iterations", type=int, default=4000)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "results" / "sweeps")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "sweep_vs_winners.json"
    )
    args = parser.parse_args()
    budget = 3 * args.default_iterations
    rows = []
    for name in args.victims.split(","):
        dataset, config = VICTIMS[name]
        folder = args.work / name
        start = time.perf_counter()
        train(config, out=folder / "victim", data_root=args.data_root, device="cpu", resume=True, progress=False)
        print(f"{name}: victim in {time.perf_counter() - start:.0f}s", flush=True)
        for which in (1, 2):
            run = folder / f"winner{which}"
            start = time.perf_counter()
            reconstruct(folder / "victim", winner(dataset, which, iterations=budget, checkpoint_every=1000),
                        out=run, device="cpu", resume=True, progress=False)  # fmt: skip
            seconds = time.perf_counter() - start
            m = evaluate(run, data_root=args.data_root, force=True).metrics
            rows.append({"victim": name, "method": f"winner {which} alone", "n_recovered": m["n_recovered"],
                         "n": m["n_train"], "trial_iterations": budget, "seconds": seconds})  # fmt: skip
            print(rows[-1], flush=True)
        start = time.perf_counter()
        result = sweep(folder / "victim", folder / "sweep", trials=args.trials, iterations=budget // args.trials,
                       batch=args.batch, device="cpu", resume=(folder / "sweep" / "sweep.json").exists(),
                       progress=False)  # fmt: skip
        seconds = time.perf_counter() - start
        pooled = evaluate(folder / "sweep", data_root=args.data_root, force=True).metrics
        kkt, oracle = oracle_per_trial(result.rows, args.data_root)
        rows.append({
            "victim": name, "method": f"sweep ({args.trials} trials, kkt objective), best pooled",
            "n_recovered": pooled["n_recovered"], "n": pooled["n_train"], "trial_iterations": budget,
            "seconds": seconds, "best_trial_oracle": max(oracle),
            "spearman_kkt_vs_oracle": spearmanr(kkt, oracle).statistic,
            "precision_at_10": pooled["attacker"]["precision_at_10"],
            "precision_at_20": pooled["attacker"]["precision_at_20"],
            "trial_oracle": oracle, "trial_kkt": kkt,
        })  # fmt: skip
        print(rows[-1], flush=True)
        rows.append(explore_then_extend(folder, name, budget, args))
        print(rows[-1], flush=True)
        write_json(args.out, {"budget_trial_iterations": budget, "rows": rows})
    print_table(
        ["victim", "method", "n_recovered", "trial-iterations", "time"],
        [[r["victim"], r["method"], f"{r['n_recovered']} of {r['n']}", r["trial_iterations"],
          f"{r['seconds'] / 60:.1f} min"] for r in rows],
    )  # fmt: skip


if __name__ == "__main__":
    main()
