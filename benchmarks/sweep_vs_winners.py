"""Does a sweep find settings for a victim nobody tuned the attack for? Against the released winners.

For each victim (MNIST odd/even n = 50; CIFAR-10 vehicles/animals n = 20; MNIST odd/even n = 20 with
biases in all layers; all 784/3072-1000-1000-1, the reference recipe, 10⁴ steps; ``cnn20``: a CNN
with p/dn 21), at the same total budget of trial-iterations (three default runs of ``--default-iterations``):

- each released winner of the victim's data set, run alone for the whole budget;
- the sweep's own policy with the oracle-free ``kkt`` objective: half the budget on ``--trials``
  short trials (the released winners first, then random ones, ``--batch`` at a time), the other
  half extending the kkt-best ``k`` trials (``--extend-top``, a list), the best trials pooled; the
  search space ``--space`` (reference, or cnn: + the total-variation weight), the sweep's default attack.

Every method is scored by n_recovered (the verdict against training ∪ held-out). The sweep's trials
are also scored by the oracle afterwards, for the selection-quality numbers (Spearman correlation of
the kkt score with n_recovered; precision@10/20 of the pooled ranking). Prints a markdown table and
writes JSON to benchmarks/results/sweep_vs_winners.json.

    python benchmarks/sweep_vs_winners.py --data-root ../shared/data [--victims mnist50,cifar20,mnist20-all]
    python benchmarks/sweep_vs_winners.py --victims cnn20 --methods sweep --space cnn --trials 16 \
        --default-iterations 8000 --extend-top 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from _common import VICTIMS, print_table, write_json
from kktrecon.attack import reconstruct
from kktrecon.attack.released import winner
from kktrecon.files import read_json
from kktrecon.pipelines import evaluate
from kktrecon.sweeps import SPACES, sweep
from kktrecon.training import train


def oracle_per_trial(rows: list[dict], data_root: Path) -> tuple[list[float], list[int]]:
    """The kkt score and the oracle's n_recovered of every completed trial of a sweep."""
    kkt, oracle = [], []
    for r in rows:
        if r["state"] == "COMPLETE":
            metrics = evaluate(r["dir"], data_root=data_root, figures=False, force=True).metrics
            oracle.append(metrics["n_recovered"])
            kkt.append(r["kkt_score"])
    return kkt, oracle


def sweep_rows(folder: Path, name: str, budget: int, args: argparse.Namespace) -> list[dict]:
    """The sweep's own policy at the budget: explore on half, extend the kkt-best ``k`` on the other half.

    The exploration (``--trials`` trials of budget / (2 · trials) iterations, the released winners
    first) runs once; each ``k`` of ``--extend-top`` extends a copy of it (a sweep resumes with a
    larger extension), so that the policies differ only in how the second half is spent.
    """
    short = budget // (2 * args.trials)
    explore = folder / "sweep-explore"
    start = time.perf_counter()
    space = SPACES.get_entry(args.space)
    result = sweep(folder / "victim", explore, trials=args.trials, iterations=short, extend=0, batch=args.batch,
                   space=space, device="cpu", resume=(explore / "sweep.json").exists(), progress=False)  # fmt: skip
    explore_s = time.perf_counter() - start
    kkt, oracle = oracle_per_trial(result.rows, args.data_root)
    rows = []
    for k in (int(v) for v in args.extend_top.split(",")):
        out = folder / f"sweep-top{k}"
        if not (out / "sweep.json").exists():
            shutil.copytree(explore, out, dirs_exist_ok=True)
        start = time.perf_counter()
        extension = (budget - args.trials * short) // k
        swept = sweep(folder / "victim", out, trials=args.trials, iterations=short, extend=extension, extend_top=k,
                      batch=args.batch, space=space, device="cpu", resume=True, progress=False)  # fmt: skip
        seconds = explore_s + time.perf_counter() - start
        pooled = evaluate(out, data_root=args.data_root, force=True).metrics
        extended = [r for r in swept.rows if r["extended"]]
        alone = [evaluate(r["dir"], data_root=args.data_root, figures=False, force=True).metrics["n_recovered"]
                 for r in extended]  # fmt: skip
        rows.append({
            "victim": name, "space": args.space,
            "method": f"sweep ({args.space} space): {args.trials} × {short} it, kkt-best {k} + {extension} it, pooled",
            "n_recovered": pooled["n_recovered"], "n": pooled["n_train"], "trial_iterations": budget,
            "seconds": seconds, "extended_trials": [r["number"] for r in extended], "extended_alone": alone,
            "best_short_trial_oracle": max(oracle), "kkt_best_short_trial": int(np.argmax(kkt)),
            "spearman_kkt_vs_oracle": spearmanr(kkt, oracle).statistic,
            "precision_at_10": pooled["attacker"]["precision_at_10"],
            "precision_at_20": pooled["attacker"]["precision_at_20"],
            "trial_oracle": oracle, "trial_kkt": kkt,
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--victims", default="mnist50,cifar20,mnist20-all")
    parser.add_argument("--default-iterations", type=int, default=4000)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--methods", default="winners,sweep", help="winners and/or sweep")
    parser.add_argument("--extend-top", default="1,2", help="how many kkt-best trials the sweep extends (a list)")
    parser.add_argument("--space", default="reference", help="the sweep's search space (reference, cnn)")
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "results" / "sweeps")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "sweep_vs_winners.json"
    )
    args = parser.parse_args()
    budget = 3 * args.default_iterations
    methods = set(args.methods.split(","))
    # Rows of earlier invocations (other victims or methods) are kept; this one's replace theirs.
    saved = json.loads(args.out.read_text())["rows"] if args.out.is_file() else []
    rows: list[dict] = []
    for name in args.victims.split(","):
        dataset, config = VICTIMS[name]
        folder = args.work / name
        start = time.perf_counter()
        train(config, out=folder / "victim", data_root=args.data_root, device="cpu", resume=True, progress=False)
        print(f"{name}: victim in {time.perf_counter() - start:.0f}s", flush=True)
        for which in (1, 2) if "winners" in methods else ():
            run = folder / f"winner{which}"
            reconstruct(folder / "victim", winner(dataset, which, iterations=budget, checkpoint_every=1000),
                        out=run, device="cpu", resume=True, progress=False)  # fmt: skip
            seconds = read_json(run / "reconstruction.json")["timings"]["total_s"]  # across resumes
            m = evaluate(run, data_root=args.data_root, force=True).metrics
            rows.append({"victim": name, "method": f"winner {which} alone", "n_recovered": m["n_recovered"],
                         "n": m["n_train"], "trial_iterations": budget, "seconds": seconds})  # fmt: skip
            print(rows[-1], flush=True)
        if "sweep" in methods:
            rows.extend(sweep_rows(folder, name, budget, args))
            print(rows[-2:], flush=True)
        done = {(r["victim"], r["method"]) for r in rows}
        saved = [r for r in saved if (r["victim"], r["method"]) not in done]
        write_json(args.out, {"budget_trial_iterations": budget, "rows": saved + rows})
    print_table(
        ["victim", "method", "n_recovered", "trial-iterations", "time"],
        [[r["victim"], r["method"], f"{r['n_recovered']} of {r['n']}", r["trial_iterations"],
          f"{r['seconds'] / 60:.1f} min"] for r in saved + rows],
    )  # fmt: skip


if __name__ == "__main__":
    main()
