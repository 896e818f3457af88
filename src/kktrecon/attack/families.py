"""Attack families behind one small interface (as breaching's ``_BaseAttacker``): a victim and a config in,
a :class:`~kktrecon.candidates.CandidateSet` out, resumable through the shared run-directory lifecycle.

The KKT attack (Haim et al. 2022) is the first family and needs the weights alone. Families that use
what an owner knows (the initial weights, the training recipe) declare it in ``needs``; a victim that
lacks it is refused with a message before anything runs. A new family is a subclass registered with
:func:`register_attack`; the contract tests pick it up from :data:`ATTACKS` without naming it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from kktrecon.attack.config import ReconstructionConfig
from kktrecon.attack.engine import reconstruct
from kktrecon.attack.victim import Victim, VictimLike
from kktrecon.candidates import CandidateSet
from kktrecon.errors import ConfigError
from kktrecon.registry import Registry

__all__ = ["ATTACKS", "AttackFamily", "KKTAttack", "get_attack", "register_attack", "run_attack"]


class AttackFamily:
    """One way of reading candidates out of a victim.

    Attributes:
        name: the family's registry name.
        config_type: its frozen config dataclass.
        needs: the :class:`~kktrecon.attack.victim.Victim` fields it cannot run without (beyond the model).
        description: one line for listings.
    """

    name: ClassVar[str]
    config_type: ClassVar[type]
    needs: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""

    def run(
        self,
        victim: Victim,
        config: Any,
        *,
        out: str | Path | None,
        device: str | torch.device,
        resume: bool,
        force: bool,
        progress: bool,
    ) -> CandidateSet:
        """Run the attack (resuming from ``out`` when asked) and return its candidates."""
        raise NotImplementedError

    def check(self, victim: Victim) -> None:
        """Refuse a victim that lacks what the family needs."""
        missing = [name for name in self.needs if getattr(victim, name) is None]
        if missing:
            raise ConfigError(
                f"Expected the victim to carry {missing} for the {self.name!r} attack. Got none; pass them "
                "(e.g. --init-weights) or choose another attack."
            )


#: The attack families by name.
ATTACKS: Registry[type[AttackFamily]] = Registry("attack", ConfigError)

A = TypeVar("A", bound=type[AttackFamily])


def register_attack(cls: A) -> A:
    """Class decorator: register an :class:`AttackFamily` subclass under its ``name``."""
    ATTACKS.register(cls.name, cls)
    return cls


def get_attack(name: str) -> AttackFamily:
    """An instance of the family called ``name``; an unknown name lists the registered ones."""
    return ATTACKS.get_entry(name)()


def run_attack(
    name: str,
    victim: VictimLike,
    config: Any = None,
    *,
    out: str | Path | None = None,
    input_shape: tuple[int, ...] | None = None,
    device: str | torch.device = "auto",
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> CandidateSet:
    """Run the attack family ``name`` on ``victim``; ``overrides`` replace fields of its ``config``."""
    family = get_attack(name)
    config = dataclasses.replace(config or family.config_type(), **overrides)
    if not isinstance(config, family.config_type):
        raise ConfigError(f"Expected a {family.config_type.__name__} for the {name!r} attack. Got {type(config)}.")
    target = Victim.of(victim, input_shape)
    family.check(target)
    return family.run(target, config, out=out, device=device, resume=resume, force=force, progress=progress)


@register_attack
class KKTAttack(AttackFamily):
    """Haim et al.'s attack: candidates whose per-sample gradients explain θ at a KKT point (weights only)."""

    name = "kkt"
    config_type = ReconstructionConfig
    description = "stationarity of the max-margin problem, from the final weights alone (Haim et al. 2022)"

    def run(self, victim: Victim, config: Any, **kwargs: Any) -> CandidateSet:
        result = reconstruct(victim, config, **kwargs)
        assert result.candidates is not None
        return result.candidates
