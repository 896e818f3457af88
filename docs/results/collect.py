"""Copy finished experiments' tables and figures here (PNGs quantised to 256 colours to stay small).

    python docs/results/collect.py RUNS/toy RUNS/fig4-n ...

Each experiment directory (``kktrecon experiment NAME --out DIR``) gives ``NAME.md`` (its results.md
with the command and wall time) and its PNGs. README.md is written by hand around them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent


def collect(run: Path) -> None:
    record = json.loads((run / "experiment.json").read_text())
    name, scale = record["experiment"], record["scale"]
    minutes = record.get("seconds", 0) / 60
    command = f"kktrecon experiment {name} --out runs/{name} --data-root DATA" + (
        "" if scale == "cpu" else f" --scale {scale}"
    )
    figures = sorted(run.glob("*.png"))
    for png in figures:
        Image.open(png).convert("RGB").quantize(colors=256).save(HERE / png.name, optimize=True)
    table = (run / "results.md").read_text()
    links = "\n".join(f"![{p.stem}]({p.name})" for p in figures)
    (HERE / f"{name}.md").write_text(
        f"{table}\n`{command}` · {minutes:.1f} min on the 2-core CPU (1 thread; another experiment ran on the "
        f"other core)\n\n{links}\n"
    )
    print(f"{name}: {len(figures)} figures, {minutes:.1f} min")


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        collect(Path(arg))
