"""The catalogue: the paper's figures and the follow-up's findings, declared as grids of cells.

Haim, Vardi, Yehudai, Shamir & Irani (NeurIPS 2022): Fig. 2 (the 2-D toy), Fig. 3 (reconstructions
of MNIST and CIFAR-10 n = 500 victims), Fig. 4 top (n ∈ {50, …, 500}) and bottom (architectures).
Buzaglo, Haim et al. (NeurIPS 2023): weight decay and multiclass victims leak more; CNN and
regression victims leak too. ``paper`` cells are the papers' settings (a GPU and hours of training);
``cpu`` cells shrink n and the budget so that each experiment runs on a 2-core CPU in ≤ 45 min and
still tests the qualitative finding.
"""

from __future__ import annotations

import dataclasses

from kktrecon.attack.config import ReconstructionConfig
from kktrecon.attack.delta import DeltaConfig
from kktrecon.attack.released import WINNERS, winner
from kktrecon.attack.simulation import SimulationConfig
from kktrecon.attack.unmixing import UnmixConfig
from kktrecon.data import DataConfig
from kktrecon.demo import DemoConfig
from kktrecon.errors import ConfigError
from kktrecon.experiments.grid import Cell, Experiment
from kktrecon.models import CNNConfig, MLPConfig
from kktrecon.registry import Registry
from kktrecon.training import TrainConfig

__all__ = ["EXPERIMENTS", "WINNERS"]


def victim(dataset: str = "mnist", task: str = "odd-even", per_class: int = 10, **fields: object) -> TrainConfig:
    """The reference recipe (full-batch GD at lr 0.01, first-layer bias, d-1000-1000-K) on ``per_class`` images."""
    # 200 held-out test images in all, the verdict's default pool beside the training set.
    test = 100 if task in ("odd-even", "vehicles-animals") else 20
    base = TrainConfig(
        data=DataConfig(dataset=dataset, task=task, n_per_class=per_class, test_per_class=test),
        steps=10_000,
        checkpoint_every=2_000,
        eval_every=1_000,
    )
    return dataclasses.replace(base, **fields)


def paper_victim(dataset: str = "mnist", task: str = "odd-even", per_class: int = 250, **fields: object) -> TrainConfig:
    """The paper's victim: 10⁶ full-batch steps in float64, 500 test images per class."""
    base = TrainConfig(
        data=DataConfig(dataset=dataset, task=task, n_per_class=per_class, test_per_class=500),
        steps=1_000_000,
        dtype="float64",
        checkpoint_every=20_000,
        eval_every=10_000,
    )
    return dataclasses.replace(base, **fields)


_CPU_ATTACK = dict(iterations=4_000, checkpoint_every=1_000, log_every=100)
_PAPER_ATTACK = dict(iterations=50_000, checkpoint_every=5_000, log_every=500, dtype="float64")

# The demo's toy (the reference victim and attack), attacked 1,200 iterations instead of 800 so that
# the read-outs below have time to pass through every margin point.
_TOY_DEMO = DemoConfig.for_toy()
_TOY_VICTIM = _TOY_DEMO.victim
_TOY_ATTACK = dataclasses.replace(_TOY_DEMO.attack, iterations=1200)

# One run read out every 100 iterations, the read-outs pooled and kept where their margin lies within
# [0.8, 1.25] × the candidates' median margin (complementary slackness; measured in sweeps.selection).
_TOY_CELL = Cell(
    "grid", _TOY_VICTIM, _TOY_ATTACK, readouts=12, margin_band=(0.8, 1.25), label="4×5 grid, 2-1000-1000-1000-1"
)

_N_CPU = (5, 10, 20, 40)
_N_PAPER = (25, 50, 100, 150, 250)
_ARCHS = (
    ("one hidden layer", (1000,), "first"),
    ("1000-1000", (1000, 1000), "first"),
    ("1000-1000-1000", (1000, 1000, 1000), "first"),
    ("biases in all layers", (1000, 1000), "all"),
)
_DECAY = (0.0, 1e-3, 1e-2)
# The law of data reconstruction (Iurada et al. 2026): p/dn from 0.25 to 114 at MNIST n = 20 (d·n = 15,680).
_LAW_MLP = (5, 20, 50, 100, 300, 1000)  # 784-w-w-1: p/dn 0.25, 1.03, 2.7, 5.7, 20.8, 113.9
_LAW_CNN = (("16-32", (16, 32), ()), ("32-64", (32, 64), ()), ("32-64-h100", (32, 64), (100,)))  # 0.41, 1.4, 21
_LAW_ATTACK = dict(iterations=12_000, checkpoint_every=1_000, log_every=100)
# The owner's side of the law: default-init victims (PyTorch's initialisation, SGD at lr 0.05), attacked with
# θ₀ and the recipe. ΔW₁ of an MLP has rank ≤ min(w, n): the unmixing reads at most w images. A CNN's first
# layer mixes patches: a CNN with a dense read-out (32-64 + 100, p/dn 21) is attacked through that layer's change
# (the Δθ family); one without (64-128, p/dn 5.2) is replayed (stopped at loss 0.05: 110 steps, 28 simulated).
_LAW_OWNER_MLP = (5, 20, 100, 1000)
_LAW_OWNER = dict(init="pytorch", lr=0.05, steps=3_000, loss_threshold=1e-3, checkpoint_every=1_000)

