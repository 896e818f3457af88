"""Which parts of the KKT attack help on dense images? An ablation at equal wall time.

For each victim (MNIST odd/even n = 50; CIFAR-10 vehicles/animals n = 20; MNIST odd/even n = 20 with
biases in all layers; the reference recipe, 10⁴ steps), each variant of the attack starts from the
victim's first released winner and runs for the same wall time (``--seconds``; a run is extended in
chunks of ``--chunk`` iterations until it has used its time, so that a variant that costs more per
iteration gets fewer iterations):

- base: the winner as released (m = 2n, box prior);
- + split: sample splitting every ``--split-every`` iterations (m may grow to 4n);
- + TV w: a total-variation prior of weight w on the candidates;
- m = 4n: twice the candidates.

Every variant is scored by n_recovered (the verdict against training ∪ held-out images). Prints a
markdown table and writes JSON to benchmarks/results/attack_quality.json.

    python benchmarks/attack_quality.py --data-root ../shared/data [--victims mnist50,cifar20,mnist20-all]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from _common import VICTIMS, print_table, run_meta, write_json
from kktrecon.attack import reconstruct
from kktrecon.attack.released import winner
from kktrecon.attack.splitting import SplitConfig
from kktrecon.devices import resolve_device
from kktrecon.files import read_json
from kktrecon.pipelines import evaluate
from kktrecon.training import train


def variants(args: argparse.Namespace, n: int) -> dict[str, dict]:
    """The attack's variants as overrides of the released winner."""
    table: dict[str, dict] = {
        "base": {},
        "+ split": {"split": SplitConfig(every=args.split_every, budget=4 * n)},
        "m = 4n": {"candidates": 4 * n},
    }
    for w in (float(v) for v in args.tv.split(",") if v):
        table[f"+ TV {w:g}"] = {"tv_weight": w}
    return table


def run_for(victim: Path, out: Path, config, seconds: float, chunk: int) -> tuple[int, float]:
    """Extend the run in ``out`` by ``chunk`` iterations until it has run ``seconds``; its iterations and time."""
    iterations = 0
    spent = 0.0
    while spent < seconds:
        iterations += chunk
        reconstruct(victim, dataclasses.replace(config, iterations=iterations), out=out, device="cpu",
                    resume=out.exists(), progress=False)  # fmt: skip
        spent = read_json(out / "reconstruction.json")["timings"]["total_s"]  # across resumes
    return iterations, spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--victims", default="mnist50,cifar20,mnist20-all")
    parser.add_argument("--seconds", type=float, default=120.0, help="wall time of every variant")
    parser.add_argument("--chunk", type=int, default=500, help="iterations between checks of the time spent")
    parser.add_argument("--split-every", type=int, default=1000)
    parser.add_argument("--tv", default="0.01,0.1", help="TV prior weights to try (comma-separated)")
    parser.add_argument("--only", default="", help="run only these variants (comma-separated names)")
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "results" / "attack_quality")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "attack_quality.json")
    args = parser.parse_args()
    saved = json.loads(args.out.read_text())["rows"] if args.out.is_file() else []
    rows: list[dict] = []
    for name in args.victims.split(","):
        dataset, config = VICTIMS[name]
        folder = args.work / name
        train(config, out=folder / "victim", data_root=args.data_root, device="cpu", resume=True, progress=False)
        n = 2 * config.data.n_per_class
        chosen = set(args.only.split(",")) - {""}
        for label, fields in variants(args, n).items():
            if chosen and label not in chosen:
                continue
            out = folder / label.replace(" ", "").replace("+", "plus-").replace("=", "")
            start = time.perf_counter()
            iterations, spent = run_for(folder / "victim", out, winner(dataset, 1, **fields), args.seconds, args.chunk)
            m = evaluate(out, data_root=args.data_root, figures=False, force=True).metrics
            manifest = read_json(out / "reconstruction.json")
            rows.append({
                "victim": name, "variant": label, "n_recovered": m["n_recovered"], "n": m["n_train"],
                "iterations": iterations, "seconds": spent, "candidates": manifest["candidates"],
                "splits": sum(len(s["split"]) for s in manifest.get("splits", [])),
                "median_ssim_aligned": m.get("median_ssim_aligned"), "wall_s": time.perf_counter() - start,
            })  # fmt: skip
            print(rows[-1], flush=True)
        done = {(r["victim"], r["variant"]) for r in rows}
        saved = [r for r in saved if (r["victim"], r["variant"]) not in done]
        write_json(args.out, {"seconds": args.seconds, "meta": run_meta(resolve_device("cpu")), "rows": saved + rows})
    print_table(
        ["victim", "variant", "n_recovered", "iterations", "final m", "splits", "time"],
        [[r["victim"], r["variant"], f"{r['n_recovered']} of {r['n']}", r["iterations"], r["candidates"],
          r["splits"], f"{r['seconds']:.0f} s"] for r in saved + rows],
    )  # fmt: skip


if __name__ == "__main__":
    main()
