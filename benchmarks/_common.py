"""What every benchmark script does at its end: write its JSON and print its markdown table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kktrecon.experiments.catalog import victim as recipe
from kktrecon.models import CNNConfig, MLPConfig

#: The dev-measured victims (784/3072-1000-1000-1 unless named a CNN, the reference recipe, 10⁴ steps):
#: name → (data set, recipe). cnn20: the law's CNN with p/dn ≥ 5 (strided 3×3 convs 32-64, a 100-wide
#: linear layer; p/dn 21 at n = 20).
VICTIMS = {
    "mnist50": ("mnist", recipe(per_class=25)),
    "cifar20": ("cifar10", recipe("cifar10", "vehicles-animals")),
    "mnist20-all": ("mnist", recipe(model=MLPConfig(bias="all"))),
    "mnist20": ("mnist", recipe()),
    "cnn20": ("mnist", recipe(model=CNNConfig(channels=(32, 64), hidden=(100,)))),
}


def run_meta(device: Any) -> dict[str, Any]:
    """Where a benchmark ran: the device, its name, the CPU threads and the package versions."""
    import platform

    import torch

    from kktrecon.files import package_versions

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {"device": str(device), "device_name": name, "threads": torch.get_num_threads(),
            "versions": package_versions()}  # fmt: skip


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def print_table(head: list[str], body: list[list[Any]]) -> None:
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for row in body:
        print("| " + " | ".join(str(v) for v in row) + " |")
