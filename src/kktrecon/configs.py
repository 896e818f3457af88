"""Config dataclasses to JSON and back: tuples, nested configs and configs of a registry's kind.

Every result is saved beside its frozen config; :func:`config_to_dict` and :func:`config_from_dict`
make that round trip exact and refuse unknown keys, so an old manifest either loads or says why.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from kktrecon.devices import dtype_name
from kktrecon.errors import ConfigError

__all__ = [
    "config_from_dict",
    "config_to_dict",
    "json_default",
    "parse_value",
    "register_choice",
    "register_nested",
    "settable_names",
    "with_settings",
]

C = TypeVar("C")


def json_default(obj: Any) -> Any:
    """JSON for what configs and manifests hold: dataclasses, paths, dtypes, devices, tensors and arrays."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return config_to_dict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.dtype):
        return dtype_name(obj)
    if isinstance(obj, torch.device):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A frozen config dataclass as a JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(_with_choices(config, dataclasses.asdict(config)), default=json_default))


def config_from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """Rebuild a config dataclass, rejecting unknown keys and restoring tuples and nested configs."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"Expected {cls.__name__} settings as a JSON object. Got {data!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"Unknown keys for {cls.__name__}: {unknown}. Expected a subset of {sorted(fields)}.")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        default = getattr(cls, "__dataclass_fields__")[name].default  # noqa: B009
        nested = _NESTED.get((cls.__name__, name))
        choice = _CHOICES.get((cls.__name__, name))
        if choice is not None and isinstance(value, Mapping):
            value = choice.from_dict(value, where=f"{cls.__name__}.{name}")
        elif nested is not None and isinstance(value, Mapping):
            value = config_from_dict(nested, value)
        elif nested is not None and isinstance(value, list):  # a tuple of nested configs
            value = tuple(config_from_dict(nested, v) for v in value)
        elif isinstance(value, list) and (isinstance(default, tuple) or default is dataclasses.MISSING):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


_NESTED: dict[tuple[str, str], type] = {}


def register_nested(owner: str, field: str, cls: type) -> None:
    """Tell :func:`config_from_dict` that ``owner.field`` holds a ``cls`` config (or a tuple of them)."""
    _NESTED[(owner, field)] = cls


@dataclass(frozen=True)
class _Choice:
    """A field that holds one of several config classes, named under ``key`` beside its fields when saved."""

    key: str
    cls_of: Callable[[str], type]
    name_of: Callable[[Any], str]

    def from_dict(self, data: Mapping[str, Any], *, where: str) -> Any:
        if self.key not in data:
            raise ConfigError(f"Expected `{where}` to name its kind under {self.key!r}. Got keys {sorted(data)}.")
        return config_from_dict(self.cls_of(data[self.key]), {k: v for k, v in data.items() if k != self.key})


_CHOICES: dict[tuple[str, str], _Choice] = {}


def register_choice(
    owner: str, field: str, *, key: str, cls_of: Callable[[str], type], name_of: Callable[[Any], str]
) -> None:
    """Tell the round trip that ``owner.field`` holds one of several configs (a registry's, say).

    :func:`config_to_dict` writes ``name_of(value)`` under ``key`` beside the value's fields, and
    :func:`config_from_dict` rebuilds the value as a ``cls_of(name)`` (which refuses unknown names).
    """
    _CHOICES[(owner, field)] = _Choice(key, cls_of, name_of)


def _with_choices(config: Any, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` (``asdict(config)``) with the kind of every registered choice, at any depth, named in it."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            record[f.name] = _with_choices(value, record[f.name])
            choice = _CHOICES.get((type(config).__name__, f.name))
            if choice is not None:
                record[f.name] = {choice.key: choice.name_of(value), **record[f.name]}
    return record


Kinds = Mapping[str, Mapping[str, type]]


def with_settings(
    config: Any, values: Mapping[str, Any], *, kinds: Kinds | None = None, fixed: tuple[str, ...] = ()
) -> Any:
    """``config`` with dotted ``values`` applied (``model.padding`` -> ``config.model.padding``).

    Text values are parsed by the field's type (:func:`parse_value`). ``kinds`` names the dotted fields
    that hold one of several configs, each with its choices by name (``{"model": {"mlp": MLPConfig, …}}``):
    setting such a field to a name replaces it with that class's defaults, before its own fields are set.
    ``fixed`` fields (decided elsewhere, e.g. by the data) may not be set.

    Raises:
        ConfigError: an unknown or fixed name (the message lists the settable ones), an unknown kind,
            or a value its field's type cannot parse.
    """
    for name in fixed:
        if name in values:
            raise ConfigError(
                f"Expected `{name}` to be left unset (it is decided, here by the data). Got {values[name]!r}."
            )
    return _apply(config, values, prefix="", kinds=kinds or {}, fixed=fixed)


def _apply(config: Any, values: Mapping[str, Any], *, prefix: str, kinds: Kinds, fixed: tuple[str, ...]) -> Any:
    hints = typing.get_type_hints(type(config))
    changes: dict[str, Any] = {}
    for name in dict.fromkeys(n.split(".")[0] for n in values):  # kinds first: they decide the nested fields
        if prefix + name in kinds and name in values:
            classes = kinds[prefix + name]
            if values[name] not in classes:
                raise ConfigError(f"Expected `{prefix}{name}` to be one of {sorted(classes)}. Got {values[name]!r}.")
            changes[name] = classes[values[name]]()
    for name in dict.fromkeys(n.split(".")[0] for n in values):
        current = changes.get(name, getattr(config, name, None))
        nested = {k.partition(".")[2]: v for k, v in values.items() if k.startswith(name + ".")}
        optional = _optional_config(hints.get(name))
        if optional is not None and name in values and not nested:
            changes[name] = parse_value(prefix + name, values[name], hints[name])  # only "none": switched off
            if changes[name] is not None:
                raise ConfigError(f"Expected `{prefix}{name}` to be none, or its fields set. Got {values[name]!r}.")
            continue
        if nested and current is None and optional is not None:
            current = optional()  # an optional part switched on by setting one of its fields (split.every=…)
        if (
            name not in hints
            or (nested and not dataclasses.is_dataclass(current))
            or (name in values and dataclasses.is_dataclass(current) and prefix + name not in kinds)
        ):
            valid = settable_names(config, kinds=kinds, fixed=fixed, prefix=prefix)
            unknown = next(prefix + k for k in values if k.split(".")[0] == name)
            raise ConfigError(f"Expected a setting of {type(config).__name__}, one of {valid}. Got {unknown!r}.")
        if nested:
            changes[name] = _apply(current, nested, prefix=f"{prefix}{name}.", kinds=kinds, fixed=fixed)
        elif prefix + name not in kinds:
            value = values[name]
            changes[name] = parse_value(prefix + name, value, hints[name]) if isinstance(value, str) else value
    return dataclasses.replace(config, **changes)


def settable_names(
    config: Any, *, kinds: Kinds | None = None, fixed: tuple[str, ...] = (), prefix: str = ""
) -> list[str]:
    """Every settable dotted name of ``config``: its scalar fields, its kinds, and those of nested configs."""
    kinds = kinds or {}
    names = []
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, name = getattr(config, f.name), prefix + f.name
        if (optional := _optional_config(hints.get(f.name))) is not None:
            names.append(name)  # settable to none
            value = value if value is not None else optional()
        if name in kinds or not dataclasses.is_dataclass(value):
            names.append(name)
        if dataclasses.is_dataclass(value):
            names += settable_names(value, kinds=kinds, fixed=fixed, prefix=name + ".")
    return [n for n in names if n not in fixed]


def _optional_config(hint: Any) -> type | None:
    """The config class of a ``Config | None`` field, or None."""
    args = typing.get_args(hint)
    if type(None) not in args:
        return None
    others = [a for a in args if a is not type(None)]
    return others[0] if len(others) == 1 and dataclasses.is_dataclass(others[0]) else None


def parse_value(name: str, text: str, hint: Any) -> Any:
    """``text`` as a value of type ``hint`` (``X | None``, ``tuple[int, ...]``, int, float, bool, str).

    Raises:
        ConfigError: the text does not parse as that type (the message names the field).
    """
    args = typing.get_args(hint)
    if type(None) in args:
        if text.strip().lower() in ("", "none", "null"):
            return None
        return parse_value(name, text, next(a for a in args if a is not type(None)))
    if typing.get_origin(hint) is tuple:
        parts = [p.strip() for p in text.strip().strip("()[]").split(",")]
        return tuple(parse_value(name, p, args[0]) for p in parts if p)
    if hint is bool:
        if text.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"Expected `{name}` to be true or false. Got {text!r}.")
        return text.strip().lower() in ("true", "1", "yes")
    if hint in (int, float):
        try:
            return hint(text)
        except ValueError:
            what = "an integer" if hint is int else "a number"
            raise ConfigError(f"Expected `{name}` to be {what}. Got {text!r}.") from None
    return text
