"""The victim as every stage sees it: a model and what is known about it, never its training data.

One :class:`Victim` serves the attack, the batched trials, the sweep, the audit and the verdict. It
is built from a victim run directory (:meth:`Victim.from_run`), from an architecture spec and a
weights file (:meth:`Victim.from_spec`), or from an ``nn.Module`` (:meth:`Victim.from_module`), and
carries the rules that used to be inferred in several places, once each: which objective its KKT
conditions take (the recorded one, else binary for one output and multiclass for several), at
which resolution candidates are matched (images of 32 px or more at half resolution, as the
reference does for CIFAR-10), and how pixels become its inputs and back (:class:`Preprocessing`).
When its owner knows them, it also carries its initial weights and its training recipe.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kktrecon.attack.objectives import Objective, default_objective, get_objective
from kktrecon.errors import ConfigError
from kktrecon.models import load_checkpoint, weights_fingerprint
from kktrecon.models.checkpoints import load_initial_state
from kktrecon.models.spec import fit_weights, load_spec, load_weights

__all__ = ["Preprocessing", "Victim", "VictimLike"]


@dataclass(frozen=True)
class Preprocessing:
    """How pixels in [0, 1] become the victim's inputs: ``(pixels − mean) / std`` (None: 0 and 1)."""

    mean: Tensor | None = None
    std: Tensor | None = None

    def to_inputs(self, pixels: Tensor) -> Tensor:
        x = pixels if self.mean is None else pixels - self.mean.to(pixels)
        return x if self.std is None else x / self.std.to(pixels)

    def to_pixels(self, inputs: Tensor) -> Tensor:
        x = inputs if self.std is None else inputs * self.std.to(inputs)
        return x if self.mean is None else x + self.mean.to(inputs)


@dataclass(frozen=True)
class Victim:
    """A model under attack and what is known about it.

    Attributes:
        model: the network (the caller's; stages that change it work on :meth:`on`'s copy).
        input_shape: the shape of one input.
        fingerprint: the weights' fingerprint, recorded beside every result to tie it to this victim.
        recorded_objective: the objective recorded at training (None: unknown).
        run_dir: its run directory, when it has one.
        dataset: the data set's registry name, when known.
        n_train: the training-set size, when recorded.
        preprocessing: how pixels become inputs.
        initial_state: its weights before training (the owner's knowledge), else None.
        recipe: its training recipe (optimiser, lr, steps, …), when known.
        manifest: the run directory's ``model.json``, or empty.
    """

    model: nn.Module
    input_shape: tuple[int, ...]
    fingerprint: str
    recorded_objective: str | None = None
    run_dir: Path | None = None
    dataset: str | None = None
    n_train: int | None = None
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    initial_state: Mapping[str, Tensor] | None = None
    recipe: Mapping[str, Any] | None = None
    manifest: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_run(
        cls, run_dir: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> Victim:
        """A victim run directory (``model.safetensors`` + ``model.json``), loaded without unpickling."""
        model, manifest = load_checkpoint(run_dir, device=device, dtype=dtype)
        mean = manifest.get("train_mean")
        shape = tuple(model.config.input_shape)
        known = Preprocessing(torch.tensor(mean, dtype=torch.float64).reshape(shape)) if mean else Preprocessing()
        return cls(
            model=model.eval(),
            input_shape=shape,
            fingerprint=weights_fingerprint(model),
            recorded_objective=manifest.get("objective"),
            run_dir=Path(run_dir).resolve(),
            dataset=(manifest.get("data") or {}).get("dataset"),
            n_train=(manifest.get("metrics") or {}).get("n_train"),
            preprocessing=known,
            initial_state=load_initial_state(run_dir, model),
            recipe=manifest.get("training"),
            manifest=manifest,
        )

    @classmethod
    def from_module(cls, model: nn.Module, input_shape: tuple[int, ...] | None = None, **known: Any) -> Victim:
        """An ``nn.Module``; ``input_shape`` unless it carries ``config.input_shape``; ``known``: other fields."""
        shape = input_shape or getattr(getattr(model, "config", None), "input_shape", None)
        if shape is None:
            raise ConfigError(
                "Expected `input_shape` for a model that does not carry its config (e.g. (1, 28, 28)). Got None."
            )
        return cls(model=model, input_shape=tuple(shape), fingerprint=weights_fingerprint(model), **known)

    @classmethod
    def from_spec(cls, weights: str | Path, arch: str | Path, **known: Any) -> Victim:
        """A JSON ``nn.Sequential`` spec and its weights (safetensors, or a state dict read weights-only)."""
        tensors = load_weights(weights)
        with torch.device("meta"):  # shapes first: a spec that does not fit its weights allocates nothing
            model, shape = load_spec(arch)
        fit_weights(model, tensors, where=str(weights))
        return cls.from_module(model.eval(), shape, **known)

    @classmethod
    def of(cls, victim: VictimLike, input_shape: tuple[int, ...] | None = None) -> Victim:
        """``victim`` itself, or a victim built from a run directory or a module."""
        if isinstance(victim, Victim):
            return victim
        if isinstance(victim, nn.Module):
            return cls.from_module(victim, input_shape)
        return cls.from_run(victim)

    @property
    def num_outputs(self) -> int:
        p = next(self.model.parameters())
        with torch.no_grad():
            return int(self.model(torch.zeros(1, *self.input_shape, dtype=p.dtype, device=p.device)).shape[1])

    def objective(self, name: str | None = None, *, num_outputs: int | None = None) -> Objective:
        """The KKT conditions to invert: ``name``, else the recorded objective, else by the output count
        (``num_outputs`` when the caller has run the model already)."""
        chosen = name or self.recorded_objective
        if chosen:
            return get_objective(chosen)
        return default_objective(num_outputs if num_outputs is not None else self.num_outputs)

    @property
    def steps_trained(self) -> int | None:
        """The optimiser steps the victim was trained for: its run's record, else the recipe's ``steps``, else its
        ``epochs`` × the batches per epoch (one per epoch for the full batch)."""
        done = (self.manifest.get("metrics") or {}).get("steps") if self.manifest else None
        recipe = self.recipe or {}
        if done is None:
            done = recipe.get("steps")
        if done is None and recipe.get("epochs") is not None and self.n_train is not None:
            batch = recipe.get("batch_size") or self.n_train
            done = int(recipe["epochs"]) * -(-self.n_train // int(batch))
        return int(done) if done is not None else None

    @property
    def downsample(self) -> int:
        """The factor by which candidates and images are downsampled before matching."""
        return 2 if len(self.input_shape) == 3 and min(self.input_shape[1:]) >= 32 else 1

    def on(self, device: torch.device, dtype: torch.dtype) -> nn.Module:
        """A copy of the model on ``device`` in ``dtype``, in eval mode (never the caller's module)."""
        return copy.deepcopy(self.model).to(device=device, dtype=dtype).eval()

    @property
    def target(self) -> str | nn.Module:
        """What crosses a process boundary (a Ray task): the run directory when there is one, else the model."""
        return str(self.run_dir) if self.run_dir is not None else self.model

    def describe(self, objective: str | None = None) -> dict[str, Any]:
        """The victim as recorded beside a result (a reconstruction's manifest, a candidate file's header)."""
        return {
            "run_dir": str(self.run_dir) if self.run_dir is not None else None,
            "n_train": self.n_train,
            "input_shape": list(self.input_shape),
            "objective": objective or self.recorded_objective,
            "fingerprint": self.fingerprint,
        }


#: What the stages accept as a victim.
VictimLike = Victim | nn.Module | str | Path