EXPERIMENTS: Registry[Experiment] = Registry("experiment", ConfigError)
for _exp in (
    Experiment(
        name="toy",
        title="Fig. 2: the 2-D toy",
        finding="The candidates land on the training points that lie on the margin; points off the margin are not "
        "found.",
        figure="toy",
        cpu=(_TOY_CELL,),
        paper=(_TOY_CELL,),
        cpu_minutes=1.3,
    ),
    Experiment(
        name="fig3-mnist",
        title="Fig. 3: reconstructions of an MNIST odd/even victim",
        finding="Many training images are read back from the weights, most of them recognisably.",
        figure="pairs",
        cpu=(Cell("n50", victim(per_class=25), winner("mnist", 2, **_CPU_ATTACK), restarts=4, label="n = 50"),),
        paper=(Cell("n500", paper_victim(), winner("mnist", 2, **_PAPER_ATTACK), label="n = 500"),),
        cpu_minutes=11.6,
    ),
    Experiment(
        name="fig3-cifar",
        title="Fig. 3: reconstructions of a CIFAR-10 vehicles/animals victim",
        finding="Training images are read back from a CIFAR-10 victim too, fewer and blurrier than on MNIST.",
        figure="pairs",
        cpu=(
            Cell(
                "n20",
                victim("cifar10", "vehicles-animals"),
                winner("cifar10", 1, **_CPU_ATTACK),
                restarts=4,
                label="n = 20",
            ),
        ),
        paper=(
            Cell(
                "n500",
                paper_victim("cifar10", "vehicles-animals"),
                winner("cifar10", 1, **_PAPER_ATTACK),
                label="n = 500",
            ),
        ),
        cpu_minutes=11.2,
    ),
    Experiment(
        name="fig4-n",
        title="Fig. 4 (top): the effect of the training-set size n",
        finding="The smaller the training set, the larger the fraction of it that is recovered; margin samples first.",
        figure="panels",
        cpu=tuple(
            Cell(
                f"n{2 * k}",
                victim(per_class=k),
                winner("mnist", 2, **_CPU_ATTACK),
                restarts=2,
                group="n",
                label=f"n = {2 * k}",
            )
            for k in _N_CPU
        ),
        paper=tuple(
            Cell(
                f"n{2 * k}",
                paper_victim(per_class=k),
                winner("mnist", 2, **_PAPER_ATTACK),
                group="n",
                label=f"n = {2 * k}",
            )
            for k in _N_PAPER
        ),
        cpu_minutes=23.7,
    ),
    Experiment(
        name="fig4-arch",
        title="Fig. 4 (bottom): architectures",
        finding="Depth and width change how much leaks; biases in all layers (not homogeneous) reduce but do not "
        "prevent recovery.",
        figure="panels",
        cpu=tuple(
            Cell(
                label.replace(" ", "-"),
                victim(model=MLPConfig(hidden=hidden, bias=bias)),
                winner("mnist", 2, **_CPU_ATTACK),
                restarts=2,
                group="arch",
                label=label,
            )
            for label, hidden, bias in _ARCHS
        ),
        paper=tuple(
            Cell(
                label.replace(" ", "-"),
                paper_victim(model=MLPConfig(hidden=hidden, bias=bias)),
                winner("mnist", 2, **_PAPER_ATTACK),
                group="arch",
                label=label,
            )
            for label, hidden, bias in _ARCHS
        ),
        cpu_minutes=22.1,
    ),
    Experiment(
        name="weight-decay",
        title="Weight decay (Buzaglo et al. 2023)",
        finding="Training with weight decay increases how many training images are recovered, and how well.",
        figure="panels",
        cpu=tuple(
            Cell(
                f"wd{wd:g}",
                victim(weight_decay=wd),
                winner("mnist", 2, **_CPU_ATTACK),
                restarts=2,
                group="wd",
                label=f"weight decay {wd:g}",
            )
            for wd in _DECAY
        ),
        paper=tuple(
            Cell(
                f"wd{wd:g}",
                paper_victim(weight_decay=wd),
                winner("mnist", 2, **_PAPER_ATTACK),
                group="wd",
                label=f"weight decay {wd:g}",
            )
            for wd in _DECAY
        ),
        cpu_minutes=13.1,
    ),
    Experiment(
        name="multiclass",
        title="Multiclass victims (Buzaglo et al. 2023)",
        finding="Multiclass victims leak more than binary ones: more recovered per class of training data.",
        figure="panels",
        cpu=(
            Cell("binary-n20", victim(), winner("mnist", 2, **_CPU_ATTACK), restarts=2, label="MNIST odd/even, n = 20"),
            Cell(
                "digits-2",
                victim(task="digits", per_class=2),
                winner("mnist", 2, **_CPU_ATTACK),
                restarts=2,
                label="MNIST 10 digits, 2 per class",
            ),
            Cell(
                "digits-5",
                victim(task="digits", per_class=5),
                winner("mnist", 2, **_CPU_ATTACK),
                restarts=2,
                label="MNIST 10 digits, 5 per class",
            ),
            Cell(
                "cifar-2",
                victim("cifar10", "classes", per_class=2),
                winner("cifar10", 1, **_CPU_ATTACK),
                restarts=2,
                label="CIFAR-10 classes, 2 per class",
            ),
        ),
        paper=(
            Cell("binary", paper_victim(), winner("mnist", 2, **_PAPER_ATTACK), label="MNIST odd/even, n = 500"),
            Cell(
                "digits",
                paper_victim(task="digits", per_class=50),
                winner("mnist", 2, **_PAPER_ATTACK),
                label="MNIST 10 digits, 50 per class",
            ),
        ),
        cpu_minutes=23.4,
    ),
    Experiment(
        name="victims",
        title="CNN and regression victims (Buzaglo et al. 2023)",
        finding="The attack reads training images out of CNNs and regression networks too.",
        figure="panels",
        cpu=(
            Cell("mlp", victim(), winner("mnist", 2, **_CPU_ATTACK), restarts=2, label="MLP, odd/even"),
            Cell(
                "cnn",
                victim(model=CNNConfig(hidden=(), init_scale=1e-2), lr=0.05),
                winner("mnist", 2, **_CPU_ATTACK),
                restarts=2,
                label="CNN, odd/even",
            ),
            Cell(
                "regression",
                victim(task="digit-value", per_class=2),
                winner("mnist", 2, **_CPU_ATTACK),
                restarts=2,
                label="MLP, regress the digit",
            ),
        ),
        paper=(
            Cell(
                "cnn",
                paper_victim(model=CNNConfig(hidden=(), init_scale=1e-2)),
                winner("mnist", 2, **_PAPER_ATTACK),
                label="CNN, odd/even, n = 500",
            ),
            Cell(
                "regression",
                paper_victim(task="digit-value", per_class=50),
                winner("mnist", 2, **_PAPER_ATTACK),
                label="MLP, regress the digit, n = 500",
            ),
        ),
        cpu_minutes=11.0,
    ),
    Experiment(
        name="law",
        title="The law of data reconstruction: recovered fraction against p/dn",
        finding="The recovered fraction rises across p ≈ d·n (parameters against input dimension × training "
        "images); CNNs stand on the same axis.",
        figure="law",
        cpu=tuple(
            Cell(
                f"mlp-{w}",
                victim(model=MLPConfig(hidden=(w, w))),
                ReconstructionConfig(**_LAW_ATTACK),
                group="MLP 784-w-w-1",
                label=f"w = {w}",
            )
            for w in _LAW_MLP
        )
        + tuple(
            Cell(
                f"cnn-{name}",
                victim(model=CNNConfig(channels=channels, hidden=hidden)),
                ReconstructionConfig(**_LAW_ATTACK),
                group="CNN (strided 3×3 convs)",
                label=name.replace("-h", " + "),
            )
            for name, channels, hidden in _LAW_CNN
        )
        + tuple(
            Cell(
                f"owner-mlp-{w}",
                victim(model=MLPConfig(hidden=(w, w)), **_LAW_OWNER),
                UnmixConfig(rank=w if w <= 20 else None),  # ΔW₁ (w × d), rank w ≤ n: no drop to read
                group="owner: unmix, default-init MLP",
                label=f"unmix w = {w}",
                family="unmix",
            )
            for w in _LAW_OWNER_MLP
        )
        + (
            Cell(
                "owner-cnn-32-64-h100",
                victim(model=CNNConfig(channels=(32, 64), hidden=(100,), bias="all"), **_LAW_OWNER),
                DeltaConfig(),
                group="owner: Δθ of the dense layer, default-init CNN",
                label="Δθ 32-64 + 100",
                family="delta",
            ),
            Cell(
                "owner-cnn-64-128",
                victim(model=CNNConfig(channels=(64, 128), bias="all"), **{**_LAW_OWNER, "loss_threshold": 0.05}),
                SimulationConfig(iterations=400),
                group="owner: simulate, default-init CNN",
                label="simulate 64-128",
                family="simulate",
            ),
        ),
        paper=tuple(
            Cell(
                f"mlp-{w}",
                paper_victim(model=MLPConfig(hidden=(w, w))),
                winner("mnist", 2, **_PAPER_ATTACK),
                group="MLP 784-w-w-1",
                label=f"w = {w}",
            )
            for w in (20, 100, 300, 1000, 3000)
        ),
        cpu_minutes=55.0,
    ),
):
    EXPERIMENTS.register(_exp.name, _exp)
