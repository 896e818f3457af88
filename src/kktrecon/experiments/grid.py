"""What an experiment is: a declared grid of victims × attacks, at CPU scale and at the paper's scale.

An :class:`Experiment` names its cells; a :class:`Cell` is one victim recipe (a
:class:`~kktrecon.training.TrainConfig`) and one attack (the KKT attack's
:class:`~kktrecon.attack.ReconstructionConfig`, run as ``restarts`` trials from different seeds
and pooled; or another registered family with its own config, run once). The catalogue
(:mod:`kktrecon.experiments.catalog`) declares the paper's figures as data; the runner turns any experiment
into run directories, a table and figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kktrecon.attack.engine import ReconstructionConfig
from kktrecon.checks import check_int
from kktrecon.errors import ConfigError
from kktrecon.training import TrainConfig

__all__ = ["Cell", "Experiment"]


@dataclass(frozen=True)
class Cell:
    """One victim and the attack on it.

    Attributes:
        name: unique within the experiment; names the cell's directory and its row of the table.
        victim: the victim's training recipe.
        attack: the attack's config; for the KKT family, ``restarts`` copies run with seeds ``attack.seed + i``
            as one batch.
        restarts: attack runs from independent starts whose candidates are pooled.
        readouts: the candidates are read out this many times, evenly over the attack (each run is
            extended in steps), and all read-outs pooled: a candidate that passes through a training
            point is caught even when it drifts on (the 2-D toy has no prior to hold it).
        margin_band: keep only pooled candidates whose margin lies within this band × the candidates'
            median margin (``sweeps.selection.on_the_margin``; oracle-free); None keeps all.
        group: the panel the cell is drawn in (Fig. 4: one panel per n or architecture).
        label: the cell's label in tables and legends.
        family: the attack family (:data:`~kktrecon.attack.ATTACKS`); ``attack`` is its config. Families
            other than ``kkt`` run once (no restarts, no read-outs).
    """

    name: str
    victim: TrainConfig
    attack: ReconstructionConfig | Any
    restarts: int = 1
    readouts: int = 1
    margin_band: tuple[float, float] | None = None
    group: str = ""
    label: str = ""
    family: str = "kkt"

    def __post_init__(self) -> None:
        from kktrecon.attack import get_attack

        config_type = get_attack(self.family).config_type
        if not isinstance(self.attack, config_type):
            raise ConfigError(f"Expected a {config_type.__name__} for a {self.family!r} cell. Got {type(self.attack)}.")
        if self.family != "kkt" and (self.restarts, self.readouts, self.margin_band) != (1, 1, None):
            raise ConfigError(f"Expected one run of the {self.family!r} family (no restarts, read-outs or band).")
        check_int("restarts", self.restarts, low=1)
        check_int("readouts", self.readouts, low=1, high=self.attack.iterations or 1)
        if not self.name or "/" in self.name:
            raise ConfigError(f"Expected a cell `name` usable as a directory name. Got {self.name!r}.")


@dataclass(frozen=True)
class Experiment:
    """A paper figure or finding as a grid of cells, at two scales.

    Attributes:
        name: the command-line name (``fig4-n``).
        title: one line.
        finding: the qualitative claim of the paper the experiment checks.
        figure: how the results are drawn: ``panels`` (Fig. 4: SSIM vs output per cell, shared axes),
            ``pairs`` (Fig. 3: the reconstruction grids), ``toy`` (Fig. 2) or ``law`` (recovered fraction
            against p/dn, one point per cell, coloured by ``group``).
        cpu: the cells at CPU scale (this machine, ≤ 45 min in all).
        paper: the cells at the paper's scale (a GPU).
        cpu_minutes: measured wall time of the CPU scale on the 2-core development machine (one thread,
            beside another experiment; alone with both cores, about two thirds of it).
    """

    name: str
    title: str
    finding: str
    figure: str
    cpu: tuple[Cell, ...]
    paper: tuple[Cell, ...]
    cpu_minutes: float = 0.0
    notes: str = ""
    metrics: tuple[str, ...] = field(default=("n_recovered", "n_reconstructed", "median_ssim_aligned"))

    def __post_init__(self) -> None:
        for scale in (self.cpu, self.paper):
            names = [c.name for c in scale]
            if len(set(names)) != len(names):
                raise ConfigError(f"Expected unique cell names in experiment {self.name!r}. Got {names}.")
        if self.figure not in ("panels", "pairs", "toy", "law"):
            raise ConfigError(f"Expected `figure` to be panels, pairs, toy or law. Got {self.figure!r}.")

    def cells(self, scale: str) -> tuple[Cell, ...]:
        if scale not in ("cpu", "paper"):
            raise ConfigError(f"Expected `scale` to be cpu or paper. Got {scale!r}.")
        return self.cpu if scale == "cpu" else self.paper
